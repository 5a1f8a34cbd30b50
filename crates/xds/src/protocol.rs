//! One ADS stream, state of the world, as a plain state machine: requests and node-table
//! updates in, responses and status events out. No I/O, so every ACK/NACK rule is unit-tested
//! here.
//!
//! The rules (xDS protocol, "ACK/NACK and resource type instance version"):
//! - a request with an empty `response_nonce` subscribes (or re-subscribes) to a type: it is
//!   answered with the current resources;
//! - a request whose nonce is not the last one sent for its type is stale and ignored;
//! - a request with the last nonce ACKs (no `error_detail`) or NACKs (`error_detail` set) that
//!   response; neither is answered — a NACKed version is not resent, the next update is. A
//!   NACK's `version_info` is the version the node still runs: its ACK may have come with a
//!   nonce an update superseded meanwhile, and been ignored as stale;
//! - when the node table changes, every subscribed type whose version moved is sent again,
//!   clusters before listeners so that listeners never name a cluster Envoy lacks.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::node_table::NodeTable;
use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};

/// The longest node id served: a Dataplane's `<mesh>.<dataplane>` is far shorter (names are
/// DNS labels), and every id is kept while its stream is open.
pub(crate) const MAX_NODE_ID_BYTES: usize = 1024;

/// Identifies this server in every response (Envoy shows it in `/config_dump`).
const CONTROL_PLANE: &str = "meshlimit";

/// What happened on a stream, for [`crate::NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The stream named its node (first request).
    Connected,
    Sent {
        type_url: String,
        version: String,
    },
    Ack {
        type_url: String,
        version: String,
    },
    Nack {
        type_url: String,
        version: String,
        /// The nonce of the rejected response.
        nonce: String,
        message: String,
        /// The version the node still runs (the request's `version_info`; empty when it
        /// never accepted one).
        running: String,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub responses: Vec<DiscoveryResponse>,
    pub events: Vec<Event>,
}

/// A request the server cannot serve; the stream ends with this error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub String);

#[derive(Debug)]
struct Subscription {
    last_nonce: String,
    last_version: String,
}

#[derive(Debug, Default)]
pub(crate) struct AdsStream {
    node: Option<String>,
    subscriptions: BTreeMap<String, Subscription>,
    nonces: u64,
}

impl AdsStream {
    /// The node id, once the first request named it.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    pub fn on_request(
        &mut self,
        request: DiscoveryRequest,
        table: &NodeTable,
    ) -> Result<Outcome, ProtocolError> {
        let mut outcome = Outcome::default();
        let node = match &self.node {
            Some(node) => node.clone(),
            None => {
                let id = request.node.as_ref().map(|n| n.id.as_str()).unwrap_or("");
                if id.is_empty() {
                    return Err(ProtocolError(
                        "the first request of a stream must carry node.id".to_string(),
                    ));
                }
                if id.len() > MAX_NODE_ID_BYTES {
                    return Err(ProtocolError(format!(
                        "node.id is {} bytes, more than the {MAX_NODE_ID_BYTES} a node id may \
                         have (it is <mesh>.<dataplane>)",
                        id.len()
                    )));
                }
                self.node = Some(id.to_string());
                outcome.events.push(Event::Connected);
                id.to_string()
            }
        };
        let type_url = request.type_url;
        if type_url.is_empty() {
            return Err(ProtocolError(
                "a request on an aggregated stream must carry type_url".to_string(),
            ));
        }
        if request.response_nonce.is_empty() {
            let response = self.respond(&node, &type_url, table);
            outcome.events.push(sent(&response));
            outcome.responses.push(response);
            return Ok(outcome);
        }
        let Some(subscription) = self.subscriptions.get(&type_url) else {
            // A nonce we never sent (e.g. from a previous stream): subscribe afresh.
            let response = self.respond(&node, &type_url, table);
            outcome.events.push(sent(&response));
            outcome.responses.push(response);
            return Ok(outcome);
        };
        if request.response_nonce != subscription.last_nonce {
            return Ok(outcome); // stale: answers a response that a newer one superseded
        }
        match request.error_detail {
            Some(error) => outcome.events.push(Event::Nack {
                type_url,
                version: subscription.last_version.clone(),
                nonce: request.response_nonce,
                message: error.message,
                running: request.version_info,
            }),
            None => outcome.events.push(Event::Ack {
                type_url,
                version: request.version_info,
            }),
        }
        Ok(outcome)
    }

    /// Sends every subscribed type whose version differs from the last one sent.
    pub fn on_update(&mut self, table: &NodeTable) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(node) = self.node.clone() else {
            return outcome;
        };
        let mut order: Vec<String> = [CLUSTER_TYPE, LISTENER_TYPE]
            .into_iter()
            .filter(|t| self.subscriptions.contains_key(*t))
            .map(str::to_string)
            .collect();
        order.extend(
            self.subscriptions
                .keys()
                .filter(|t| *t != CLUSTER_TYPE && *t != LISTENER_TYPE)
                .cloned(),
        );
        for type_url in order {
            let current = table.version(&node, &type_url);
            let changed = self
                .subscriptions
                .get(&type_url)
                .is_some_and(|s| s.last_version != current);
            if changed {
                let response = self.respond(&node, &type_url, table);
                outcome.events.push(sent(&response));
                outcome.responses.push(response);
            }
        }
        outcome
    }

    fn respond(&mut self, node: &str, type_url: &str, table: &NodeTable) -> DiscoveryResponse {
        let current = table.get(node, type_url);
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        self.subscriptions.insert(
            type_url.to_string(),
            Subscription {
                last_nonce: nonce.clone(),
                last_version: current.version.clone(),
            },
        );
        DiscoveryResponse {
            version_info: current.version,
            resources: current.resources,
            type_url: type_url.to_string(),
            nonce,
            control_plane: Some(ControlPlane {
                identifier: CONTROL_PLANE.to_string(),
            }),
            ..Default::default()
        }
    }
}

fn sent(response: &DiscoveryResponse) -> Event {
    Event::Sent {
        type_url: response.type_url.clone(),
        version: response.version_info.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc::Status;
    use meshlimit_policy::effective::{DataplaneLimits, InboundLimits, Protocol, Rate, TcpLimit};

    use super::*;

    fn limits(num: u32) -> DataplaneLimits {
        DataplaneLimits {
            dataplane: "db-1".into(),
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

    fn request(type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn first(type_url: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(Node {
                id: "default.db-1".into(),
                ..Default::default()
            }),
            ..request(type_url, "", "")
        }
    }

    fn nack(type_url: &str, version: &str, nonce: &str, message: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..request(type_url, version, nonce)
        }
    }

    #[test]
    fn subscribe_then_ack() {
        let table = NodeTable::default().next(&[limits(1)]);
        let mut stream = AdsStream::default();
        let out = stream
            .on_request(first(CLUSTER_TYPE), &table)
            .expect("served");
        assert_eq!(stream.node(), Some("default.db-1"));
        assert_eq!(out.responses.len(), 1);
        let response = &out.responses[0];
        assert_eq!(response.type_url, CLUSTER_TYPE);
        assert_eq!(response.version_info, "1");
        assert_eq!(response.resources.len(), 1);
        assert_eq!(out.events[0], Event::Connected);

        let nonce = response.nonce.clone();
        let out = stream
            .on_request(request(CLUSTER_TYPE, "1", &nonce), &table)
            .expect("served");
        assert!(out.responses.is_empty(), "an ACK is not answered");
        assert_eq!(
            out.events,
            [Event::Ack {
                type_url: CLUSTER_TYPE.into(),
                version: "1".into()
            }]
        );
    }

    #[test]
    fn nack_is_reported_with_the_rejected_version_and_not_resent() {
        let table = NodeTable::default().next(&[limits(1)]);
        let mut stream = AdsStream::default();
        let out = stream
            .on_request(first(LISTENER_TYPE), &table)
            .expect("served");
        let nonce = out.responses[0].nonce.clone();
        let out = stream
            .on_request(nack(LISTENER_TYPE, "", &nonce, "bad listener"), &table)
            .expect("served");
        assert!(out.responses.is_empty());
        assert_eq!(
            out.events,
            [Event::Nack {
                type_url: LISTENER_TYPE.into(),
                version: "1".into(),
                nonce,
                message: "bad listener".into(),
                running: "".into()
            }]
        );
        assert!(
            stream.on_update(&table).responses.is_empty(),
            "same table, nothing to send"
        );
    }

    #[test]
    fn a_nack_after_a_superseded_ack_tells_the_version_still_running() {
        // The update reaches the stream before the node's ACK of version 1 does.
        let s1 = NodeTable::default().next(&[limits(1)]);
        let mut stream = AdsStream::default();
        let first_nonce = stream
            .on_request(first(LISTENER_TYPE), &s1)
            .expect("served")
            .responses[0]
            .nonce
            .clone();
        let s2 = s1.next(&[limits(2)]);
        let pushed = stream.on_update(&s2);
        let second_nonce = pushed.responses[0].nonce.clone();
        let late_ack = stream
            .on_request(request(LISTENER_TYPE, "1", &first_nonce), &s2)
            .expect("served");
        assert!(late_ack.events.is_empty(), "a superseded nonce is stale");
        let out = stream
            .on_request(nack(LISTENER_TYPE, "1", &second_nonce, "bad"), &s2)
            .expect("served");
        assert_eq!(
            out.events,
            [Event::Nack {
                type_url: LISTENER_TYPE.into(),
                version: "2".into(),
                nonce: second_nonce,
                message: "bad".into(),
                running: "1".into()
            }]
        );
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let s1 = NodeTable::default().next(&[limits(1)]);
        let mut stream = AdsStream::default();
        let old = stream
            .on_request(first(LISTENER_TYPE), &s1)
            .expect("served")
            .responses[0]
            .nonce
            .clone();
        let s2 = s1.next(&[limits(2)]);
        let pushed = stream.on_update(&s2);
        assert_eq!(pushed.responses.len(), 1);
        assert_eq!(pushed.responses[0].version_info, "2");
        let out = stream
            .on_request(nack(LISTENER_TYPE, "", &old, "late"), &s2)
            .expect("served");
        assert!(out.events.is_empty() && out.responses.is_empty());
    }

    #[test]
    fn updates_send_clusters_before_listeners_and_only_what_changed() {
        let s1 = NodeTable::default().next(&[limits(1)]);
        let mut stream = AdsStream::default();
        stream
            .on_request(first(LISTENER_TYPE), &s1)
            .expect("served");
        stream
            .on_request(request(CLUSTER_TYPE, "", ""), &s1)
            .expect("served");

        let mut moved = limits(1);
        moved.inbounds[0].service_port = 9002;
        let s2 = s1.next(&[moved]);
        let types: Vec<_> = stream
            .on_update(&s2)
            .responses
            .iter()
            .map(|r| r.type_url.clone())
            .collect();
        assert_eq!(types, [CLUSTER_TYPE, LISTENER_TYPE]);

        let s3 = s2.next(&[{
            let mut l = limits(5);
            l.inbounds[0].service_port = 9002;
            l
        }]);
        let types: Vec<_> = stream
            .on_update(&s3)
            .responses
            .iter()
            .map(|r| r.type_url.clone())
            .collect();
        assert_eq!(types, [LISTENER_TYPE], "clusters did not change");
    }

    #[test]
    fn a_first_request_without_node_is_refused() {
        let mut stream = AdsStream::default();
        let err = stream
            .on_request(request(LISTENER_TYPE, "", ""), &NodeTable::default())
            .expect_err("refused");
        assert!(err.0.contains("node.id"), "{err:?}");
    }

    #[test]
    fn unknown_node_gets_empty_resources() {
        let table = NodeTable::default().next(&[limits(1)]);
        let mut stream = AdsStream::default();
        let mut req = first(LISTENER_TYPE);
        if let Some(node) = req.node.as_mut() {
            node.id = "default.nobody".into();
        }
        let out = stream.on_request(req, &table).expect("served");
        assert!(out.responses[0].resources.is_empty());
        assert_eq!(out.responses[0].version_info, "0");
    }
}
