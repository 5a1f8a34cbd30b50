//! `Dataplane` (Kuma universal): one instance of a service, its inbounds and its embedded
//! zone-proxy listeners.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::effective::Protocol;

pub const SERVICE_TAG: &str = "kuma.io/service";
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    pub name: String,
    pub mesh: String,
    pub labels: BTreeMap<String, String>,
    pub networking: Networking,
}

impl Dataplane {
    /// `Gateway` when `networking.gateway` is set, else `Sidecar`.
    pub fn proxy_type(&self) -> super::ProxyType {
        if self.networking.gateway.is_some() {
            super::ProxyType::Gateway
        } else {
            super::ProxyType::Sidecar
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    /// Zone ingress and egress listeners embedded in this Dataplane (Kuma 2.14).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
}

impl Networking {
    /// The inbounds a proxy serves: every one but those in state `Ignored`, which Kuma leaves
    /// out of the proxy's configuration (no listener, so no limit).
    pub fn enforced_inbounds(&self) -> impl Iterator<Item = &Inbound> {
        self.inbound
            .iter()
            .filter(|i| i.state != Some(InboundState::Ignored))
    }
}

/// An inbound's `state`; Kuma's default is `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InboundState {
    Ready,
    NotReady,
    Ignored,
}

/// A zone proxy listener (`networking.listeners[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    #[serde(rename = "type")]
    pub kind: ListenerType,
    pub address: String,
    pub port: u16,
    /// Referenced by a targetRef `sectionName`; defaults to the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ListenerState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerType {
    ZoneIngress,
    ZoneEgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerState {
    Ready,
    NotReady,
}

/// Something a Dataplane declares that meshlimit accepts but enforces no limit on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotEnforced {
    /// An inbound in state `Ignored`: Kuma gives it no listener, so nothing limits it.
    IgnoredInbound { port: u16, service: String },
    /// A zone proxy listener: Kuma applies MeshRateLimit there (catch-all rules on every
    /// filter chain, SNI matches on the chains serving that name); meshlimit has no zone
    /// proxy and limits none of that traffic.
    ZoneProxyListener {
        kind: ListenerType,
        name: String,
        port: u16,
    },
}

impl std::fmt::Display for NotEnforced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotEnforced::IgnoredInbound { port, service } => write!(
                f,
                "inbound {port} ({service}) is in state Ignored: no proxy listens there, so no limit applies (as in Kuma)"
            ),
            NotEnforced::ZoneProxyListener { kind, name, port } => write!(
                f,
                "{kind:?} listener {name} (port {port}) is a zone proxy listener: meshlimit does not enforce MeshRateLimit on zone proxies (Kuma does), so its traffic is not limited"
            ),
        }
    }
}

impl Dataplane {
    /// What this Dataplane declares that no limit is enforced on.
    pub fn not_enforced(&self) -> Vec<NotEnforced> {
        let ignored = self
            .networking
            .inbound
            .iter()
            .filter(|i| i.state == Some(InboundState::Ignored))
            .map(|i| NotEnforced::IgnoredInbound {
                port: i.port,
                service: i.service().to_string(),
            });
        let listeners = self
            .networking
            .listeners
            .iter()
            .map(|l| NotEnforced::ZoneProxyListener {
                kind: l.kind,
                name: l.section_name(),
                port: l.port,
            });
        ignored.chain(listeners).collect()
    }
}

impl Listener {
    /// The name a targetRef `sectionName` uses: `name`, else the port.
    pub fn section_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.port.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    pub port: u16,
    /// The application's port; defaults to `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Referenced by a targetRef `sectionName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Ignored` inbounds are accepted but never enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<InboundState>,
    pub tags: BTreeMap<String, String>,
}

impl Inbound {
    /// The `kuma.io/service` tag (validation guarantees it is present).
    pub fn service(&self) -> &str {
        self.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or("")
    }

    /// `http`, `http2` and `grpc` are HTTP; anything else, or no tag, is TCP.
    pub fn protocol(&self) -> Protocol {
        match self.tags.get(PROTOCOL_TAG).map(String::as_str) {
            Some("http" | "http2" | "grpc") => Protocol::Http,
            _ => Protocol::Tcp,
        }
    }

    pub fn effective_service_port(&self) -> u16 {
        self.service_port.unwrap_or(self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outbound {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<GatewayType>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum GatewayType {
    Builtin,
    Delegated,
}
