//! HTTP inbounds through real sockets: exact admissions under a fake clock, rejections,
//! HTTP/2, upstream failures, malformed and oversized requests, graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use meshlimit_policy::effective::{HeaderValue, Protocol};
use meshlimit_proxy::ProxyOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEN_S: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_burst_is_admitted_exactly_up_to_the_bucket_then_refills_smoothly() {
    let app = upstream().await;
    let config = vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        Some(http_limit(5, TEN_S, 423)),
        None,
    )];
    let h = Harness::start(config, ProxyOptions::default()).await;
    let mut client = H1::connect(h.addr("backend")).await;

    let mut replies = Vec::new();
    for _ in 0..8 {
        replies.push(client.get("/").await);
    }
    assert_eq!(statuses(&replies), [200, 200, 200, 200, 200, 423, 423, 423]);
    assert_eq!(
        app.hits(),
        5,
        "rejected requests never reach the application"
    );

    // 5 per 10 s refills one token every 2 s.
    h.clock.advance(Duration::from_millis(1999));
    assert_eq!(client.get("/").await.status, 423);
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(client.get("/").await.status, 423);
    h.clock.advance(Duration::from_secs(60));
    let mut replies = Vec::new();
    for _ in 0..7 {
        replies.push(client.get("/").await);
    }
    assert_eq!(statuses(&replies), [200, 200, 200, 200, 200, 423, 423]);
    assert_eq!(app.hits(), 11);
}

#[tokio::test]
async fn a_rejection_has_the_policy_status_and_headers_set_overwrites_add_appends() {
    let app = upstream().await;
    let mut limit = http_limit(1, TEN_S, 429);
    limit
        .headers
        .set
        .push(HeaderValue::new("x-mode", "first").expect("valid header"));
    limit
        .headers
        .set
        .push(HeaderValue::new("x-mode", "second").expect("valid header"));
    limit
        .headers
        .add
        .push(HeaderValue::new("x-mode", "third").expect("valid header"));
    limit
        .headers
        .add
        .push(HeaderValue::new("x-extra", "a").expect("valid header"));
    limit
        .headers
        .add
        .push(HeaderValue::new("x-extra", "b").expect("valid header"));
    let h = Harness::start(
        vec![dataplane(
            "backend",
            app.addr.port(),
            Protocol::Http,
            Some(limit),
            None,
        )],
        ProxyOptions::default(),
    )
    .await;
    let mut client = H1::connect(h.addr("backend")).await;
    let passed = client.get("/a").await;
    assert_eq!(passed.status, 200);
    assert_eq!(passed.headers["x-upstream"], "1");
    assert!(passed.headers.get("x-kuma-rate-limited").is_none());
    assert!(
        passed.headers.get("ratelimit").is_none(),
        "IETF headers are off by default"
    );

    let rejected = client.get("/a").await;
    assert_eq!(rejected.status, 429);
    assert_eq!(rejected.headers["x-kuma-rate-limited"], "true");
    let modes: Vec<_> = rejected.headers.get_all("x-mode").iter().collect();
    assert_eq!(modes, ["second", "third"]);
    let extra: Vec<_> = rejected.headers.get_all("x-extra").iter().collect();
    assert_eq!(extra, ["a", "b"]);
    assert_eq!(rejected.body, "local_rate_limited");
    assert!(rejected.headers.get("retry-after").is_none());
    assert!(rejected.headers.get("x-upstream").is_none());
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn http2_requests_take_one_token_each_on_one_connection() {
    let app = upstream().await;
    let h = Harness::start(
        vec![dataplane(
            "backend",
            app.addr.port(),
            Protocol::Http,
            Some(http_limit(5, TEN_S, 423)),
            None,
        )],
        ProxyOptions::default(),
    )
    .await;
    let addr = h.addr("backend");
    let mut sender = h2(addr).await;
    let mut pending = Vec::new();
    for i in 0..7 {
        sender.ready().await.unwrap();
        let request = Request::get(format!("http://backend.test/{i}"))
            .body(Full::<Bytes>::default())
            .unwrap();
        pending.push(sender.send_request(request));
    }
    let mut replies = Vec::new();
    for response in pending {
        replies.push(Reply::read(response.await.unwrap()).await);
    }
    let mut counts = statuses(&replies);
    counts.sort_unstable();
    assert_eq!(counts, [200, 200, 200, 200, 200, 423, 423]);
    assert_eq!(app.hits(), 5);
    let passed = replies.iter().find(|r| r.status == 200).unwrap();
    assert!(
        passed.body.contains("host=backend.test"),
        "the :authority reaches the application as Host: {}",
        passed.body
    );
    let rejected = replies.iter().find(|r| r.status == 423).unwrap();
    assert_eq!(rejected.headers["x-kuma-rate-limited"], "true");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let mut client = H1::connect(h.addr("backend")).await;
    let request = Request::get("/path?q=1")
        .header("host", "backend.test")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .body(Full::default())
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "GET /path?q=1 host=backend.test hop=false");
    assert!(
        reply.headers.get("keep-alive").is_none(),
        "the application's keep-alive header is dropped"
    );
    // No limit configured: every request passes and is counted as allowed.
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
}

#[tokio::test]
async fn upstream_down_is_503_and_the_proxy_keeps_serving() {
    let app = upstream().await;
    let mut h = Harness::start(
        vec![dataplane(
            "backend",
            closed_port(),
            Protocol::Http,
            None,
            None,
        )],
        ProxyOptions::default(),
    )
    .await;
    let mut client = H1::connect(h.addr("backend")).await;
    let reply = client.get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "upstream unavailable");
    assert_eq!(
        client.get("/").await.status,
        503,
        "the client connection stays usable"
    );

    h.apply(vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        None,
        None,
    )])
    .await;
    assert_eq!(
        client.get("/").await.status,
        200,
        "same connection, application now reachable"
    );
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_the_connection_is_closed() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let addr = h.addr("backend");
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    }
    assert_eq!(app.hits(), 0);
    assert_eq!(
        get_once(addr, "/").await.status,
        200,
        "the proxy keeps serving"
    );
}

#[tokio::test]
async fn header_and_body_size_limits() {
    let app = upstream().await;
    let options = ProxyOptions {
        max_request_header_bytes: 8192,
        max_request_body_bytes: Some(16),
        ..ProxyOptions::default()
    };
    let h = Harness::unlimited_http("backend", app.addr.port(), options).await;
    let addr = h.addr("backend");

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(10_000);
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"));

    let mut client = H1::connect(addr).await;
    let small = Request::post("/")
        .header("host", "x")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    assert_eq!(client.send(small).await.status, 200);
    let declared = Request::post("/")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    assert_eq!(client.send(declared).await.status, 413);

    // A chunked body with no declared length is cut when it passes the limit.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let chunk = "x".repeat(40);
    stream
        .write_all(format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n28\r\n{chunk}\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let addr = h.addr("backend");
    let mut client = H1::connect(addr).await;
    let in_flight = tokio::spawn(async move { client.get("/hold").await });
    app.arrived.notified().await;

    let shutdown = tokio::spawn(h.proxy.shutdown());
    // The listener closes: new connections are refused.
    loop {
        if TcpStream::connect(addr).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the in-flight request"
    );
    app.release.notify_one();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "GET /hold host=backend.test hop=false");
    shutdown.await.unwrap();
}

/// Bounds a step that a broken proxy would never finish: the test fails instead of hanging.
async fn bounded<T>(step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), step)
        .await
        .expect("the proxy answers")
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_and_its_connection_is_closed() {
    let (app, mut closed) = raw_upstream(b"", false).await;
    let options = ProxyOptions {
        upstream_timeout: Duration::from_millis(50),
        ..ProxyOptions::default()
    };
    let h = Harness::unlimited_http("backend", app.port(), options).await;
    let addr = h.addr("backend");

    let mut client = H1::connect(addr).await;
    let reply = bounded(client.get("/")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.body, "upstream request timeout");
    bounded(closed.recv())
        .await
        .expect("the proxy closes the upstream connection it gave up on");

    let mut sender = h2(addr).await;
    let request = Request::get("http://backend.test/")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = bounded(sender.send_request(request)).await.unwrap();
    assert_eq!(response.status(), 504);
    bounded(closed.recv()).await.expect("closed again");

    let body = metrics(&h.proxy).await;
    let line =
        r#"meshlimit_upstream_timeouts_total{mesh="default",dataplane="backend",inbound="0"} 2"#;
    assert!(
        body.lines().any(|l| l == line),
        "missing {line:?} in\n{body}"
    );
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_not_an_upstream_failure() {
    let app = upstream().await;
    let h = Harness::unlimited_http("backend", app.addr.port(), ProxyOptions::default()).await;
    let addr = h.addr("backend");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    bounded(stream.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.ends_with("malformed request body"), "{answer:?}");
    assert_eq!(
        get_once(addr, "/").await.status,
        200,
        "the proxy keeps serving"
    );
}

/// A response whose body the client reads to the end: the status, and whether the body ended
/// with an error (a clean end is `Ok` with the bytes).
async fn read_through(
    response: http::Response<hyper::body::Incoming>,
) -> (u16, Result<Bytes, hyper::Error>) {
    use http_body_util::BodyExt;
    let status = response.status().as_u16();
    let body = bounded(response.into_body().collect()).await;
    (status, body.map(|collected| collected.to_bytes()))
}

#[tokio::test]
async fn an_upstream_that_closes_mid_response_is_an_error_for_the_client_not_a_clean_end() {
    for (upstream_reply, client_h2) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"[..],
            false,
        ),
        (
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n"[..],
            false,
        ),
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"[..],
            true,
        ),
    ] {
        let (app, _closed) = raw_upstream(upstream_reply, true).await;
        let h = Harness::unlimited_http("backend", app.port(), ProxyOptions::default()).await;
        let addr = h.addr("backend");
        let request = Request::get("http://backend.test/")
            .header("host", "backend.test")
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = if client_h2 {
            let mut sender = h2(addr).await;
            bounded(sender.send_request(request)).await.unwrap()
        } else {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            bounded(sender.send_request(request)).await.unwrap()
        };
        let (status, body) = read_through(response).await;
        assert_eq!(status, 200);
        assert!(
            body.is_err(),
            "h2={client_h2}: the client sees the truncation, not a clean end: {body:?}"
        );
        let body = metrics(&h.proxy).await;
        let line =
            r#"meshlimit_upstream_resets_total{mesh="default",dataplane="backend",inbound="0"} 1"#;
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
}
