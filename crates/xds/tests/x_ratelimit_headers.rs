//! `--rate-limit-headers=x-ratelimit` is Envoy's `enable_x_ratelimit_headers:
//! DRAFT_VERSION_03`: the same limit behind a real Envoy (its local rate limit, configured as
//! Kuma configures it) and behind meshlimit's proxy gives a client the same `X-RateLimit-*`
//! fields, request after request.

mod support;

use std::sync::Arc;
use std::time::Duration;

use meshlimit_bucket::PreciseMonotonicClock;
use meshlimit_policy::Versioned;
use meshlimit_policy::effective::Protocol;
use meshlimit_proxy::{Proxy, ProxyOptions, RateLimitHeaders};
use support::*;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// 5 per 12.5 s: one token every 2.5 s, so that the reset of an empty bucket (the seconds to
/// the next token, rounded up: 3) is far from a whole-second boundary whatever the few
/// milliseconds the test takes.
const NUM: u32 = 5;
const INTERVAL: Duration = Duration::from_millis(12_500);

/// Envoy with one HTTP listener on `port`: Kuma's local rate limit filter for `NUM` per
/// `INTERVAL` (`max_tokens` = `tokens_per_fill` = num, `fill_interval` = interval), the draft
/// 03 fields on, in front of the application on `app`.
fn bootstrap(port: u16, app: u16) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
    - name: inbound
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: inbound
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: "/"}}
                          route: {{cluster: app}}
                http_filters:
                  - name: envoy.filters.http.local_ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                      stat_prefix: rate_limit
                      token_bucket: {{max_tokens: {NUM}, tokens_per_fill: {NUM}, fill_interval: {interval}s}}
                      filter_enabled: {{default_value: {{numerator: 100, denominator: HUNDRED}}, runtime_key: enabled}}
                      filter_enforced: {{default_value: {{numerator: 100, denominator: HUNDRED}}, runtime_key: enforced}}
                      enable_x_ratelimit_headers: DRAFT_VERSION_03
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: app
      type: STATIC
      load_assignment:
        cluster_name: app
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app}}}}}}}
"#,
        interval = INTERVAL.as_secs_f64()
    )
}

/// What a client sees of one request: the status and the three fields.
async fn observe(port: u16) -> (u16, [String; 3]) {
    let response = http_get(([127, 0, 0, 1], port).into(), "/")
        .await
        .expect("request");
    let field = |name: &str| response.header_values(name).join(",");
    (
        response.status,
        [
            field("x-ratelimit-limit"),
            field("x-ratelimit-remaining"),
            field("x-ratelimit-reset"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_sends_envoys_draft_03_fields_as_envoy_does() {
    let (app, _) = http_backend().await;

    let envoy_port = free_port();
    let envoy = Envoy::start_with(&bootstrap(envoy_port, app)).await;
    // Connecting takes no token; a request would.
    eventually("Envoy's listener", || async {
        TcpStream::connect(("127.0.0.1", envoy_port)).await.ok()
    })
    .await;

    let mut web = inbound(0, app, Protocol::Http);
    let mut limit = http_limit(NUM, 429, vec![], vec![]);
    limit.request_rate = rate(NUM, INTERVAL);
    web.http = Some(limit);
    let (_limits, receiver) = watch::channel(Versioned::new(1, vec![dataplane("web", vec![web])]));
    let options = ProxyOptions {
        rate_limit_headers: RateLimitHeaders::XRateLimit,
        ..ProxyOptions::default()
    };
    // The precise clock, as Envoy's: the reset of an empty bucket depends on the time since
    // its last token left.
    let proxy = Proxy::spawn(options, Arc::new(PreciseMonotonicClock), receiver)
        .expect("starting the proxy");
    let proxy_port = proxy
        .status()
        .wait_for(|s| !s.listeners.is_empty())
        .await
        .expect("the proxy listens")
        .listeners[0]
        .local_addr
        .port();

    let mut via_envoy = Vec::new();
    let mut via_proxy = Vec::new();
    for _ in 0..NUM + 2 {
        via_envoy.push(observe(envoy_port).await);
        via_proxy.push(observe(proxy_port).await);
    }
    assert_eq!(via_proxy, via_envoy, "Envoy's log:\n{}", envoy.log());
    // And what they agree on is the limit at work.
    let statuses: Vec<u16> = via_proxy.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(via_proxy[0].1, ["5", "4", "0"].map(String::from));
    assert_eq!(via_proxy[6].1, ["5", "0", "3"].map(String::from));
}
