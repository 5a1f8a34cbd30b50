//! The control plane's xDS side (`--xds ADDR`): an ADS server fed from the store, so that every
//! committed change reaches the Envoy sidecars whose node id (`<mesh>.<dataplane>`) names a
//! Dataplane, and `GET /xds` on the API, which shows what each Envoy accepted and rejected.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use meshlimit_control_plane::{Snapshot, XdsStatusSource};
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

/// What `GET /xds` on the API answers (guarded by the API token like every route): every Envoy
/// node, what it was sent, acknowledged and rejected.
pub fn status_source(handle: XdsHandle) -> XdsStatusSource {
    XdsStatusSource(Arc::new(move || {
        serde_json::to_value(XdsStatus {
            nodes: handle.status(),
        })
        .unwrap_or_default()
    }))
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
}
