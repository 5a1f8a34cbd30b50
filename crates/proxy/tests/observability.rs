//! What a client and an operator learn from the proxy: the rate-limit header fields (IETF
//! draft 10, or Envoy's draft 03 ones) on every answer of a limited inbound, and the series
//! of `/metrics` — decisions by policy, responses by class, latencies, invalid requests —
//! through real connections.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use meshlimit_bucket::FakeClock;
use meshlimit_policy::effective::Protocol;
use meshlimit_proxy::{ProxyOptions, RateLimitHeaders};
use sfv::{BareItem, ListEntry, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEN_S: Duration = Duration::from_secs(10);

/// A header field parsed as a Structured Fields list of one item: its string and its
/// integer parameters, in order.
fn sf_item(reply: &Reply, name: &str) -> (String, Vec<(String, i64)>) {
    let value = reply.headers[name].to_str().expect("visible ASCII");
    let list = Parser::parse_list(value.as_bytes())
        .unwrap_or_else(|e| panic!("{name}: {value:?} is no Structured Fields list: {e}"));
    assert_eq!(list.len(), 1, "{name}: {value:?}");
    let ListEntry::Item(item) = &list[0] else {
        panic!("{name}: {value:?} is an inner list");
    };
    let BareItem::String(policy) = &item.bare_item else {
        panic!("{name}: {value:?} does not name its policy with a string");
    };
    let params = item
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.as_int().expect("integer parameters")))
        .collect();
    (policy.clone(), params)
}

fn params(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

async fn limited(style: RateLimitHeaders, app_port: u16) -> Harness {
    let options = ProxyOptions {
        rate_limit_headers: style,
        max_request_body_bytes: Some(16),
        ..ProxyOptions::default()
    };
    Harness::start(
        vec![dataplane(
            "backend",
            app_port,
            Protocol::Http,
            Some(http_limit(5, TEN_S, 423)),
            None,
        )],
        options,
    )
    .await
}

#[tokio::test]
async fn ietf_fields_name_the_policy_and_count_down_to_a_whole_quota() {
    let app = upstream().await;
    let h = limited(RateLimitHeaders::Ietf, app.addr.port()).await;
    let mut client = H1::connect(h.addr("backend")).await;

    // 5 tokens per 10 s: one every 2 s. After the first request 4 are left and the quota is
    // whole again when the one taken is back, in 2 s.
    let first = client.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        sf_item(&first, "ratelimit-policy"),
        ("limit".into(), params(&[("q", 5), ("w", 10)]))
    );
    assert_eq!(
        sf_item(&first, "ratelimit"),
        ("limit".into(), params(&[("r", 4), ("t", 2)]))
    );
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // The last token: 0 left, and 5 tokens (10 s) to whole.
    let last = client.get("/").await;
    assert_eq!(
        sf_item(&last, "ratelimit"),
        ("limit".into(), params(&[("r", 0), ("t", 10)]))
    );
    assert!(last.headers.get("retry-after").is_none(), "only rejections");

    // Half a second later: the next token is 1.5 s away, the whole quota 9.5 s; Retry-After
    // must not be earlier than `t`.
    h.clock.advance(Duration::from_millis(500));
    let rejected = client.get("/").await;
    assert_eq!(rejected.status, 423);
    assert_eq!(
        sf_item(&rejected, "ratelimit"),
        ("limit".into(), params(&[("r", 0), ("t", 10)]))
    );
    assert_eq!(rejected.headers["retry-after"], "10");
    assert_eq!(rejected.headers["x-kuma-rate-limited"], "true");
    assert!(rejected.headers.get("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn envoy_draft_03_fields_for_clients_built_for_envoy() {
    let app = upstream().await;
    let h = limited(RateLimitHeaders::XRateLimit, app.addr.port()).await;
    let mut client = H1::connect(h.addr("backend")).await;
    let first = client.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-ratelimit-limit"], "5");
    assert_eq!(first.headers["x-ratelimit-remaining"], "4");
    assert_eq!(
        first.headers["x-ratelimit-reset"], "0",
        "Envoy: 0 while a token is left"
    );
    assert!(first.headers.get("ratelimit").is_none());
    for _ in 0..4 {
        client.get("/").await;
    }
    h.clock.advance(Duration::from_millis(500));
    let rejected = client.get("/").await;
    assert_eq!(rejected.status, 423);
    assert_eq!(rejected.headers["x-ratelimit-remaining"], "0");
    assert_eq!(
        rejected.headers["x-ratelimit-reset"], "2",
        "1.5 s to the next token, rounded up as Envoy does"
    );
    assert_eq!(
        rejected.headers["retry-after"], "2",
        "1.5 s to the next token, rounded up"
    );
}

#[tokio::test]
async fn the_proxys_own_answers_after_admission_carry_the_fields_too() {
    // Nobody listens behind this inbound: an admitted request gets the proxy's 503.
    let h = limited(RateLimitHeaders::Ietf, closed_port()).await;
    let mut client = H1::connect(h.addr("backend")).await;
    let unavailable = client.get("/").await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(
        sf_item(&unavailable, "ratelimit"),
        ("limit".into(), params(&[("r", 4), ("t", 2)]))
    );
    assert!(unavailable.headers.get("retry-after").is_none());

    let too_large = Request::post("/")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    let too_large = client.send(too_large).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(
        sf_item(&too_large, "ratelimit"),
        ("limit".into(), params(&[("r", 3), ("t", 4)]))
    );
}

/// An application that takes `delay` on the proxy's fake clock to answer each request, on
/// keep-alive connections.
async fn slow_application(clock: FakeClock, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        clock.advance(delay);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}

/// The sample of `name` with `labels` (after the inbound's own) in `body`.
fn sample(body: &str, name: &str, port: u16, labels: &str) -> f64 {
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!(",{labels}")
    };
    let prefix =
        format!(r#"{name}{{mesh="default",dataplane="backend",inbound="{port}"{labels}}} "#);
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{body}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_show_decisions_by_policy_responses_latencies_and_invalid_requests() {
    let clock = FakeClock::new(1_000_000_000);
    let app_port = slow_application(clock.clone(), Duration::from_millis(30)).await;
    let options = ProxyOptions {
        max_request_header_bytes: 8192,
        max_request_body_bytes: Some(16),
        latency_clock: Some(std::sync::Arc::new(clock.clone())),
        ..ProxyOptions::default()
    };
    let h = Harness::start(
        vec![dataplane(
            "backend",
            app_port,
            Protocol::Http,
            Some(http_limit(3, Duration::from_secs(3600), 429)),
            None,
        )],
        options,
    )
    .await;
    let addr = h.addr("backend");
    let port = h.status.borrow().listeners[0].key.port;

    // Two relayed in 30 ms each, one refused for its body (a token taken), one rate-limited.
    let mut client = H1::connect(addr).await;
    assert_eq!(client.get("/").await.status, 200);
    assert_eq!(client.get("/").await.status, 200);
    let too_large = Request::post("/")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    assert_eq!(client.send(too_large).await.status, 413);
    assert_eq!(client.get("/").await.status, 429);
    // Two heads hyper refuses itself: one malformed, one over the size limit.
    for (head, status) in [
        ("GET / HTTP/1.1\r\nHost x\r\n\r\n".to_string(), "400"),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(10_000)
            ),
            "431",
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }

    let body = metrics(&h.proxy).await;
    let at = |name: &str, labels: &str| sample(&body, name, port, labels);
    assert_eq!(
        at(
            "meshlimit_http_requests_total",
            r#"decision="allowed",policy="limit""#
        ),
        3.0
    );
    assert_eq!(
        at(
            "meshlimit_http_requests_total",
            r#"decision="limited",policy="limit""#
        ),
        1.0
    );
    let responses = |source: &str, class: &str| {
        at(
            "meshlimit_http_responses_total",
            &format!(r#"source="{source}",class="{class}""#),
        )
    };
    assert_eq!(responses("application", "2xx"), 2.0);
    assert_eq!(responses("proxy", "4xx"), 4.0, "413, 429, 400 and 431");
    assert_eq!(responses("proxy", "5xx"), 0.0);
    let invalid = |status: &str, reason: &str| {
        at(
            "meshlimit_http_invalid_requests_total",
            &format!(r#"status="{status}",reason="{reason}""#),
        )
    };
    assert_eq!(invalid("400", "malformed_head"), 1.0);
    assert_eq!(invalid("431", "head_too_large"), 1.0);
    assert_eq!(invalid("413", "body_too_large"), 1.0);
    assert_eq!(invalid("400", "malformed_body"), 0.0);

    // The application took 30 ms on the proxy's clock, twice; the proxy's own answers none.
    let upstream = |suffix: &str, labels: &str| {
        at(
            &format!("meshlimit_upstream_request_duration_seconds{suffix}"),
            labels,
        )
    };
    assert_eq!(upstream("_count", ""), 2.0);
    assert!((upstream("_sum", "") - 0.06).abs() < 1e-9);
    assert_eq!(upstream("_bucket", r#"le="0.025""#), 0.0);
    assert_eq!(upstream("_bucket", r#"le="0.05""#), 2.0);
    let request = |suffix: &str, labels: &str| {
        at(
            &format!("meshlimit_http_request_duration_seconds{suffix}"),
            labels,
        )
    };
    assert_eq!(
        request("_count", ""),
        4.0,
        "hyper's own 400 and 431 are not timed"
    );
    assert_eq!(request("_bucket", r#"le="0.0001""#), 2.0);
    assert_eq!(request("_bucket", r#"le="0.05""#), 4.0);
    assert_eq!(request("_bucket", r#"le="+Inf""#), 4.0);

    assert_eq!(at("meshlimit_bucket_capacity", r#"limit="http""#), 3.0);
    assert_eq!(at("meshlimit_bucket_tokens", r#"limit="http""#), 0.0);
    assert!(
        body.lines()
            .any(|l| l == "meshlimit_proxy_config_version 1"),
        "{body}"
    );
}

#[tokio::test]
async fn a_decision_counts_under_the_policy_in_force_and_no_count_goes_back() {
    let app = upstream().await;
    let mut h = limited(RateLimitHeaders::Off, app.addr.port()).await;
    let port = h.status.borrow().listeners[0].key.port;
    let mut client = H1::connect(h.addr("backend")).await;
    for _ in 0..2 {
        client.get("/").await;
    }
    // Another policy takes over the inbound's rate.
    let mut other = http_limit(5, TEN_S, 423);
    other.policy = "override".into();
    h.apply(vec![dataplane(
        "backend",
        app.addr.port(),
        Protocol::Http,
        Some(other),
        None,
    )])
    .await;
    client.get("/").await;
    let body = metrics(&h.proxy).await;
    let allowed = |policy: &str| {
        sample(
            &body,
            "meshlimit_http_requests_total",
            port,
            &format!(r#"decision="allowed",policy="{policy}""#),
        )
    };
    assert_eq!((allowed("limit"), allowed("override")), (2.0, 1.0));
    let stats = h.proxy.stats().inbounds();
    assert_eq!(stats[0].http_allowed, 3, "the totals add every policy up");
}
