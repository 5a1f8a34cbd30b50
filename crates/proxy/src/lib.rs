//! meshlimit's userspace data plane. For every inbound of a Dataplane it listens on
//! `address:port` and forwards to the application on `127.0.0.1:servicePort`: HTTP inbounds
//! (HTTP/1.1 and HTTP/2 on one port) take one token per request and answer rejected requests
//! themselves with the policy's status and headers; TCP inbounds take one token per connection
//! and close the ones over the limit. Limits arrive through a `tokio::sync::watch` channel and
//! change live, without dropping connections or resetting unchanged buckets.
//!
//! An HTTP inbound may have two limits, checked in Envoy's order: its `MeshRateLimit` (this
//! instance's bucket) first, then, for the requests that one admits, its
//! `MeshGlobalRateLimit` (a total for every instance of the service). The total is counted in
//! a [`SharedBuckets`] store when [`ProxyOptions::shared`] has one — within the limit's
//! timeout, its failure mode deciding when the store fails — and otherwise each instance
//! enforces the share of the total the policy engine computed for it.
//!
//! Start reading at [`Proxy::spawn`] (`proxy.rs`), whose supervisor applies each configuration
//! in the phases of `reconcile.rs`; the request path is `http.rs`, read top to bottom (its
//! first phase, `admit`, takes the local limit's token, then the global limit's); every
//! answer the proxy gives itself is built in `error.rs`; what one inbound does is compiled in
//! `plan.rs`; the admin endpoint (`/metrics`, `/ready`, `/config`) is [`Admin`].
//!
//! Each module uses only modules listed before it: `store` (the [`SharedBuckets`] interface)
//! and `plan` (no dependencies), `options`, `error`, `limits` (connection caps, the descriptor limit), `upstream` (the pool
//! of connections to the application), `workers` (the runtimes connections are served on), `inbound` (an inbound's key, counters, current plan and
//! upstream pool), `http` and `tcp` (one connection each), `state` (what the tasks share,
//! [`Status`], [`ProxyProblem`]), `metrics`, `listener` (bind, accept, stop), `reconcile`,
//! `proxy`, and `admin` on top.

mod admin;
mod error;
pub mod exposition;
mod http;
mod inbound;
mod limits;
mod listener;
mod metrics;
mod options;
mod plan;
mod proxy;
mod reconcile;
mod state;
mod store;
mod tcp;
mod upstream;
mod workers;

pub use admin::{
    ADMIN_MAX_CONNECTIONS, Admin, Collected, ConfigSource, MetricsSource, ReadinessSource,
};
pub use inbound::InboundKey;
pub use limits::{FdLimit, default_max_connections, raise_fd_limit};
pub use metrics::{InboundStats, ProxyStats};
pub use options::{ProxyOptions, RateLimitHeaders};
pub use proxy::Proxy;
pub use state::{ListenerStatus, ProxyProblem, Status};
pub use store::{SharedBuckets, SharedCheck, SharedError};
