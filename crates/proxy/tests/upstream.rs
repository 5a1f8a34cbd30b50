//! The connections to the application through real sockets: reused from one request to the
//! next, over client connections and HTTP versions, and a connection the application closed
//! never used again.

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
