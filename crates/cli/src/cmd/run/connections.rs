//! The flags of the proxy shared by `meshlimit run` and `meshlimit dataplane` (how it bounds
//! client connections and requests, which rate-limit header fields it sends), and the
//! descriptor limit raised at start.

use std::time::Duration;

use crate::cmd::parse_duration;
use meshlimit_proxy::{
    FdLimit, ProxyOptions, RateLimitHeaders, default_max_connections, raise_fd_limit,
};

/// The rate-limit header fields, as `--rate-limit-headers` names them.
#[derive(Clone, Copy, clap::ValueEnum)]
enum HeaderStyle {
    /// IETF draft 10: `RateLimit-Policy` and `RateLimit`, named after the policy.
    Ietf,
    /// Envoy's draft 03 fields: `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    XRatelimit,
}

#[derive(clap::Args)]
pub struct ConnectionArgs {
    /// Send rate-limit header fields on every answer of a limited inbound, and `Retry-After`
    /// on rejections: `ietf` (the default when the flag has no value) or `x-ratelimit`
    /// (Envoy's). Off without the flag, as in Envoy.
    #[arg(
        long,
        value_name = "STYLE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "ietf"
    )]
    rate_limit_headers: Option<HeaderStyle>,
    /// Largest request head a client may send (bytes); larger ones get 431.
    #[arg(long, value_name = "BYTES", default_value_t = ProxyOptions::default().max_request_header_bytes)]
    max_request_header_bytes: usize,
    /// Largest request body forwarded (bytes); larger ones get 413. Default: no limit.
    #[arg(long, value_name = "BYTES")]
    max_request_body_bytes: Option<u64>,
    /// How long the application may take to send a response head, e.g. `15s` (Envoy's route
    /// timeout); past it the request gets 504. `0s` waits forever.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// How long a new connection may take to send its first request head (HTTP/2: its first
    /// request, preface included), e.g. `10s`; past it the connection is closed. `0s` waits
    /// forever (Envoy's default).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    request_headers_timeout: Duration,
    /// How long a connection with no request in flight stays open, e.g. `1h` (Envoy's
    /// idle_timeout); HTTP/2 connections are sent GOAWAY. `0s` keeps them forever.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Client connections open at once over all inbounds; beyond it new ones are closed at
    /// once. Default: (soft descriptor limit - 256) / 2, so that the admin endpoint and the
    /// upstream connections always have descriptors.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Client connections open at once on one inbound. Default: only --max-connections.
    #[arg(long, value_name = "N")]
    max_connections_per_inbound: Option<usize>,
    /// Forward CONNECT requests to the application (default: answered 404, as Envoy does).
    #[arg(long)]
    forward_connect: bool,
    /// Threads serving traffic, each keeping the connections handed to it from start to end
    /// (as Envoy's --concurrency workers); 1 serves everything on one thread. Default: one per
    /// core.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    worker_threads: Option<usize>,
}

impl ConnectionArgs {
    /// These flags in `options`, with the process-wide cap derived from `fd_limit` unless
    /// given.
    pub fn apply(&self, options: &mut ProxyOptions, fd_limit: FdLimit) -> anyhow::Result<()> {
        if self.max_connections == Some(0) || self.max_connections_per_inbound == Some(0) {
            anyhow::bail!("--max-connections and --max-connections-per-inbound must be at least 1");
        }
        options.rate_limit_headers = match self.rate_limit_headers {
            None => RateLimitHeaders::Off,
            Some(HeaderStyle::Ietf) => RateLimitHeaders::Ietf,
            Some(HeaderStyle::XRatelimit) => RateLimitHeaders::XRateLimit,
        };
        options.max_request_header_bytes = self.max_request_header_bytes;
        options.max_request_body_bytes = self.max_request_body_bytes;
        options.upstream_timeout = self.upstream_timeout;
        options.request_headers_timeout = self.request_headers_timeout;
        options.idle_timeout = self.idle_timeout;
        options.max_connections = Some(
            self.max_connections
                .unwrap_or_else(|| default_max_connections(fd_limit.soft)),
        );
        options.max_connections_per_inbound = self.max_connections_per_inbound;
        options.forward_connect = self.forward_connect;
        // `--worker-threads`, or one per core; with one, the process's own runtime serves the
        // connections too.
        let threads = self
            .worker_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        options.worker_threads = if threads > 1 { threads } else { 0 };
        Ok(())
    }
}

/// Raises the soft descriptor limit to the hard one and says what the limit is.
pub fn raise_and_describe_fd_limit() -> (FdLimit, String) {
    let limit = raise_fd_limit();
    let show =
        |value: Option<u64>| value.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
    let line = format!(
        "open file limit: {} (hard limit {}{})",
        show(limit.soft),
        show(limit.hard),
        if limit.raised {
            ", soft limit raised to it"
        } else {
            ""
        }
    );
    (limit, line)
}
