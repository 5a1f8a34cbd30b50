//! The meshlimit control plane: a crash-safe store of resources (redb), a REST API in Kuma's
//! style, and the streams data planes and kernel agents follow to receive their effective limits.
//!
//! Start reading at [`state::ControlPlane`] (every write in phases: canonical forms, diff against
//! the current state, validation as a whole, one durable commit, publication of the new
//! [`StoreState`]), then [`api::router`] (routes and the one error-to-status function) and
//! [`stream`] (the watch streams). [`follow`] feeds data paths in the same process
//! (`meshlimit run`, the xDS server) from the store, in the same shape as the remote followers
//! of `meshlimit-control-plane-client`, the crate data planes link (the wire types are there).
//!
//! Modules use each other one way. In the order `store`, `model`, `store_state`, `insights`,
//! `select`, `state`, `follow`, `stream`, `ops`, `api`, `listen`, each uses only modules before
//! it: the store knows nothing of resources, a [`StoreState`] nothing of writes, nothing below
//! `stream` of HTTP. [`ops`] is `/metrics` and `/ready`; [`listen`] bounds the API's
//! connections.

pub mod api;
pub mod follow;
pub mod insights;
pub mod listen;
pub mod model;
pub mod ops;
pub mod select;
pub mod state;
pub mod store;
pub mod store_state;
mod stream;

pub use meshlimit_control_plane_client::{DEFAULT_API_ADDR, wire};

use std::net::SocketAddr;
use std::path::PathBuf;

pub use api::{ApiConfig, router};
pub use ops::Metrics;
pub use state::{CanonicalError, Conflict, ControlPlane, CpError};
pub use store_state::StoreState;

/// Where the store lives when no `--store` is given: `$XDG_DATA_HOME/meshlimit/store.redb`, else
/// `$HOME/.local/share/meshlimit/store.redb`, else `./meshlimit-store.redb`.
pub fn default_store_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share"))
        });
    match base {
        Some(dir) => dir.join("meshlimit").join("store.redb"),
        None => PathBuf::from("meshlimit-store.redb"),
    }
}

/// Serves `router` on `listener` until the task is dropped, with the default connection cap
/// and request-headers timeout ([`listen::ServeOptions`]; [`listen::serve_with`] for others).
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
    listen::serve_with(listener, router, listen::ServeOptions::default()).await
}

/// Whether an API address needs a token: anything but loopback does.
pub fn needs_token(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}
