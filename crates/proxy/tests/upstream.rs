//! The connections to the application through real sockets: reused from one request to the
//! next, over client connections and HTTP versions, and a connection the application closed
//! never used again, nor kept open once the application closes it while idle.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use meshlimit_proxy::ProxyOptions;

#[tokio::test]
async fn one_upstream_connection_serves_requests_one_after_another() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let addr = h.addr("backend");

    let mut client = H1::connect(addr).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.status, 200);
    }
    for _ in 0..5 {
        assert_eq!(get_once(addr, "/").await.status, 200);
    }
    let mut h2 = h2(addr).await;
    for _ in 0..5 {
        let request = Request::get(format!("http://{addr}/"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let reply = Reply::read(h2.send_request(request).await.unwrap()).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(app.hits(), 15);
    assert_eq!(app.connections(), 1);
}

#[tokio::test]
async fn requests_in_flight_together_each_have_a_connection_then_share_them() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let addr = h.addr("backend");

    // Two held at once: two connections.
    let mut first = H1::connect(addr).await;
    let mut second = H1::connect(addr).await;
    let held = tokio::spawn(async move { first.get("/hold").await });
    app.arrived.notified().await;
    let also_held = tokio::spawn(async move { second.get("/hold").await });
    app.arrived.notified().await;
    app.release.notify_waiters();
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(also_held.await.unwrap().status, 200);
    assert_eq!(app.connections(), 2);
    // Afterwards, requests one at a time reuse them.
    for _ in 0..4 {
        assert_eq!(get_once(addr, "/").await.status, 200);
    }
    assert_eq!(app.connections(), 2);
}

#[tokio::test]
async fn a_connection_the_application_closed_is_not_used_again() {
    // Each upstream connection answers one request (keep-alive, as far as the response says)
    // and is then closed by the application.
    let (app, _closed) =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let h = Harness::unlimited_http("backend", app.port(), ProxyOptions::default()).await;
    let mut client = H1::connect(h.addr("backend")).await;
    for _ in 0..5 {
        let reply = client.get("/").await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "ok"));
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_the_application_closes_is_closed_without_waiting_for_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The application answers one request (keep-alive), then closes its side as an idle
    // keep-alive timeout would, and waits for the proxy to close the other.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = listener.local_addr().unwrap().port();
    let (closed, closed_rx) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        // Once the response has been relayed and the connection is idle in the pool.
        let _ = go_rx.await;
        stream.shutdown().await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0, "nothing more sent");
        let _ = closed.send(tokio::time::Instant::now());
    });
    let h = Harness::unlimited_http("backend", app_port, ProxyOptions::default()).await;
    let reply = get_once(h.addr("backend"), "/").await;
    assert_eq!(reply.status, 200);
    let idle_from = tokio::time::Instant::now();
    go.send(()).unwrap();
    // The application's close is the proxy's EOF: with no request coming, only the sweep
    // (every 5 s on the paused clock) can see it, long before the pool's 60 s idle limit.
    let closed_at = tokio::time::timeout(std::time::Duration::from_secs(30), closed_rx)
        .await
        .expect("the proxy closed its side before its idle limit")
        .unwrap();
    assert!(closed_at.duration_since(idle_from) <= std::time::Duration::from_secs(10));
}
