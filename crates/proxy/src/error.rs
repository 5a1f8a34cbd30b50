//! Why a request did not reach the application, and the one function that turns each reason
//! into the HTTP response the client gets.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use meshlimit_bucket::Decision;

use crate::options::RateLimitHeaders;
use crate::plan::{QuotaPolicy, RejectTemplate, ceil_secs};

/// The body of every response the proxy sends: the application's (`B`, streamed), or one of
/// ours.
pub(crate) type ProxyBody<B> = Either<B, Full<Bytes>>;

/// A request the proxy answers itself.
#[derive(Debug)]
pub(crate) enum RequestError<'a> {
    /// A limit of the inbound rejected it: the local one, or the global one.
    RateLimited {
        reject: &'a RejectTemplate,
        /// The bucket that decided, as the header fields describe it.
        quota: &'a QuotaPolicy,
        decision: Decision,
        rate_limit_headers: RateLimitHeaders,
    },
    /// The declared or streamed body is larger than the configured limit.
    BodyTooLarge,
    /// The client's body could not be read as one (malformed chunked framing and the like).
    BadRequestBody,
    /// The application could not be reached, or dropped the request before answering
    /// (logged where it happens, with the inbound it concerns).
    UpstreamUnavailable,
    /// The application's response head did not arrive within the upstream timeout (logged
    /// where it happens).
    UpstreamTimeout,
    /// A `CONNECT` request, and forwarding them is off.
    Connect,
}

/// The edge: every local answer is built here, for a request of `version`.
pub(crate) fn error_response<B>(
    error: RequestError<'_>,
    version: Version,
) -> Response<ProxyBody<B>> {
    match error {
        RequestError::RateLimited {
            reject,
            quota,
            decision,
            rate_limit_headers,
        } => {
            // The template's headers as they are: nothing else to insert on the common path.
            let mut response = Response::new(Either::Right(Full::new(reject.body.clone())));
            *response.status_mut() = reject.status;
            *response.headers_mut() = reject.headers_for(version).clone();
            add_rate_limit_headers(
                response.headers_mut(),
                rate_limit_headers,
                quota,
                &decision,
                true,
            );
            response
        }
        RequestError::BodyTooLarge => local(
            StatusCode::PAYLOAD_TOO_LARGE,
            Bytes::from_static(b"request body too large"),
        ),
        RequestError::BadRequestBody => local(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"malformed request body"),
        ),
        RequestError::UpstreamUnavailable => local(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"upstream unavailable"),
        ),
        // Envoy's answer to a CONNECT no route matches.
        RequestError::Connect => local(StatusCode::NOT_FOUND, Bytes::new()),
        // Envoy's status and text for its route timeout.
        RequestError::UpstreamTimeout => local(
            StatusCode::GATEWAY_TIMEOUT,
            Bytes::from_static(b"upstream request timeout"),
        ),
    }
}

/// The rate-limit header fields for `decision` of `quota`'s bucket, in `style`; a rejection
/// also gets `Retry-After`.
pub(crate) fn add_rate_limit_headers(
    headers: &mut HeaderMap,
    style: RateLimitHeaders,
    quota: &QuotaPolicy,
    decision: &Decision,
    rejected: bool,
) {
    match style {
        RateLimitHeaders::Off => {}
        RateLimitHeaders::Ietf => {
            // draft-10: `t` is when the quota is whole again, and a `Retry-After` sent with it
            // must not be earlier.
            let reset = ceil_secs(quota.until_full(decision));
            headers.insert("ratelimit-policy", quota.policy_header.clone());
            let value = format!("{};r={};t={reset}", quota.name, decision.remaining());
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert("ratelimit", value);
            }
            if rejected {
                let next = ceil_secs(decision.next_token_in()).max(1);
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(next.max(reset)),
                );
            }
        }
        RateLimitHeaders::XRateLimit => {
            headers.insert("x-ratelimit-limit", quota.limit_header.clone());
            headers.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(decision.remaining()),
            );
            headers.insert(
                "x-ratelimit-reset",
                HeaderValue::from(envoy_reset(decision)),
            );
            if rejected {
                let next = ceil_secs(decision.next_token_in()).max(1);
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(next));
            }
        }
    }
}

/// Envoy's `X-RateLimit-Reset` of its local rate limit: 0 while a token is left, else the
/// time to the next token in whole seconds, rounded up (checked against a real Envoy).
fn envoy_reset(decision: &Decision) -> u64 {
    if decision.remaining() > 0 {
        0
    } else {
        ceil_secs(decision.next_token_in())
    }
}

fn local<B>(status: StatusCode, body: Bytes) -> Response<ProxyBody<B>> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

/// `error: cause: cause`, for logs.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a failed upstream exchange failed because the client's body hit the size limit.
pub(crate) fn is_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<http_body_util::LengthLimitError>(error)
}

/// A failure reading the client's request body, as the upstream client sees it: marked, so
/// that a failed exchange with the application can be told apart from the application's own
/// failures (both arrive as one error of the upstream request).
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body")]
pub(crate) struct ClientBodyError(#[source] pub hyper::Error);

/// Whether a failed upstream exchange failed because the client's body could not be read.
pub(crate) fn is_client_body(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<ClientBodyError>(error)
}

/// Whether `error` or one of its causes is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |cause| cause.source()).any(|cause| cause.is::<E>())
}
