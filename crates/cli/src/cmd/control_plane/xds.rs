//! The control plane's xDS side (`--xds ADDR`): an ADS server fed from the store, so that every
//! committed change reaches the Envoy sidecars whose node id (`<mesh>.<dataplane>`) names a
//! Dataplane, and `GET /xds` on the API, which shows what each Envoy accepted and rejected.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meshlimit_control_plane::Snapshot;
use meshlimit_control_plane::wire::ErrorBody;
use meshlimit_xds::{XdsHandle, XdsServer, XdsStatus};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Whether `--xds ADDR` may be served: loopback always, anything else only when the user says
/// so, because xDS has no token (anyone who reaches it learns the limits and the topology).
pub fn check_address(addr: &SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        anyhow::bail!(
            "refusing to serve xDS on {addr}: xDS has no authentication, so only loopback \
             addresses are allowed unless you pass --xds-allow-remote (and restrict who can \
             reach the port)"
        )
    }
}

/// A bound ADS server, not serving yet.
pub struct Xds {
    server: XdsServer,
    pub handle: XdsHandle,
    listener: TcpListener,
    pub address: SocketAddr,
}

impl Xds {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Xds> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding xDS to {addr}"))?;
        let address = listener.local_addr()?;
        let (server, handle) = XdsServer::new();
        Ok(Xds {
            server,
            handle,
            listener,
            address,
        })
    }

    /// Serves ADS with every committed snapshot pushed to the connected Envoys. Returns only
    /// when the server fails.
    pub async fn serve(self, snapshots: watch::Receiver<Arc<Snapshot>>) -> anyhow::Result<()> {
        tokio::spawn(follow(snapshots, self.handle.clone()));
        self.server
            .serve(self.listener)
            .await
            .context("serving xDS")
    }
}

/// Replaces the server's limits with each new snapshot's (the newest one when several commits
/// land at once); the server resends only what changed for each node.
async fn follow(mut snapshots: watch::Receiver<Arc<Snapshot>>, handle: XdsHandle) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        handle.update(snapshot.effective.values().cloned().collect());
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

/// `GET /xds`: every Envoy node, what it was sent, acknowledged and rejected. Guarded by the
/// API token like the rest of the API.
pub fn router(handle: XdsHandle, token: Option<String>) -> Router {
    Router::new()
        .route("/xds", get(status))
        .with_state(handle)
        .route_layer(middleware::from_fn_with_state(
            token.map(Arc::<str>::from),
            authenticate,
        ))
}

async fn status(State(handle): State<XdsHandle>) -> axum::Json<XdsStatus> {
    axum::Json(XdsStatus {
        nodes: handle.status(),
    })
}

async fn authenticate(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            return unauthorized();
        }
    }
    next.run(request).await
}

/// The same answer the rest of the API gives without a valid token.
fn unauthorized() -> Response {
    let body = ErrorBody {
        status: 401,
        title: "Unauthorized".to_string(),
        detail: "this control plane requires `Authorization: Bearer <token>` \
                 (meshlimit --token or MESHLIMIT_TOKEN)"
            .to_string(),
        invalid_parameters: Vec::new(),
    };
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_the_opt_in() {
        let ok = |a: &str, remote| check_address(&a.parse().expect("address"), remote).is_ok();
        assert!(ok("127.0.0.1:0", false));
        assert!(ok("[::1]:5678", false));
        assert!(!ok("0.0.0.0:5678", false));
        assert!(!ok("10.0.0.1:5678", false));
        assert!(ok("0.0.0.0:5678", true));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
