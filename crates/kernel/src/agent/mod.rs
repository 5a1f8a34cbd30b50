//! The kernel agent: attaches a [`KernelLimiter`](crate::KernelLimiter) to a cgroup, enforces
//! kernel limits, and serves `/metrics` and `/stats`. [`Agent`] is the attached limiter with
//! limits handed in by the caller (`meshlimit agent --cp URL` feeds it a control plane's
//! stream); [`run`] feeds it the `RateLimit` resources of a directory and follows edits live.

mod admin;
mod handle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshlimit_policy::{KernelLimit, ResourceSet, load_paths};

use crate::error::KernelError;
use crate::limiter::LimiterOptions;

pub use admin::AdminServer;
pub use handle::Agent;
use handle::destinations;

/// What the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// A directory of resource files (`*.yaml`, `*.yml`), or one file.
    pub resources: PathBuf,
    /// The cgroup v2 directory to attach to (see [`crate::cgroup2_root`] for the default).
    pub cgroup: PathBuf,
    /// Where `/metrics` and `/stats` are served.
    pub admin: SocketAddr,
    /// How often the resources are checked for changes; a change is applied once it has been
    /// stable for one more period (editors write files in several steps).
    pub poll: Duration,
    pub limiter: LimiterOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Kernel(#[from] KernelError),
    #[error("invalid resources in {path}:\n  {}", .problems.join("\n  "))]
    Resources {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("cannot serve the admin endpoint on {addr}: {reason}")]
    Admin { addr: SocketAddr, reason: String },
}

/// Something worth telling the operator, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    Attached {
        cgroup: PathBuf,
        admin: SocketAddr,
    },
    /// A (new) set of limits is enforced.
    Applied {
        destinations: usize,
    },
    /// An edit could not be applied; the previous limits stay.
    Ignored {
        problems: Vec<String>,
    },
    Detached,
}

impl std::fmt::Display for AgentEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentEvent::Attached { cgroup, admin } => {
                write!(
                    f,
                    "attached to cgroup {}; admin on http://{admin}",
                    cgroup.display()
                )
            }
            AgentEvent::Applied { destinations } => {
                write!(f, "enforcing limits on {destinations} destination(s)")
            }
            AgentEvent::Ignored { problems } => {
                write!(
                    f,
                    "change ignored, previous limits kept:\n  {}",
                    problems.join("\n  ")
                )
            }
            AgentEvent::Detached => write!(f, "detached"),
        }
    }
}

/// Runs until `shutdown` becomes true, then detaches. Fails at start when the resources are
/// invalid or the kernel limiter cannot attach; later invalid edits are reported and ignored.
pub fn run(
    config: &AgentConfig,
    shutdown: &AtomicBool,
    report: &mut dyn FnMut(AgentEvent),
) -> Result<(), AgentError> {
    let limits = load(config).map_err(|problems| AgentError::Resources {
        path: config.resources.clone(),
        problems,
    })?;
    let agent = Agent::start(&config.cgroup, config.admin, config.limiter)?;
    agent.apply(&limits)?;
    report(AgentEvent::Attached {
        cgroup: config.cgroup.clone(),
        admin: agent.admin_addr(),
    });
    report(AgentEvent::Applied {
        destinations: destinations(&limits),
    });

    let mut watcher = meshlimit_policy::watch::Watcher::new(&config.resources);
    while !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(config.poll);
        if !watcher.settled_change() {
            continue;
        }
        let applied = load(config)
            .and_then(|limits| agent.apply(&limits).map_err(|err| vec![err.to_string()]));
        report(match applied {
            Ok(destinations) => AgentEvent::Applied { destinations },
            Err(problems) => AgentEvent::Ignored { problems },
        });
    }
    agent.stop();
    report(AgentEvent::Detached);
    Ok(())
}

/// Makes `shutdown` true on SIGINT or SIGTERM.
pub fn shutdown_on_signals(shutdown: &Arc<AtomicBool>) -> std::io::Result<()> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutdown.clone())?;
    }
    Ok(())
}

fn load(config: &AgentConfig) -> Result<Vec<KernelLimit>, Vec<String>> {
    let to_strings = |problems: Vec<meshlimit_policy::Problem>| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<String>>()
    };
    let parsed = load_paths(std::slice::from_ref(&config.resources)).map_err(to_strings)?;
    let set = ResourceSet::from_parsed(parsed).map_err(to_strings)?;
    Ok(set.kernel_limits())
}
