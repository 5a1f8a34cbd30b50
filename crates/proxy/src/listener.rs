//! One inbound's listener: bound with its first plan, an accept loop where each connection
//! takes its TCP token before being served as HTTP or relayed as TCP, and a stop that waits
//! for the loop (connections already accepted go on).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshlimit_bucket::Clock;
use meshlimit_policy::effective::Protocol;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::http::{self, HttpContext};
use crate::inbound::{Inbound, InboundKey};
use crate::plan::InboundPlan;
use crate::state::{ListenerStatus, Shared};
use crate::tcp;

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
            counters: Default::default(),
            plan: ArcSwap::from_pointee(plan),
            store_failing: Default::default(),
            stop: shared.shutdown.child_token(),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&inbound),
            Arc::clone(&shared.http),
            Arc::clone(&shared.clock),
            shared.connections.clone(),
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

/// Accepts until the inbound stops. A connection over the TCP limit is closed at once.
async fn accept_loop(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    http_ctx: Arc<HttpContext>,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = inbound.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(%error, address = %inbound.local_addr, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
        match plan.protocol {
            Protocol::Http => {
                tracker.spawn(http::serve_connection(
                    stream,
                    Arc::clone(&inbound),
                    Arc::clone(&http_ctx),
                ));
            }
            Protocol::Tcp => {
                tracker.spawn(tcp::relay(stream, Arc::clone(&inbound), plan.upstream));
            }
        }
    }
}
