//! One listening inbound: its identity, its counters, its current plan (swapped on
//! configuration changes, never locked) and its pool of connections to the application. Shared by the request path, the TCP relay, the
//! metrics and the supervisor; it knows none of them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::limits::Cap;
use crate::plan::InboundPlan;
use crate::upstream::UpstreamPool;

/// Which inbound of which Dataplane. Its listener lives as long as the key stays configured
/// (and its address does not change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundKey {
    pub mesh: String,
    pub dataplane: String,
    /// The configured port (`0` lets the system pick; see [`crate::ListenerStatus`]).
    pub port: u16,
}

impl fmt::Display for InboundKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.mesh, self.dataplane, self.port)
    }
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

/// Every request counts once in `http_*` (the decision of the local limit, or allowed when
/// there is none); every request that limit admits counts once more in `global_allowed`,
/// `global_limited` or `global_shadow_limited` when the inbound has a global limit.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub http_allowed: Counter,
    pub http_limited: Counter,
    pub global_allowed: Counter,
    pub global_limited: Counter,
    /// Admitted in `Shadow` mode, rejected had the mode been `Limit`.
    pub global_shadow_limited: Counter,
    /// Checks of the shared store that failed or timed out; each is decided by a fallback.
    pub global_errors: Counter,
    pub global_fallbacks_open: Counter,
    pub global_fallbacks_closed: Counter,
    pub global_fallbacks_local_share: Counter,
    /// Forwarded requests whose response head did not arrive within the upstream timeout.
    pub upstream_timeouts: Counter,
    /// Responses the application broke off mid-body (closed early, reset).
    pub upstream_resets: Counter,
    pub tcp_allowed: Counter,
    pub tcp_limited: Counter,
    /// Connections accepted and closed at once: the inbound's cap, or the process's, was full.
    pub refused_inbound_cap: Counter,
    pub refused_process_cap: Counter,
    /// Connections closed for sending no request head in time, or for staying idle.
    pub request_headers_timeouts: Counter,
    pub idle_timeouts: Counter,
    /// `CONNECT` requests answered 404.
    pub connect_refused: Counter,
}

#[derive(Debug)]
pub(crate) struct Inbound {
    pub key: InboundKey,
    pub local_addr: SocketAddr,
    pub counters: Counters,
    pub plan: ArcSwap<InboundPlan>,
    /// Idle HTTP connections to the application.
    pub upstream: UpstreamPool,
    /// The inbound's open connections and its own cap (`usize::MAX` without one).
    pub cap: Arc<Cap>,
    /// Whether the last check of the shared store failed: an outage is logged when it starts
    /// and when it ends, not on every request.
    pub store_failing: AtomicBool,
    /// Cancelled when the inbound is removed or the proxy shuts down.
    pub stop: CancellationToken,
}
