//! The control plane's xDS side (`--xds ADDR`): an ADS server fed from the store, so that every
//! committed change reaches the Envoy sidecars whose node id (`<mesh>.<dataplane>`) names a
//! Dataplane, and `GET /xds` on the API, which shows what each Envoy accepted and rejected.
//! With `--rls ADDR --redis URL`, also Envoy's rate-limit service for `MeshGlobalRateLimit`s
//! (buckets shared by every instance, kept in Redis).

use std::net::SocketAddr;

use anyhow::Context as _;
use meshlimit_control_plane::{ControlPlane, follow};
use meshlimit_global::{GlobalBuckets, GlobalOptions, RateLimitServer};
use meshlimit_xds::{XdsHandle, XdsServer};
use tokio::net::TcpListener;

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

/// Whether `--rls ADDR` may be served: as for xDS, loopback unless the user opts in, because
/// the service has no authentication (anyone who reaches it can spend any bucket's tokens).
pub fn check_rls_address(addr: &SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        anyhow::bail!(
            "refusing to serve the rate-limit service on {addr}: it has no authentication, so \
             only loopback addresses are allowed unless you pass --rls-allow-remote (and \
             restrict who can reach the port)"
        )
    }
}

/// A bound rate-limit service, not serving yet.
pub struct Rls {
    server: RateLimitServer,
    listener: TcpListener,
    pub address: SocketAddr,
}

impl Rls {
    /// Binds `addr` and sets up the Redis client. Redis itself may come later: until it
    /// answers, every check fails and Envoy applies the policy's failure mode.
    pub async fn bind(addr: SocketAddr, redis_url: &str) -> anyhow::Result<Rls> {
        // Envoy bounds each request by the policy's `timeout`; Redis gets a backstop of its own
        // that leaves room for the first check, which also connects.
        let options = GlobalOptions {
            timeout: std::time::Duration::from_millis(250),
            ..GlobalOptions::default()
        };
        let buckets = GlobalBuckets::connect_lazy(redis_url, options)
            .context("setting up the rate-limit service's Redis client (--redis)")?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the rate-limit service to {addr}"))?;
        let address = listener.local_addr()?;
        Ok(Rls {
            server: RateLimitServer::new(buckets),
            listener,
            address,
        })
    }

    /// Serves until the server fails.
    pub async fn serve(self) -> anyhow::Result<()> {
        self.server
            .serve(self.listener)
            .await
            .context("serving the rate-limit service")
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

    /// Serves ADS with the limits of every committed store version pushed to the connected
    /// Envoys. Returns only when the server fails.
    pub async fn serve(self, cp: &ControlPlane) -> anyhow::Result<()> {
        tokio::spawn(self.handle.clone().follow(follow::dataplanes(cp)));
        self.server
            .serve(self.listener)
            .await
            .context("serving xDS")
    }
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
        let rls = |a: &str, remote| check_rls_address(&a.parse().expect("address"), remote).is_ok();
        assert!(rls("127.0.0.1:0", false) && !rls("0.0.0.0:8081", false));
        assert!(rls("0.0.0.0:8081", true));
    }
}
