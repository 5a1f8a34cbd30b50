//! The local data planes and kernel limiter report to the control plane of the same process,
//! as remote ones do over the API: `meshlimit get ratelimit-stats` against a `meshlimit run`
//! shows both.

use std::collections::BTreeMap;

use meshlimit_control_plane::ControlPlane;
use meshlimit_control_plane::insights::StreamGuard;
use meshlimit_control_plane::wire::{DataplaneReport, InboundCounters};
use meshlimit_policy::effective::{DataplaneLimits, Protocol};
use meshlimit_proxy::{InboundStats, ProxyStats};

use super::kernel::Kernel;

/// What is reported, and the markers that show the local peers as connected while they run.
pub struct Reporter {
    cp: ControlPlane,
    proxy: ProxyStats,
    kernel: Option<(String, Kernel, StreamGuard)>,
    connected: BTreeMap<(String, String), StreamGuard>,
}

impl Reporter {
    /// `agent`: the name this host's kernel limiter reports under, when attached.
    pub fn new(cp: ControlPlane, proxy: ProxyStats, kernel: Option<(String, Kernel)>) -> Reporter {
        let kernel = kernel.map(|(name, kernel)| {
            let guard = cp.insights().agent_connected(&name);
            (name, kernel, guard)
        });
        Reporter {
            cp,
            proxy,
            kernel,
            connected: BTreeMap::new(),
        }
    }

    /// Reports the counters of every Dataplane in `limits` (enforced as of store `version`)
    /// and of the kernel limiter.
    pub fn report(&mut self, version: u64, limits: &[DataplaneLimits]) {
        let insights = self.cp.insights();
        self.connected.retain(|(mesh, name), _| {
            limits
                .iter()
                .any(|l| &l.mesh == mesh && &l.dataplane == name)
        });
        let stats = self.proxy.inbounds();
        for dataplane in limits {
            let key = (dataplane.mesh.clone(), dataplane.dataplane.clone());
            self.connected.entry(key).or_insert_with(|| {
                insights.dataplane_connected(&dataplane.mesh, &dataplane.dataplane)
            });
            let report = DataplaneReport {
                version: Some(version),
                inbounds: counters(dataplane, &stats),
            };
            insights.report_dataplane(&dataplane.mesh, &dataplane.dataplane, &report);
        }
        if let Some((name, kernel, _)) = &self.kernel {
            insights.report_agent(name, &kernel.report(Some(version)));
        }
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
        let mut row = |protocol: &str, allowed: u64, limited: u64, tokens: Option<u64>| {
            rows.push(InboundCounters {
                port: inbound.port,
                service: inbound.service.clone(),
                protocol: protocol.to_string(),
                total: allowed + limited,
                allowed,
                limited,
                tokens_available: tokens,
            });
        };
        if inbound.protocol == Protocol::Http {
            let (allowed, limited, tokens) = found.map_or((0, 0, None), |s| {
                (s.http_allowed, s.http_limited, s.http_tokens)
            });
            row("http", allowed, limited, tokens);
        }
        if inbound.protocol == Protocol::Tcp || inbound.tcp.is_some() {
            let (allowed, limited, tokens) = found.map_or((0, 0, None), |s| {
                (s.tcp_allowed, s.tcp_limited, s.tcp_tokens)
            });
            row("tcp", allowed, limited, tokens);
        }
    }
    rows
}

/// The name this host's kernel limiter reports under: the host name.
pub fn agent_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "local".to_string())
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
