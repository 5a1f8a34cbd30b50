//! meshlimit's generated configuration, served over ADS to a real Envoy 1.40 and enforced by
//! it. Buckets use a one-hour interval, so refill during a test is negligible and the admitted
//! count is exactly `num`.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshlimit_policy::effective::{DataplaneLimits, Protocol};
use meshlimit_xds::resources::{cluster_name, listener_name, stat_prefix};
use meshlimit_xds::{NodeStatus, XdsHandle};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn counter(stats: &HashMap<String, u64>, name: &str) -> u64 {
    *stats
        .get(name)
        .unwrap_or_else(|| panic!("Envoy has no stat {name}: {stats:#?}"))
}

fn node_status(handle: &XdsHandle, node: &str) -> NodeStatus {
    handle
        .node_status(node)
        .unwrap_or_else(|| panic!("no status for {node}: {:#?}", handle.status()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_limit_admits_num_then_rejects_with_status_and_headers() {
    let (handle, xds) = start_xds().await;
    let (backend, served) = http_backend().await;
    let port = free_port();
    let mut web = inbound(port, backend, Protocol::Http);
    web.http = Some(http_limit(
        5,
        503,
        // `set` overwrites: two values for one name leave the last one.
        vec![header("x-limit", "first"), header("x-limit", "second")],
        // `add` appends: both values arrive.
        vec![header("x-note", "one"), header("x-note", "two")],
    ));
    let limits = dataplane("web-1", vec![web]);
    handle.update(vec![limits.clone()]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&limits).await;

    let address = ([127, 0, 0, 1], port).into();
    let (mut admitted, mut rejected) = (0, 0);
    for i in 0..8 {
        let response = http_get(address, "/").await.expect("request");
        if i < 5 {
            assert_eq!(response.status, 200, "request {i} is within the bucket");
            assert_eq!(response.body, "backend");
            assert!(response.header_values("x-limit").is_empty());
            admitted += 1;
        } else {
            assert_eq!(response.status, 503, "request {i} is over the limit");
            assert_eq!(response.header_values("x-limit"), ["second"]);
            assert_eq!(response.header_values("x-note"), ["one", "two"]);
            assert_eq!(response.body, "local_rate_limited");
            rejected += 1;
        }
    }
    assert_eq!(
        served.load(Ordering::SeqCst),
        5,
        "the backend saw only admitted requests"
    );

    let stats = envoy.stats("http_local_rate_limit").await;
    let stat = |name: &str| {
        counter(
            &stats,
            &format!("{}.http_local_rate_limit.{name}", stat_prefix(port)),
        )
    };
    assert_eq!(stat("enabled"), admitted + rejected);
    assert_eq!(stat("ok"), admitted);
    assert_eq!(stat("rate_limited"), rejected);
    assert_eq!(stat("enforced"), rejected);

    let status = node_status(&handle, "default.web-1");
    assert!(
        status.in_sync() && status.known && status.streams == 1,
        "{status:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_over_the_limit_are_closed() {
    let (handle, xds) = start_xds().await;
    let (backend, accepted) = echo_backend().await;
    let port = free_port();
    let mut db = inbound(port, backend, Protocol::Tcp);
    db.tcp = Some(tcp_limit(3));
    let limits = dataplane("db-1", vec![db]);
    handle.update(vec![limits.clone()]);
    let envoy = Envoy::start("default", "db-1", xds).await;
    envoy.wait_running(&limits).await;

    let (mut echoed, mut closed) = (0, 0);
    for _ in 0..5 {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the kernel accepts before Envoy's filter decides");
        // A closed connection may refuse the write, or end the read early.
        let _ = stream.write_all(b"ping").await;
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
            .await
            .expect("Envoy answers or closes");
        match read {
            Ok(_) => {
                assert_eq!(&buf, b"ping");
                echoed += 1;
            }
            Err(_) => closed += 1,
        }
    }
    assert_eq!((echoed, closed), (3, 2));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "only admitted connections reach the backend"
    );
    let stats = envoy.stats("local_rate_limit").await;
    let limited = counter(
        &stats,
        &format!("local_rate_limit.{}.rate_limited", stat_prefix(port)),
    );
    assert_eq!(limited, closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_changes_envoys_behaviour_within_a_second() {
    let (handle, xds) = start_xds().await;
    let (backend, _) = http_backend().await;
    let port = free_port();
    let limits = |num_and_status: Option<(u32, u16)>| {
        let mut web = inbound(port, backend, Protocol::Http);
        web.http = num_and_status.map(|(num, status)| http_limit(num, status, vec![], vec![]));
        dataplane("web-1", vec![web])
    };
    let first = limits(Some((2, 429)));
    handle.update(vec![first.clone()]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&first).await;
    assert_eq!(statuses(port, 3).await, [200, 200, 429]);

    let applied = timed_update(&handle, &envoy, limits(Some((4, 503)))).await;
    eprintln!("Envoy ran the changed limit {applied:?} after the update");
    assert!(applied < Duration::from_secs(1), "Envoy took {applied:?}");
    // A changed listener gets a new filter, so a new (full) bucket.
    assert_eq!(statuses(port, 5).await, [200, 200, 200, 200, 503]);

    let applied = timed_update(&handle, &envoy, limits(None)).await;
    eprintln!("Envoy ran the removed limit {applied:?} after the update");
    assert!(applied < Duration::from_secs(1), "Envoy took {applied:?}");
    assert_eq!(statuses(port, 10).await, [200; 10], "no limit any more");

    // The Dataplane is gone: its Envoy drops the listener.
    handle.update(vec![]);
    let name = listener_name("127.0.0.1", port);
    eventually("the listener to be removed", || async {
        envoy.active_listener(&name).await.is_none().then_some(())
    })
    .await;
    let status = node_status(&handle, "default.web-1");
    assert!(!status.known, "{status:#?}");
}

/// Applies `limits` and returns how long until Envoy runs them.
async fn timed_update(handle: &XdsHandle, envoy: &Envoy, limits: DataplaneLimits) -> Duration {
    #[allow(clippy::disallowed_methods)] // times a real Envoy; no rate logic involved
    let start = std::time::Instant::now();
    handle.update(vec![limits.clone()]);
    envoy.wait_running(&limits).await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_configuration_is_kept_in_status_and_envoy_keeps_the_last_good_one() {
    let (handle, xds) = start_xds().await;
    let (backend, _) = http_backend().await;
    let port = free_port();
    let limits = |num, interval| {
        let mut web = inbound(port, backend, Protocol::Http);
        let mut limit = http_limit(num, 429, vec![], vec![]);
        limit.request_rate = rate(num, interval);
        web.http = Some(limit);
        dataplane("web-1", vec![web])
    };
    let good = limits(2, Duration::from_secs(3600));
    handle.update(vec![good.clone()]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&good).await;

    // Envoy refuses fill intervals under 50 ms.
    handle.update(vec![limits(3, Duration::from_millis(10))]);
    let status = eventually("a NACK", || async {
        let status = handle.node_status("default.web-1")?;
        status.listeners.last_nack.is_some().then_some(status)
    })
    .await;
    let listeners = &status.listeners;
    assert_eq!(listeners.current_version, "2");
    assert!(listeners.rejected_current(), "{status:#?}");
    assert!(!status.in_sync());
    assert_eq!(listeners.acked_version.as_deref(), Some("1"));
    assert_eq!(listeners.nacks, 1);
    let message = listeners
        .last_nack
        .as_ref()
        .map(|n| n.message.clone())
        .unwrap_or_default();
    assert!(message.contains(">= 50ms"), "Envoy's reason: {message}");
    assert!(status.clusters.in_sync(), "clusters were fine: {status:#?}");
    // Envoy keeps running (and enforcing) the last accepted listener.
    envoy.wait_running(&good).await;
    assert_eq!(statuses(port, 3).await, [200, 200, 429]);

    let fixed = limits(3, Duration::from_secs(3600));
    handle.update(vec![fixed.clone()]);
    envoy.wait_running(&fixed).await;
    let status = eventually("the fixed version acknowledged", || async {
        let status = handle.node_status("default.web-1")?;
        status.in_sync().then_some(status)
    })
    .await;
    assert_eq!(status.listeners.acked_version.as_deref(), Some("3"));
    assert!(!status.listeners.rejected_current());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_yaml_is_what_envoy_runs() {
    let (handle, xds) = start_xds().await;
    let (http_backend_port, _) = http_backend().await;
    let (tcp_backend_port, _) = echo_backend().await;
    let (http_port, tcp_port) = (free_port(), free_port());
    let mut web = inbound(http_port, http_backend_port, Protocol::Http);
    web.http = Some(http_limit(
        10,
        429,
        vec![header("x-limited", "yes")],
        vec![header("x-note", "a")],
    ));
    web.tcp = Some(tcp_limit(100));
    let mut db = inbound(tcp_port, tcp_backend_port, Protocol::Tcp);
    db.tcp = Some(tcp_limit(3));
    let limits = dataplane("mixed-1", vec![web, db]);
    handle.update(vec![limits.clone()]);
    let envoy = Envoy::start("default", "mixed-1", xds).await;

    // Listeners: waiting compares every one with its rendering.
    envoy.wait_running(&limits).await;
    let shown = rendered(&limits);
    for (i, port) in [http_backend_port, tcp_backend_port]
        .into_iter()
        .enumerate()
    {
        let (_, running) = envoy
            .active_cluster(&cluster_name(port))
            .await
            .expect("cluster");
        assert_eq!(shown["clusters"][i], running, "cluster {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_whose_node_matches_no_dataplane_gets_nothing_until_one_appears() {
    let (handle, xds) = start_xds().await;
    let (backend, _) = http_backend().await;
    let envoy = Envoy::start("default", "late-1", xds).await;
    let status = eventually("the Envoy to connect", || async {
        let status = handle.node_status("default.late-1")?;
        (status.streams == 1 && status.in_sync()).then_some(status)
    })
    .await;
    assert!(!status.known);
    assert_eq!(status.listeners.acked_version.as_deref(), Some("0"));

    let port = free_port();
    let mut web = inbound(port, backend, Protocol::Http);
    web.http = Some(http_limit(1, 429, vec![], vec![]));
    let limits = dataplane("late-1", vec![web]);
    handle.update(vec![limits.clone()]);
    envoy.wait_running(&limits).await;
    assert_eq!(statuses(port, 2).await, [200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_beyond_the_filters_own_fields_still_reach_the_client() {
    let (handle, xds) = start_xds().await;
    let (backend, _) = http_backend().await;
    let (odd_status, many_headers) = (free_port(), free_port());
    // Envoy's HttpStatus enum has no 418.
    let mut odd = inbound(odd_status, backend, Protocol::Http);
    odd.http = Some(http_limit(1, 418, vec![header("x-limited", "yes")], vec![]));
    // The filter takes at most 10 headers; a policy may have 16 `set` and 16 `add`.
    let mut many = inbound(many_headers, backend, Protocol::Http);
    let set = (0..16)
        .map(|i| header(&format!("x-set-{i}"), "v"))
        .collect();
    let mut add: Vec<_> = (0..15)
        .map(|i| header(&format!("x-add-{i}"), "v"))
        .collect();
    add.push(header("x-set-0", "appended"));
    many.http = Some(http_limit(1, 503, set, add));
    let limits = dataplane("web-1", vec![odd, many]);
    handle.update(vec![limits.clone()]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&limits).await;
    let status = node_status(&handle, "default.web-1");
    assert!(
        status.in_sync(),
        "Envoy accepts both listeners: {status:#?}"
    );

    let address = ([127, 0, 0, 1], odd_status).into();
    assert_eq!(http_get(address, "/").await.expect("request").status, 200);
    let rejected = http_get(address, "/").await.expect("request");
    assert_eq!(rejected.status, 418);
    assert_eq!(rejected.header_values("x-limited"), ["yes"]);

    let address = ([127, 0, 0, 1], many_headers).into();
    assert_eq!(http_get(address, "/").await.expect("request").status, 200);
    let rejected = http_get(address, "/").await.expect("request");
    assert_eq!(rejected.status, 503);
    for i in 1..16 {
        assert_eq!(rejected.header_values(&format!("x-set-{i}")), ["v"]);
    }
    for i in 0..15 {
        assert_eq!(rejected.header_values(&format!("x-add-{i}")), ["v"]);
    }
    assert_eq!(rejected.header_values("x-set-0"), ["v", "appended"]);

    let stats = envoy.stats("http_local_rate_limit").await;
    for port in [odd_status, many_headers] {
        let limited = format!("{}.http_local_rate_limit.rate_limited", stat_prefix(port));
        assert_eq!(counter(&stats, &limited), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_one_inbound_keeps_the_tokens_of_the_others() {
    let (handle, xds) = start_xds().await;
    let (backend, _) = http_backend().await;
    let (kept, changed) = (free_port(), free_port());
    let limits = |changed_num| {
        let mut a = inbound(kept, backend, Protocol::Http);
        a.http = Some(http_limit(2, 429, vec![], vec![]));
        let mut b = inbound(changed, backend, Protocol::Http);
        b.http = Some(http_limit(changed_num, 429, vec![], vec![]));
        dataplane("web-1", vec![a, b])
    };
    handle.update(vec![limits(1)]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&limits(1)).await;
    assert_eq!(statuses(kept, 3).await, [200, 200, 429]);
    assert_eq!(statuses(changed, 2).await, [200, 429]);

    handle.update(vec![limits(3)]);
    envoy.wait_running(&limits(3)).await;
    // Envoy re-creates only the listener whose configuration changed.
    assert_eq!(statuses(kept, 1).await, [429], "its bucket is still empty");
    assert_eq!(statuses(changed, 4).await, [200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_ends_the_streams_of_connected_envoys() {
    let (server, handle) = meshlimit_xds::XdsServer::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind xDS");
    let xds = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(listener, async {
        let _ = stopped.await;
    }));
    let _envoy = Envoy::start("default", "web-1", xds).await;
    eventually("the Envoy to connect", || async {
        let status = handle.node_status("default.web-1")?;
        (status.streams == 1).then_some(())
    })
    .await;

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("the server stops although Envoy's stream was open")
        .expect("server task")
        .expect("clean stop");
    // No Dataplane has this node id, so once its stream is closed the node is forgotten.
    eventually("the stream to be counted closed", || async {
        handle
            .node_status("default.web-1")
            .is_none_or(|status| status.streams == 0)
            .then_some(())
    })
    .await;
    assert_eq!(handle.counts().connected, 0);
}

/// Per-client limits (`rules[].matches[].spiffeID`, one with an SNI too) as Kuma renders them:
/// Envoy accepts the set_filter_state filter and the matched route copies (the rendering is what it runs), and
/// a client without a certificate, here every client, takes the inbound's own route: the
/// catch-all limit on one inbound, no limit on the other, whose only limits are per client
/// (one of them disabled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_id_routes_are_accepted_and_leave_other_clients_to_the_catch_all() {
    use meshlimit_policy::{SourceLimit, SpiffeIdMatch, SpiffeMatchType};
    let (handle, xds) = start_xds().await;
    let (backend, served) = http_backend().await;
    let (both, clients_only) = (free_port(), free_port());
    let source = |kind, value: &str, http| SourceLimit {
        spiffe_id: SpiffeIdMatch {
            kind,
            value: value.to_string(),
        },
        sni: None,
        http,
    };
    let mut web = inbound(both, backend, Protocol::Http);
    web.http = Some(http_limit(3, 429, vec![], vec![]));
    web.sources = vec![
        SourceLimit {
            sni: Some("web.mesh".to_string()),
            ..source(
                SpiffeMatchType::Exact,
                "spiffe://default/ns/clients/sa/a",
                Some(http_limit(2, 503, vec![], vec![])),
            )
        },
        source(
            SpiffeMatchType::Exact,
            "spiffe://default/ns/clients/sa/a",
            Some(http_limit(1, 503, vec![header("x-client", "a")], vec![])),
        ),
        source(
            SpiffeMatchType::Prefix,
            "spiffe://default/ns/clients",
            Some(http_limit(5, 429, vec![], vec![])),
        ),
    ];
    let mut api = inbound(clients_only, backend, Protocol::Http);
    api.sources = vec![
        source(
            SpiffeMatchType::Exact,
            "spiffe://default/ns/clients/sa/b",
            None,
        ),
        source(
            SpiffeMatchType::Prefix,
            "spiffe://default/ns/clients",
            Some(http_limit(1, 429, vec![], vec![])),
        ),
    ];
    let limits = dataplane("web-1", vec![web, api]);
    handle.update(vec![limits.clone()]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&limits).await;
    let status = node_status(&handle, "default.web-1");
    assert!(
        status.in_sync(),
        "Envoy accepts both listeners: {status:#?}"
    );

    assert_eq!(statuses(both, 5).await, [200, 200, 200, 429, 429]);
    assert_eq!(statuses(clients_only, 5).await, [200; 5]);
    assert_eq!(served.load(Ordering::SeqCst), 8);
}
