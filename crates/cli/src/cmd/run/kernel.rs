//! The kernel limiter inside `meshlimit run`: attached when it can be (root, cgroup v2, BPF),
//! fed every snapshot's `RateLimit` destinations, its counters appended to `/metrics` and
//! reported to the control plane's stats as this host's kernel agent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use meshlimit_control_plane::wire::{AgentReport, DestinationCounters};
use meshlimit_kernel::{KernelLimiter, LimiterOptions};
use meshlimit_policy::effective::KernelLimit;
use meshlimit_proxy::MetricsSource;

/// The limiter, shared by the snapshot follower, `/metrics` and the reporter; `None` once
/// detached.
#[derive(Clone)]
pub struct Kernel(Arc<Mutex<Option<KernelLimiter>>>);

impl Kernel {
    /// Attaches to `cgroup` (default: the cgroup v2 root), or says why it cannot.
    pub fn attach(cgroup: Option<PathBuf>, options: LimiterOptions) -> Result<Kernel, String> {
        let cgroup = match cgroup {
            Some(path) => path,
            None => meshlimit_kernel::cgroup2_root().map_err(|e| e.to_string())?,
        };
        let limiter = KernelLimiter::attach_with(&cgroup, options).map_err(|e| e.to_string())?;
        Ok(Kernel(Arc::new(Mutex::new(Some(limiter)))))
    }

    fn lock(&self) -> MutexGuard<'_, Option<KernelLimiter>> {
        // The limiter's state lives in the kernel maps; a panic elsewhere leaves them whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn cgroup(&self) -> Option<PathBuf> {
        self.lock().as_ref().map(|l| l.cgroup().to_owned())
    }

    /// Makes `limits` the limited destinations; an invalid set changes nothing.
    pub fn set_limits(&self, limits: &[KernelLimit]) -> Result<(), String> {
        match self.lock().as_mut() {
            Some(limiter) => limiter.set_limits(limits).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// What the control plane's stats should show for this host.
    pub fn report(&self, version: Option<u64>) -> AgentReport {
        let guard = self.lock();
        let Some(limiter) = guard.as_ref() else {
            return AgentReport {
                version,
                ..AgentReport::default()
            };
        };
        let destinations = match limiter.stats() {
            Ok(rows) => rows
                .into_iter()
                .map(|row| DestinationCounters {
                    service: row.service,
                    address: row.address,
                    port: row.port,
                    total: row.total,
                    allowed: row.allowed,
                    limited: row.limited,
                    tokens_available: Some(row.tokens_available),
                })
                .collect(),
            Err(error) => {
                tracing::warn!("reading the kernel counters: {error}");
                Vec::new()
            }
        };
        AgentReport {
            version,
            attached: true,
            destinations,
        }
    }

    /// Detaches the programs (dropping the limiter does it) and frees the maps.
    pub fn detach(&self) -> bool {
        self.lock().take().is_some()
    }
}

impl MetricsSource for Kernel {
    fn render(&self, out: &mut String) {
        let guard = self.lock();
        let Some(limiter) = guard.as_ref() else {
            return;
        };
        match (limiter.stats(), limiter.counters()) {
            (Ok(stats), Ok(counters)) => {
                out.push_str(&meshlimit_kernel::render_prometheus(&stats, &counters));
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!("reading the kernel counters: {error}");
            }
        }
    }
}
