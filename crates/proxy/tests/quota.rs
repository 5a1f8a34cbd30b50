//! What validation accepts, the proxy serves: rates that Kuma accepts but whose exact smooth
//! refill does not fit the engine's 56-bit fast path (an hourly quota of 100001, 17 per 30
//! days) go from YAML through the policy engine into a real proxy and are enforced exactly.

mod common;

use std::time::Duration;

use common::*;
use meshlimit_policy::effective::DataplaneLimits;
use meshlimit_policy::{ResourceSet, parse_documents};
use meshlimit_proxy::ProxyOptions;

/// The effective limits of a Dataplane `backend` under `requestRate {num, interval}`, read from
/// YAML as `meshlimit validate` reads it.
fn limits_from_yaml(app_port: u16, num: u32, interval: &str) -> DataplaneLimits {
    // The inbound's port must be a real one in YAML: a free one, released for the proxy.
    let port = closed_port();
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: backend\nnetworking:\n  address: 127.0.0.1\n  \
         inbound:\n    - port: {port}\n      servicePort: {app_port}\n      tags:\n        \
         kuma.io/service: backend\n        kuma.io/protocol: http\n---\ntype: MeshRateLimit\n\
         mesh: default\nname: quota\nspec:\n  targetRef:\n    kind: Mesh\n    proxyTypes: [Sidecar]\n  rules:\n    - \
         default:\n        local:\n          http:\n            requestRate:\n              \
         num: {num}\n              interval: {interval}\n"
    );
    let parsed = parse_documents("quota.yaml", &yaml).expect("Kuma accepts this rate");
    let set = ResourceSet::from_parsed(parsed).expect("a consistent set");
    let limits = set.effective("default", "backend").expect("the dataplane");
    let rate = limits.inbounds[0]
        .http
        .as_ref()
        .expect("an HTTP limit")
        .request_rate;
    assert!(
        rate.settings().is_wide(),
        "{num}/{interval} should need the engine's wide path"
    );
    limits
}

#[tokio::test]
async fn seventeen_per_thirty_days_is_admitted_exactly_and_refills_exactly() {
    let app = upstream().await;
    let h = Harness::start(
        vec![limits_from_yaml(app.addr.port(), 17, "720h")],
        ProxyOptions::default(),
    )
    .await;
    assert!(h.status.borrow().problems.is_empty());
    let mut client = H1::connect(h.addr("backend")).await;
    let mut replies = Vec::new();
    for _ in 0..18 {
        replies.push(client.get("/").await);
    }
    let mut expected = vec![200; 17];
    expected.push(429);
    assert_eq!(statuses(&replies), expected);
    assert_eq!(app.hits(), 17);

    // One token every 720h / 17 = 152470588235294.117… ns: not a nanosecond before.
    h.clock.advance(Duration::from_nanos(152_470_588_235_294));
    assert_eq!(client.get("/").await.status, 429);
    h.clock.advance(Duration::from_nanos(1));
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(client.get("/").await.status, 429);
}

#[tokio::test]
async fn an_hourly_quota_of_100001_is_served() {
    let app = upstream().await;
    let h = Harness::start(
        vec![limits_from_yaml(app.addr.port(), 100_001, "1h")],
        ProxyOptions::default(),
    )
    .await;
    assert!(h.status.borrow().problems.is_empty());
    let mut client = H1::connect(h.addr("backend")).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let stats = h.proxy.stats().inbounds();
    assert_eq!(stats[0].http_allowed, 3);
    assert_eq!(stats[0].http_tokens, Some(99_998));
}
