//! The admin endpoint over a real socket: metrics with exact counts, readiness, config.

mod common;

use std::time::Duration;

use common::*;
use meshlimit_policy::effective::Protocol;
use meshlimit_proxy::{Admin, MetricsSource, ProxyOptions};
use tokio::net::TcpListener;

struct Extra;

impl MetricsSource for Extra {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "meshlimit_kernel_example",
            "An extra source",
            prometheus_client::metrics::gauge::ConstGauge::new(7),
        );
    }
}

#[tokio::test]
async fn metrics_ready_and_config() {
    let app = upstream().await;
    let config = vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        Some(http_limit(5, Duration::from_secs(10), 423)),
        None,
    )];
    let h = Harness::start(config.clone(), ProxyOptions::default()).await;
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Admin::for_proxy(&h.proxy)
            .with_metrics(std::sync::Arc::new(Extra))
            .serve(admin, async {
                let _ = stopped.await;
            }),
    );

    let mut client = H1::connect(h.addr("backend")).await;
    for _ in 0..7 {
        client.get("/").await;
    }
    let metrics = admin_get(admin_addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = metrics.body;
    for line in [
        "# TYPE meshlimit_http_requests_total counter",
        r#"meshlimit_http_requests_total{mesh="default",dataplane="backend",inbound="0",decision="allowed",policy="limit"} 5"#,
        r#"meshlimit_http_requests_total{mesh="default",dataplane="backend",inbound="0",decision="limited",policy="limit"} 2"#,
        r#"meshlimit_tcp_connections_total{mesh="default",dataplane="backend",inbound="0",decision="allowed"} 1"#,
        "# TYPE meshlimit_bucket_tokens gauge",
        r#"meshlimit_bucket_tokens{mesh="default",dataplane="backend",inbound="0",limit="http"} 0"#,
        "meshlimit_kernel_example 7",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    // OpenMetrics when the scraper asks for it: the same samples, families named without
    // `_total`, ended by `# EOF`.
    let open_metrics = H1::connect(admin_addr)
        .await
        .send(
            http::Request::get("/metrics")
                .header("host", "admin")
                .header(
                    "accept",
                    "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
                )
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await;
    assert!(
        open_metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    for line in [
        "# TYPE meshlimit_http_requests counter",
        r#"meshlimit_http_requests_total{mesh="default",dataplane="backend",inbound="0",decision="allowed",policy="limit"} 5"#,
        "meshlimit_kernel_example 7",
    ] {
        assert!(
            open_metrics.body.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            open_metrics.body
        );
    }
    assert_eq!(open_metrics.body.lines().last(), Some("# EOF"));

    h.clock.advance(Duration::from_secs(4));
    let body = admin_get(admin_addr, "/metrics").await.body;
    assert!(body.contains(r#"meshlimit_bucket_tokens{mesh="default",dataplane="backend",inbound="0",limit="http"} 2"#), "{body}");

    let ready = admin_get(admin_addr, "/ready").await;
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (200, "ready\n")
    );

    let shown = admin_get(admin_addr, "/config").await;
    assert_eq!(shown.status, 200);
    let shown: serde_json::Value = serde_json::from_str(&shown.body).unwrap();
    assert_eq!(shown, serde_json::to_value(&config).unwrap());

    assert_eq!(admin_get(admin_addr, "/nothing").await.status, 404);
    stop.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn not_ready_while_an_inbound_cannot_listen() {
    let app = upstream().await;
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        None,
        None,
    )];
    config[0].inbounds[0].port = taken.local_addr().unwrap().port();
    let h = Harness::start(config, ProxyOptions::default()).await;
    let status = h.status.borrow().clone();
    assert!(status.listeners.is_empty());
    assert!(
        status.problems[0]
            .to_string()
            .contains("cannot listen on 127.0.0.1:"),
        "{:?}",
        status.problems
    );

    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(Admin::for_proxy(&h.proxy).serve(admin, std::future::pending()));
    let ready = admin_get(admin_addr, "/ready").await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("cannot listen"), "{}", ready.body);
}

/// The admin routes merged into another axum router (as the all-in-one does with the control
/// plane's API): the other router keeps its paths and fallback, and a token guards the admin
/// routes when set. The stats handle reports the same counts as `/metrics`.
#[tokio::test]
async fn admin_routes_merge_into_another_router_behind_a_token() {
    let app = upstream().await;
    let config = vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        Some(http_limit(2, Duration::from_secs(10), 429)),
        None,
    )];
    let h = Harness::start(config, ProxyOptions::default()).await;
    let other = axum::Router::new()
        .route("/status", axum::routing::get(|| async { "elsewhere" }))
        .fallback(|| async { (http::StatusCode::IM_A_TEAPOT, "fallback") });
    let merged = other.merge(
        Admin::for_proxy(&h.proxy)
            .with_token(Some("s3cret".into()))
            .router(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, merged).await });

    let mut client = H1::connect(h.addr("backend")).await;
    for _ in 0..3 {
        client.get("/").await;
    }
    let stats = h.proxy.stats().inbounds();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (
            stats[0].http_allowed,
            stats[0].http_limited,
            stats[0].http_tokens,
            stats[0].tcp_tokens
        ),
        (2, 1, Some(0), None)
    );

    assert_eq!(admin_get(addr, "/metrics").await.status, 401);
    let with_token = |path: &str| {
        http::Request::get(path)
            .header("host", "admin")
            .header("authorization", "Bearer s3cret")
            .body(http_body_util::Full::default())
            .unwrap()
    };
    let metrics = H1::connect(addr).await.send(with_token("/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains(r#"inbound="0",decision="limited",policy="limit"} 1"#),
        "{}",
        metrics.body
    );
    let ready = H1::connect(addr).await.send(with_token("/ready")).await;
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (200, "ready\n")
    );
    let status = admin_get(addr, "/status").await;
    assert_eq!(
        (status.status.as_u16(), status.body.as_str()),
        (200, "elsewhere")
    );
    assert_eq!(admin_get(addr, "/nothing").await.status, 418);
}
