//! The API's listener: HTTP/1.1 connections served by the axum router, at most
//! [`ServeOptions::max_connections`] at once (beyond it a new connection is closed at once,
//! before anything is read, and counted), each given [`ServeOptions::request_headers_timeout`]
//! to send a request head, so that silent or slow clients cannot hold descriptors. Watch
//! streams are long requests, not idle connections: the timeout never cuts them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::ops::Metrics;

/// The default cap: watch streams hold one connection per data plane and kernel agent, so it
/// is well above the proxy admin endpoint's, and far below a default descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// As the proxy's: a client has this long to send a request head.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

/// How the API listener bounds its clients.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections held at once; more are closed at accept.
    pub max_connections: usize,
    /// How long a connection may take to send a request head (and stay silent between
    /// requests); past it the connection is closed. `None`: forever.
    pub request_headers_timeout: Option<Duration>,
    /// Where refused connections are counted (`meshlimit_api_connections_refused_total`).
    pub metrics: Option<Metrics>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_headers_timeout: Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            metrics: None,
        }
    }
}

/// Serves `router` on `listener` with `options` until the future is dropped, which ends every
/// connection. (No graceful drain: watch streams never end by themselves, and every
/// acknowledged write is already durable.)
pub async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    options: ServeOptions,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => {
                // Out of descriptors, most likely: wait for connections to end, not spin.
                tracing::warn!(%error, "API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refuse(stream, peer, &options, &mut refused);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let timeout = options.request_headers_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, %peer, "API connection ended with an error");
            }
        });
    }
}

/// Closes a connection over the cap at once, before reading anything.
fn refuse(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    options: &ServeOptions,
    refused: &mut u64,
) {
    drop(stream);
    if let Some(metrics) = &options.metrics {
        metrics.connection_refused();
    }
    *refused += 1;
    // Say so once, then every 1000th, not at every connection of a flood.
    if *refused == 1 || refused.is_multiple_of(1000) {
        tracing::warn!(
            %peer,
            refused = *refused,
            max = options.max_connections,
            "API: connection refused, the listener holds its maximum"
        );
    }
}

/// Errors that concern one connection only (it was reset before it was accepted).
fn is_per_connection(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}
