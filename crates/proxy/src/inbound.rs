//! One listening inbound: its identity, its counters, its current plan (swapped on
//! configuration changes, never locked) and its pool of connections to the application. Shared by the request path, the TCP relay, the
//! metrics and the supervisor; it knows none of them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use http::StatusCode;
use meshlimit_bucket::Clock;
use tokio_util::sync::CancellationToken;

use crate::limits::Cap;
use crate::plan::InboundPlan;
use crate::workers::Pools;

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

/// The decisions of one policy's limit on an inbound, which `/metrics` labels with the
/// policy's name (empty: the requests of an inbound without such a limit).
#[derive(Debug, Default)]
pub(crate) struct PolicyCounters {
    pub policy: String,
    pub allowed: Counter,
    pub limited: Counter,
    /// Admitted in `Shadow` mode, rejected had the mode been `Limit`.
    pub shadow_limited: Counter,
}

/// Every policy that has decided on an inbound, kept as long as the inbound, so that no count
/// goes back when another policy takes over. A plan holds the counters of its policy: the
/// request path never takes the lock, only compiling a plan and scraping do.
#[derive(Debug, Default)]
pub(crate) struct ByPolicy(Mutex<Vec<Arc<PolicyCounters>>>);

impl ByPolicy {
    /// The counters of `policy`, created on first use.
    pub(crate) fn of(&self, policy: &str) -> Arc<PolicyCounters> {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = all.iter().find(|c| c.policy == policy) {
            return Arc::clone(found);
        }
        let counters = Arc::new(PolicyCounters {
            policy: policy.to_string(),
            ..PolicyCounters::default()
        });
        all.push(Arc::clone(&counters));
        counters
    }

    pub(crate) fn all(&self) -> Vec<Arc<PolicyCounters>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One counter summed over every policy.
    pub(crate) fn sum(&self, counter: impl Fn(&PolicyCounters) -> &Counter) -> u64 {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter().map(|c| counter(c).get()).sum()
    }
}

/// Upper bounds of the latency histograms, in nanoseconds: 100 µs to 10 s.
pub(crate) const LATENCY_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram bumped on the request path: one relaxed addition to a bucket and one
/// to the sum; cumulated only when scraped.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Per bound of [`LATENCY_BOUNDS_NS`], then above the last.
    buckets: [Counter; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, ns: u64) {
        let bucket = LATENCY_BOUNDS_NS.partition_point(|bound| *bound < ns);
        self.buckets[bucket].inc();
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The count of each bucket by its bound (seconds; the last `+Inf`), the sum in
    /// seconds, the count.
    pub(crate) fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            count += bucket.get();
            let bound = LATENCY_BOUNDS_NS
                .get(i)
                .map_or(f64::INFINITY, |ns| *ns as f64 / 1e9);
            buckets.push((bound, bucket.get()));
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (buckets, sum, count)
    }
}

/// Who answered a request: the application (relayed), or the proxy itself (a rejection, a
/// refused or failed request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Application = 0,
    Proxy = 1,
}

/// Responses by who answered and status class (1xx to 5xx).
#[derive(Debug, Default)]
pub(crate) struct Responses([[Counter; 5]; 2]);

impl Responses {
    pub(crate) fn count(&self, source: Source, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.0[source as usize][class].inc();
    }

    pub(crate) fn get(&self, source: Source, class: usize) -> u64 {
        self.0[source as usize][class - 1].get()
    }
}

/// Every request counts once in `local` (the decision of the local limit, or allowed under
/// the empty policy when there is none); every request that limit admits counts once more in
/// `global` when the inbound has a global limit.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub local: ByPolicy,
    pub global: ByPolicy,
    /// Every answer, relayed or the proxy's own.
    pub responses: Responses,
    /// From a request's arrival to the end of its response body (or the end of the exchange,
    /// for a response cut short).
    pub request_duration: Histogram,
    /// From forwarding a request to the application to its response head.
    pub upstream_duration: Histogram,
    /// Requests answered 400: a malformed head (`malformed_head`, from the HTTP/1.1 parser)
    /// or body (`malformed_body`).
    pub malformed_heads: Counter,
    pub malformed_bodies: Counter,
    /// Requests answered 413 (body over `max_request_body_bytes`) and 431 (head over
    /// `max_request_header_bytes`).
    pub bodies_too_large: Counter,
    pub heads_too_large: Counter,
    /// Requests answered 503: the application could not be reached, or dropped the request.
    pub upstream_unavailable: Counter,
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

pub(crate) struct Inbound {
    pub key: InboundKey,
    pub local_addr: SocketAddr,
    pub counters: Counters,
    pub plan: ArcSwap<InboundPlan>,
    /// What request and upstream durations are measured with.
    pub latency_clock: Arc<dyn Clock>,
    /// Idle HTTP connections to the application, per worker.
    pub upstream: Pools,
    /// The inbound's open connections and its own cap (`usize::MAX` without one).
    pub cap: Arc<Cap>,
    /// Whether the last check of the shared store failed: an outage is logged when it starts
    /// and when it ends, not on every request.
    pub store_failing: AtomicBool,
    /// Cancelled when the inbound is removed or the proxy shuts down.
    pub stop: CancellationToken,
}
