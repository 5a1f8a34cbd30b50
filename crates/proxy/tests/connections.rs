//! Client connections through real sockets: the request-headers and idle deadlines for
//! HTTP/1.1 and HTTP/2, the connection caps (the admin endpoint answering while an inbound is
//! saturated), `Host` against `Connection` and `:authority`, CONNECT, and `/ready` before any
//! configuration arrived.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshlimit_bucket::FakeClock;
use meshlimit_policy::Versioned;
use meshlimit_policy::effective::Protocol;
use meshlimit_proxy::{Admin, Proxy, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Long enough for any deadline under test to pass many times over: a connection still open
/// by then was never going to be closed.
const GIVE_UP: Duration = Duration::from_secs(20);

fn options(request_headers: Duration, idle: Duration) -> ProxyOptions {
    ProxyOptions {
        request_headers_timeout: request_headers,
        idle_timeout: idle,
        ..ProxyOptions::default()
    }
}

/// Reads until the proxy closes the connection; what it sent before.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GIVE_UP, stream.read(&mut buf)).await {
            Err(_) => panic!("the proxy kept the connection open"),
            Ok(Ok(0) | Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn admin(proxy: &Proxy) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Admin::for_proxy(proxy).serve(listener, std::future::pending()));
    addr
}

/// The value of an unlabelled sample, or of the first one whose labels contain `labels`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .find(|line| line[name.len()..].starts_with(['{', ' ']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_half_a_head_is_closed() {
    let app = upstream().await;
    let h = Harness::unlimited_http(
        "backend",
        app.addr.port(),
        options(Duration::from_millis(300), Duration::from_secs(3600)),
    )
    .await;
    let addr = h.addr("backend");

    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, b"");

    // Before the version is known: the auto-detection phase, where nothing else would time out.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    trickle.write_all(b"GET / HT").await.unwrap();
    assert_eq!(read_until_closed(&mut trickle).await, b"");

    // HTTP/2 after its preface and SETTINGS, and nothing more.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    read_until_closed(&mut h2).await;

    let metrics = metrics(&h.proxy).await;
    assert_eq!(
        sample(
            &metrics,
            "meshlimit_connection_timeouts_total",
            "timeout=\"request_headers\""
        ),
        Some(3),
        "{metrics}"
    );
    // A client that asks in time is served.
    assert_eq!(get_once(addr, "/").await.status, 200);
}

/// A client connection of either version and the task driving it, which ends when the proxy
/// closes the connection.
struct Client<S> {
    sender: S,
    closed: tokio::task::JoinHandle<()>,
}

async fn h1_client(
    addr: SocketAddr,
) -> Client<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    Client { sender, closed }
}

async fn h2_client(
    addr: SocketAddr,
) -> Client<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let closed = tokio::spawn(async move {
        let _ = connection.await;
    });
    Client { sender, closed }
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", "backend.test")
        .body(Full::default())
        .unwrap()
}

/// Waits for the proxy to close a client connection.
async fn closed(client: Client<impl Sized>) {
    tokio::time::timeout(GIVE_UP, client.closed)
        .await
        .expect("the proxy closed the idle connection")
        .unwrap();
}

#[tokio::test]
async fn idle_connections_are_closed_and_counted_once_and_requests_in_flight_elsewhere_finish() {
    let app = upstream().await;
    let h = Harness::unlimited_http(
        "backend",
        app.addr.port(),
        ProxyOptions {
            // The held requests below wait for as long as the test takes.
            upstream_timeout: Duration::from_secs(3600),
            ..options(Duration::from_secs(3600), Duration::from_millis(200))
        },
    )
    .await;
    let addr = h.addr("backend");
    let idle_closes = |metrics: &str| {
        sample(
            metrics,
            "meshlimit_connection_timeouts_total",
            "timeout=\"idle\"",
        )
    };

    // One request held by the application on an HTTP/1.1 connection and one on an HTTP/2
    // connection, for longer than the idle timeout: until the connections below are closed.
    let mut held_h1 = h1_client(addr).await;
    let mut held_h2 = h2_client(addr).await;
    let h1_reply = {
        let response = held_h1.sender.send_request(get(addr, "/hold"));
        tokio::spawn(async move { Reply::read(response.await.unwrap()).await })
    };
    // One at a time: `arrived` keeps one notification.
    app.arrived.notified().await;
    let h2_reply = {
        let response = held_h2.sender.send_request(get(addr, "/hold"));
        tokio::spawn(async move { Reply::read(response.await.unwrap()).await })
    };
    app.arrived.notified().await;

    // Idle connections of both versions, each after one request. Several HTTP/1.1 ones: each
    // is closed by whichever of two equal deadlines fires first (hyper's head timer or the
    // proxy's own), and must count once either way.
    let mut idle_h1 = Vec::new();
    for _ in 0..3 {
        let mut client = h1_client(addr).await;
        let reply = Reply::read(client.sender.send_request(get(addr, "/")).await.unwrap()).await;
        assert_eq!(reply.status, 200);
        idle_h1.push(client);
    }
    let mut idle_h2 = h2_client(addr).await;
    let reply = Reply::read(idle_h2.sender.send_request(get(addr, "/")).await.unwrap()).await;
    assert_eq!(reply.status, 200);
    for client in idle_h1 {
        closed(client).await;
    }
    closed(idle_h2).await;
    let metrics_now = metrics(&h.proxy).await;
    assert_eq!(idle_closes(&metrics_now), Some(4), "{metrics_now}");

    // The held requests were not cut, nor their connections closed.
    assert!(!held_h1.closed.is_finished() && !held_h2.closed.is_finished());
    assert!(!h1_reply.is_finished() && !h2_reply.is_finished());
    app.release.notify_waiters();
    for reply in [h1_reply.await.unwrap(), h2_reply.await.unwrap()] {
        assert_eq!(reply.status, 200);
        assert!(reply.body.starts_with("GET /hold"), "{}", reply.body);
    }
    // Then idle too: closed (HTTP/2 after GOAWAY) and counted.
    closed(held_h1).await;
    closed(held_h2).await;
    let metrics = metrics(&h.proxy).await;
    assert_eq!(idle_closes(&metrics), Some(6), "{metrics}");
}

#[tokio::test]
async fn a_later_head_trickled_on_a_keep_alive_connection_is_closed_as_idle() {
    let app = upstream().await;
    let h = Harness::unlimited_http(
        "backend",
        app.addr.port(),
        options(Duration::from_secs(3600), Duration::from_millis(200)),
    )
    .await;
    let mut stream = TcpStream::connect(h.addr("backend")).await.unwrap();
    // One request, then half of the next head and nothing more: no request is in flight
    // until a head is complete, so the idle deadline runs from the first response.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\nGET /two HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(seen.matches("HTTP/1.1 ").count(), 1, "{seen}");
    let metrics = metrics(&h.proxy).await;
    assert_eq!(
        sample(
            &metrics,
            "meshlimit_connection_timeouts_total",
            "timeout=\"idle\""
        ),
        Some(1),
        "{metrics}"
    );
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn beyond_the_inbound_cap_connections_are_refused_the_admin_answers_and_room_comes_back() {
    let app = upstream().await;
    let cap = 8;
    let h = Harness::unlimited_http(
        "backend",
        app.addr.port(),
        ProxyOptions {
            max_connections_per_inbound: Some(cap),
            ..ProxyOptions::default()
        },
    )
    .await;
    let addr = h.addr("backend");
    let admin = admin(&h.proxy).await;

    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(H1::connect(addr).await);
    }
    // Each held connection has been served once, so every slot is taken.
    for client in &mut held {
        assert_eq!(client.get("/").await.status, 200);
    }
    for _ in 0..5 {
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let _ = refused
            .write_all(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
            .await;
        assert_eq!(
            read_until_closed(&mut refused).await,
            b"",
            "closed unanswered"
        );
    }
    let metrics = admin_get(admin, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        sample(
            &metrics.body,
            "meshlimit_connections_refused_total",
            "cap=\"inbound\""
        ),
        Some(5),
        "{}",
        metrics.body
    );
    assert_eq!(
        sample(
            &metrics.body,
            "meshlimit_connections_open",
            "dataplane=\"backend\""
        ),
        Some(8)
    );
    assert_eq!(admin_get(admin, "/ready").await.status, 200);

    drop(held);
    tokio::time::timeout(GIVE_UP, async {
        loop {
            if let Ok(mut client) = TcpStream::connect(addr).await {
                let _ = client
                    .write_all(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
                    .await;
                let answer = read_until_closed(&mut client).await;
                if answer.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the inbound answers again once connections close");
}

#[tokio::test]
async fn the_process_cap_counts_every_inbound() {
    let app = upstream().await;
    let config = vec![
        dataplane("one", app.addr.port(), Protocol::Http, None, None),
        dataplane("two", app.addr.port(), Protocol::Http, None, None),
    ];
    let h = Harness::start(
        config,
        ProxyOptions {
            max_connections: Some(2),
            ..ProxyOptions::default()
        },
    )
    .await;
    let mut one = H1::connect(h.addr("one")).await;
    let mut two = H1::connect(h.addr("two")).await;
    assert_eq!(one.get("/").await.status, 200);
    assert_eq!(two.get("/").await.status, 200);
    let mut refused = TcpStream::connect(h.addr("two")).await.unwrap();
    assert_eq!(read_until_closed(&mut refused).await, b"");
    let metrics = metrics(&h.proxy).await;
    assert_eq!(
        sample(
            &metrics,
            "meshlimit_connections_refused_total",
            "dataplane=\"two\",inbound=\"0\",cap=\"process\""
        ),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "meshlimit_process_connections_max", ""),
        Some(2)
    );
}

#[tokio::test]
async fn host_survives_connection_and_http2_authority_wins_over_host() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let addr = h.addr("backend");

    let mut h1 = H1::connect(addr).await;
    let reply = h1
        .send(
            Request::get("/named")
                .header("host", "backend.test")
                .header("connection", "Host, x-hop")
                .header("x-hop", "1")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.body, "GET /named host=backend.test hop=false");

    let mut client = h2(addr).await;
    let request = Request::get("http://authority.test/two")
        .header("host", "other.test")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = Reply::read(client.send_request(request).await.unwrap()).await;
    assert_eq!(reply.body, "GET /two host=authority.test hop=false");
}

#[tokio::test]
async fn connect_is_answered_404_without_reaching_the_application() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let mut stream = TcpStream::connect(h.addr("backend")).await.unwrap();
    stream
        .write_all(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(GIVE_UP, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(app.hits(), 0);
    let metrics = metrics(&h.proxy).await;
    assert_eq!(
        sample(&metrics, "meshlimit_connect_refused_total", ""),
        Some(1)
    );
}

#[tokio::test]
async fn not_ready_until_the_source_sends_a_configuration() {
    let app = upstream().await;
    // What a data plane's follower holds before the control plane has answered.
    let (limits, receiver) = watch::channel(Versioned::default());
    let proxy = Proxy::spawn(
        ProxyOptions::default(),
        Arc::new(FakeClock::new(0)),
        receiver,
    )
    .expect("starting the proxy");
    let mut status = proxy.status();
    status.wait_for(|s| s.generation >= 1).await.unwrap();
    let admin = admin(&proxy).await;
    let ready = admin_get(admin, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);

    limits.send_replace(Versioned::new(
        7,
        vec![dataplane(
            "backend",
            app.addr.port(),
            Protocol::Http,
            None,
            None,
        )],
    ));
    status.wait_for(|s| s.version == Some(7)).await.unwrap();
    assert_eq!(admin_get(admin, "/ready").await.status, 200);
}
