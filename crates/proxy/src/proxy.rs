//! The proxy: follows a `watch` channel of effective limits and keeps one listener per
//! configured inbound, adding, re-planning and removing them as the limits change.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meshlimit_bucket::Clock;
use meshlimit_policy::effective::{DataplaneLimits, InboundLimits, Protocol};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::HttpContext;
use crate::inbound::{Inbound, InboundKey, accept_loop};
use crate::metrics::ProxyStats;
use crate::options::ProxyOptions;
use crate::plan::compile;

/// What the proxy is doing after the last configuration it applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// How many configurations have been applied; 0 until the first one is.
    pub generation: u64,
    /// Every inbound being served, with the address it is bound to.
    pub listeners: Vec<ListenerStatus>,
    /// What could not be applied (an address that cannot be bound, an invalid limit); such an
    /// inbound keeps its previous limits, or has no listener if it is new.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub key: InboundKey,
    pub protocol: Protocol,
    /// The bound address; with a configured port 0, this is where the system put it.
    pub local_addr: SocketAddr,
    /// Where requests and connections go: `127.0.0.1:servicePort`.
    pub upstream: SocketAddr,
}

impl fmt::Display for InboundKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.mesh, self.dataplane, self.port)
    }
}

/// State shared by the supervisor, the admin endpoint and the connection tasks.
pub(crate) struct Shared {
    pub clock: Arc<dyn Clock>,
    pub options: ProxyOptions,
    pub http: Arc<HttpContext>,
    /// The inbounds being served, for metrics.
    pub inbounds: ArcSwap<Vec<Arc<Inbound>>>,
    /// The last configuration applied, for `/config`.
    pub config: ArcSwap<Vec<DataplaneLimits>>,
    pub status: watch::Sender<Status>,
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
}

/// A running proxy. Dropping it leaves the listeners running until the runtime stops; call
/// [`Proxy::shutdown`] to stop accepting and drain.
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

impl Proxy {
    /// Starts serving on the current tokio runtime. Every value of `limits` (the current one
    /// first) is applied: listeners are bound for new inbounds, removed inbounds stop
    /// accepting (their in-flight requests finish), and changed limits take effect on the next
    /// request of existing connections, keeping the tokens of buckets whose settings did not
    /// change.
    pub fn spawn(
        options: ProxyOptions,
        clock: Arc<dyn Clock>,
        limits: watch::Receiver<Vec<DataplaneLimits>>,
    ) -> Proxy {
        let shared = Arc::new(Shared {
            http: Arc::new(HttpContext::new(&options, Arc::clone(&clock))),
            clock,
            options,
            inbounds: ArcSwap::from_pointee(Vec::new()),
            config: ArcSwap::from_pointee(Vec::new()),
            status: watch::Sender::new(Status::default()),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), limits));
        Proxy { shared, supervisor }
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
    /// finish (up to the drain timeout), then return.
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
    }
}

struct Running {
    inbound: Arc<Inbound>,
    accept: JoinHandle<()>,
}

/// How often a configuration with addresses that could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

async fn supervise(shared: Arc<Shared>, mut limits: watch::Receiver<Vec<DataplaneLimits>>) {
    let mut running: BTreeMap<InboundKey, Running> = BTreeMap::new();
    let mut following = true;
    loop {
        let config = limits.borrow_and_update().clone();
        let unbound = reconcile(&shared, &mut running, config).await;
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
    for (_, run) in running {
        run.inbound.stop.cancel();
        let _ = run.accept.await;
    }
}

/// Applies one configuration. Returns whether some inbound could not be bound.
async fn reconcile(
    shared: &Shared,
    running: &mut BTreeMap<InboundKey, Running>,
    config: Vec<DataplaneLimits>,
) -> bool {
    let now_ns = shared.clock.now_ns();
    let mut problems = Vec::new();
    let mut unbound = false;
    let mut desired: BTreeMap<InboundKey, (IpAddr, &InboundLimits)> = BTreeMap::new();
    for dataplane in &config {
        let Ok(address) = dataplane.address.parse::<IpAddr>() else {
            problems.push(format!(
                "{}/{}: networking.address {:?} is not an IP address",
                dataplane.mesh, dataplane.dataplane, dataplane.address
            ));
            continue;
        };
        for inbound in &dataplane.inbounds {
            let key = InboundKey {
                mesh: dataplane.mesh.clone(),
                dataplane: dataplane.dataplane.clone(),
                port: inbound.port,
            };
            if desired.contains_key(&key) {
                problems.push(format!(
                    "{key}: declared twice; the first declaration is served"
                ));
                continue;
            }
            desired.insert(key, (address, inbound));
        }
    }

    // Stop what is gone (or moved to another address) before binding anything new, so that
    // a port can move between inbounds in one change.
    let gone: Vec<InboundKey> = running
        .iter()
        .filter(|(key, run)| {
            desired
                .get(key)
                .is_none_or(|(address, _)| run.inbound.local_addr.ip() != *address)
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in gone {
        if let Some(run) = running.remove(&key) {
            run.inbound.stop.cancel();
            let _ = run.accept.await;
            tracing::info!(inbound = %key, address = %run.inbound.local_addr, "stopped listening");
        }
    }

    for (key, (address, limits)) in desired {
        if let Some(run) = running.get(&key) {
            let previous = run.inbound.plan.load();
            let plan = compile(limits, Some(&previous), now_ns);
            run.inbound.plan.store(Arc::new(plan));
            continue;
        }
        let plan = compile(limits, None, now_ns);
        let bound = TcpListener::bind((address, key.port))
            .await
            .and_then(|listener| Ok((listener.local_addr()?, listener)));
        let (local_addr, listener) = match bound {
            Ok(bound) => bound,
            Err(error) => {
                unbound = true;
                problems.push(format!(
                    "{key}: cannot listen on {}: {error}",
                    SocketAddr::from((address, key.port))
                ));
                continue;
            }
        };
        tracing::info!(
            inbound = %key,
            address = %local_addr,
            upstream = %plan.upstream,
            protocol = ?plan.protocol,
            "listening"
        );
        let inbound = Arc::new(Inbound {
            key: key.clone(),
            local_addr,
            counters: Default::default(),
            plan: ArcSwap::from_pointee(plan),
            stop: shared.shutdown.child_token(),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&inbound),
            Arc::clone(&shared.http),
            Arc::clone(&shared.clock),
            shared.connections.clone(),
        ));
        running.insert(key, Running { inbound, accept });
    }

    for problem in &problems {
        tracing::error!("{problem}");
    }
    let listeners = running
        .values()
        .map(|run| {
            let plan = run.inbound.plan.load();
            ListenerStatus {
                key: run.inbound.key.clone(),
                protocol: plan.protocol,
                local_addr: run.inbound.local_addr,
                upstream: plan.upstream,
            }
        })
        .collect();
    shared.inbounds.store(Arc::new(
        running
            .values()
            .map(|run| Arc::clone(&run.inbound))
            .collect(),
    ));
    shared.config.store(Arc::new(config));
    shared.status.send_modify(|status| {
        status.generation += 1;
        status.listeners = listeners;
        status.problems = problems;
    });
    unbound
}
