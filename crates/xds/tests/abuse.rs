//! The ADS server against clients that are not Envoys, over loopback with a real tonic client:
//! hundreds of streams with node ids that name no Dataplane leave nothing behind once closed, a
//! node id past the cap and a message that does not decode each end their stream with
//! INVALID_ARGUMENT (3) and a message saying why. Nothing here sleeps blindly: every wait polls
//! a condition against a deadline.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshlimit_policy::effective::DataplaneLimits;
use meshlimit_xds::XdsHandle;
use meshlimit_xds::resources::LISTENER_TYPE;
use support::{eventually, start_xds};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// One open ADS stream: the sender of its requests and its responses.
struct Stream {
    _requests: mpsc::Sender<DiscoveryRequest>,
    _responses: Streaming<DiscoveryResponse>,
}

async fn channel(address: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .expect("a URI")
        .connect()
        .await
        .expect("the xDS server accepts")
}

fn subscribe(node: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node.to_string(),
            ..Default::default()
        }),
        type_url: LISTENER_TYPE.to_string(),
        ..Default::default()
    }
}

/// Opens a stream on `channel` as `node` and waits for the first response.
async fn open(channel: &Channel, node: &str) -> Result<Stream, Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(subscribe(node))
        .await
        .expect("the request is queued");
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone())
        .max_decoding_message_size(16 * 1024 * 1024);
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    responses.message().await?.expect("a first response");
    Ok(Stream {
        _requests: tx,
        _responses: responses,
    })
}

fn dataplane(name: &str) -> DataplaneLimits {
    DataplaneLimits {
        dataplane: name.into(),
        mesh: "default".into(),
        address: "127.0.0.1".into(),
        inbounds: vec![],
        kernel: vec![],
    }
}

async fn counts_reach(handle: &XdsHandle, what: &str, connected: usize, tracked: usize) {
    eventually(what, || async {
        let counts = handle.counts();
        (counts.connected == connected && counts.tracked == tracked).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_with_unknown_node_ids_leave_nothing_behind_once_closed() {
    let (handle, address) = start_xds().await;
    handle.update(vec![dataplane("web-1")]);
    // A few connections, many streams each (HTTP/2 multiplexes them).
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(channel(address).await);
    }
    let mut streams = Vec::new();
    for i in 0..200 {
        let stream = open(
            &channels[i % channels.len()],
            &format!("default.stranger-{i}"),
        )
        .await
        .expect("an unknown node still gets (empty) answers");
        streams.push(stream);
    }
    let known = open(&channels[0], "default.web-1").await.expect("web-1");
    counts_reach(&handle, "201 nodes connected", 201, 201).await;
    let before = handle.status();
    assert_eq!(before.iter().filter(|s| !s.known).count(), 200);

    drop(streams);
    drop(known);
    // The Dataplane's node stays (disconnected); every stranger is forgotten.
    counts_reach(&handle, "only the Dataplane's node tracked", 0, 1).await;
    let after = handle.status();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].node, "default.web-1");
    assert!(after[0].known && after[0].streams == 0);
    drop(channels);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_past_the_cap_is_refused_with_invalid_argument() {
    let (handle, address) = start_xds().await;
    let channel = channel(address).await;
    let long = format!("default.{}", "x".repeat(100 * 1024));
    let refused = open(&channel, &long).await.err().expect("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("node.id is 102408 bytes, more than the 1024"),
        "{}",
        refused.message()
    );
    assert_eq!(handle.counts().tracked, 0, "nothing is kept of it");
    // At the cap is fine.
    let at_cap = format!("default.{}", "y".repeat(1024 - "default.".len()));
    let stream = open(&channel, &at_cap)
        .await
        .expect("a 1 KiB node id is served");
    counts_reach(&handle, "the node at the cap connected", 1, 1).await;
    drop(stream);
    counts_reach(&handle, "the node at the cap forgotten", 0, 0).await;
}

/// A codec that sends bytes as they are, to put what no protobuf encoder would on the wire.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Debug, Default, Clone, Copy)]
    pub struct RawCodec;

    #[derive(Debug, Clone, Copy)]
    pub struct Raw;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;

        fn encoder(&mut self) -> Raw {
            Raw
        }

        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;

        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let mut out = vec![0; src.remaining()];
            src.copy_to_slice(&mut out);
            Ok(Some(out))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_does_not_decode_ends_the_stream_with_invalid_argument() {
    let (handle, address) = start_xds().await;
    let channel = channel(address).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    // Field 31 with wire type 7, which does not exist: no DiscoveryRequest decodes from it.
    let garbage = vec![0xff_u8; 32];
    let requests = tokio_stream::iter(vec![garbage]);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        let mut responses = grpc
            .streaming(tonic::Request::new(requests), path, raw::RawCodec)
            .await?
            .into_inner();
        while responses.message().await?.is_some() {}
        Ok::<(), Status>(())
    })
    .await
    .expect("the server answers in time");
    let status = answer.expect_err("the stream ends with an error status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("undecodable DiscoveryRequest"),
        "{}",
        status.message()
    );
    assert_eq!(handle.counts().tracked, 0);
}
