//! Live configuration changes: connections survive, unchanged buckets keep their tokens,
//! listeners come and go, and nothing that should pass fails while limits change under load.

mod common;

use std::time::Duration;

use common::*;
use meshlimit_policy::effective::Protocol;
use meshlimit_proxy::ProxyOptions;
use tokio::net::TcpStream;

const TEN_S: Duration = Duration::from_secs(10);

#[tokio::test]
async fn unchanged_settings_keep_their_tokens_and_other_fields_change_live() {
    let app = upstream().await;
    let mut h = Harness::start(
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
    let mut client = H1::connect(h.addr("backend")).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // Same rate, different status: the bucket keeps its 2 tokens, the connection stays.
    let before = h.addr("backend");
    h.apply(vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        Some(http_limit(5, TEN_S, 429)),
        None,
    )])
    .await;
    assert_eq!(h.addr("backend"), before, "the listener is kept");
    let replies = [
        client.get("/").await,
        client.get("/").await,
        client.get("/").await,
    ];
    assert_eq!(statuses(&replies), [200, 200, 429]);

    // A lower rate keeps what is left (nothing here) rather than handing out a new burst.
    h.apply(vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        Some(http_limit(2, TEN_S, 429)),
        None,
    )])
    .await;
    assert_eq!(client.get("/").await.status, 429);
    h.clock.advance(Duration::from_secs(5));
    let replies = [client.get("/").await, client.get("/").await];
    assert_eq!(
        statuses(&replies),
        [200, 429],
        "2 per 10 s: one token after 5 s"
    );

    // Removing the limit lets everything through, on the same connection.
    h.apply(vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        None,
        None,
    )])
    .await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // A limit added to a live connection applies to its next request.
    h.apply(vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        Some(http_limit(1, TEN_S, 423)),
        None,
    )])
    .await;
    let replies = [client.get("/").await, client.get("/").await];
    assert_eq!(statuses(&replies), [200, 423]);
}

#[tokio::test]
async fn listeners_follow_the_inbounds() {
    let app = upstream().await;
    let backend = dataplane("backend", app.addr.port(), Protocol::Http, None, None);
    let other = dataplane(
        "other",
        app.addr.port(),
        Protocol::Http,
        Some(http_limit(1, TEN_S, 423)),
        None,
    );
    let mut h = Harness::start(vec![backend.clone()], ProxyOptions::default()).await;
    let backend_addr = h.addr("backend");
    let mut kept = H1::connect(backend_addr).await;
    assert_eq!(kept.get("/").await.status, 200);

    let status = h.apply(vec![backend.clone(), other.clone()]).await;
    assert_eq!(status.listeners.len(), 2);
    let other_addr = h.addr("other");
    assert_eq!(
        statuses(&[
            get_once(other_addr, "/").await,
            get_once(other_addr, "/").await
        ]),
        [200, 423]
    );

    let status = h.apply(vec![other.clone()]).await;
    assert_eq!(status.listeners.len(), 1);
    assert!(
        TcpStream::connect(backend_addr).await.is_err(),
        "a removed inbound stops listening"
    );
    assert_eq!(
        get_once(other_addr, "/").await.status,
        423,
        "the other inbound keeps its bucket"
    );
    // A keep-alive connection of the removed inbound is closed once idle (a request already
    // on its way when the inbound went is still answered).
    let mut closed = false;
    for _ in 0..2 {
        let request = http::Request::get("/")
            .header("host", "x")
            .body(Default::default())
            .unwrap();
        if kept.try_send(request).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the removed inbound's connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_under_load_without_failing_requests_that_should_pass() {
    let app = upstream().await;
    // Generous limits (never exhausted under the fake clock) that change shape on every apply.
    let generous = |num: u32, status: u16| {
        vec![dataplane(
            "backend",
            app.addr.port(),
            Protocol::Http,
            Some(http_limit(num, TEN_S, status)),
            None,
        )]
    };
    let mut h = Harness::start(generous(100_000, 429), ProxyOptions::default()).await;
    let addr = h.addr("backend");

    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = H1::connect(addr).await;
                let mut fresh = 0;
                for i in 0..300 {
                    let reply = if i % 50 == 0 {
                        fresh += 1;
                        get_once(addr, "/").await
                    } else {
                        client.get("/").await
                    };
                    assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
                }
                fresh
            })
        })
        .collect();
    let mut applied = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        applied += 1;
        let num = if applied % 2 == 0 { 100_000 } else { 200_000 };
        let mut config = generous(num, 420 + (applied % 9) as u16);
        if applied % 3 == 0 {
            config.push(dataplane(
                "extra",
                app.addr.port(),
                Protocol::Tcp,
                None,
                None,
            ));
        }
        h.apply(config).await;
        assert_eq!(h.addr("backend"), addr);
        tokio::task::yield_now().await;
    }
    for client in clients {
        assert_eq!(client.await.unwrap(), 6);
    }
    assert!(
        applied >= 3,
        "the limits changed while requests were in flight ({applied} applies)"
    );
    assert_eq!(app.hits(), 4 * 300);
}
