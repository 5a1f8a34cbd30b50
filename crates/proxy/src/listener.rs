//! One inbound's listener: bound with its first plan, an accept loop where each connection
//! takes its TCP token before being served as HTTP or relayed as TCP, and a stop that waits
//! for the loop (connections already accepted go on).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshlimit_bucket::Clock;
use meshlimit_policy::effective::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::http::{self, HttpContext};
use crate::inbound::{Counter, Counters, Inbound, InboundKey};
use crate::limits::{self, Cap, Refused};
use crate::plan::InboundPlan;
use crate::state::{ListenerStatus, Shared};
use crate::tcp;
use crate::workers::Workers;

/// A bound inbound and the task accepting on it.
pub(crate) struct Listener {
    pub inbound: Arc<Inbound>,
    accept: JoinHandle<()>,
}

impl Listener {
    /// Binds `address:key.port` and starts accepting with `plan`.
    pub(crate) async fn start(
        shared: &Shared,
        key: InboundKey,
        address: IpAddr,
        plan: InboundPlan,
        counters: Counters,
    ) -> io::Result<Listener> {
        let listener = TcpListener::bind((address, key.port)).await?;
        let local_addr = listener.local_addr()?;
        tracing::info!(
            inbound = %key,
            address = %local_addr,
            upstream = %plan.upstream,
            protocol = ?plan.protocol,
            "listening"
        );
        let inbound = Arc::new(Inbound {
            key,
            local_addr,
            counters,
            plan: ArcSwap::from_pointee(plan),
            latency_clock: Arc::clone(&shared.latency_clock),
            upstream: shared.workers.pools(),
            cap: Cap::new(
                shared
                    .options
                    .max_connections_per_inbound
                    .unwrap_or(usize::MAX),
            ),
            store_failing: Default::default(),
            stop: shared.shutdown.child_token(),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&inbound),
            Accepting {
                http: Arc::clone(&shared.http),
                clock: Arc::clone(&shared.clock),
                tracker: shared.connections.clone(),
                cap: Arc::clone(&shared.cap),
                accept_errors: Arc::clone(&shared.accept_errors),
                workers: Arc::clone(&shared.workers),
            },
        ));
        Ok(Listener { inbound, accept })
    }

    /// Stops accepting and returns once the port is released.
    pub(crate) async fn stop(self) {
        self.inbound.stop.cancel();
        let _ = self.accept.await;
    }

    pub(crate) fn status(&self) -> ListenerStatus {
        let plan = self.inbound.plan.load();
        ListenerStatus {
            key: self.inbound.key.clone(),
            protocol: plan.protocol,
            local_addr: self.inbound.local_addr,
            upstream: plan.upstream,
        }
    }
}

/// What every accept loop of a proxy shares.
struct Accepting {
    http: Arc<HttpContext>,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
    cap: Arc<Cap>,
    accept_errors: Arc<Counter>,
    workers: Arc<Workers>,
}

/// Accepts until the inbound stops. A connection beyond a connection cap, or over the TCP
/// limit, is closed at once: accepting it takes it out of the backlog, so that clients are
/// told at once instead of waiting on a full queue.
async fn accept_loop(listener: TcpListener, inbound: Arc<Inbound>, accepting: Accepting) {
    let Accepting {
        http: http_ctx,
        clock,
        tracker,
        cap,
        accept_errors,
        workers,
    } = accepting;
    loop {
        let accepted = tokio::select! {
            () = inbound.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                accept_errors.inc();
                tracing::warn!(%error, address = %inbound.local_addr, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before the TCP token: a refused connection costs the inbound's limit nothing.
        let permit = match limits::admit(&cap, &inbound.cap) {
            Ok(permit) => permit,
            Err(refused) => {
                match refused {
                    Refused::Process => inbound.counters.refused_process_cap.inc(),
                    Refused::Inbound => inbound.counters.refused_inbound_cap.inc(),
                }
                drop(stream);
                continue;
            }
        };
        let plan = inbound.plan.load_full();
        if let Some(bucket) = &plan.tcp
            && !bucket.check(clock.now_ns()).admitted()
        {
            inbound.counters.tcp_limited.inc();
            drop(stream);
            continue;
        }
        inbound.counters.tcp_allowed.inc();
        let serve = Serve {
            inbound: Arc::clone(&inbound),
            http: Arc::clone(&http_ctx),
            protocol: plan.protocol,
            upstream: plan.upstream,
        };
        let Some(worker) = workers.next() else {
            tracker.spawn(async move {
                serve.run(stream).await;
                drop(permit);
            });
            continue;
        };
        // Out of this runtime's reactor, into the worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                accept_errors.inc();
                tracing::warn!(%error, address = %inbound.local_addr, "cannot hand a connection to a worker");
                continue;
            }
        };
        tracker.spawn_on(
            async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve.run(stream).await,
                    Err(error) => {
                        tracing::warn!(%error, "a worker cannot take a connection");
                    }
                }
                drop(permit);
            },
            worker,
        );
    }
}

/// What serves one admitted connection, wherever it runs.
struct Serve {
    inbound: Arc<Inbound>,
    http: Arc<HttpContext>,
    protocol: Protocol,
    upstream: std::net::SocketAddr,
}

impl Serve {
    async fn run(self, stream: TcpStream) {
        match self.protocol {
            Protocol::Http => http::serve_connection(stream, self.inbound, self.http).await,
            Protocol::Tcp => tcp::relay(stream, self.inbound, self.upstream).await,
        }
    }
}
