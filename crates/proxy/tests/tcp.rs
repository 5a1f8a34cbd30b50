//! TCP inbounds through real sockets: one token per connection, the ones over the limit
//! closed at once, the others relayed both ways.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use meshlimit_policy::effective::Protocol;
use meshlimit_proxy::{Admin, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An application that echoes every byte back.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut answer = vec![0; message.len()];
    stream.read_exact(&mut answer).await.unwrap();
    answer
}

/// Whether the proxy closed the connection without sending anything.
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf).await, Ok(0) | Err(_))
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_the_rest_relayed() {
    let app = echo().await;
    let h = Harness::start(
        vec![dataplane(
            "db",
            app.port(),
            Protocol::Tcp,
            None,
            Some(tcp_limit(3, Duration::from_secs(30))),
        )],
        ProxyOptions::default(),
    )
    .await;
    let addr = h.addr("db");
    let mut admitted = Vec::new();
    for i in 0..3u8 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut stream, &[i; 1000]).await, vec![i; 1000]);
        admitted.push(stream);
    }
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(closed_at_once(&mut stream).await);
    }
    // The admitted ones keep working, in both directions, and a half-close is passed on.
    for (i, stream) in admitted.iter_mut().enumerate() {
        assert_eq!(
            round_trip(stream, b"still here").await,
            b"still here",
            "connection {i}"
        );
    }
    let mut last = admitted.pop().unwrap();
    last.shutdown().await.unwrap();
    let mut rest = Vec::new();
    last.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // 3 per 30 s: one new connection every 10 s.
    h.clock.advance(Duration::from_secs(10));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"again").await, b"again");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert!(closed_at_once(&mut stream).await);

    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(Admin::for_proxy(&h.proxy).serve(admin, std::future::pending()));
    let metrics = admin_get(admin_addr, "/metrics").await.body;
    assert!(metrics.contains(r#"meshlimit_tcp_connections_total{mesh="default",dataplane="db",inbound="0",decision="allowed"} 4"#), "{metrics}");
    assert!(metrics.contains(r#"meshlimit_tcp_connections_total{mesh="default",dataplane="db",inbound="0",decision="limited"} 3"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"meshlimit_bucket_tokens{mesh="default",dataplane="db",inbound="0",limit="tcp"} 0"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreachable_application_closes_the_connection_and_the_proxy_keeps_running() {
    let h = Harness::start(
        vec![dataplane("db", closed_port(), Protocol::Tcp, None, None)],
        ProxyOptions::default(),
    )
    .await;
    let addr = h.addr("db");
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(b"hello").await;
        assert!(closed_at_once(&mut stream).await);
    }
}

#[tokio::test]
async fn an_http_inbound_with_a_connection_limit_limits_connections_too() {
    let app = upstream().await;
    let h = Harness::start(
        vec![dataplane(
            "backend",
            app.addr.port(),
            Protocol::Http,
            Some(http_limit(100, Duration::from_secs(10), 429)),
            Some(tcp_limit(1, Duration::from_secs(10))),
        )],
        ProxyOptions::default(),
    )
    .await;
    let addr = h.addr("backend");
    let mut first = H1::connect(addr).await;
    for _ in 0..3 {
        assert_eq!(first.get("/").await.status, 200);
    }
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_at_once(&mut second).await);
}
