//! `Dataplane` (Kuma universal): one instance of a service and its inbounds.

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
