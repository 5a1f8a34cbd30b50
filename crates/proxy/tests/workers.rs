//! Worker threads of the proxy's own (`ProxyOptions::worker_threads`), through real sockets:
//! connections are handed to the workers in turn, over HTTP/1.1 and HTTP/2; every worker
//! takes from the same bucket; each keeps its own connections to the application; shutdown
//! ends the threads. The only test of this binary, so that the threads it counts are its own.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use meshlimit_policy::effective::Protocol;
use meshlimit_proxy::ProxyOptions;

/// Threads of this process named as the proxy names its workers.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("listing this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("meshlimit-wrk-"))
        .count()
}

/// One request on each of `connections` new HTTP/1.1 connections, one after the other, then
/// two on an HTTP/2 connection; the statuses, in order.
async fn requests(addr: std::net::SocketAddr, connections: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for _ in 0..connections {
        let mut client = H1::connect(addr).await;
        statuses.push(client.get("/").await.status.as_u16());
        // Kept open: a closed client connection could free its worker's turn for nobody.
        open.push(client);
    }
    let mut h2 = h2(addr).await;
    for _ in 0..2 {
        let request = Request::get(format!("http://{addr}/"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = h2.send_request(request).await.unwrap();
        statuses.push(Reply::read(response).await.status.as_u16());
    }
    statuses
}

/// A proxy with `worker_threads` in front of `app`, its inbound limited to six requests.
async fn proxy(app: &Upstream, worker_threads: usize) -> Harness {
    let limit = http_limit(6, Duration::from_secs(3600), 429);
    Harness::start(
        vec![dataplane(
            "web",
            app.addr.port(),
            Protocol::Http,
            Some(limit),
            None,
        )],
        ProxyOptions {
            worker_threads,
            ..ProxyOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_bucket_and_keep_their_own_application_connections() {
    // The control: served on the test's runtime, one pool, one connection to the application.
    let alone = upstream().await;
    let inline = proxy(&alone, 0).await;
    assert_eq!(worker_threads(), 0, "no workers without worker_threads");
    let statuses = requests(inline.addr("web"), 3).await;
    assert_eq!(statuses, [200; 5]);
    assert_eq!(alone.connections(), 1, "one pool: the connection is reused");
    inline.proxy.shutdown().await;

    let app = upstream().await;
    let harness = proxy(&app, 2).await;
    assert_eq!(worker_threads(), 2);
    let addr = harness.addr("web");
    // Connections 1 and 3 go to the first worker, 2 and the HTTP/2 one to the second: each
    // worker opens one connection to the application and reuses it.
    let statuses = requests(addr, 3).await;
    assert_eq!(statuses, [200; 5]);
    assert_eq!(app.hits(), 5);
    assert_eq!(app.connections(), 2, "one pool per worker");

    // One bucket over both workers: six tokens in all, whichever worker takes them.
    let mut first = H1::connect(addr).await;
    let mut second = H1::connect(addr).await;
    assert_eq!(first.get("/").await.status, 200);
    assert_eq!(second.get("/").await.status, 429);
    assert_eq!(first.get("/").await.status, 429);
    assert_eq!(app.hits(), 6);

    harness.proxy.shutdown().await;
    // Shutdown has joined the threads; the kernel lists a joined thread a moment longer (its
    // last exit steps come after the join's wake-up), so the listing is polled, within bounds.
    let mut left = worker_threads();
    for _ in 0..5000 {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        left = worker_threads();
    }
    assert_eq!(left, 0, "shutdown ends the workers");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is released"
    );
}
