//! The proxy: follows a `watch` channel of effective limits and keeps one listener per
//! configured inbound, applying each new configuration with [`reconcile`].

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meshlimit_bucket::{Clock, PreciseMonotonicClock};
use meshlimit_policy::Versioned;
use meshlimit_policy::effective::DataplaneLimits;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::HttpContext;
use crate::inbound::InboundKey;
use crate::limits::{Cap, default_max_connections, soft_fd_limit};
use crate::listener::Listener;
use crate::metrics::ProxyStats;
use crate::options::ProxyOptions;
use crate::reconcile::reconcile;
use crate::state::{Shared, Status};
use crate::workers::Workers;

/// A running proxy. Dropping it leaves the listeners running until the runtime stops; call
/// [`Proxy::shutdown`] to stop accepting and drain.
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

impl Proxy {
    /// Starts serving on the current tokio runtime. Every value of `limits` (the current one
    /// first) is applied, from whatever source follows the store (the local one of `meshlimit
    /// run` or a remote control plane's stream); a new version with the same limits only moves
    /// [`Status::version`]. Applying means: listeners are bound for new inbounds, removed inbounds stop
    /// accepting (their in-flight requests finish), and changed limits take effect on the next
    /// request of existing connections, keeping the tokens of buckets whose settings did not
    /// change. Fails only when the worker threads of [`ProxyOptions::worker_threads`] cannot
    /// be started.
    pub fn spawn(
        options: ProxyOptions,
        clock: Arc<dyn Clock>,
        limits: watch::Receiver<Versioned<Vec<DataplaneLimits>>>,
    ) -> io::Result<Proxy> {
        let workers = Arc::new(Workers::start(options.worker_threads)?);
        let max_connections = options
            .max_connections
            .unwrap_or_else(|| default_max_connections(soft_fd_limit()));
        tracing::info!(
            max_connections,
            worker_threads = options.worker_threads,
            "client connection cap over all inbounds"
        );
        let shared = Arc::new(Shared {
            http: Arc::new(HttpContext::new(&options, Arc::clone(&clock))),
            latency_clock: options
                .latency_clock
                .clone()
                .unwrap_or_else(|| Arc::new(PreciseMonotonicClock)),
            clock,
            options,
            inbounds: ArcSwap::from_pointee(Vec::new()),
            config: ArcSwap::from_pointee(Vec::new()),
            status: watch::Sender::new(Status::default()),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            cap: Cap::new(max_connections),
            accept_errors: Default::default(),
            workers,
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), limits));
        tokio::spawn(sweep_upstreams(Arc::clone(&shared)));
        Ok(Proxy { shared, supervisor })
    }

    /// Follows what the proxy applied; `wait_for` a generation or a listener.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// The configuration last applied.
    pub fn config(&self) -> Arc<Vec<DataplaneLimits>> {
        self.shared.config.load_full()
    }

    /// The counters and bucket levels of every inbound, through a handle that can be kept.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats(Arc::clone(&self.shared))
    }

    /// Graceful shutdown: stop accepting, let in-flight HTTP requests and open TCP relays
    /// finish (up to the drain timeout), stop the worker threads, then return.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        let _ = self.supervisor.await;
        self.shared.connections.close();
        let drained = tokio::time::timeout(
            self.shared.options.drain_timeout,
            self.shared.connections.wait(),
        )
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = self.shared.connections.len(),
                "drain timeout reached; closing the remaining connections"
            );
        }
        self.shared.workers.stop().await;
    }
}

/// How often the idle connections to the applications are looked at (see
/// [`crate::upstream::UpstreamPool::sweep`]).
const UPSTREAM_SWEEP: Duration = Duration::from_secs(5);

/// Closes idle upstream connections the applications closed, until shutdown.
async fn sweep_upstreams(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(UPSTREAM_SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {
                for inbound in shared.inbounds.load().iter() {
                    inbound.upstream.sweep();
                }
            }
        }
    }
}

/// How often a configuration with addresses that could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

async fn supervise(
    shared: Arc<Shared>,
    mut limits: watch::Receiver<Versioned<Vec<DataplaneLimits>>>,
) {
    let mut running: BTreeMap<InboundKey, Listener> = BTreeMap::new();
    let mut following = true;
    let mut applied: Option<Vec<DataplaneLimits>> = None;
    let mut unbound = false;
    loop {
        let wanted = limits.borrow_and_update().clone();
        if unbound || applied.as_ref() != Some(&wanted.value) {
            unbound = reconcile(&shared, &mut running, wanted.value.clone(), wanted.version).await;
            applied = Some(wanted.value);
        } else {
            shared
                .status
                .send_if_modified(|status| set_version(status, wanted.version));
        }
        let retry = async {
            if unbound {
                tokio::time::sleep(BIND_RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            changed = limits.changed(), if following => {
                if changed.is_err() {
                    // The source is gone: keep enforcing the last limits until shutdown.
                    following = false;
                }
            }
            () = retry => {}
        }
    }
    for listener in running.into_values() {
        listener.stop().await;
    }
}

/// Moves the version of limits already applied.
fn set_version(status: &mut Status, version: Option<u64>) -> bool {
    let changed = status.version != version;
    status.version = version;
    changed
}
