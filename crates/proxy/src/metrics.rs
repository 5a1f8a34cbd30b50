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
        "HTTP requests received by an inbound, by rate-limit decision.",
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
    family(
        out,
        "meshlimit_bucket_tokens",
        "gauge",
        "Whole tokens left in an inbound's bucket (limit=\"http\" per request, \"tcp\" per connection).",
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundStats {
    pub key: InboundKey,
    pub http_allowed: u64,
    pub http_limited: u64,
    pub tcp_allowed: u64,
    pub tcp_limited: u64,
    /// Whole tokens left in the request bucket (`None`: no HTTP limit).
    pub http_tokens: Option<u64>,
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
                    tcp_allowed: counters.tcp_allowed.get(),
                    tcp_limited: counters.tcp_limited.get(),
                    http_tokens: plan.http.as_ref().map(|http| http.bucket.peek(now_ns)),
                    tcp_tokens: plan.tcp.as_ref().map(|tcp| tcp.peek(now_ns)),
                }
            })
            .collect()
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, inbound: &Inbound, extra_label: &str, value: u64) {
    let _ = write!(out, "{name}{{mesh=\"");
    escape_label(out, &inbound.key.mesh);
    out.push_str("\",dataplane=\"");
    escape_label(out, &inbound.key.dataplane);
    let _ = writeln!(
        out,
        "\",inbound=\"{}\",{extra_label}}} {value}",
        inbound.key.port
    );
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
