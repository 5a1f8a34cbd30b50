//! [`Agent`]: a kernel limiter attached to a cgroup plus its admin endpoint, with limits handed
//! in by the caller. Both ways of running the agent share it: [`super::run`] reads limits from
//! a resource directory, `meshlimit agent --cp URL` from a control plane's stream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meshlimit_policy::KernelLimit;

use super::AgentError;
use super::admin::AdminServer;
use crate::error::KernelError;
use crate::limiter::{KernelLimiter, LimiterOptions};
use crate::stats::{Counters, DestinationStats};

/// A running kernel agent. Dropping it (or [`Agent::stop`]) stops the admin endpoint and
/// detaches the programs, which lifts every limit.
pub struct Agent {
    limiter: Arc<Mutex<KernelLimiter>>,
    admin: Option<AdminServer>,
    admin_addr: SocketAddr,
    cgroup: PathBuf,
}

impl Agent {
    /// Attaches to `cgroup` with no destination limited yet and serves `/metrics` and `/stats`
    /// on `admin` (port 0 picks a free port; see [`Agent::admin_addr`]).
    pub fn start(
        cgroup: &Path,
        admin: SocketAddr,
        options: LimiterOptions,
    ) -> Result<Agent, AgentError> {
        let limiter = Arc::new(Mutex::new(KernelLimiter::attach_with(cgroup, options)?));
        let server =
            AdminServer::start(admin, limiter.clone()).map_err(|reason| AgentError::Admin {
                addr: admin,
                reason,
            })?;
        Ok(Agent {
            limiter,
            admin_addr: server.addr(),
            admin: Some(server),
            cgroup: cgroup.to_owned(),
        })
    }

    /// Where `/metrics` and `/stats` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Makes `limits` the whole set of limited destinations (a few map writes; buckets whose
    /// settings did not change keep their tokens). On error nothing changed and the previous
    /// limits stay. Returns how many destinations are limited now.
    pub fn apply(&self, limits: &[KernelLimit]) -> Result<usize, KernelError> {
        self.lock().set_limits(limits)?;
        Ok(destinations(limits))
    }

    /// Per destination: connections allowed and limited, tokens available now.
    pub fn stats(&self) -> Result<Vec<DestinationStats>, KernelError> {
        self.lock().stats()
    }

    /// Totals over every destination since the programs were attached.
    pub fn counters(&self) -> Result<Counters, KernelError> {
        self.lock().counters()
    }

    /// Stops the admin endpoint and detaches.
    pub fn stop(mut self) {
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
    }

    fn lock(&self) -> MutexGuard<'_, KernelLimiter> {
        // The limiter's state lives in the kernel maps; a panic elsewhere cannot corrupt it.
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
    }
}

/// Distinct `(address, port)` destinations in `limits`.
pub(crate) fn destinations(limits: &[KernelLimit]) -> usize {
    let mut keys: Vec<(&str, u16)> = limits
        .iter()
        .map(|l| (l.address.as_str(), l.port))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
}
