//! The kernel limiter in the binary: one handle, [`Kernel`], for `meshlimit run` and `meshlimit
//! agent`. It owns the one mutex around the [`KernelLimiter`]; everything else goes through it:
//! [`Kernel::enforce`] (the one consumer of a limits `watch`, whatever the source), `/metrics`
//! ([`MetricsSource`]), `/stats` ([`Kernel::stats`]) and the reports to the control plane
//! ([`Kernel::report`]).

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meshlimit_control_plane_client::wire::{AgentReport, DestinationCounters};
use meshlimit_kernel::{
    Adopted, Counters, DestinationStats, KernelError, KernelLimiter, LimiterOptions,
};
use meshlimit_policy::Versioned;
use meshlimit_policy::effective::KernelLimit;
use meshlimit_proxy::exposition::prometheus_client::registry::Registry;
use meshlimit_proxy::exposition::{self, Labels, prometheus_client::encoding::DescriptorEncoder};
use meshlimit_proxy::{Collected, MetricsSource};
use tokio::sync::watch;

/// The attached limiter, shared by the enforcing task, the admin routes and the reporter;
/// `None` once detached.
#[derive(Clone)]
pub struct Kernel(Arc<Mutex<Option<KernelLimiter>>>);

/// What the kernel enforces, as [`Kernel::enforce`] publishes it after each value it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    /// The store version enforced: that of the limits in the maps, or a later one that left
    /// them as they were. `None` before the first.
    pub version: Option<u64>,
    /// The store version whose limits were last written to the maps.
    pub applied: Option<u64>,
    /// Destinations limited now.
    pub destinations: usize,
    /// The newest limits could not be applied; the previous ones stay.
    pub refused: Option<Refused>,
}

/// Limits the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub version: u64,
    pub reason: String,
}

impl Kernel {
    /// Attaches to `cgroup` (default: the cgroup v2 root) with no destination limited yet.
    pub fn attach(cgroup: Option<PathBuf>, options: LimiterOptions) -> Result<Kernel, KernelError> {
        let cgroup = match cgroup {
            Some(path) => path,
            None => meshlimit_kernel::cgroup2_root()?,
        };
        let limiter = KernelLimiter::attach_with(&cgroup, options)?;
        Ok(Kernel(Arc::new(Mutex::new(Some(limiter)))))
    }

    /// Attaches to `cgroup` with the programs' links and maps pinned in `pin_dir` (default:
    /// the cgroup's directory under `/sys/fs/bpf/meshlimit`): enforcement and tokens outlive
    /// this process, and what an earlier one pinned there is adopted.
    pub fn attach_pinned(
        cgroup: Option<PathBuf>,
        options: LimiterOptions,
        pin_dir: Option<PathBuf>,
    ) -> Result<Kernel, KernelError> {
        let cgroup = match cgroup {
            Some(path) => path,
            None => meshlimit_kernel::cgroup2_root()?,
        };
        let pin_dir = match pin_dir {
            Some(dir) => dir,
            None => meshlimit_kernel::default_pin_dir(&cgroup)?,
        };
        let limiter = KernelLimiter::attach_pinned(&cgroup, options, &pin_dir)?;
        Ok(Kernel(Arc::new(Mutex::new(Some(limiter)))))
    }

    /// Where the programs are pinned, and what was adopted from there; `None` when unpinned
    /// or detached.
    pub fn pins(&self) -> Option<(PathBuf, Option<Adopted>)> {
        let guard = self.lock();
        let limiter = guard.as_ref()?;
        Some((limiter.pin_dir()?.to_owned(), limiter.adopted()))
    }

    fn lock(&self) -> MutexGuard<'_, Option<KernelLimiter>> {
        // The limiter's state lives in the kernel maps; a panic elsewhere leaves them whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cgroup the programs are attached to; `None` once detached.
    pub fn cgroup(&self) -> Option<PathBuf> {
        self.lock().as_ref().map(|l| l.cgroup().to_owned())
    }

    /// Lets go of the limiter: unpinned, that detaches the programs and lifts every limit;
    /// pinned, they go on enforcing without this process. False when already done.
    pub fn detach(&self) -> bool {
        self.lock().take().is_some()
    }

    /// Makes `limits` the limited destinations; an invalid set changes nothing. Once detached
    /// nothing is limited, and nothing is refused either.
    fn apply(&self, limits: &[KernelLimit]) -> Result<usize, KernelError> {
        match self.lock().as_mut() {
            Some(limiter) => limiter.apply(limits),
            None => Ok(0),
        }
    }

    /// Per destination: connections allowed and limited, tokens available now. None once
    /// detached.
    pub fn stats(&self) -> Result<Vec<DestinationStats>, KernelError> {
        match self.lock().as_ref() {
            Some(limiter) => limiter.stats(),
            None => Ok(Vec::new()),
        }
    }

    /// What the control plane's stats should show for this host, enforcing store `version`.
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
            disabled: None,
            destinations,
        }
    }

    /// Enforces `limits`: the current value before this returns (so the limits are in the
    /// kernel before the caller announces itself), then every new one in a task that ends with
    /// the source. Limits equal to those applied only move the version; limits the kernel
    /// refuses change nothing, the previous ones stay, and are not retried for later versions
    /// of the same limits. Returns what is enforced after each value, for the caller to log
    /// and report.
    pub fn enforce(
        &self,
        mut limits: watch::Receiver<Versioned<Vec<KernelLimit>>>,
    ) -> watch::Receiver<Enforced> {
        let mut follower = Follower::default();
        let first = limits.borrow_and_update().clone();
        follower.next(first, |l| self.apply(l));
        let (tx, rx) = watch::channel(follower.enforced.clone());
        let kernel = self.clone();
        tokio::spawn(async move {
            while limits.changed().await.is_ok() {
                let wanted = limits.borrow_and_update().clone();
                if follower.next(wanted, |l| kernel.apply(l)) {
                    tx.send_replace(follower.enforced.clone());
                }
            }
        });
        rx
    }
}

impl MetricsSource for Kernel {
    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Collected(self.clone(), Kernel::encode)));
    }
}

impl Kernel {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let guard = self.lock();
        let Some(limiter) = guard.as_ref() else {
            return Ok(());
        };
        match (limiter.stats(), limiter.counters()) {
            (Ok(stats), Ok(counters)) => encode_kernel(&stats, &counters, encoder),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!("reading the kernel counters: {error}");
                Ok(())
            }
        }
    }
}

/// The kernel limiter's numbers as metric families.
fn encode_kernel(
    stats: &[DestinationStats],
    counters: &Counters,
    mut encoder: DescriptorEncoder<'_>,
) -> std::fmt::Result {
    let destination = |row: &DestinationStats| -> Labels {
        vec![
            ("service", row.service.clone()),
            ("address", row.address.clone()),
            ("port", row.port.to_string()),
        ]
    };
    let e = &mut encoder;
    exposition::counter(
        e,
        "meshlimit_kernel_connections",
        "Connections to kernel-limited destinations, by decision at connect().",
        stats.iter().flat_map(|row| {
            [("allowed", row.allowed), ("limited", row.limited)]
                .into_iter()
                .map(move |(decision, value)| {
                    let mut labels = destination(row);
                    labels.push(("decision", decision.to_string()));
                    (labels, value)
                })
        }),
    )?;
    exposition::gauge(
        e,
        "meshlimit_kernel_tokens",
        "Whole tokens available now in the emptiest client bucket.",
        stats
            .iter()
            .map(|row| (destination(row), row.tokens_available)),
    )?;
    exposition::gauge(
        e,
        "meshlimit_kernel_bucket_capacity",
        "The bucket size (maxTokens) of a kernel-limited destination, beside its tokens.",
        stats.iter().map(|row| (destination(row), row.max_tokens)),
    )?;
    let none: Labels = Vec::new();
    for (name, help, value) in [
        (
            "meshlimit_kernel_allowed",
            "Connections admitted by the kernel limiter.",
            counters.allowed,
        ),
        (
            "meshlimit_kernel_limited",
            "Connections refused by the kernel limiter with EPERM.",
            counters.limited,
        ),
        (
            "meshlimit_kernel_untracked",
            "Connections to limited destinations let through because no bucket could be kept.",
            counters.untracked,
        ),
        (
            "meshlimit_kernel_errors",
            "Connections let through because of unusable settings in the kernel.",
            counters.errors,
        ),
    ] {
        exposition::counter(e, name, help, [(none.clone(), value)])?;
    }
    Ok(())
}

/// What [`Kernel::enforce`] decides for each value, apart from the kernel itself.
#[derive(Default)]
struct Follower {
    /// The limits in the maps.
    applied: Option<Vec<KernelLimit>>,
    /// The last limits refused, so that later versions of them are not retried.
    refused: Option<Vec<KernelLimit>>,
    enforced: Enforced,
}

impl Follower {
    /// Takes the next value from the source; `apply` writes limits to the maps. True when
    /// [`Follower::enforced`] changed.
    fn next<E: Display>(
        &mut self,
        wanted: Versioned<Vec<KernelLimit>>,
        apply: impl FnOnce(&[KernelLimit]) -> Result<usize, E>,
    ) -> bool {
        // Nothing from the source yet: the limiter starts with nothing limited anyway.
        let Some(version) = wanted.version else {
            return false;
        };
        let before = self.enforced.clone();
        if self.applied.as_ref() == Some(&wanted.value) {
            // Back to (or still at) what the kernel holds: an earlier refusal is moot.
            self.enforced.version = Some(version);
            self.enforced.refused = None;
            self.refused = None;
        } else if self.refused.as_ref() != Some(&wanted.value) {
            match apply(&wanted.value) {
                Ok(destinations) => {
                    self.enforced = Enforced {
                        version: Some(version),
                        applied: Some(version),
                        destinations,
                        refused: None,
                    };
                    self.applied = Some(wanted.value);
                    self.refused = None;
                }
                Err(error) => {
                    self.enforced.refused = Some(Refused {
                        version,
                        reason: error.to_string(),
                    });
                    self.refused = Some(wanted.value);
                }
            }
        }
        self.enforced != before
    }
}

#[cfg(test)]
mod tests {
    use meshlimit_policy::TokenBucket;

    use super::*;

    fn limits(ports: &[u16]) -> Vec<KernelLimit> {
        ports
            .iter()
            .map(|&port| KernelLimit {
                service: "web".into(),
                address: "127.0.0.1".into(),
                port,
                bucket: TokenBucket::new(2, 1, 1_000_000_000).expect("a valid bucket"),
            })
            .collect()
    }

    fn ok(limits: &[KernelLimit]) -> Result<usize, String> {
        Ok(limits.len())
    }

    fn unexpected(_: &[KernelLimit]) -> Result<usize, String> {
        panic!("nothing new to write")
    }

    #[test]
    fn nothing_is_written_before_the_first_version() {
        let mut follower = Follower::default();
        assert!(!follower.next(Versioned::default(), unexpected));
        assert_eq!(follower.enforced, Enforced::default());
    }

    #[test]
    fn the_same_limits_at_a_new_version_only_move_the_version() {
        let mut follower = Follower::default();
        assert!(follower.next(Versioned::new(3, limits(&[80])), ok));
        assert!(follower.next(Versioned::new(4, limits(&[80])), unexpected));
        assert_eq!(
            follower.enforced,
            Enforced {
                version: Some(4),
                applied: Some(3),
                destinations: 1,
                refused: None,
            }
        );
        assert!(!follower.next(Versioned::new(4, limits(&[80])), unexpected));
    }

    #[test]
    fn refused_limits_keep_the_previous_ones_and_are_not_retried() {
        let mut follower = Follower::default();
        follower.next(Versioned::new(1, limits(&[80])), ok);
        let refuse = |_: &[KernelLimit]| Err::<usize, _>("conflict");
        assert!(follower.next(Versioned::new(2, limits(&[80, 81])), refuse));
        let refused = Enforced {
            version: Some(1),
            applied: Some(1),
            destinations: 1,
            refused: Some(Refused {
                version: 2,
                reason: "conflict".into(),
            }),
        };
        assert_eq!(follower.enforced, refused);
        // A later version of the same limits: still refused, the version stays behind.
        assert!(!follower.next(Versioned::new(3, limits(&[80, 81])), unexpected));
        assert_eq!(follower.enforced, refused);
        // The source goes back to what is applied: enforced as of that version again.
        assert!(follower.next(Versioned::new(4, limits(&[80])), unexpected));
        assert_eq!(follower.enforced.version, Some(4));
        assert_eq!(follower.enforced.refused, None);
        // New limits are written.
        assert!(follower.next(Versioned::new(5, limits(&[])), ok));
        assert_eq!(
            (follower.enforced.applied, follower.enforced.destinations),
            (Some(5), 0)
        );
    }
}
