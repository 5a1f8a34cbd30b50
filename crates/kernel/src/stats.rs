//! What the limiter reports: per-destination rows, global counters, and their Prometheus text.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::shared::BucketSettings;
use crate::shared::{BucketState, SEALED};

/// One limited destination as seen from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStats {
    pub service: String,
    pub address: String,
    pub port: u16,
    /// Connections seen (`allowed + limited`) since the limit was added.
    pub total: u64,
    pub allowed: u64,
    pub limited: u64,
    /// Whole tokens available now in the emptiest client bucket (`maxTokens` when no client
    /// has connected yet: a new bucket starts full).
    pub tokens_available: u64,
    /// Client network namespaces holding a bucket for this destination.
    pub clients: u64,
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval_ns: u64,
}

/// Totals over every CPU and destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connections to a limited destination that got a token.
    pub allowed: u64,
    /// Connections refused with `EPERM`.
    pub limited: u64,
    /// Connections to a limited destination let through because no bucket could be kept.
    pub untracked: u64,
    /// Connections let through because the program met settings it cannot use.
    pub errors: u64,
}

/// Whole tokens a bucket holds at `now_ns` under the destination's current `max_tokens`:
/// the program's arithmetic, without taking one.
pub(crate) fn tokens_at(state: &BucketState, max_tokens: u64, now_ns: u64) -> u64 {
    let s = &state.settings;
    if s.fill_interval_ns == 0 {
        return 0;
    }
    let n = now_ns.saturating_sub(state.origin_ns) / s.fill_interval_ns;
    let earned = state
        .initial_tokens
        .saturating_add(n.saturating_mul(s.tokens_per_fill));
    let consumed = state.consumed & !SEALED;
    earned
        .saturating_sub(consumed)
        .min(s.max_tokens)
        .min(max_tokens)
}

/// Prometheus text exposition of the kernel limiter's numbers. The proxy's admin endpoint
/// appends the same text when it runs the limiter.
pub fn render_prometheus(stats: &[DestinationStats], counters: &Counters) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP meshlimit_kernel_connections_total Connections to kernel-limited destinations, \
         by decision at connect().\n# TYPE meshlimit_kernel_connections_total counter\n",
    );
    for row in stats {
        for (decision, value) in [("allowed", row.allowed), ("limited", row.limited)] {
            let _ = writeln!(
                out,
                "meshlimit_kernel_connections_total{{{},decision=\"{decision}\"}} {value}",
                labels(row)
            );
        }
    }
    out.push_str(
        "# HELP meshlimit_kernel_tokens Whole tokens available now in the emptiest client bucket.\n\
         # TYPE meshlimit_kernel_tokens gauge\n",
    );
    for row in stats {
        let _ = writeln!(
            out,
            "meshlimit_kernel_tokens{{{}}} {}",
            labels(row),
            row.tokens_available
        );
    }
    let totals = [
        (
            "allowed",
            "Connections admitted by the kernel limiter.",
            counters.allowed,
        ),
        (
            "limited",
            "Connections refused by the kernel limiter with EPERM.",
            counters.limited,
        ),
        (
            "untracked",
            "Connections to limited destinations let through because no bucket could be kept.",
            counters.untracked,
        ),
        (
            "errors",
            "Connections let through because of unusable settings in the kernel.",
            counters.errors,
        ),
    ];
    for (name, help, value) in totals {
        let _ = write!(
            out,
            "# HELP meshlimit_kernel_{name}_total {help}\n# TYPE meshlimit_kernel_{name}_total counter\n\
             meshlimit_kernel_{name}_total {value}\n"
        );
    }
    out
}

fn labels(row: &DestinationStats) -> String {
    format!(
        "service=\"{}\",address=\"{}\",port=\"{}\"",
        escape(&row.service),
        escape(&row.address),
        row.port
    )
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: u64, per_fill: u64, interval: u64) -> BucketSettings {
        BucketSettings {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval_ns: interval,
        }
    }

    fn state(origin: u64, s: BucketSettings, initial: u64, consumed: u64) -> BucketState {
        BucketState {
            origin_ns: origin,
            settings: s,
            initial_tokens: initial,
            consumed,
        }
    }

    #[test]
    fn tokens_refill_by_whole_intervals_and_cap() {
        let s = settings(10, 3, 100);
        let empty = state(1000, s, 10, 10);
        assert_eq!(tokens_at(&empty, 10, 1099), 0);
        assert_eq!(tokens_at(&empty, 10, 1100), 3);
        assert_eq!(tokens_at(&empty, 10, 1299), 6);
        assert_eq!(tokens_at(&empty, 10, 1400), 10);
        assert_eq!(tokens_at(&empty, 10, u64::MAX), 10);
        // Time read before the origin (another CPU): no refill.
        assert_eq!(tokens_at(&state(1000, s, 10, 8), 10, 900), 2);
        // A lower current maximum clamps; a sealed bucket still reads its tokens.
        assert_eq!(tokens_at(&state(1000, s, 10, 0), 4, 1000), 4);
        assert_eq!(tokens_at(&state(1000, s, 10, 7 | SEALED), 10, 1000), 3);
    }

    #[test]
    fn prometheus_text_has_every_series_with_escaped_labels() {
        let row = DestinationStats {
            service: "we\"b".into(),
            address: "10.0.0.1".into(),
            port: 80,
            total: 7,
            allowed: 5,
            limited: 2,
            tokens_available: 0,
            clients: 1,
            max_tokens: 5,
            tokens_per_fill: 1,
            fill_interval_ns: 1_000_000_000,
        };
        let counters = Counters {
            allowed: 5,
            limited: 2,
            untracked: 1,
            errors: 0,
        };
        let text = render_prometheus(&[row], &counters);
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series,
            [
                r#"meshlimit_kernel_connections_total{service="we\"b",address="10.0.0.1",port="80",decision="allowed"} 5"#,
                r#"meshlimit_kernel_connections_total{service="we\"b",address="10.0.0.1",port="80",decision="limited"} 2"#,
                r#"meshlimit_kernel_tokens{service="we\"b",address="10.0.0.1",port="80"} 0"#,
                "meshlimit_kernel_allowed_total 5",
                "meshlimit_kernel_limited_total 2",
                "meshlimit_kernel_untracked_total 1",
                "meshlimit_kernel_errors_total 0",
            ]
        );
        assert!(text.contains("# TYPE meshlimit_kernel_connections_total counter\n"));
        assert!(text.contains("# TYPE meshlimit_kernel_tokens gauge\n"));
    }
}
