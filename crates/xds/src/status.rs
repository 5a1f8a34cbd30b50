//! What each Envoy node has been sent, has accepted and has rejected: the xDS half of
//! `meshlimit diagnose`.

use serde::{Deserialize, Serialize};

/// One node (an Envoy, identified by its node id), as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// `<mesh>.<dataplane>` (see [`crate::node_id`]).
    pub node: String,
    /// Whether the last update held a Dataplane with this node id. An Envoy whose node id
    /// matches no Dataplane gets no listeners and no clusters.
    pub known: bool,
    /// ADS streams open from this node now (0: no Envoy connected).
    pub streams: u32,
    pub listeners: TypeStatus,
    pub clusters: TypeStatus,
}

/// The state of one resource type (listeners or clusters) for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// The version the server holds for the node now.
    pub current_version: String,
    /// The last version sent to the node.
    pub sent_version: Option<String>,
    /// The last version the node accepted: ACKed, or named as still running by a NACK.
    pub acked_version: Option<String>,
    /// How many responses the node rejected (NACK) since the server started.
    pub nacks: u64,
    pub last_nack: Option<Nack>,
}

/// A rejected response: Envoy keeps its previous configuration and says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// The version Envoy rejected.
    pub version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// Envoy's error message.
    pub message: String,
}

impl TypeStatus {
    /// The node runs what the server holds for it.
    pub fn in_sync(&self) -> bool {
        self.acked_version.as_deref() == Some(self.current_version.as_str())
    }

    /// The node rejected the version the server holds for it (and still runs an older one).
    pub fn rejected_current(&self) -> bool {
        self.last_nack
            .as_ref()
            .is_some_and(|nack| nack.version == self.current_version)
    }
}

impl NodeStatus {
    pub(crate) fn new(node: &str) -> NodeStatus {
        NodeStatus {
            node: node.to_string(),
            known: false,
            streams: 0,
            listeners: TypeStatus::default(),
            clusters: TypeStatus::default(),
        }
    }

    /// Every resource type is acknowledged at the server's current version.
    pub fn in_sync(&self) -> bool {
        self.listeners.in_sync() && self.clusters.in_sync()
    }
}

/// What the server knows of every node: the body of the control plane's `GET /xds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdsStatus {
    /// Every node known from the store or heard from, sorted by node id.
    pub nodes: Vec<NodeStatus>,
}
