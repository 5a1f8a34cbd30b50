//! The gRPC edge: Envoy's `AggregatedDiscoveryService` over tonic. Each stream runs the
//! [`crate::protocol`] state machine against the latest node table (every node's encoded
//! resources), which a `watch` channel delivers; [`XdsHandle::update`] replaces the table and
//! [`XdsHandle::follow`] keeps replacing it from a stream of limits.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshlimit_policy::Versioned;
use meshlimit_policy::effective::DataplaneLimits;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::node_table::NodeTable;
use crate::protocol::{AdsStream, Event, Outcome};
use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};
use crate::status::{Nack, NodeStatus, TypeStatus};

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("xDS server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The ADS server; [`XdsServer::serve`] runs it on a listener.
pub struct XdsServer {
    shared: Arc<Shared>,
}

/// Feeds the server and reads what Envoys did with it. Cheap to clone.
#[derive(Clone)]
pub struct XdsHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsHandle").finish_non_exhaustive()
    }
}

/// See [`XdsHandle::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounts {
    /// Nodes with an ADS stream open now.
    pub connected: usize,
    /// Nodes the server keeps a record for (what they were sent, acknowledged, rejected).
    pub tracked: usize,
    /// NACKs over every node since the server started.
    pub nacks: u64,
}

struct Shared {
    table: watch::Sender<Arc<NodeTable>>,
    /// Set on shutdown: every stream ends, so a graceful stop does not wait forever.
    closing: watch::Sender<bool>,
    /// Per node id: what its streams sent, acknowledged and rejected.
    records: Mutex<BTreeMap<String, NodeStatus>>,
    /// Every NACK since the start, including those of nodes forgotten since.
    nacks: AtomicU64,
}

impl XdsServer {
    /// A server with no Dataplane yet: Envoys that connect get empty configurations until
    /// the first [`XdsHandle::update`].
    pub fn new() -> (XdsServer, XdsHandle) {
        let (table, _) = watch::channel(Arc::new(NodeTable::default()));
        let shared = Arc::new(Shared {
            table,
            closing: watch::Sender::new(false),
            records: Mutex::new(BTreeMap::new()),
            nacks: AtomicU64::new(0),
        });
        let handle = XdsHandle {
            shared: shared.clone(),
        };
        (XdsServer { shared }, handle)
    }

    /// Serves ADS (gRPC over HTTP/2 without TLS) until the listener fails.
    pub async fn serve(self, listener: TcpListener) -> Result<(), XdsError> {
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await?;
        Ok(())
    }

    /// Serves until `signal` completes, then ends every stream (Envoys keep their last
    /// configuration and retry) and returns once the connections are closed.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()>,
    ) -> Result<(), XdsError> {
        let shared = self.shared.clone();
        let signal = async move {
            signal.await;
            shared.closing.send_replace(true);
        };
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
            .await?;
        Ok(())
    }

    /// The tonic service, to mount next to other gRPC services on one server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<impl AggregatedDiscoveryService> {
        AggregatedDiscoveryServiceServer::new(Ads {
            shared: self.shared,
        })
    }
}

impl XdsHandle {
    /// Replaces every Dataplane's limits; connected Envoys whose resources changed get them
    /// at once. Dataplanes absent from `limits` lose their listeners and clusters.
    pub fn update(&self, limits: Vec<DataplaneLimits>) {
        self.shared.table.send_modify(|table| {
            *table = Arc::new(table.next(&limits));
            tracing::info!(
                generation = table.generation,
                dataplanes = limits.len(),
                "xDS snapshot updated"
            );
        });
    }

    /// Serves the limits `limits` carries, from its current value on: each new value (every
    /// store version, the newest when several land at once) replaces them as
    /// [`XdsHandle::update`] does. Ends when the sender is gone; spawn it next to the server.
    pub async fn follow(self, mut limits: watch::Receiver<Versioned<Vec<DataplaneLimits>>>) {
        loop {
            let current = limits.borrow_and_update().value.clone();
            self.update(current);
            if limits.changed().await.is_err() {
                return;
            }
        }
    }

    /// Every node the server knows (a Dataplane of the last update) or has heard from, sorted
    /// by node id.
    pub fn status(&self) -> Vec<NodeStatus> {
        let table = self.shared.table.borrow().clone();
        let mut records = self.shared.records().clone();
        for (id, node) in &table.nodes {
            if node.known {
                records
                    .entry(id.clone())
                    .or_insert_with(|| NodeStatus::new(id));
            }
        }
        records
            .into_values()
            .map(|mut status| {
                status.known = table.nodes.get(&status.node).is_some_and(|n| n.known);
                status.listeners.current_version = table.version(&status.node, LISTENER_TYPE);
                status.clusters.current_version = table.version(&status.node, CLUSTER_TYPE);
                status
            })
            .collect()
    }

    /// How many nodes have a stream open, how many the server keeps state for, and how many
    /// responses were rejected, for `/metrics`.
    pub fn counts(&self) -> NodeCounts {
        let records = self.shared.records();
        NodeCounts {
            connected: records.values().filter(|s| s.streams > 0).count(),
            tracked: records.len(),
            nacks: self.shared.nacks.load(Ordering::Relaxed),
        }
    }

    /// One node's status (see [`crate::node_id`] for the id).
    pub fn node_status(&self, node: &str) -> Option<NodeStatus> {
        self.status().into_iter().find(|s| s.node == node)
    }
}

impl Shared {
    fn records(&self) -> MutexGuard<'_, BTreeMap<String, NodeStatus>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, node: &str, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut records = self.records();
        let status = records
            .entry(node.to_string())
            .or_insert_with(|| NodeStatus::new(node));
        for event in events {
            match event {
                Event::Connected => {
                    status.streams += 1;
                    let known = self.table.borrow().nodes.get(node).is_some_and(|n| n.known);
                    if known {
                        tracing::info!(node, "Envoy connected");
                    } else {
                        tracing::warn!(
                            node,
                            "Envoy connected with a node id that names no Dataplane \
                             (<mesh>.<dataplane>): it gets no listeners and no clusters"
                        );
                    }
                }
                Event::Sent { type_url, version } => {
                    if let Some(t) = type_status(status, &type_url) {
                        t.sent_version = Some(version);
                    }
                }
                Event::Ack { type_url, version } => {
                    tracing::debug!(node, type_url, version, "ACK");
                    if let Some(t) = type_status(status, &type_url) {
                        t.acked_version = Some(version);
                    }
                }
                Event::Nack {
                    type_url,
                    version,
                    nonce,
                    message,
                    running,
                } => {
                    tracing::warn!(
                        node,
                        type_url,
                        version,
                        nonce,
                        running,
                        error = message.trim_end(),
                        "Envoy rejected a configuration (NACK)"
                    );
                    self.nacks.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = type_status(status, &type_url) {
                        if !running.is_empty() {
                            t.acked_version = Some(running);
                        }
                        t.nacks += 1;
                        t.last_nack = Some(Nack {
                            version,
                            nonce,
                            message,
                        });
                    }
                }
            }
        }
    }

    /// A stream of `node` ended. A node that names no Dataplane is forgotten with its last
    /// stream: anyone can open streams with made-up ids, and nothing about them is worth
    /// keeping once they are gone (a Dataplane's node keeps its record for `GET /xds`).
    fn disconnected(&self, node: &str) {
        let mut records = self.records();
        let Some(status) = records.get_mut(node) else {
            return;
        };
        status.streams = status.streams.saturating_sub(1);
        let known = self.table.borrow().nodes.get(node).is_some_and(|n| n.known);
        if status.streams == 0 && !known {
            records.remove(node);
            tracing::debug!(
                node,
                "Envoy with an unknown node id disconnected: forgotten"
            );
        } else {
            tracing::info!(node, "Envoy disconnected");
        }
    }
}

fn type_status<'a>(status: &'a mut NodeStatus, type_url: &str) -> Option<&'a mut TypeStatus> {
    match type_url {
        LISTENER_TYPE => Some(&mut status.listeners),
        CLUSTER_TYPE => Some(&mut status.clusters),
        _ => None,
    }
}

struct Ads {
    shared: Arc<Shared>,
}

type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(run_stream(self.shared.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "meshlimit serves state-of-the-world ADS: set ads_config.api_type to GRPC",
        ))
    }
}

async fn run_stream(
    shared: Arc<Shared>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut tables = shared.table.subscribe();
    let mut closing = shared.closing.subscribe();
    let mut stream = AdsStream::default();
    'stream: loop {
        if *closing.borrow_and_update() {
            break;
        }
        let outcome: Result<Outcome, Status> = tokio::select! {
            _ = closing.changed() => continue,
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    // `borrow`, not `borrow_and_update`: a table that changed meanwhile must
                    // still wake the `changed` arm, or its push would be lost (a request, such
                    // as an ACK, answers nothing of a newer version).
                    let table = tables.borrow().clone();
                    stream
                        .on_request(request, &table)
                        .map_err(|e| Status::invalid_argument(e.0))
                }
                Ok(None) => break,
                // A message that does not decode is the client's fault: say so with
                // INVALID_ARGUMENT rather than end the stream as if all went well. (A client
                // that went away does not read the answer; that costs nothing.)
                Err(status) => match refusal(&status) {
                    Some(refused) => Err(refused),
                    None => {
                        tracing::debug!(node = stream.node(), %status, "ADS stream ended");
                        break;
                    }
                },
            },
            changed = tables.changed() => {
                if changed.is_err() {
                    break;
                }
                let table = tables.borrow_and_update().clone();
                Ok(stream.on_update(&table))
            }
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(status) => {
                tracing::warn!(%status, "refusing an ADS stream");
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        if let Some(node) = stream.node() {
            shared.record(node, outcome.events);
        }
        for response in outcome.responses {
            if tx.send(Ok(response)).await.is_err() {
                break 'stream;
            }
        }
    }
    if let Some(node) = stream.node() {
        shared.disconnected(node);
    }
}

/// The status to end a stream with after reading the client's messages failed: `Some` when
/// the client sent something that does not decode (tonic reports a bad message or frame as
/// INTERNAL), `None` when the stream simply went away (a reset, a closed connection).
fn refusal(status: &Status) -> Option<Status> {
    match status.code() {
        tonic::Code::Internal | tonic::Code::InvalidArgument => Some(Status::invalid_argument(
            format!("undecodable DiscoveryRequest: {}", status.message()),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use meshlimit_policy::effective::DataplaneLimits;

    use super::*;

    fn dataplane(name: &str) -> DataplaneLimits {
        DataplaneLimits {
            dataplane: name.into(),
            mesh: "default".into(),
            address: "127.0.0.1".into(),
            inbounds: vec![],
            kernel: vec![],
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn follow_serves_every_value_until_the_sender_is_gone() {
        let (_server, handle) = XdsServer::new();
        let (tx, rx) = watch::channel(Versioned::new(1, vec![dataplane("a")]));
        let following = tokio::spawn(handle.clone().follow(rx));
        // On one thread, yielding lets the follower run until it waits for the next value.
        tokio::task::yield_now().await;
        let nodes = |handle: &XdsHandle| -> Vec<(String, bool)> {
            handle
                .status()
                .into_iter()
                .map(|s| (s.node, s.known))
                .collect()
        };
        assert_eq!(nodes(&handle), [("default.a".to_string(), true)]);

        tx.send_replace(Versioned::new(2, vec![dataplane("b")]));
        tokio::task::yield_now().await;
        assert_eq!(nodes(&handle), [("default.b".to_string(), true)]);

        drop(tx);
        following
            .await
            .expect("the follower ends without panicking");
    }

    #[test]
    fn a_nack_records_the_version_the_node_still_runs() {
        let (_server, handle) = XdsServer::new();
        handle.update(vec![dataplane("a")]);
        let sent = |version: &str| Event::Sent {
            type_url: LISTENER_TYPE.into(),
            version: version.into(),
        };
        // Version 1's ACK came with a superseded nonce: the stream never reported it.
        handle.shared.record(
            "default.a",
            vec![
                Event::Connected,
                sent("1"),
                sent("2"),
                Event::Nack {
                    type_url: LISTENER_TYPE.into(),
                    version: "2".into(),
                    nonce: "2".into(),
                    message: "bad".into(),
                    running: "1".into(),
                },
            ],
        );
        let status = handle.node_status("default.a").expect("known");
        assert_eq!(status.listeners.acked_version.as_deref(), Some("1"));
        assert_eq!(status.listeners.nacks, 1);
    }

    #[test]
    fn status_lists_known_dataplanes_and_nodes_that_connected() {
        let (_server, handle) = XdsServer::new();
        handle.update(vec![dataplane("a")]);
        let status = handle.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].node, "default.a");
        assert!(status[0].known && status[0].streams == 0);
        assert_eq!(status[0].listeners.current_version, "1");
        assert_eq!(status[0].listeners.sent_version, None);

        handle
            .shared
            .record("default.stranger", vec![Event::Connected]);
        handle.update(vec![]);
        let nodes: Vec<_> = handle
            .status()
            .into_iter()
            .map(|s| (s.node, s.known))
            .collect();
        assert_eq!(
            nodes,
            [("default.stranger".to_string(), false)],
            "a removed Dataplane that never connected is forgotten"
        );
    }
}
