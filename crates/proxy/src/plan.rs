//! What one inbound does with a request or a connection, compiled once per configuration
//! change from its [`InboundLimits`]: the buckets (carried over from the previous plan so tokens
//! survive reloads) and a prebuilt rejection response.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use meshlimit_bucket::{Bucket, Refill, Settings, SettingsError};
use meshlimit_policy::effective::{InboundLimits, Protocol, Rate};

/// An inbound's compiled limits. Immutable; a configuration change swaps in a new one.
#[derive(Debug)]
pub(crate) struct Plan {
    pub protocol: Protocol,
    /// The application: `127.0.0.1:servicePort`.
    pub upstream: SocketAddr,
    pub upstream_authority: Authority,
    pub http: Option<HttpPlan>,
    pub tcp: Option<Arc<Bucket>>,
}

#[derive(Debug)]
pub(crate) struct HttpPlan {
    pub bucket: Arc<Bucket>,
    pub reject: RejectTemplate,
}

/// The response a rejected request gets, built once: status, `set` then `add` headers, and
/// Envoy's body. Cloning the header map is the only work left per rejection.
#[derive(Debug)]
pub(crate) struct RejectTemplate {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `RateLimit-Policy` for this rate, used when the IETF headers are switched on.
    pub policy_header: HeaderValue,
}

/// Body of a rejected request, as Envoy's local rate limit sends it.
pub(crate) const REJECTED_BODY: &[u8] = b"local_rate_limited";

#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("{which} rate {num}/{interval:?} is not a valid token bucket: {source}")]
    Rate {
        which: &'static str,
        num: u32,
        interval: std::time::Duration,
        source: SettingsError,
    },
    #[error("onRateLimit.status {0} is not an HTTP status code")]
    Status(u16),
    #[error("onRateLimit header {name:?}: {reason}")]
    Header { name: String, reason: String },
}

/// Compiles one inbound. Buckets of `previous` are reused: unchanged settings keep their tokens
/// as they are; changed settings are applied with `reconfigure`, which keeps the tokens (clamped
/// to the new maximum) rather than handing out a fresh burst.
pub(crate) fn compile(
    limits: &InboundLimits,
    previous: Option<&Plan>,
    now_ns: u64,
) -> Result<Plan, PlanError> {
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, limits.service_port));
    let upstream_authority = Authority::try_from(upstream.to_string().as_str())
        .expect("a socket address is a valid authority");
    let http = match (&limits.http, limits.protocol) {
        (Some(http), Protocol::Http) => {
            let settings = settings_for("HTTP request", &http.request_rate)?;
            Some(HttpPlan {
                bucket: carry(
                    previous.and_then(|p| p.http.as_ref().map(|h| &h.bucket)),
                    settings,
                    now_ns,
                ),
                reject: reject_template(
                    http.status,
                    &http.headers.set,
                    &http.headers.add,
                    &http.request_rate,
                )?,
            })
        }
        _ => None,
    };
    let tcp = match &limits.tcp {
        Some(tcp) => {
            let settings = settings_for("TCP connection", &tcp.connection_rate)?;
            Some(carry(
                previous.and_then(|p| p.tcp.as_ref()),
                settings,
                now_ns,
            ))
        }
        None => None,
    };
    Ok(Plan {
        protocol: limits.protocol,
        upstream,
        upstream_authority,
        http,
        tcp,
    })
}

/// A MeshRateLimit rate `{num, interval}` is a bucket of `num` tokens refilled smoothly at
/// `num / interval`, as Envoy 1.40 does.
fn settings_for(which: &'static str, rate: &Rate) -> Result<Settings, PlanError> {
    let num = u64::from(rate.num);
    Settings::new(num, num, rate.interval, Refill::Smooth).map_err(|source| PlanError::Rate {
        which,
        num: rate.num,
        interval: rate.interval,
        source,
    })
}

fn carry(previous: Option<&Arc<Bucket>>, settings: Settings, now_ns: u64) -> Arc<Bucket> {
    match previous {
        Some(bucket) => {
            if bucket.settings() != settings {
                bucket.reconfigure(settings, now_ns);
            }
            Arc::clone(bucket)
        }
        None => Arc::new(Bucket::new(settings, now_ns)),
    }
}

fn reject_template(
    status: u16,
    set: &[meshlimit_policy::effective::HeaderValue],
    add: &[meshlimit_policy::effective::HeaderValue],
    rate: &Rate,
) -> Result<RejectTemplate, PlanError> {
    let status = StatusCode::from_u16(status).map_err(|_| PlanError::Status(status))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    for header in set {
        let (name, value) = header_pair(header)?;
        headers.insert(name, value);
    }
    for header in add {
        let (name, value) = header_pair(header)?;
        headers.append(name, value);
    }
    Ok(RejectTemplate {
        status,
        headers,
        policy_header: rate_limit_policy(rate),
    })
}

fn header_pair(
    header: &meshlimit_policy::effective::HeaderValue,
) -> Result<(HeaderName, HeaderValue), PlanError> {
    let error = |reason: String| PlanError::Header {
        name: header.name.clone(),
        reason,
    };
    let name = HeaderName::try_from(header.name.as_str()).map_err(|e| error(e.to_string()))?;
    let value = HeaderValue::try_from(header.value.as_str()).map_err(|e| error(e.to_string()))?;
    Ok((name, value))
}

/// `RateLimit-Policy: "default";q=<num>;w=<interval in whole seconds, rounded up>`.
fn rate_limit_policy(rate: &Rate) -> HeaderValue {
    let window = ceil_secs(rate.interval).max(1);
    HeaderValue::try_from(format!("\"default\";q={};w={window}", rate.num))
        .expect("digits and quotes are a valid header value")
}

pub(crate) fn ceil_secs(duration: std::time::Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshlimit_policy::effective::{HttpLimit, RejectHeaders, TcpLimit};

    use super::*;

    fn header(name: &str, value: &str) -> meshlimit_policy::effective::HeaderValue {
        meshlimit_policy::effective::HeaderValue {
            name: name.into(),
            value: value.into(),
        }
    }

    fn inbound(num: u32, interval: Duration, headers: RejectHeaders) -> InboundLimits {
        InboundLimits {
            port: 8080,
            service_port: 8081,
            service: "backend".into(),
            protocol: Protocol::Http,
            http: Some(HttpLimit {
                request_rate: Rate { num, interval },
                status: 423,
                headers,
            }),
            tcp: Some(TcpLimit {
                connection_rate: Rate { num: 2, interval },
            }),
            policies: vec!["p".into()],
        }
    }

    #[test]
    fn set_overwrites_and_add_appends() {
        let headers = RejectHeaders {
            set: vec![
                header("x-a", "1"),
                header("x-a", "2"),
                header("content-type", "text/html"),
            ],
            add: vec![header("x-a", "3"), header("x-b", "4")],
        };
        let plan = compile(&inbound(5, Duration::from_secs(10), headers), None, 0).unwrap();
        let reject = &plan.http.unwrap().reject;
        assert_eq!(reject.status, StatusCode::LOCKED);
        let values: Vec<_> = reject.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["2", "3"]);
        assert_eq!(reject.headers["x-b"], "4");
        assert_eq!(reject.headers["content-type"], "text/html");
        assert_eq!(reject.policy_header, "\"default\";q=5;w=10");
        assert_eq!(plan.upstream, "127.0.0.1:8081".parse().unwrap());
    }

    #[test]
    fn unchanged_settings_keep_the_bucket_and_its_tokens() {
        let limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        let first = compile(&limits, None, 0).unwrap();
        let bucket = &first.http.as_ref().unwrap().bucket;
        for _ in 0..3 {
            assert!(bucket.check(0).admitted());
        }
        let mut changed_headers = limits.clone();
        changed_headers
            .http
            .as_mut()
            .unwrap()
            .headers
            .set
            .push(header("x-new", "1"));
        let second = compile(&changed_headers, Some(&first), 0).unwrap();
        let carried = &second.http.as_ref().unwrap().bucket;
        assert!(Arc::ptr_eq(bucket, carried));
        assert_eq!(carried.peek(0), 2);
        assert!(Arc::ptr_eq(
            first.tcp.as_ref().unwrap(),
            second.tcp.as_ref().unwrap()
        ));
    }

    #[test]
    fn changed_settings_keep_tokens_clamped() {
        let first = compile(
            &inbound(5, Duration::from_secs(10), RejectHeaders::default()),
            None,
            0,
        )
        .unwrap();
        let second = compile(
            &inbound(1, Duration::from_secs(10), RejectHeaders::default()),
            Some(&first),
            0,
        )
        .unwrap();
        let bucket = &second.http.as_ref().unwrap().bucket;
        assert_eq!(bucket.settings().max_tokens(), 1);
        assert_eq!(bucket.peek(0), 1);
    }

    #[test]
    fn a_new_limit_starts_full_and_a_tcp_inbound_ignores_http() {
        let mut limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        limits.protocol = Protocol::Tcp;
        let plan = compile(&limits, None, 0).unwrap();
        assert!(plan.http.is_none());
        assert_eq!(plan.tcp.unwrap().peek(0), 2);
    }

    #[test]
    fn invalid_inputs_are_errors_not_panics() {
        let mut limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        limits.http.as_mut().unwrap().status = 42;
        assert!(matches!(
            compile(&limits, None, 0),
            Err(PlanError::Status(42))
        ));
        let bad_header = RejectHeaders {
            set: vec![header("bad header", "x")],
            add: vec![],
        };
        let limits = inbound(5, Duration::from_secs(10), bad_header);
        assert!(matches!(
            compile(&limits, None, 0),
            Err(PlanError::Header { .. })
        ));
        let limits = inbound(0, Duration::from_secs(10), RejectHeaders::default());
        assert!(matches!(
            compile(&limits, None, 0),
            Err(PlanError::Rate { .. })
        ));
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
