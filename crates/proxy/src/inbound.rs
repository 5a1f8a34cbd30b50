//! One listening inbound: its identity, its counters, its current plan (swapped on
//! configuration changes, never locked), and the accept loop where each connection takes its
//! TCP token before being served as HTTP or relayed as TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use meshlimit_bucket::Clock;
use meshlimit_policy::effective::Protocol;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, HttpContext};
use crate::plan::InboundPlan;
use crate::tcp;

/// Which inbound of which Dataplane. Its listener lives as long as the key stays configured
/// (and its address does not change).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundKey {
    pub mesh: String,
    pub dataplane: String,
    /// The configured port (`0` lets the system pick; see [`crate::ListenerStatus`]).
    pub port: u16,
}

/// A counter bumped on the hot path: relaxed, never read there.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub http_allowed: Counter,
    pub http_limited: Counter,
    pub tcp_allowed: Counter,
    pub tcp_limited: Counter,
}

#[derive(Debug)]
pub(crate) struct Inbound {
    pub key: InboundKey,
    pub local_addr: SocketAddr,
    pub counters: Counters,
    pub plan: ArcSwap<InboundPlan>,
    /// Cancelled when the inbound is removed or the proxy shuts down.
    pub stop: CancellationToken,
}

/// Accepts until the inbound stops. A connection over the TCP limit is closed at once.
pub(crate) async fn accept_loop(
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
