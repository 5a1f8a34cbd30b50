//! Knobs of the proxy that are not part of any policy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::store::SharedBuckets;

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
    /// Add `Retry-After` (rejections) and the IETF `RateLimit` / `RateLimit-Policy` header
    /// fields (every response of a limited inbound). Off by default: Kuma's policy does not ask
    /// for them and Envoy does not send them.
    pub rate_limit_headers: bool,
    /// How long the whole exchange with the application may take until its response head
    /// arrives (connecting, sending the request and its body, waiting): past it the request
    /// is dropped, its upstream connection closed, and the client answered 504. Envoy's route
    /// timeout, with its default of 15 s; `Duration::ZERO` disables it, as Envoy's `0s` does.
    pub upstream_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight requests and open TCP relays.
    pub drain_timeout: Duration,
    /// Where global limits (`MeshGlobalRateLimit`) are counted for all instances together.
    /// With a store, every global limit is checked there, within the limit's `timeout`, and
    /// the limit's failure mode decides when it fails; without one (the default), each
    /// instance enforces its share of the total locally.
    pub shared: Option<Arc<dyn SharedBuckets>>,
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
            rate_limit_headers: false,
            upstream_timeout: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(10),
            shared: None,
        }
    }
}

// A store has no useful `Debug` or equality of its own: it is shown as present or not, and
// two options are equal when they hold the same store.
impl fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("max_request_header_bytes", &self.max_request_header_bytes)
            .field("max_request_headers", &self.max_request_headers)
            .field("max_request_body_bytes", &self.max_request_body_bytes)
            .field("rate_limit_headers", &self.rate_limit_headers)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("shared", &self.shared.as_ref().map(|_| "SharedBuckets"))
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
            && self.drain_timeout == other.drain_timeout
            && match (&self.shared, &other.shared) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for ProxyOptions {}
