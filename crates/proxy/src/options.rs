//! Knobs of the proxy that are not part of any policy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use meshlimit_bucket::Clock;

use crate::store::SharedBuckets;

/// Which rate-limit header fields responses of a limited inbound carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// None (Kuma's policy does not ask for them; Envoy sends none by default).
    #[default]
    Off,
    /// The IETF fields of draft-ietf-httpapi-ratelimit-headers-10: `RateLimit-Policy:
    /// "<policy>";q=<quota>;w=<window>` and `RateLimit: "<policy>";r=<remaining>;t=<seconds
    /// until the quota is whole again>`, plus `Retry-After` (never earlier than `t`) on
    /// rejections.
    Ietf,
    /// Envoy's `enable_x_ratelimit_headers: DRAFT_VERSION_03`: `X-RateLimit-Limit`,
    /// `X-RateLimit-Remaining` and `X-RateLimit-Reset`, plus `Retry-After` (seconds to the
    /// next token) on rejections.
    XRateLimit,
}

/// How the proxy treats clients and upstreams, independent of the limits it enforces.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Largest request head (request line and headers) a client may send, in bytes. Larger
    /// heads are answered with 431. Applies to HTTP/1 (read buffer) and HTTP/2 (header list).
    /// HTTP/1 needs at least 8 KiB; smaller values are raised to that.
    pub max_request_header_bytes: usize,
    /// Most header fields in one HTTP/1 request head.
    pub max_request_headers: usize,
    /// Largest request body forwarded to the application, in bytes; `None` means no limit.
    /// A declared `content-length` above it is answered with 413 at once; a streamed body that
    /// grows past it is cut and answered with 413 when no response has started yet.
    pub max_request_body_bytes: Option<u64>,
    /// The rate-limit header fields on every response of a limited inbound (the
    /// application's and the proxy's own, rejections with `Retry-After`).
    pub rate_limit_headers: RateLimitHeaders,
    /// How long the whole exchange with the application may take until its response head
    /// arrives (connecting, sending the request and its body, waiting): past it the request
    /// is dropped, its upstream connection closed, and the client answered 504. Envoy's route
    /// timeout, with its default of 15 s; `Duration::ZERO` disables it, as Envoy's `0s` does.
    pub upstream_timeout: Duration,
    /// How long a new connection may take to deliver its first complete request head (HTTP/1)
    /// or its first request (HTTP/2, counted from the accept, preface included); past it the
    /// connection is closed. Envoy has no such deadline by default (`request_headers_timeout`
    /// is off); 10 s protects by default against connections that send nothing or trickle a
    /// head. `Duration::ZERO` disables it.
    pub request_headers_timeout: Duration,
    /// How long a connection with no request in flight stays open (HTTP/1 keep-alive, HTTP/2
    /// after its last stream; HTTP/2 is sent GOAWAY). Envoy's `idle_timeout` default of 1 h.
    /// For HTTP/1 it also bounds a later request head trickled byte by byte.
    /// `Duration::ZERO` disables it.
    pub idle_timeout: Duration,
    /// Client connections open at once over all inbounds; a connection beyond it is accepted
    /// and closed at once (counted). `None`: derived from the file-descriptor limit at start
    /// ([`crate::default_max_connections`]), so that inbounds can never take the descriptors
    /// the admin endpoint and the upstream connections need.
    pub max_connections: Option<usize>,
    /// Client connections open at once on one inbound; beyond it, as above. `None`: only the
    /// process-wide cap applies.
    pub max_connections_per_inbound: Option<usize>,
    /// Forward `CONNECT` requests to the application. Off by default: they are answered 404
    /// without taking a token, as Envoy answers them when no route has a `connect_matcher`
    /// (Kuma's inbound routes have none).
    pub forward_connect: bool,
    /// How long a graceful shutdown waits for in-flight requests and open TCP relays.
    pub drain_timeout: Duration,
    /// Where global limits (`MeshGlobalRateLimit`) are counted for all instances together.
    /// With a store, every global limit is checked there, within the limit's `timeout`, and
    /// the limit's failure mode decides when it fails; without one (the default), each
    /// instance enforces its share of the total locally.
    pub shared: Option<Arc<dyn SharedBuckets>>,
    /// What request and upstream durations (the latency histograms) are measured with;
    /// `None`: the system's precise monotonic clock. Tests inject theirs.
    pub latency_clock: Option<Arc<dyn Clock>>,
    /// Threads of the proxy's own that serve connections, each with a single-threaded runtime:
    /// the accept loops (on the runtime that spawned the proxy) hand admitted connections to
    /// them in turn, and a connection stays on its worker from start to end, as with Envoy's
    /// `--concurrency` workers. 0 (the default): connections are served on the runtime that
    /// spawned the proxy.
    pub worker_threads: usize,
}

impl ProxyOptions {
    /// These options with global limits counted in `store`.
    pub fn with_shared(mut self, store: Arc<dyn SharedBuckets>) -> ProxyOptions {
        self.shared = Some(store);
        self
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            max_request_body_bytes: None,
            rate_limit_headers: RateLimitHeaders::Off,
            upstream_timeout: Duration::from_secs(15),
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_connections: None,
            max_connections_per_inbound: None,
            forward_connect: false,
            drain_timeout: Duration::from_secs(10),
            shared: None,
            latency_clock: None,
            worker_threads: 0,
        }
    }
}

// A store and a clock have no useful `Debug` or equality of its own: it is shown as present or not, and
// two options are equal when they hold the same store.
impl fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("max_request_header_bytes", &self.max_request_header_bytes)
            .field("max_request_headers", &self.max_request_headers)
            .field("max_request_body_bytes", &self.max_request_body_bytes)
            .field("rate_limit_headers", &self.rate_limit_headers)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("request_headers_timeout", &self.request_headers_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_inbound",
                &self.max_connections_per_inbound,
            )
            .field("forward_connect", &self.forward_connect)
            .field("drain_timeout", &self.drain_timeout)
            .field("shared", &self.shared.as_ref().map(|_| "SharedBuckets"))
            .field(
                "latency_clock",
                &self.latency_clock.as_ref().map(|_| "Clock"),
            )
            .field("worker_threads", &self.worker_threads)
            .finish()
    }
}

impl PartialEq for ProxyOptions {
    fn eq(&self, other: &Self) -> bool {
        self.max_request_header_bytes == other.max_request_header_bytes
            && self.max_request_headers == other.max_request_headers
            && self.max_request_body_bytes == other.max_request_body_bytes
            && self.rate_limit_headers == other.rate_limit_headers
            && self.upstream_timeout == other.upstream_timeout
            && self.request_headers_timeout == other.request_headers_timeout
            && self.idle_timeout == other.idle_timeout
            && self.max_connections == other.max_connections
            && self.max_connections_per_inbound == other.max_connections_per_inbound
            && self.forward_connect == other.forward_connect
            && self.drain_timeout == other.drain_timeout
            && self.worker_threads == other.worker_threads
            && match (&self.shared, &other.shared) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
            && match (&self.latency_clock, &other.latency_clock) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for ProxyOptions {}
