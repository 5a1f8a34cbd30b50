//! The local data planes and kernel limiter report to the control plane of the same process,
//! as remote ones do over the API: `meshlimit get ratelimit-stats` against a `meshlimit run`
//! shows both.

use std::collections::BTreeMap;

use meshlimit_control_plane::ControlPlane;
use meshlimit_control_plane::insights::StreamGuard;
use meshlimit_control_plane_client::wire::AgentReport;
use meshlimit_policy::effective::DataplaneLimits;
use meshlimit_proxy::ProxyStats;

use crate::kernel::Kernel;

/// What is reported, and the markers that show the local peers as connected while they run.
pub struct Reporter {
    cp: ControlPlane,
    proxy: ProxyStats,
    kernel: Option<(String, Kernel, StreamGuard)>,
    /// The kernel limiter turned off on purpose: this host's name, the reason.
    kernel_off: Option<(String, String, StreamGuard)>,
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
            kernel_off: None,
            connected: BTreeMap::new(),
        }
    }

    /// Reports this host's kernel limiter as off on purpose (`reason`), so that `diagnose`
    /// tells it from an agent that failed or never started.
    pub fn kernel_off(mut self, name: String, reason: String) -> Reporter {
        let guard = self.cp.insights().agent_connected(&name);
        self.kernel_off = Some((name, reason, guard));
        self
    }

    /// Reports the counters of every Dataplane in `limits` (enforced as of store `version`)
    /// and of the kernel limiter (enforcing store `kernel_version`).
    pub fn report(
        &mut self,
        version: u64,
        kernel_version: Option<u64>,
        limits: &[DataplaneLimits],
    ) {
        let insights = self.cp.insights();
        self.connected.retain(|(mesh, name), _| {
            limits
                .iter()
                .any(|l| &l.mesh == mesh && &l.dataplane == name)
        });
        for dataplane in limits {
            let key = (dataplane.mesh.clone(), dataplane.dataplane.clone());
            self.connected.entry(key).or_insert_with(|| {
                insights.dataplane_connected(&dataplane.mesh, &dataplane.dataplane)
            });
            let report = crate::report::dataplane(Some(version), dataplane, &self.proxy);
            insights.report_dataplane(&dataplane.mesh, &dataplane.dataplane, &report);
        }
        if let Some((name, kernel, _)) = &self.kernel {
            insights.report_agent(name, &kernel.report(kernel_version));
        }
        if let Some((name, reason, _)) = &self.kernel_off {
            let report = AgentReport {
                disabled: Some(reason.clone()),
                ..AgentReport::default()
            };
            insights.report_agent(name, &report);
        }
    }
}

/// The name this host's kernel limiter reports under: the host name.
pub fn agent_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "local".to_string())
}
