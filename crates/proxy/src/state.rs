//! What the proxy's tasks share ([`Shared`]) and what the proxy reports about itself
//! ([`Status`], with the [`ProxyProblem`]s of the last configuration applied).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshlimit_bucket::Clock;
use meshlimit_policy::effective::{DataplaneLimits, Protocol};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::HttpContext;
use crate::inbound::{Counter, Inbound, InboundKey};
use crate::limits::Cap;
use crate::options::ProxyOptions;
use crate::workers::Workers;

/// What the proxy is doing after the last configuration it applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// How many configurations have been applied; 0 until the first one is.
    pub generation: u64,
    /// The store version of the limits applied (`None` until the source has sent any).
    pub version: Option<u64>,
    /// Every inbound being served, with the address it is bound to.
    pub listeners: Vec<ListenerStatus>,
    /// What could not be applied (an address that is not an IP or cannot be bound, an inbound
    /// declared twice); such an inbound keeps its previous limits, or has no listener if it is
    /// new.
    pub problems: Vec<ProxyProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub key: InboundKey,
    pub protocol: Protocol,
    /// The bound address; with a configured port 0, this is where the system put it.
    pub local_addr: SocketAddr,
    /// Where requests and connections go: `127.0.0.1:servicePort`.
    pub upstream: SocketAddr,
}

/// Part of a configuration the proxy could not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyProblem {
    /// The Dataplane's inbounds are skipped: there is nothing to bind them to.
    #[error("{mesh}/{dataplane}: networking.address {address:?} is not an IP address")]
    NotAnIp {
        mesh: String,
        dataplane: String,
        address: String,
    },
    /// A second inbound with the same mesh, Dataplane and port.
    #[error("{key}: declared twice; the first declaration is served")]
    DeclaredTwice { key: InboundKey },
    /// Binding failed; the proxy tries again a few seconds later.
    #[error("{key}: cannot listen on {address}: {reason}")]
    CannotListen {
        key: InboundKey,
        address: SocketAddr,
        kind: io::ErrorKind,
        /// The system's message.
        reason: String,
    },
}

impl ProxyProblem {
    pub(crate) fn cannot_listen(key: InboundKey, address: SocketAddr, error: &io::Error) -> Self {
        ProxyProblem::CannotListen {
            key,
            address,
            kind: error.kind(),
            reason: error.to_string(),
        }
    }
}

/// State shared by the supervisor, the admin endpoint and the connection tasks.
pub(crate) struct Shared {
    pub clock: Arc<dyn Clock>,
    /// What request and upstream durations are measured with (precise, unlike the buckets'
    /// coarse clock).
    pub latency_clock: Arc<dyn Clock>,
    pub options: ProxyOptions,
    pub http: Arc<HttpContext>,
    /// The inbounds being served, for metrics.
    pub inbounds: ArcSwap<Vec<Arc<Inbound>>>,
    /// The last configuration applied, for `/config`.
    pub config: ArcSwap<Vec<DataplaneLimits>>,
    pub status: watch::Sender<Status>,
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
    /// Client connections open over all inbounds.
    pub cap: Arc<Cap>,
    /// Failed accepts (out of descriptors and the like), over all inbounds.
    pub accept_errors: Arc<Counter>,
    /// Where connections are served.
    pub workers: Arc<Workers>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> InboundKey {
        InboundKey {
            mesh: "default".into(),
            dataplane: "web".into(),
            port: 80,
        }
    }

    #[test]
    fn problems_read_as_before() {
        let not_an_ip = ProxyProblem::NotAnIp {
            mesh: "default".into(),
            dataplane: "web".into(),
            address: "web.local".into(),
        };
        assert_eq!(
            not_an_ip.to_string(),
            "default/web: networking.address \"web.local\" is not an IP address"
        );
        assert_eq!(
            ProxyProblem::DeclaredTwice { key: key() }.to_string(),
            "default/web:80: declared twice; the first declaration is served"
        );
        let error = io::Error::from(io::ErrorKind::AddrInUse);
        let cannot = ProxyProblem::cannot_listen(key(), "127.0.0.1:80".parse().unwrap(), &error);
        assert_eq!(
            cannot.to_string(),
            format!("default/web:80: cannot listen on 127.0.0.1:80: {error}")
        );
    }
}
