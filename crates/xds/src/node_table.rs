//! The encoded resources of every node, with a version per node and resource type that changes
//! only when that node's resources of that type change (so an update leaves untouched Envoys
//! alone).

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::Any;
use meshlimit_policy::effective::DataplaneLimits;

use crate::resources::{self, CLUSTER_TYPE, LISTENER_TYPE, to_any};

/// Resources of one type for one node, at one version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TypedResources {
    pub version: String,
    pub resources: Vec<Any>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeResources {
    /// The last update held a Dataplane with this node id.
    pub known: bool,
    pub listeners: TypedResources,
    pub clusters: TypedResources,
}

/// Everything the server holds, replaced whole by each update.
#[derive(Debug, Default)]
pub(crate) struct NodeTable {
    /// Counts updates; a changed resource set takes the generation as its version.
    pub generation: u64,
    /// Nodes of the current and of earlier updates (a removed Dataplane's node keeps an empty
    /// entry, so its Envoy is told to drop what it had).
    pub nodes: HashMap<String, NodeResources>,
}

/// The version of a node that never had resources.
pub(crate) const EMPTY_VERSION: &str = "0";

impl NodeTable {
    /// The table after an update that replaces every Dataplane's limits.
    pub fn next(&self, limits: &[DataplaneLimits]) -> NodeTable {
        let generation = self.generation + 1;
        let mut nodes = HashMap::new();
        for dataplane in limits {
            let id = resources::node_id(&dataplane.mesh, &dataplane.dataplane);
            let generated = resources::generate(dataplane);
            let listeners = generated.listeners.iter().map(to_any).collect();
            let clusters = generated.clusters.iter().map(to_any).collect();
            let previous = self.nodes.get(&id);
            let node = NodeResources {
                known: true,
                listeners: versioned(previous.map(|p| &p.listeners), listeners, generation),
                clusters: versioned(previous.map(|p| &p.clusters), clusters, generation),
            };
            nodes.insert(id, node);
        }
        for (id, previous) in &self.nodes {
            if !nodes.contains_key(id) {
                let gone = NodeResources {
                    known: false,
                    listeners: versioned(Some(&previous.listeners), Vec::new(), generation),
                    clusters: versioned(Some(&previous.clusters), Vec::new(), generation),
                };
                nodes.insert(id.clone(), gone);
            }
        }
        NodeTable { generation, nodes }
    }

    /// What a node gets for a resource type: its resources, or nothing at [`EMPTY_VERSION`] for
    /// an unknown node or a type the server does not serve.
    pub fn get(&self, node: &str, type_url: &str) -> TypedResources {
        self.find(node, type_url)
            .cloned()
            .unwrap_or_else(|| TypedResources {
                version: EMPTY_VERSION.to_string(),
                resources: Vec::new(),
            })
    }

    pub fn version(&self, node: &str, type_url: &str) -> String {
        self.find(node, type_url)
            .map_or_else(|| EMPTY_VERSION.to_string(), |v| v.version.clone())
    }

    fn find(&self, node: &str, type_url: &str) -> Option<&TypedResources> {
        let node = self.nodes.get(node)?;
        match type_url {
            LISTENER_TYPE => Some(&node.listeners),
            CLUSTER_TYPE => Some(&node.clusters),
            _ => None,
        }
    }
}

fn versioned(
    previous: Option<&TypedResources>,
    resources: Vec<Any>,
    generation: u64,
) -> TypedResources {
    match previous {
        Some(previous) if previous.resources == resources => previous.clone(),
        _ => TypedResources {
            version: generation.to_string(),
            resources,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshlimit_policy::effective::{InboundLimits, Protocol, Rate, TcpLimit};

    use super::*;

    fn dataplane(name: &str, num: u32) -> DataplaneLimits {
        DataplaneLimits {
            dataplane: name.into(),
            mesh: "default".into(),
            address: "127.0.0.1".into(),
            inbounds: vec![InboundLimits {
                port: 9000,
                service_port: 9001,
                service: "db".into(),
                protocol: Protocol::Tcp,
                http: None,
                tcp: Some(TcpLimit {
                    connection_rate: Rate::new(num, Duration::from_secs(1)).expect("valid rate"),
                }),
                policies: vec![],
                global: None,
                sources: Vec::new(),
            }],
            kernel: vec![],
        }
    }

    #[test]
    fn versions_change_only_with_content() {
        let s1 = NodeTable::default().next(&[dataplane("a", 1), dataplane("b", 1)]);
        assert_eq!(s1.version("default.a", LISTENER_TYPE), "1");
        assert_eq!(s1.version("default.a", CLUSTER_TYPE), "1");

        let s2 = s1.next(&[dataplane("a", 2), dataplane("b", 1)]);
        assert_eq!(
            s2.version("default.a", LISTENER_TYPE),
            "2",
            "a's limit changed"
        );
        assert_eq!(
            s2.version("default.a", CLUSTER_TYPE),
            "1",
            "a's cluster did not"
        );
        assert_eq!(
            s2.version("default.b", LISTENER_TYPE),
            "1",
            "b did not change"
        );
    }

    #[test]
    fn a_removed_dataplane_gets_an_empty_new_version() {
        let s1 = NodeTable::default().next(&[dataplane("a", 1)]);
        let s2 = s1.next(&[]);
        let listeners = s2.get("default.a", LISTENER_TYPE);
        assert_eq!(listeners.version, "2");
        assert!(listeners.resources.is_empty());
        assert!(!s2.nodes["default.a"].known);
        let s3 = s2.next(&[]);
        assert_eq!(s3.version("default.a", LISTENER_TYPE), "2");
    }

    #[test]
    fn unknown_nodes_and_types_get_nothing() {
        let s1 = NodeTable::default().next(&[dataplane("a", 1)]);
        let other = s1.get("default.zzz", LISTENER_TYPE);
        assert_eq!(other.version, EMPTY_VERSION);
        assert!(other.resources.is_empty());
        let routes = s1.get(
            "default.a",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        );
        assert!(routes.resources.is_empty());
    }
}
