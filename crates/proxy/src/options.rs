//! Knobs of the proxy that are not part of any policy.

use std::time::Duration;

/// How the proxy treats clients and upstreams, independent of the limits it enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// How long a graceful shutdown waits for in-flight requests and open TCP relays.
    pub drain_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            max_request_body_bytes: None,
            rate_limit_headers: false,
            drain_timeout: Duration::from_secs(10),
        }
    }
}
