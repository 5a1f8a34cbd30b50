//! What a data plane tells the control plane: the counters of every limit it enforces, read
//! from the proxy in the same process. `meshlimit run` reports to its own control plane,
//! `meshlimit dataplane` over the API; both build the same report here.

use meshlimit_control_plane_client::wire::{DataplaneReport, GlobalCounters, InboundCounters};
use meshlimit_policy::effective::{DataplaneLimits, Protocol};
use meshlimit_proxy::{InboundStats, ProxyStats};

/// The report of one Dataplane enforced as of store `version`.
pub fn dataplane(
    version: Option<u64>,
    limits: &DataplaneLimits,
    proxy: &ProxyStats,
) -> DataplaneReport {
    DataplaneReport {
        version,
        inbounds: counters(limits, &proxy.inbounds()),
    }
}

/// One row per enforced limit of each inbound: `http` (requests) on HTTP inbounds, `tcp`
/// (connections) on TCP inbounds and on any inbound with a connection limit.
fn counters(limits: &DataplaneLimits, stats: &[InboundStats]) -> Vec<InboundCounters> {
    let mut rows = Vec::new();
    for inbound in &limits.inbounds {
        let found = stats.iter().find(|s| {
            s.key.mesh == limits.mesh
                && s.key.dataplane == limits.dataplane
                && s.key.port == inbound.port
        });
        let mut row = |protocol: &str,
                       allowed: u64,
                       limited: u64,
                       tokens: Option<u64>,
                       global: Option<GlobalCounters>| {
            rows.push(InboundCounters {
                port: inbound.port,
                service: inbound.service.clone(),
                protocol: protocol.to_string(),
                total: allowed + limited,
                allowed,
                limited,
                tokens_available: tokens,
                global,
            });
        };
        if inbound.protocol == Protocol::Http {
            let (allowed, limited, tokens) = found.map_or((0, 0, None), |s| {
                (s.http_allowed, s.http_limited, s.http_tokens)
            });
            let global = inbound.global.as_ref().map(|_| {
                found.map_or_else(GlobalCounters::default, |s| GlobalCounters {
                    allowed: s.global_allowed,
                    limited: s.global_limited,
                    shadow_limited: s.global_shadow_limited,
                    store_errors: s.global_errors,
                    fallbacks_open: s.global_fallbacks_open,
                    fallbacks_closed: s.global_fallbacks_closed,
                    fallbacks_local_share: s.global_fallbacks_local_share,
                    share_tokens: s.global_share_tokens,
                })
            });
            row("http", allowed, limited, tokens, global);
        }
        if inbound.protocol == Protocol::Tcp || inbound.tcp.is_some() {
            let (allowed, limited, tokens) = found.map_or((0, 0, None), |s| {
                (s.tcp_allowed, s.tcp_limited, s.tcp_tokens)
            });
            row("tcp", allowed, limited, tokens, None);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use meshlimit_policy::effective::InboundLimits;
    use meshlimit_proxy::InboundKey;

    use super::*;

    fn inbound(port: u16, protocol: Protocol) -> InboundLimits {
        InboundLimits {
            port,
            service_port: port + 1,
            service: format!("svc-{port}"),
            protocol,
            http: None,
            tcp: None,
            policies: Vec::new(),
            global: None,
            sources: Vec::new(),
        }
    }

    #[test]
    fn one_row_per_enforced_limit_with_the_proxy_counters() {
        let limits = DataplaneLimits {
            dataplane: "web-1".into(),
            mesh: "default".into(),
            address: "127.0.0.1".into(),
            inbounds: vec![inbound(8080, Protocol::Http), inbound(9000, Protocol::Tcp)],
            kernel: Vec::new(),
        };
        let stats = vec![InboundStats {
            key: InboundKey {
                mesh: "default".into(),
                dataplane: "web-1".into(),
                port: 8080,
            },
            http_allowed: 7,
            http_limited: 3,
            tcp_allowed: 2,
            tcp_limited: 0,
            http_tokens: Some(1),
            tcp_tokens: None,
            ..Default::default()
        }];
        let rows = counters(&limits, &stats);
        let summary: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} total={} allowed={} limited={} tokens={:?}",
                    r.port,
                    r.service,
                    r.protocol,
                    r.total,
                    r.allowed,
                    r.limited,
                    r.tokens_available
                )
            })
            .collect();
        // The TCP inbound is not listening yet: zeros, not someone else's counters.
        assert_eq!(
            summary,
            [
                "8080 svc-8080 http total=10 allowed=7 limited=3 tokens=Some(1)",
                "9000 svc-9000 tcp total=0 allowed=0 limited=0 tokens=None",
            ]
        );
    }
}
