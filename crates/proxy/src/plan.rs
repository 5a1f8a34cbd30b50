//! What one inbound does with a request or a connection, compiled once per configuration
//! change from its [`InboundLimits`]: the buckets (carried over from the previous plan so tokens
//! survive reloads) and prebuilt rejection responses.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use meshlimit_bucket::{Bucket, Decision, Settings};
use meshlimit_policy::effective::{
    FailureMode, GlobalLimit, GlobalMode, InboundLimits, Protocol, Rate, RejectHeaders,
    RejectStatus,
};

use crate::inbound::{Counters, PolicyCounters};

/// An inbound's compiled limits. Immutable; a configuration change swaps in a new one.
#[derive(Debug)]
pub(crate) struct InboundPlan {
    pub protocol: Protocol,
    /// The application: `127.0.0.1:servicePort`.
    pub upstream: SocketAddr,
    pub upstream_authority: Authority,
    /// `upstream_authority` as a `Host` value, for a request that names no host.
    pub upstream_host: HeaderValue,
    pub http: Option<HttpPlan>,
    /// The decisions of the local limit: its policy's counters, or those of the empty policy
    /// (every request allowed) without one.
    pub local_counters: Arc<PolicyCounters>,
    /// HTTP inbounds only, as the policy applies.
    pub global: Option<GlobalPlan>,
    pub tcp: Option<Arc<Bucket>>,
}

/// The inbound's `MeshRateLimit`: one bucket for this instance.
#[derive(Debug)]
pub(crate) struct HttpPlan {
    pub bucket: Arc<Bucket>,
    pub reject: RejectTemplate,
    pub quota: Arc<QuotaPolicy>,
}

/// A bucket as the rate-limit header fields describe it, named after the policy whose rate
/// it enforces; the fixed fields are built once.
#[derive(Debug)]
pub(crate) struct QuotaPolicy {
    /// The policy's name as a Structured Fields string (`"name"`): the IETF fields' quota
    /// policy name.
    pub name: String,
    pub settings: Settings,
    /// `RateLimit-Policy: "name";q=<num>;w=<interval in whole seconds, rounded up>`.
    pub policy_header: HeaderValue,
    /// `X-RateLimit-Limit: <num>` (Envoy's draft 03 fields).
    pub limit_header: HeaderValue,
}

impl QuotaPolicy {
    pub(crate) fn new(policy: &str, rate: &Rate) -> QuotaPolicy {
        let name = sf_string(policy);
        let window = ceil_secs(rate.interval()).max(1);
        let num = rate.num().get();
        QuotaPolicy {
            policy_header: HeaderValue::try_from(format!("{name};q={num};w={window}"))
                .expect("a Structured Fields string and digits are a valid header value"),
            limit_header: HeaderValue::from(num),
            name,
            settings: rate.settings(),
        }
    }

    /// How long after `decision` the bucket is full again: the quota reset of the IETF
    /// fields (a token bucket refills one token at a time; its whole quota is back when the
    /// last token is).
    pub(crate) fn until_full(&self, decision: &Decision) -> Duration {
        let max = self.settings.max_tokens();
        let remaining = decision.remaining();
        if remaining >= max {
            return Duration::ZERO;
        }
        let after_next = u128::from(max - remaining - 1);
        let more_ns = after_next * u128::from(self.settings.fill_interval_ns())
            / u128::from(self.settings.tokens_per_fill().max(1));
        decision
            .next_token_in()
            .saturating_add(Duration::from_nanos(
                u64::try_from(more_ns).unwrap_or(u64::MAX),
            ))
    }
}

/// `name` as a Structured Fields string (RFC 8941 §3.3.3): quoted, `"` and `\` escaped.
/// Only printable ASCII can be one; a name with anything else is shown as `"default"`.
fn sf_string(name: &str) -> String {
    if name.is_empty() || !name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return "\"default\"".to_string();
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The inbound's `MeshGlobalRateLimit`: a total for every instance of the service, checked in
/// the shared store when the proxy has one, and this instance's share of it, enforced locally
/// otherwise (or, in [`FailureMode::LocalShare`], while the store fails).
#[derive(Debug)]
pub(crate) struct GlobalPlan {
    /// The shared bucket's name.
    pub key: String,
    /// The total's bucket, as the shared store is asked to apply it.
    pub total: Settings,
    pub total_quota: Arc<QuotaPolicy>,
    /// This instance's share, carried across reloads like the other buckets.
    pub local_share: Arc<Bucket>,
    pub share_quota: Arc<QuotaPolicy>,
    /// The global limit's decisions, under its policy.
    pub counters: Arc<PolicyCounters>,
    pub mode: GlobalMode,
    pub failure_mode: FailureMode,
    /// How long a check of the shared store may take.
    pub timeout: Duration,
    /// One token's time of the total: what a rejection without any bucket's answer (the
    /// store failed, [`FailureMode::Closed`]) tells the client to wait.
    pub token_time: Duration,
    pub reject: RejectTemplate,
}

/// The response a rejected request gets, built once: status, `set` then `add` headers, and
/// body. Cloning the header map is the only work left per rejection.
#[derive(Debug)]
pub(crate) struct RejectTemplate {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `headers` and, with a body, its `content-length` last, where hyper's HTTP/2 server
    /// would otherwise format and insert it on every rejection (an allocation each). HTTP/1.1
    /// writes the length itself, for less than parsing one from the map.
    pub h2_headers: HeaderMap,
    pub body: Bytes,
}

impl RejectTemplate {
    pub(crate) fn headers_for(&self, version: Version) -> &HeaderMap {
        if version == Version::HTTP_2 {
            &self.h2_headers
        } else {
            &self.headers
        }
    }
}

/// Body of a request rejected by the local limit, as Envoy's local rate limit sends it.
pub(crate) const REJECTED_BODY: &[u8] = b"local_rate_limited";

/// Compiles one inbound. Buckets of `previous` are reused: unchanged settings keep their tokens
/// as they are; changed settings are applied with `reconfigure`, which keeps the tokens (clamped
/// to the new maximum) rather than handing out a fresh burst.
pub(crate) fn compile(
    limits: &InboundLimits,
    previous: Option<&InboundPlan>,
    now_ns: u64,
    counters: &Counters,
) -> InboundPlan {
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, limits.service_port));
    let upstream_authority = Authority::try_from(upstream.to_string().as_str())
        .expect("a socket address is a valid authority");
    let upstream_host = HeaderValue::try_from(upstream_authority.as_str())
        .expect("an authority is a valid header value");
    // The empty policy counts the requests of an inbound without a local limit.
    let (http, local_policy) = match (&limits.http, limits.protocol) {
        (Some(http), Protocol::Http) => (
            Some(HttpPlan {
                bucket: carry(
                    previous.and_then(|p| p.http.as_ref().map(|h| &h.bucket)),
                    http.request_rate.settings(),
                    now_ns,
                ),
                reject: reject_template(
                    http.status,
                    &http.headers,
                    Bytes::from_static(REJECTED_BODY),
                ),
                quota: Arc::new(QuotaPolicy::new(&http.policy, &http.request_rate)),
            }),
            http.policy.as_str(),
        ),
        _ => (None, ""),
    };
    let local_counters = counters.local.of(local_policy);
    let global = match (&limits.global, limits.protocol) {
        (Some(global), Protocol::Http) => Some(compile_global(
            global,
            previous.and_then(|p| p.global.as_ref()),
            now_ns,
            counters,
        )),
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
        upstream_host,
        http,
        local_counters,
        global,
        tcp,
    }
}

/// Envoy's global rate limit filter answers with an empty body (its local one says
/// `local_rate_limited`), so a global rejection has the policy's status and headers only.
fn compile_global(
    global: &GlobalLimit,
    previous: Option<&GlobalPlan>,
    now_ns: u64,
    counters: &Counters,
) -> GlobalPlan {
    let rate = &global.request_rate;
    GlobalPlan {
        key: global.key.clone(),
        total: rate.settings(),
        total_quota: Arc::new(QuotaPolicy::new(&global.policy, rate)),
        local_share: carry(
            previous.map(|p| &p.local_share),
            global.share.settings(),
            now_ns,
        ),
        share_quota: Arc::new(QuotaPolicy::new(&global.policy, &global.share)),
        counters: counters.global.of(&global.policy),
        mode: global.mode,
        failure_mode: global.failure_mode,
        timeout: global.timeout,
        token_time: rate.interval() / rate.num().get(),
        reject: reject_template(global.status, &global.headers, Bytes::new()),
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
fn reject_template(status: RejectStatus, set_add: &RejectHeaders, body: Bytes) -> RejectTemplate {
    let mut headers = HeaderMap::new();
    if !body.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    for header in &set_add.set {
        headers.insert(header.name().clone(), header.value().clone());
    }
    for header in &set_add.add {
        headers.append(header.name().clone(), header.value().clone());
    }
    let mut h2_headers = headers.clone();
    if !body.is_empty() {
        h2_headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    RejectTemplate {
        status: status.code(),
        headers,
        h2_headers,
        body,
    }
}

pub(crate) fn ceil_secs(duration: std::time::Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshlimit_policy::effective::{HttpLimit, TcpLimit};

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
                policy: "limit".into(),
                request_rate: Rate::new(num, interval).expect("valid rate"),
                status: meshlimit_policy::RejectStatus::new(423).expect("a status"),
                headers,
            }),
            tcp: Some(TcpLimit {
                connection_rate: Rate::new(2, interval).expect("valid rate"),
            }),
            policies: vec!["p".into()],
            global: None,
            sources: Vec::new(),
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
        let plan = compile(
            &inbound(5, Duration::from_secs(10), headers),
            None,
            0,
            &Counters::default(),
        );
        let reject = &plan.http.as_ref().unwrap().reject;
        assert_eq!(reject.status, StatusCode::LOCKED);
        let values: Vec<_> = reject.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["2", "3"]);
        assert_eq!(reject.headers["x-b"], "4");
        assert_eq!(reject.headers["content-type"], "text/html");
        assert_eq!(reject.body, "local_rate_limited");
        // HTTP/2's fields: the same, then the body's length.
        assert!(!reject.headers.contains_key("content-length"));
        let h2: Vec<_> = reject.headers_for(Version::HTTP_2).iter().collect();
        let mut expected: Vec<_> = reject.headers.iter().collect();
        let length = HeaderValue::from_static("18");
        expected.push((&http::header::CONTENT_LENGTH, &length));
        assert_eq!(h2, expected);
        assert_eq!(reject.headers_for(Version::HTTP_11), &reject.headers);
        assert_eq!(
            plan.http.as_ref().unwrap().quota.policy_header,
            "\"limit\";q=5;w=10"
        );
        assert_eq!(plan.upstream, "127.0.0.1:8081".parse().unwrap());
    }

    #[test]
    fn unchanged_settings_keep_the_bucket_and_its_tokens() {
        let limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        let first = compile(&limits, None, 0, &Counters::default());
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
        let second = compile(&changed_headers, Some(&first), 0, &Counters::default());
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
            &Counters::default(),
        );
        let second = compile(
            &inbound(1, Duration::from_secs(10), RejectHeaders::default()),
            Some(&first),
            0,
            &Counters::default(),
        );
        let bucket = &second.http.as_ref().unwrap().bucket;
        assert_eq!(bucket.settings().max_tokens(), 1);
        assert_eq!(bucket.peek(0), 1);
    }

    #[test]
    fn a_new_limit_starts_full_and_a_tcp_inbound_ignores_http() {
        let mut limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        limits.protocol = Protocol::Tcp;
        let plan = compile(&limits, None, 0, &Counters::default());
        assert!(plan.http.is_none());
        assert_eq!(plan.tcp.unwrap().peek(0), 2);
    }

    fn global(total: u32, instances: u32, index: u32) -> GlobalLimit {
        let request_rate = Rate::new(total, Duration::from_secs(1)).expect("valid rate");
        GlobalLimit {
            policy: "global".into(),
            service: "backend".into(),
            key: "mgrl/default/g/backend".into(),
            request_rate,
            share: meshlimit_policy::share(request_rate, instances, index),
            instances,
            index,
            mode: GlobalMode::Limit,
            status: meshlimit_policy::RejectStatus::new(503).expect("a status"),
            headers: RejectHeaders {
                set: vec![header("x-global", "1")],
                add: vec![],
            },
            rate_limit_service: None,
            timeout: Duration::from_millis(25),
            failure_mode: FailureMode::LocalShare,
            policies: vec!["g".into()],
        }
    }

    #[test]
    fn a_global_limit_has_its_share_its_total_and_an_empty_rejection() {
        let mut limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        limits.global = Some(global(10, 3, 0));
        let plan = compile(&limits, None, 0, &Counters::default());
        let g = plan.global.as_ref().expect("a global plan");
        assert_eq!(g.key, "mgrl/default/g/backend");
        assert_eq!(g.total.max_tokens(), 10);
        assert_eq!(g.local_share.settings().max_tokens(), 4);
        assert_eq!(g.local_share.peek(0), 4);
        assert_eq!(g.total_quota.policy_header, "\"global\";q=10;w=1");
        assert_eq!(g.share_quota.policy_header, "\"global\";q=4;w=1");
        assert_eq!(g.token_time, Duration::from_millis(100));
        assert_eq!(
            (g.mode, g.failure_mode, g.timeout),
            (
                GlobalMode::Limit,
                FailureMode::LocalShare,
                Duration::from_millis(25)
            )
        );
        // Envoy's global rate limit filter sends no body, so no content type either.
        assert_eq!(g.reject.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(g.reject.body.is_empty());
        assert_eq!(g.reject.headers.len(), 1);
        assert_eq!(g.reject.h2_headers, g.reject.headers);
        assert_eq!(g.reject.headers["x-global"], "1");
        // The local limit is compiled as before, beside it.
        assert_eq!(plan.http.as_ref().unwrap().bucket.peek(0), 5);

        limits.protocol = Protocol::Tcp;
        assert!(
            compile(&limits, None, 0, &Counters::default())
                .global
                .is_none()
        );
    }

    #[test]
    fn the_local_share_keeps_its_tokens_across_reloads_and_instance_changes() {
        let mut limits = inbound(5, Duration::from_secs(10), RejectHeaders::default());
        limits.global = Some(global(10, 3, 0));
        let first = compile(&limits, None, 0, &Counters::default());
        let share = &first.global.as_ref().unwrap().local_share;
        assert!(share.check(0).admitted());
        let second = compile(&limits, Some(&first), 0, &Counters::default());
        let carried = &second.global.as_ref().unwrap().local_share;
        assert!(Arc::ptr_eq(share, carried));
        assert_eq!(carried.peek(0), 3);
        // A fourth instance joins: the share drops to 3, the tokens stay (clamped).
        limits.global = Some(global(10, 4, 0));
        let third = compile(&limits, Some(&second), 0, &Counters::default());
        let carried = &third.global.as_ref().unwrap().local_share;
        assert!(Arc::ptr_eq(share, carried));
        assert_eq!(carried.settings().max_tokens(), 3);
        assert_eq!(carried.peek(0), 3);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
