//! A TCP inbound's connection: relay bytes both ways between the client and the application
//! until both directions are closed (a half-close is passed on).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::TcpStream;

use crate::inbound::Inbound;

pub(crate) async fn relay(mut client: TcpStream, inbound: Arc<Inbound>, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut application = match TcpStream::connect(upstream).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(
                mesh = %inbound.key.mesh,
                dataplane = %inbound.key.dataplane,
                inbound = inbound.key.port,
                %upstream,
                %error,
                "upstream unavailable, closing the client connection"
            );
            return;
        }
    };
    let _ = application.set_nodelay(true);
    if let Err(error) = copy_bidirectional(&mut client, &mut application).await {
        tracing::debug!(%error, "TCP relay ended with an error");
    }
}
