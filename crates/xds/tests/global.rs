//! `MeshGlobalRateLimit` served over ADS to real Envoys: with a rate-limit service (meshlimit's
//! own, over a real redis-server) the instances share exactly the total; without one each
//! enforces its share. Buckets use a one-hour interval, so refill during a test is negligible.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshlimit_global::{GlobalBuckets, GlobalOptions, RateLimitServer};
use meshlimit_policy::effective::{
    FailureMode, GlobalLimit, GlobalMode, HeaderValue, Protocol, RejectHeaders,
};
use meshlimit_testkit::redis::RedisServer;
use meshlimit_xds::resources::{ServiceAddress, global_stat_prefix};
use support::*;

fn global_limit(
    total: u32,
    instances: u32,
    index: u32,
    status: u16,
    set: Vec<HeaderValue>,
    service: Option<String>,
) -> GlobalLimit {
    let request_rate = rate(total, Duration::from_secs(3600));
    GlobalLimit {
        policy: "global".into(),
        service: "web".into(),
        key: "mgrl/default/test/web".into(),
        request_rate,
        share: meshlimit_policy::share(request_rate, instances, index),
        instances,
        index,
        mode: GlobalMode::Limit,
        status: meshlimit_policy::RejectStatus::new(status).expect("an HTTP status"),
        headers: RejectHeaders { set, add: vec![] },
        rate_limit_service: service,
        // Generous: the first check also opens Envoy's connection to the service.
        timeout: Duration::from_secs(2),
        failure_mode: FailureMode::Open,
        policies: vec!["test".into()],
    }
}

/// meshlimit's rate-limit service over a fresh redis-server, on a loopback port.
async fn start_rls(redis: &RedisServer) -> (RateLimitServer, SocketAddr) {
    let options = GlobalOptions {
        timeout: Duration::from_secs(2),
        ..GlobalOptions::default()
    };
    let buckets = GlobalBuckets::connect(&redis.url(), options)
        .await
        .expect("Redis is up");
    let server = RateLimitServer::new(buckets);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the service");
    let address = listener.local_addr().expect("address");
    tokio::spawn(server.clone().serve(listener));
    (server, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_share_exactly_the_total_through_the_rate_limit_service() {
    let redis = RedisServer::start();
    let (rls, rls_address) = start_rls(&redis).await;
    let (handle, xds) = start_xds().await;
    let (backend, served) = http_backend().await;
    let url = format!("http://{rls_address}");
    let ports = [free_port(), free_port()];
    let limits: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let mut web = inbound(port, backend, Protocol::Http);
            web.global = Some(global_limit(
                5,
                2,
                i as u32,
                503,
                vec![header("x-global", "over")],
                Some(url.clone()),
            ));
            dataplane(&format!("web-{}", i + 1), vec![web])
        })
        .collect();
    handle.update(limits.clone());
    let envoys = [
        Envoy::start("default", "web-1", xds).await,
        Envoy::start("default", "web-2", xds).await,
    ];
    for (envoy, limits) in envoys.iter().zip(&limits) {
        envoy.wait_running(limits).await;
        // The service's cluster runs as rendered too.
        let name = ServiceAddress::parse(&url).expect("URL").cluster_name();
        let (_, running) = envoy.active_cluster(&name).await.expect("cluster");
        assert_eq!(rendered(limits)["clusters"][1], running);
    }

    let mut admitted = 0;
    for i in 0..10 {
        let address = SocketAddr::from(([127, 0, 0, 1], ports[i % 2]));
        let response = http_get(address, "/").await.expect("request");
        match response.status {
            200 => {
                assert!(response.header_values("x-global").is_empty());
                admitted += 1;
            }
            503 => assert_eq!(response.header_values("x-global"), ["over"]),
            other => panic!("request {i}: unexpected {other}: {response:?}"),
        }
        // A shared bucket: the first 5, whichever Envoy they went to.
        assert_eq!(response.status == 200, i < 5, "request {i}");
    }
    assert_eq!(admitted, 5);
    assert_eq!(served.load(Ordering::SeqCst), 5);
    let stats = rls.stats();
    assert_eq!(
        (stats.checks, stats.over_limit, stats.unknown, stats.errors),
        (10, 5, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_limit_asks_the_service_but_never_rejects() {
    let redis = RedisServer::start();
    let (rls, rls_address) = start_rls(&redis).await;
    let (handle, xds) = start_xds().await;
    let (backend, _) = http_backend().await;
    let port = free_port();
    let mut web = inbound(port, backend, Protocol::Http);
    let mut limit = global_limit(2, 1, 0, 429, vec![], Some(format!("http://{rls_address}")));
    limit.mode = GlobalMode::Shadow;
    // Even a closed failure mode does not reject in shadow.
    limit.failure_mode = FailureMode::Closed;
    web.global = Some(limit);
    let limits = dataplane("web-1", vec![web]);
    handle.update(vec![limits.clone()]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&limits).await;
    assert_eq!(statuses(port, 5).await, [200; 5]);
    let stats = rls.stats();
    assert_eq!((stats.checks, stats.over_limit), (5, 3), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_service_each_envoy_enforces_its_share_after_the_local_limit() {
    let (handle, xds) = start_xds().await;
    let (backend, _) = http_backend().await;
    let (shared, shadow) = (free_port(), free_port());
    // 5 among 2 instances: this one (index 0) gets 3. The local MeshRateLimit of 4 goes
    // first; its rejections never spend the global share.
    let mut web = inbound(shared, backend, Protocol::Http);
    web.http = Some(http_limit(4, 429, vec![], vec![]));
    // 418 is not in Envoy's list: both limits then answer through the mapper.
    web.global = Some(global_limit(
        5,
        2,
        0,
        418,
        vec![header("x-global", "share")],
        None,
    ));
    let mut quiet = inbound(shadow, backend, Protocol::Http);
    let mut limit = global_limit(1, 1, 0, 429, vec![], None);
    limit.mode = GlobalMode::Shadow;
    quiet.global = Some(limit);
    let limits = dataplane("web-1", vec![web, quiet]);
    handle.update(vec![limits.clone()]);
    let envoy = Envoy::start("default", "web-1", xds).await;
    envoy.wait_running(&limits).await;

    let address = SocketAddr::from(([127, 0, 0, 1], shared));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let response = http_get(address, "/").await.expect("request");
        seen.push((
            response.status,
            response.header_values("x-global").join(","),
        ));
    }
    let over = (418, "share".to_string());
    let ok = (200, String::new());
    // The share (3) runs out before the local limit (4); the 4th request spent a local token
    // and was rejected by the share, so the 5th is the local limit's own 429.
    assert_eq!(
        seen,
        [ok.clone(), ok.clone(), ok, over, (429, String::new())]
    );

    assert_eq!(statuses(shadow, 4).await, [200; 4], "shadow never rejects");
    let stats = envoy.stats("http_local_rate_limit").await;
    let limited = |port| {
        let name = format!(
            "{}.http_local_rate_limit.rate_limited",
            global_stat_prefix(port)
        );
        *stats
            .get(&name)
            .unwrap_or_else(|| panic!("no {name}: {stats:#?}"))
    };
    assert_eq!(limited(shadow), 3, "counted as over the share");
    assert_eq!(limited(shared), 1);
}
