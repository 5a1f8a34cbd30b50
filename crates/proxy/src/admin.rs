//! The admin endpoint: `/metrics` (Prometheus or OpenMetrics text, from any number of sources), `/ready`
//! and `/config` (the effective limits as JSON). It serves itself ([`Admin::serve`]) or becomes
//! routes of a larger axum server ([`Admin::router`], merged into the control plane's API by
//! the all-in-one).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::limits::{self, Cap};
use crate::proxy::Proxy;
use crate::state::Shared;
use crate::{exposition, metrics};

/// Something that adds metric families to `/metrics`: at each scrape it registers its
/// metrics or collectors into that scrape's registry (helpers in [`crate::exposition`]).
pub trait MetricsSource: Send + Sync + 'static {
    fn register(&self, registry: &mut Registry);
}

/// Families encoded at scrape time by a function of their source (a collector without the
/// boilerplate).
pub struct Collected<T>(pub T, pub fn(&T, DescriptorEncoder<'_>) -> std::fmt::Result);

impl<T> std::fmt::Debug for Collected<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("collected families")
    }
}

impl<T: Send + Sync + 'static> Collector for Collected<T> {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        (self.1)(&self.0, encoder)
    }
}

/// Something `/ready` waits for: `Err(reason)` while it is not ready.
pub trait ReadinessSource: Send + Sync + 'static {
    fn ready(&self) -> Result<(), String>;
}

/// What `/config` shows.
pub trait ConfigSource: Send + Sync + 'static {
    fn config_json(&self) -> serde_json::Value;
}

/// The admin endpoint's routes and where their content comes from.
#[derive(Clone, Default)]
pub struct Admin {
    metrics: Vec<Arc<dyn MetricsSource>>,
    readiness: Vec<Arc<dyn ReadinessSource>>,
    config: Option<Arc<dyn ConfigSource>>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    token: Option<String>,
    /// Connections [`Admin::serve`] holds at once; beyond it, new ones are closed at once.
    max_connections: Option<usize>,
}

/// The admin endpoint's own connection cap: small, as its clients are a few scrapers and
/// operators, and apart from the inbounds', so that it answers while they are saturated.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

impl Admin {
    /// An admin endpoint with no sources: `/metrics` empty, `/ready` ready, no `/config`.
    pub fn new() -> Admin {
        Admin::default()
    }

    /// The proxy's counters and buckets in `/metrics`, its status in `/ready` (ready once a
    /// configuration from its source is applied with every inbound bound), its limits in
    /// `/config`.
    pub fn for_proxy(proxy: &Proxy) -> Admin {
        let view = Arc::new(ProxyView(Arc::clone(&proxy.shared)));
        Admin::new()
            .with_metrics(view.clone())
            .with_readiness(view.clone())
            .with_config(view)
    }

    pub fn with_metrics(mut self, source: Arc<dyn MetricsSource>) -> Admin {
        self.metrics.push(source);
        self
    }

    pub fn with_readiness(mut self, source: Arc<dyn ReadinessSource>) -> Admin {
        self.readiness.push(source);
        self
    }

    pub fn with_config(mut self, source: Arc<dyn ConfigSource>) -> Admin {
        self.config = Some(source);
        self
    }

    /// Requires `Authorization: Bearer <token>` on every request (401 otherwise), for an
    /// endpoint reachable from other hosts.
    pub fn with_token(mut self, token: Option<String>) -> Admin {
        self.token = token;
        self
    }

    /// Caps the connections [`Admin::serve`] holds at once (default [`ADMIN_MAX_CONNECTIONS`]).
    pub fn with_max_connections(mut self, max: usize) -> Admin {
        self.max_connections = Some(max);
        self
    }

    /// `/metrics`, `/ready` and `/config` as axum routes, to merge into another router (which
    /// keeps its own fallback for every other path).
    pub fn router(self) -> axum::Router {
        let admin = Arc::new(self);
        let handler = move |request: axum::extract::Request| {
            let admin = Arc::clone(&admin);
            async move { admin.respond(request.method(), request.uri().path(), request.headers()) }
        };
        axum::Router::new()
            .route("/metrics", axum::routing::any(handler.clone()))
            .route("/ready", axum::routing::any(handler.clone()))
            .route("/config", axum::routing::any(handler))
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
        let cap = Cap::new(self.max_connections.unwrap_or(ADMIN_MAX_CONNECTIONS));
        let unbounded = Cap::new(usize::MAX);
        let admin = Arc::new(self);
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limits::admit(&cap, &unbounded) else {
                drop(stream);
                continue;
            };
            let admin = Arc::clone(&admin);
            let stop = stop.clone();
            connections.spawn(async move {
                let _permit = permit;
                let service = service_fn(move |request| {
                    let admin = Arc::clone(&admin);
                    async move {
                        Ok::<_, Infallible>(admin.respond(
                            request.method(),
                            request.uri().path(),
                            request.headers(),
                        ))
                    }
                });
                // A scraper that connects and sends nothing must not hold a slot for long.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
        stop.cancel();
        connections.close();
        connections.wait().await;
    }

    fn respond(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        if let Some(token) = &self.token {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer)
                .map(str::trim);
            if !presented.is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes())) {
                let mut response = text(
                    StatusCode::UNAUTHORIZED,
                    "a bearer token is required\n".into(),
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
        }
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match path {
            "/metrics" => {
                let mut registry = Registry::default();
                exposition::register_build_info(&mut registry);
                for source in &self.metrics {
                    source.register(&mut registry);
                }
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (body, content_type) = exposition::render(&registry, accept);
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                response
            }
            "/ready" => {
                let problems: Vec<String> = self
                    .readiness
                    .iter()
                    .filter_map(|source| source.ready().err())
                    .collect();
                if problems.is_empty() {
                    text(StatusCode::OK, "ready\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n{}\n", problems.join("\n")),
                    )
                }
            }
            "/config" => match &self.config {
                Some(source) => {
                    let body = serde_json::to_string_pretty(&source.config_json())
                        .unwrap_or_else(|error| format!("{{\"error\": {:?}}}", error.to_string()));
                    let mut response = text(StatusCode::OK, body + "\n");
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                None => text(StatusCode::NOT_FOUND, "no configuration here\n".into()),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "try /metrics, /ready or /config\n".into(),
            ),
        }
    }
}

/// How long an admin connection may take to send a request head (and stay idle after one).
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The credentials of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A proxy as the source of all three routes.
struct ProxyView(Arc<Shared>);

impl MetricsSource for ProxyView {
    fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Collected(Arc::clone(&self.0), |shared, e| {
            metrics::encode(shared, e)
        })));
    }
}

impl ReadinessSource for ProxyView {
    fn ready(&self) -> Result<(), String> {
        let status = self.0.status.borrow();
        // An empty configuration is applied at start, before the source has sent any; ready
        // means enforcing one the source sent.
        if status.generation == 0 || status.version.is_none() {
            return Err("no configuration received yet".into());
        }
        if status.problems.is_empty() {
            Ok(())
        } else {
            let problems: Vec<String> = status.problems.iter().map(ToString::to_string).collect();
            Err(problems.join("\n"))
        }
    }
}

impl ConfigSource for ProxyView {
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.0.config.load_full()).unwrap_or(serde_json::Value::Null)
    }
}
