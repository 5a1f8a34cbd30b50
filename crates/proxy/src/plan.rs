//! What one inbound does with a request or a connection, compiled once per configuration
//! change from its [`InboundLimits`]: the buckets (carried over from the previous plan so tokens
//! survive reloads) and a prebuilt rejection response.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderMap, HeaderValue, StatusCode};
use meshlimit_bucket::{Bucket, Settings};
use meshlimit_policy::effective::{HttpLimit, InboundLimits, Protocol, Rate};

/// An inbound's compiled limits. Immutable; a configuration change swaps in a new one.
#[derive(Debug)]
pub(crate) struct InboundPlan {
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

/// Compiles one inbound. Buckets of `previous` are reused: unchanged settings keep their tokens
/// as they are; changed settings are applied with `reconfigure`, which keeps the tokens (clamped
/// to the new maximum) rather than handing out a fresh burst.
pub(crate) fn compile(
    limits: &InboundLimits,
    previous: Option<&InboundPlan>,
    now_ns: u64,
) -> InboundPlan {
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, limits.service_port));
    let upstream_authority = Authority::try_from(upstream.to_string().as_str())
        .expect("a socket address is a valid authority");
    let http = match (&limits.http, limits.protocol) {
        (Some(http), Protocol::Http) => Some(HttpPlan {
            bucket: carry(
                previous.and_then(|p| p.http.as_ref().map(|h| &h.bucket)),
                http.request_rate.settings(),
                now_ns,
            ),
            reject: reject_template(http),
        }),
        _ => None,
    };
    let tcp = limits.tcp.as_ref().map(|tcp| {
        carry(
            previous.and_then(|p| p.tcp.as_ref()),
            tcp.connection_rate.settings(),
            now_ns,
        )
    });
    InboundPlan {
        protocol: limits.protocol,
        upstream,
        upstream_authority,
        http,
        tcp,
    }
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

/// Status and headers come validated from the policy engine, in the types `http` sends.
fn reject_template(http: &HttpLimit) -> RejectTemplate {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    for header in &http.headers.set {
        headers.insert(header.name().clone(), header.value().clone());
    }
    for header in &http.headers.add {
        headers.append(header.name().clone(), header.value().clone());
    }
    RejectTemplate {
        status: http.status.code(),
        headers,
        policy_header: rate_limit_policy(&http.request_rate),
    }
}

/// `RateLimit-Policy: "default";q=<num>;w=<interval in whole seconds, rounded up>`.
fn rate_limit_policy(rate: &Rate) -> HeaderValue {
    let window = ceil_secs(rate.interval()).max(1);
    HeaderValue::try_from(format!("\"default\";q={};w={window}", rate.num().get()))
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
        meshlimit_policy::effective::HeaderValue::new(name, value).expect("valid header")
    }

    fn inbound(num: u32, interval: Duration, headers: RejectHeaders) -> InboundLimits {
        InboundLimits {
            port: 8080,
            service_port: 8081,
            service: "backend".into(),
            protocol: Protocol::Http,
            http: Some(HttpLimit {
                request_rate: Rate::new(num, interval).expect("valid rate"),
                status: meshlimit_policy::RejectStatus::new(423).expect("a status"),
                headers,
            }),
            tcp: Some(TcpLimit {
                connection_rate: Rate::new(2, interval).expect("valid rate"),
            }),
            policies: vec!["p".into()],
            global: None,
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
        let plan = compile(&inbound(5, Duration::from_secs(10), headers), None, 0);
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
        let first = compile(&limits, None, 0);
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
        let second = compile(&changed_headers, Some(&first), 0);
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
        );
        let second = compile(
            &inbound(1, Duration::from_secs(10), RejectHeaders::default()),
            Some(&first),
            0,
        );
        let bucket = &second.http.as_ref().unwrap().bucket;
        assert_eq!(bucket.settings().max_tokens(), 1);
        assert_eq!(bucket.peek(0), 1);
    }

    #[test]
    fn a_new_limit_starts_full_and_a_tcp_inbound_ignores_http() {
        let mut limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        limits.protocol = Protocol::Tcp;
        let plan = compile(&limits, None, 0);
        assert!(plan.http.is_none());
        assert_eq!(plan.tcp.unwrap().peek(0), 2);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
