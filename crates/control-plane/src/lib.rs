//! The meshlimit control plane: a crash-safe store of resources (redb), a REST API in Kuma's
//! style, and the streams data planes and kernel agents follow to receive their effective limits.
//!
//! Start reading at [`state::ControlPlane`] (every write: validate as a whole, commit in one
//! transaction, publish a snapshot), then [`api::router`] (routes and the one error-to-status
//! function) and [`stream`] (the watch streams). [`client`] is the other side: what the CLI and
//! the data planes use to talk to it, including the reconnecting follower.

pub mod api;
pub mod client;
pub mod insights;
pub mod model;
pub mod select;
pub mod state;
pub mod store;
mod stream;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use api::{ApiConfig, XdsStatusSource, router};
pub use state::{ControlPlane, CpError, Snapshot};

/// The API address when none is given: loopback only.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:5681";

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

/// Serves `router` on `listener` until the task is dropped. (No graceful drain: watch streams
/// never end by themselves, and every acknowledged write is already durable.)
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Whether an API address needs a token: anything but loopback does.
pub fn needs_token(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}
