//! The proxy's counters and bucket levels as metric families (see [`crate::exposition`]).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::DescriptorEncoder;

use crate::exposition::{HistogramSample, Labels, counter, gauge, histogram};
use crate::inbound::{ByPolicy, Counter, Histogram, Inbound, InboundKey, PolicyCounters, Source};
use crate::state::Shared;

/// The labels that name an inbound, then `extra`.
fn labels(inbound: &Inbound, extra: &[(&'static str, &str)]) -> Labels {
    let mut labels = vec![
        ("mesh", inbound.key.mesh.clone()),
        ("dataplane", inbound.key.dataplane.clone()),
        ("inbound", inbound.key.port.to_string()),
    ];
    labels.extend(extra.iter().map(|(k, v)| (*k, (*v).to_string())));
    labels
}

/// One counter family over every inbound: for each, the counters `pick` names with the
/// extra label each carries.
fn per_inbound<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    inbounds: &'a [Arc<Inbound>],
    name: &str,
    help: &str,
    pick: impl Fn(&'a Inbound) -> Vec<(&'static [(&'static str, &'static str)], &'a Counter)>,
) -> fmt::Result {
    counter(
        encoder,
        name,
        help,
        inbounds.iter().flat_map(|inbound| {
            pick(inbound)
                .into_iter()
                .map(move |(extra, c)| (labels(inbound, extra), c.get()))
        }),
    )
}

/// Encodes the counters and bucket levels of every inbound being served.
pub(crate) fn encode(shared: &Shared, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
    let inbounds = shared.inbounds.load();
    let inbounds = inbounds.as_slice();
    let now_ns = shared.clock.now_ns();
    let e = &mut encoder;
    by_policy(
        e,
        inbounds,
        "meshlimit_http_requests",
        "HTTP requests received by an inbound, by the decision of its local limit (MeshRateLimit) and the policy whose rate it enforces (no policy label: the inbound has no local limit, all allowed).",
        |i| &i.counters.local,
        &[("allowed", |c| &c.allowed), ("limited", |c| &c.limited)],
    )?;
    by_policy(
        e,
        inbounds,
        "meshlimit_global_requests",
        "HTTP requests the local limit admitted, by the decision of the inbound's global limit (MeshGlobalRateLimit) and its policy; shadow_limited ones were admitted in Shadow mode.",
        |i| &i.counters.global,
        &[
            ("allowed", |c| &c.allowed),
            ("limited", |c| &c.limited),
            ("shadow_limited", |c| &c.shadow_limited),
        ],
    )?;
    request_families(inbounds, e)?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_global_store_errors",
        "Checks of a global limit in the shared bucket store that failed or timed out.",
        |i| vec![(&[][..], &i.counters.global_errors)],
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_global_fallbacks",
        "Requests the shared bucket store could not decide, by the failure mode that decided them.",
        |i| {
            vec![
                (&[("mode", "open")][..], &i.counters.global_fallbacks_open),
                (
                    &[("mode", "closed")][..],
                    &i.counters.global_fallbacks_closed,
                ),
                (
                    &[("mode", "local_share")][..],
                    &i.counters.global_fallbacks_local_share,
                ),
            ]
        },
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_upstream_timeouts",
        "HTTP requests answered 504 because the application's response head did not arrive within the upstream timeout.",
        |i| vec![(&[][..], &i.counters.upstream_timeouts)],
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_upstream_resets",
        "HTTP responses the application broke off mid-body; the client's response is aborted too (HTTP/1.1 connection closed, HTTP/2 stream reset).",
        |i| vec![(&[][..], &i.counters.upstream_resets)],
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_tcp_connections",
        "Connections accepted by an inbound, by rate-limit decision (limited ones are closed at once).",
        |i| {
            vec![
                (&[("decision", "allowed")][..], &i.counters.tcp_allowed),
                (&[("decision", "limited")][..], &i.counters.tcp_limited),
            ]
        },
    )?;
    connection_families(shared, inbounds, e)?;
    let mut tokens = Vec::new();
    let mut capacity = Vec::new();
    for inbound in inbounds {
        let plan = inbound.plan.load();
        let buckets = [
            ("http", plan.http.as_ref().map(|http| &http.bucket)),
            (
                "global_share",
                plan.global.as_ref().map(|global| &global.local_share),
            ),
            ("tcp", plan.tcp.as_ref()),
        ];
        for (limit, bucket) in buckets {
            if let Some(bucket) = bucket {
                let labels = labels(inbound, &[("limit", limit)]);
                tokens.push((labels.clone(), bucket.peek(now_ns)));
                capacity.push((labels, bucket.settings().max_tokens()));
            }
        }
    }
    gauge(
        e,
        "meshlimit_bucket_tokens",
        "Whole tokens left in an inbound's bucket (limit=\"http\" per request, \"tcp\" per connection, \"global_share\" this instance's share of a global limit).",
        tokens,
    )?;
    gauge(
        e,
        "meshlimit_bucket_capacity",
        "Most tokens an inbound's bucket holds (its burst), beside meshlimit_bucket_tokens.",
        capacity,
    )?;
    let status = shared.status.borrow().clone();
    let none: Labels = Vec::new();
    gauge(
        e,
        "meshlimit_proxy_config_version",
        "The store version of the limits the proxy enforces (0 until its source has sent any).",
        [(none.clone(), status.version.unwrap_or(0))],
    )?;
    counter(
        e,
        "meshlimit_proxy_config_applied",
        "Configurations the proxy has applied since it started.",
        [(none, status.generation)],
    )
}

/// A decision's label value and the counter of a policy that holds it.
type DecisionCounter = (&'static str, fn(&PolicyCounters) -> &Counter);

/// One counter family over the policies that decided on every inbound: per policy, one
/// sample per `(decision, counter)`, labelled with the policy when it has a name.
fn by_policy(
    encoder: &mut DescriptorEncoder<'_>,
    inbounds: &[Arc<Inbound>],
    name: &str,
    help: &str,
    of: impl Fn(&Inbound) -> &ByPolicy,
    decisions: &[DecisionCounter],
) -> fmt::Result {
    let mut samples = Vec::new();
    for inbound in inbounds {
        let mut all = of(inbound).all();
        // Zeros for an inbound no policy has decided on yet, so that sums over the family
        // (`local + global`) have a value for every inbound.
        if all.is_empty() {
            all.push(Arc::default());
        }
        for counters in all {
            for (decision, pick) in decisions {
                let mut labels = labels(inbound, &[("decision", decision)]);
                if !counters.policy.is_empty() {
                    labels.push(("policy", counters.policy.clone()));
                }
                samples.push((labels, pick(&counters).get()));
            }
        }
    }
    counter(encoder, name, help, samples)
}

/// Responses by who answered, latencies, requests refused as invalid, the 503s.
fn request_families(inbounds: &[Arc<Inbound>], e: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let mut responses = Vec::new();
    for inbound in inbounds {
        for (source, name) in [
            (Source::Application, "application"),
            (Source::Proxy, "proxy"),
        ] {
            for class in 1..=5 {
                let class_label = format!("{class}xx");
                let labels = labels(inbound, &[("source", name), ("class", &class_label)]);
                responses.push((labels, inbound.counters.responses.get(source, class)));
            }
        }
    }
    counter(
        e,
        "meshlimit_http_responses",
        "HTTP responses by status class and by who answered: the application (relayed) or the proxy itself (rate-limit rejections, invalid requests, 503 and 504).",
        responses,
    )?;
    let samples = |pick: fn(&Inbound) -> &Histogram| {
        inbounds
            .iter()
            .map(move |inbound| {
                let (buckets, sum, count) = pick(inbound).snapshot();
                (
                    labels(inbound, &[]),
                    HistogramSample {
                        sum,
                        count,
                        buckets,
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    histogram(
        e,
        "meshlimit_http_request_duration_seconds",
        "From a request's arrival to the end of its response (the last body frame handed to the connection), every answer included.",
        samples(|i| &i.counters.request_duration),
    )?;
    histogram(
        e,
        "meshlimit_upstream_request_duration_seconds",
        "From forwarding a request to the application to its response head (requests that got one).",
        samples(|i| &i.counters.upstream_duration),
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_http_invalid_requests",
        "Requests the proxy refused as invalid: status=\"400\" a malformed head (HTTP/1.1 parser) or body, \"413\" a body over the limit, \"431\" a head over the limit.",
        |i| {
            let c = &i.counters;
            vec![
                (
                    &[("status", "400"), ("reason", "malformed_head")][..],
                    &c.malformed_heads,
                ),
                (
                    &[("status", "400"), ("reason", "malformed_body")][..],
                    &c.malformed_bodies,
                ),
                (
                    &[("status", "413"), ("reason", "body_too_large")][..],
                    &c.bodies_too_large,
                ),
                (
                    &[("status", "431"), ("reason", "head_too_large")][..],
                    &c.heads_too_large,
                ),
            ]
        },
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_upstream_unavailable",
        "HTTP requests answered 503 because the application could not be reached or dropped the request before answering.",
        |i| vec![(&[][..], &i.counters.upstream_unavailable)],
    )
}

/// The counters and bucket levels of one inbound, as numbers (what `/metrics` shows as text).
///
/// Every request counts once in `http_allowed` or `http_limited` (the local limit's
/// decision); of the `http_allowed` ones, an inbound with a global limit counts each once more
/// in `global_allowed`, `global_limited` or `global_shadow_limited`. The requests forwarded to
/// the application are `http_allowed - global_limited`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundStats {
    pub key: InboundKey,
    pub http_allowed: u64,
    pub http_limited: u64,
    /// Admitted by the global limit (including by a fallback).
    pub global_allowed: u64,
    /// Rejected by the global limit.
    pub global_limited: u64,
    /// Admitted only because the global limit is in `Shadow` mode.
    pub global_shadow_limited: u64,
    /// Checks of the shared store that failed or timed out.
    pub global_errors: u64,
    /// Of those, how many each failure mode decided.
    pub global_fallbacks_open: u64,
    pub global_fallbacks_closed: u64,
    pub global_fallbacks_local_share: u64,
    /// Requests answered 504: no response head within the upstream timeout.
    pub upstream_timeouts: u64,
    /// Responses the application broke off mid-body.
    pub upstream_resets: u64,
    pub tcp_allowed: u64,
    pub tcp_limited: u64,
    /// Whole tokens left in the request bucket (`None`: no HTTP limit).
    pub http_tokens: Option<u64>,
    /// Whole tokens left in this instance's share of the global limit (`None`: no global
    /// limit).
    pub global_share_tokens: Option<u64>,
    /// Whole tokens left in the connection bucket (`None`: no TCP limit).
    pub tcp_tokens: Option<u64>,
}

/// A handle on a running proxy's counters that outlives borrows of the [`crate::Proxy`]
/// (for a task reporting them elsewhere). Cheap to clone.
#[derive(Clone)]
pub struct ProxyStats(pub(crate) Arc<Shared>);

impl ProxyStats {
    /// Every inbound being served now.
    pub fn inbounds(&self) -> Vec<InboundStats> {
        let now_ns = self.0.clock.now_ns();
        self.0
            .inbounds
            .load()
            .iter()
            .map(|inbound| {
                let plan = inbound.plan.load();
                let counters = &inbound.counters;
                InboundStats {
                    key: inbound.key.clone(),
                    http_allowed: counters.local.sum(|c| &c.allowed),
                    http_limited: counters.local.sum(|c| &c.limited),
                    global_allowed: counters.global.sum(|c| &c.allowed),
                    global_limited: counters.global.sum(|c| &c.limited),
                    global_shadow_limited: counters.global.sum(|c| &c.shadow_limited),
                    global_errors: counters.global_errors.get(),
                    global_fallbacks_open: counters.global_fallbacks_open.get(),
                    global_fallbacks_closed: counters.global_fallbacks_closed.get(),
                    global_fallbacks_local_share: counters.global_fallbacks_local_share.get(),
                    upstream_timeouts: counters.upstream_timeouts.get(),
                    upstream_resets: counters.upstream_resets.get(),
                    tcp_allowed: counters.tcp_allowed.get(),
                    tcp_limited: counters.tcp_limited.get(),
                    http_tokens: plan.http.as_ref().map(|http| http.bucket.peek(now_ns)),
                    global_share_tokens: plan
                        .global
                        .as_ref()
                        .map(|global| global.local_share.peek(now_ns)),
                    tcp_tokens: plan.tcp.as_ref().map(|tcp| tcp.peek(now_ns)),
                }
            })
            .collect()
    }
}

/// Open connections, the caps, the connections refused by them, closed by the timeouts.
fn connection_families(
    shared: &Shared,
    inbounds: &[Arc<Inbound>],
    e: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    gauge(
        e,
        "meshlimit_connections_open",
        "Client connections an inbound holds open now.",
        inbounds.iter().map(|inbound| {
            let open = u64::try_from(inbound.cap.open()).unwrap_or(u64::MAX);
            (labels(inbound, &[]), open)
        }),
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_connections_refused",
        "Client connections accepted and closed at once because a connection cap was full (cap=\"inbound\": the inbound's, \"process\": the one over all inbounds).",
        |i| {
            vec![
                (&[("cap", "inbound")][..], &i.counters.refused_inbound_cap),
                (&[("cap", "process")][..], &i.counters.refused_process_cap),
            ]
        },
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_connection_timeouts",
        "Client connections closed by the proxy: no request head in time (timeout=\"request_headers\") or no request for the idle timeout (timeout=\"idle\").",
        |i| {
            vec![
                (
                    &[("timeout", "request_headers")][..],
                    &i.counters.request_headers_timeouts,
                ),
                (&[("timeout", "idle")][..], &i.counters.idle_timeouts),
            ]
        },
    )?;
    per_inbound(
        e,
        inbounds,
        "meshlimit_connect_refused",
        "CONNECT requests answered 404 (no route allows CONNECT, as in Envoy).",
        |i| vec![(&[][..], &i.counters.connect_refused)],
    )?;
    let none: Labels = Vec::new();
    let open = u64::try_from(shared.cap.open()).unwrap_or(u64::MAX);
    gauge(
        e,
        "meshlimit_process_connections_open",
        "Client connections open over all inbounds.",
        [(none.clone(), open)],
    )?;
    let max = u64::try_from(shared.cap.max()).unwrap_or(u64::MAX);
    gauge(
        e,
        "meshlimit_process_connections_max",
        "The cap on client connections over all inbounds.",
        [(none.clone(), max)],
    )?;
    counter(
        e,
        "meshlimit_accept_errors",
        "Failed accepts over all inbounds (out of file descriptors and the like).",
        [(none, shared.accept_errors.get())],
    )
}
