//! The proxy's counters and bucket levels in the Prometheus text format.

use std::fmt::Write;
use std::sync::Arc;

use crate::inbound::{Inbound, InboundKey};
use crate::state::Shared;

/// Writes the counters and bucket levels of every inbound being served.
pub(crate) fn render(shared: &Shared, out: &mut String) {
    let inbounds = shared.inbounds.load();
    let now_ns = shared.clock.now_ns();
    family(
        out,
        "meshlimit_http_requests_total",
        "counter",
        "HTTP requests received by an inbound, by the decision of its local limit (MeshRateLimit; allowed when it has none).",
    );
    for inbound in inbounds.iter() {
        sample(
            out,
            "meshlimit_http_requests_total",
            inbound,
            "decision=\"allowed\"",
            inbound.counters.http_allowed.get(),
        );
        sample(
            out,
            "meshlimit_http_requests_total",
            inbound,
            "decision=\"limited\"",
            inbound.counters.http_limited.get(),
        );
    }
    family(
        out,
        "meshlimit_global_requests_total",
        "counter",
        "HTTP requests the local limit admitted, by the decision of the inbound's global limit (MeshGlobalRateLimit); shadow_limited ones were admitted in Shadow mode.",
    );
    for inbound in inbounds.iter() {
        let counters = &inbound.counters;
        for (label, counter) in [
            ("decision=\"allowed\"", &counters.global_allowed),
            ("decision=\"limited\"", &counters.global_limited),
            (
                "decision=\"shadow_limited\"",
                &counters.global_shadow_limited,
            ),
        ] {
            sample(
                out,
                "meshlimit_global_requests_total",
                inbound,
                label,
                counter.get(),
            );
        }
    }
    family(
        out,
        "meshlimit_global_store_errors_total",
        "counter",
        "Checks of a global limit in the shared bucket store that failed or timed out.",
    );
    for inbound in inbounds.iter() {
        sample(
            out,
            "meshlimit_global_store_errors_total",
            inbound,
            "",
            inbound.counters.global_errors.get(),
        );
    }
    family(
        out,
        "meshlimit_global_fallbacks_total",
        "counter",
        "Requests the shared bucket store could not decide, by the failure mode that decided them.",
    );
    for inbound in inbounds.iter() {
        let counters = &inbound.counters;
        for (label, counter) in [
            ("mode=\"open\"", &counters.global_fallbacks_open),
            ("mode=\"closed\"", &counters.global_fallbacks_closed),
            (
                "mode=\"local_share\"",
                &counters.global_fallbacks_local_share,
            ),
        ] {
            sample(
                out,
                "meshlimit_global_fallbacks_total",
                inbound,
                label,
                counter.get(),
            );
        }
    }
    family(
        out,
        "meshlimit_upstream_timeouts_total",
        "counter",
        "HTTP requests answered 504 because the application's response head did not arrive within the upstream timeout.",
    );
    for inbound in inbounds.iter() {
        sample(
            out,
            "meshlimit_upstream_timeouts_total",
            inbound,
            "",
            inbound.counters.upstream_timeouts.get(),
        );
    }
    family(
        out,
        "meshlimit_upstream_resets_total",
        "counter",
        "HTTP responses the application broke off mid-body; the client's response is aborted too (HTTP/1.1 connection closed, HTTP/2 stream reset).",
    );
    for inbound in inbounds.iter() {
        sample(
            out,
            "meshlimit_upstream_resets_total",
            inbound,
            "",
            inbound.counters.upstream_resets.get(),
        );
    }
    family(
        out,
        "meshlimit_tcp_connections_total",
        "counter",
        "Connections accepted by an inbound, by rate-limit decision (limited ones are closed at once).",
    );
    for inbound in inbounds.iter() {
        sample(
            out,
            "meshlimit_tcp_connections_total",
            inbound,
            "decision=\"allowed\"",
            inbound.counters.tcp_allowed.get(),
        );
        sample(
            out,
            "meshlimit_tcp_connections_total",
            inbound,
            "decision=\"limited\"",
            inbound.counters.tcp_limited.get(),
        );
    }
    connection_families(shared, inbounds.as_slice(), out);
    family(
        out,
        "meshlimit_bucket_tokens",
        "gauge",
        "Whole tokens left in an inbound's bucket (limit=\"http\" per request, \"tcp\" per connection, \"global_share\" this instance's share of a global limit).",
    );
    for inbound in inbounds.iter() {
        let plan = inbound.plan.load();
        if let Some(http) = &plan.http {
            sample(
                out,
                "meshlimit_bucket_tokens",
                inbound,
                "limit=\"http\"",
                http.bucket.peek(now_ns),
            );
        }
        if let Some(global) = &plan.global {
            sample(
                out,
                "meshlimit_bucket_tokens",
                inbound,
                "limit=\"global_share\"",
                global.local_share.peek(now_ns),
            );
        }
        if let Some(tcp) = &plan.tcp {
            sample(
                out,
                "meshlimit_bucket_tokens",
                inbound,
                "limit=\"tcp\"",
                tcp.peek(now_ns),
            );
        }
    }
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
                    http_allowed: counters.http_allowed.get(),
                    http_limited: counters.http_limited.get(),
                    global_allowed: counters.global_allowed.get(),
                    global_limited: counters.global_limited.get(),
                    global_shadow_limited: counters.global_shadow_limited.get(),
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
fn connection_families(shared: &Shared, inbounds: &[Arc<Inbound>], out: &mut String) {
    family(
        out,
        "meshlimit_connections_open",
        "gauge",
        "Client connections an inbound holds open now.",
    );
    for inbound in inbounds {
        let open = u64::try_from(inbound.cap.open()).unwrap_or(u64::MAX);
        sample(out, "meshlimit_connections_open", inbound, "", open);
    }
    family(
        out,
        "meshlimit_connections_refused_total",
        "counter",
        "Client connections accepted and closed at once because a connection cap was full (cap=\"inbound\": the inbound's, \"process\": the one over all inbounds).",
    );
    for inbound in inbounds {
        let counters = &inbound.counters;
        for (label, counter) in [
            ("cap=\"inbound\"", &counters.refused_inbound_cap),
            ("cap=\"process\"", &counters.refused_process_cap),
        ] {
            sample(
                out,
                "meshlimit_connections_refused_total",
                inbound,
                label,
                counter.get(),
            );
        }
    }
    family(
        out,
        "meshlimit_connection_timeouts_total",
        "counter",
        "Client connections closed by the proxy: no request head in time (timeout=\"request_headers\") or no request for the idle timeout (timeout=\"idle\").",
    );
    for inbound in inbounds {
        let counters = &inbound.counters;
        for (label, counter) in [
            (
                "timeout=\"request_headers\"",
                &counters.request_headers_timeouts,
            ),
            ("timeout=\"idle\"", &counters.idle_timeouts),
        ] {
            sample(
                out,
                "meshlimit_connection_timeouts_total",
                inbound,
                label,
                counter.get(),
            );
        }
    }
    family(
        out,
        "meshlimit_connect_refused_total",
        "counter",
        "CONNECT requests answered 404 (no route allows CONNECT, as in Envoy).",
    );
    for inbound in inbounds {
        let refused = inbound.counters.connect_refused.get();
        sample(out, "meshlimit_connect_refused_total", inbound, "", refused);
    }
    family(
        out,
        "meshlimit_process_connections_open",
        "gauge",
        "Client connections open over all inbounds.",
    );
    let _ = writeln!(
        out,
        "meshlimit_process_connections_open {}",
        shared.cap.open()
    );
    family(
        out,
        "meshlimit_process_connections_max",
        "gauge",
        "The cap on client connections over all inbounds.",
    );
    let _ = writeln!(
        out,
        "meshlimit_process_connections_max {}",
        shared.cap.max()
    );
    family(
        out,
        "meshlimit_accept_errors_total",
        "counter",
        "Failed accepts over all inbounds (out of file descriptors and the like).",
    );
    let _ = writeln!(
        out,
        "meshlimit_accept_errors_total {}",
        shared.accept_errors.get()
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample of `inbound`, with `extra_label` (`name="value"`, or empty for none).
fn sample(out: &mut String, name: &str, inbound: &Inbound, extra_label: &str, value: u64) {
    let _ = write!(out, "{name}{{mesh=\"");
    escape_label(out, &inbound.key.mesh);
    out.push_str("\",dataplane=\"");
    escape_label(out, &inbound.key.dataplane);
    let _ = write!(out, "\",inbound=\"{}\"", inbound.key.port);
    if !extra_label.is_empty() {
        out.push(',');
        out.push_str(extra_label);
    }
    let _ = writeln!(out, "}} {value}");
}

/// Label values escape `\`, `"` and newlines.
pub fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        super::escape_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }
}
