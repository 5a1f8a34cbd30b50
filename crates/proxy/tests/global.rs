//! `MeshGlobalRateLimit` over real sockets: each instance's share of the total enforced
//! locally (the shares computed by the policy engine from YAML), the local limit checked
//! first, `Shadow` mode, a shared store common to several proxies, and what each failure mode
//! does when the store fails or never answers — with the counters and `/metrics` series.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use meshlimit_bucket::{Bucket, Clock, FakeClock, Settings};
use meshlimit_policy::effective::{DataplaneLimits, Rate};
use meshlimit_policy::{ResourceSet, parse_documents};
use meshlimit_proxy::{Admin, InboundStats, ProxyOptions, SharedBuckets, SharedCheck, SharedError};
use tokio::net::TcpListener;

const INSTANCES: [&str; 3] = ["web-1", "web-2", "web-3"];
const KEY: &str = "mgrl/default/web-total/web";

/// Three instances of the service `web` on 127.0.0.1, each an HTTP inbound in front of
/// `app_port`, and the given policies.
fn resources(app_port: u16, policies: &[String]) -> ResourceSet {
    // Held together so that the three ports differ, then released for the proxies.
    let held: Vec<_> = (0..INSTANCES.len())
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut docs: Vec<String> = INSTANCES
        .iter()
        .zip(&held)
        .map(|(name, listener)| {
            let port = listener.local_addr().unwrap().port();
            format!(
                "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  \
                 inbound:\n    - port: {port}\n      servicePort: {app_port}\n      tags:\n        \
                 kuma.io/service: web\n        kuma.io/protocol: http\n"
            )
        })
        .collect();
    drop(held);
    docs.extend(policies.iter().cloned());
    let parsed = parse_documents("global.yaml", &docs.join("---\n")).expect("valid resources");
    ResourceSet::from_parsed(parsed).expect("a consistent set")
}

/// A `MeshGlobalRateLimit` of 10 requests per second for all of `web`, rejected with 423 and
/// `x-global-limited: true`; `extra` is more of its `default` (YAML lines, unindented).
fn global_policy(extra: &str) -> String {
    let extra: String = extra.lines().map(|l| format!("        {l}\n")).collect();
    let policy = r#"type: MeshGlobalRateLimit
mesh: default
name: web-total
spec:
  targetRef:
    kind: MeshService
    name: web
  from:
    - targetRef:
        kind: Mesh
      default:
        http:
          requestRate:
            num: 10
            interval: 1s
          onRateLimit:
            status: 423
            headers:
              set:
                - name: x-global-limited
                  value: "true"
"#;
    format!("{policy}{extra}")
}

/// A `MeshRateLimit` of `num` requests per second for each instance (429 over it).
fn local_policy(num: u32) -> String {
    let policy = r#"type: MeshRateLimit
mesh: default
name: local
spec:
  targetRef:
    kind: Mesh
    proxyTypes: [Sidecar]
  rules:
    - default:
        local:
          http:
            requestRate:
              interval: 1s
"#;
    format!("{policy}              num: {num}\n")
}

fn limits(set: &ResourceSet, dataplane: &str) -> DataplaneLimits {
    set.effective("default", dataplane).expect("the dataplane")
}

/// `count` requests over one keep-alive connection, each bounded so that a proxy stuck on its
/// store fails the test instead of hanging it.
async fn send(addr: SocketAddr, count: usize) -> Vec<Reply> {
    let mut client = H1::connect(addr).await;
    let mut replies = Vec::new();
    for _ in 0..count {
        let reply = tokio::time::timeout(Duration::from_secs(10), client.get("/"))
            .await
            .expect("an answer");
        replies.push(reply);
    }
    replies
}

fn count(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

fn stats(h: &Harness, dataplane: &str) -> InboundStats {
    h.proxy
        .stats()
        .inbounds()
        .into_iter()
        .find(|s| s.key.dataplane == dataplane)
        .expect("the inbound")
}

/// A global rejection: the policy's status and headers, and no body, as Envoy's global rate
/// limit filter answers.
fn assert_global_rejection(reply: &Reply) {
    assert_eq!(reply.status, 423);
    assert_eq!(reply.headers["x-global-limited"], "true");
    assert_eq!(reply.body, "");
    assert!(reply.headers.get("content-type").is_none());
    assert!(reply.headers.get("x-upstream").is_none());
}

#[tokio::test]
async fn each_instance_enforces_its_share_of_the_total_exactly() {
    let app = upstream().await;
    let set = resources(app.addr.port(), &[global_policy("")]);
    let config: Vec<DataplaneLimits> = INSTANCES.iter().map(|dp| limits(&set, dp)).collect();
    let shares: Vec<(u32, Rate)> = config
        .iter()
        .map(|dp| {
            let global = dp.inbounds[0].global.as_ref().expect("a global limit");
            assert_eq!(global.key, KEY);
            (global.instances, global.share)
        })
        .collect();
    let per_second = |num| Rate::new(num, Duration::from_secs(1)).unwrap();
    assert_eq!(
        shares,
        [(3, per_second(4)), (3, per_second(3)), (3, per_second(3))]
    );
    // One proxy serves the three instances; each has its own share.
    let h = Harness::start(config, ProxyOptions::default()).await;
    assert!(h.status.borrow().problems.is_empty());

    let mut admitted = Vec::new();
    for dp in INSTANCES {
        let replies = send(h.addr(dp), 5).await;
        for reply in replies.iter().filter(|r| r.status != 200) {
            assert_global_rejection(reply);
        }
        admitted.push(count(&replies, 200));
    }
    assert_eq!(admitted, [4, 3, 3]);
    assert_eq!(app.hits(), 10, "the total, and not one more");
    let web1 = stats(&h, "web-1");
    assert_eq!(
        (
            web1.http_allowed,
            web1.global_allowed,
            web1.global_limited,
            web1.global_share_tokens
        ),
        (5, 4, 1, Some(0))
    );
    assert_eq!(web1.http_tokens, None);

    // Smooth refill at each share's rate: 4/s is one token per 250ms, 3/s one per 333.33…ms.
    h.clock.advance(Duration::from_nanos(249_999_999));
    for dp in INSTANCES {
        assert_eq!(statuses(&send(h.addr(dp), 1).await), [423], "{dp}");
    }
    h.clock.advance(Duration::from_nanos(1));
    assert_eq!(statuses(&send(h.addr("web-1"), 2).await), [200, 423]);
    assert_eq!(statuses(&send(h.addr("web-2"), 1).await), [423]);
    h.clock.advance(Duration::from_nanos(83_333_334));
    for dp in ["web-2", "web-3"] {
        assert_eq!(statuses(&send(h.addr(dp), 2).await), [200, 423], "{dp}");
    }
    // A whole second refills every share, and no more than it.
    h.clock.advance(Duration::from_secs(5));
    let admitted: Vec<usize> = five_each(&h).await;
    assert_eq!(admitted, [4, 3, 3]);
}

/// Five requests to each instance in turn; how many each admitted.
async fn five_each(h: &Harness) -> Vec<usize> {
    let mut admitted = Vec::new();
    for dp in INSTANCES {
        admitted.push(count(&send(h.addr(dp), 5).await, 200));
    }
    admitted
}

#[tokio::test]
async fn the_local_limit_is_checked_first_and_both_apply() {
    let app = upstream().await;
    // The global share (4) is the tighter: it rejects with its own answer; once the local
    // bucket (6) is empty, the local limit answers.
    let set = resources(app.addr.port(), &[global_policy(""), local_policy(6)]);
    let h = Harness::start(vec![limits(&set, "web-1")], ProxyOptions::default()).await;
    let replies = send(h.addr("web-1"), 7).await;
    assert_eq!(statuses(&replies), [200, 200, 200, 200, 423, 423, 429]);
    assert_global_rejection(&replies[4]);
    assert_eq!(replies[6].body, "local_rate_limited");
    assert!(replies[6].headers.get("x-global-limited").is_none());
    let s = stats(&h, "web-1");
    assert_eq!(
        (
            s.http_allowed,
            s.http_limited,
            s.global_allowed,
            s.global_limited
        ),
        (6, 1, 4, 2)
    );
    assert_eq!((s.http_tokens, s.global_share_tokens), (Some(0), Some(0)));
    assert_eq!(app.hits(), 4);

    // The local limit (2) is the tighter: what it rejects takes no token of the global one.
    let set = resources(app.addr.port(), &[global_policy(""), local_policy(2)]);
    let h = Harness::start(vec![limits(&set, "web-1")], ProxyOptions::default()).await;
    assert_eq!(
        statuses(&send(h.addr("web-1"), 4).await),
        [200, 200, 429, 429]
    );
    let s = stats(&h, "web-1");
    assert_eq!(
        (
            s.http_allowed,
            s.http_limited,
            s.global_allowed,
            s.global_limited
        ),
        (2, 2, 2, 0)
    );
    assert_eq!(s.global_share_tokens, Some(2));
}

/// Sends the same schedule to `h`'s web-1: 6 requests, 500ms later 4, 2s later 5.
async fn schedule(h: &Harness) -> Vec<Reply> {
    let addr = h.addr("web-1");
    let mut replies = send(addr, 6).await;
    h.clock.advance(Duration::from_millis(500));
    replies.extend(send(addr, 4).await);
    h.clock.advance(Duration::from_secs(2));
    replies.extend(send(addr, 5).await);
    replies
}

#[tokio::test]
async fn shadow_mode_admits_everything_and_counts_what_limit_would_reject() {
    let app = upstream().await;
    let limit = resources(app.addr.port(), &[global_policy("mode: Limit")]);
    let h = Harness::start(vec![limits(&limit, "web-1")], ProxyOptions::default()).await;
    let limited = schedule(&h).await;
    // The share of 4 per second, smoothly refilled: 4 of 6, then 2 of 4, then 4 of 5.
    assert_eq!(count(&limited, 200), 10);
    assert_eq!(count(&limited, 423), 5);
    let s = stats(&h, "web-1");
    assert_eq!(
        (s.global_allowed, s.global_limited, s.global_shadow_limited),
        (10, 5, 0)
    );

    let hits_before = app.hits();
    let shadow = resources(app.addr.port(), &[global_policy("mode: Shadow")]);
    let h = Harness::start(vec![limits(&shadow, "web-1")], ProxyOptions::default()).await;
    let shadowed = schedule(&h).await;
    assert_eq!(statuses(&shadowed), [200; 15]);
    assert_eq!(app.hits() - hits_before, 15);
    let s = stats(&h, "web-1");
    assert_eq!(
        (s.global_allowed, s.global_limited, s.global_shadow_limited),
        (10, 0, 5),
        "exactly what Limit rejected"
    );
}

/// An in-memory shared store: one bucket per key, on a clock of its own, shared by every
/// proxy holding it. While `down`, every check fails.
struct MemoryStore {
    clock: FakeClock,
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
    asked: Mutex<Vec<(String, Settings)>>,
    down: AtomicBool,
}

impl MemoryStore {
    fn new() -> Arc<MemoryStore> {
        Arc::new(MemoryStore {
            clock: FakeClock::new(1_000_000_000),
            buckets: Mutex::default(),
            asked: Mutex::default(),
            down: AtomicBool::new(false),
        })
    }
}

impl SharedBuckets for MemoryStore {
    fn check<'a>(&'a self, key: &'a str, settings: Settings) -> SharedCheck<'a> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(SharedError::new("connection refused"));
            }
            self.asked.lock().unwrap().push((key.to_owned(), settings));
            let now = self.clock.now_ns();
            let bucket = Arc::clone(
                self.buckets
                    .lock()
                    .unwrap()
                    .entry(key.to_owned())
                    .or_insert_with(|| Arc::new(Bucket::new(settings, now))),
            );
            Ok(bucket.check(now))
        })
    }
}

/// A store that never answers.
struct Silent;

impl SharedBuckets for Silent {
    fn check<'a>(&'a self, _key: &'a str, _settings: Settings) -> SharedCheck<'a> {
        Box::pin(std::future::pending())
    }
}

/// One proxy per instance, each serving only its own, all sharing `store`.
async fn instances(set: &ResourceSet, store: Arc<dyn SharedBuckets>) -> Vec<Harness> {
    let mut proxies = Vec::new();
    for dp in INSTANCES {
        let options = ProxyOptions::default().with_shared(Arc::clone(&store));
        proxies.push(Harness::start(vec![limits(set, dp)], options).await);
    }
    proxies
}

#[tokio::test]
async fn proxies_sharing_a_store_admit_exactly_the_total_together() {
    let app = upstream().await;
    let set = resources(app.addr.port(), &[global_policy("")]);
    let store = MemoryStore::new();
    let proxies = instances(&set, store.clone()).await;
    let addr = |i: usize| proxies[i].addr(INSTANCES[i]);

    // Unevenly: web-1 takes more than its share of 4, the others get what is left.
    let counts = [8, 4, 3];
    let mut admitted = Vec::new();
    for (i, n) in counts.into_iter().enumerate() {
        let replies = send(addr(i), n).await;
        for reply in replies.iter().filter(|r| r.status != 200) {
            assert_global_rejection(reply);
        }
        admitted.push(count(&replies, 200));
    }
    assert_eq!(admitted, [8, 2, 0]);
    assert_eq!(app.hits(), 10);
    {
        let asked = store.asked.lock().unwrap();
        assert_eq!(asked.len(), 15);
        let total = Rate::new(10, Duration::from_secs(1)).unwrap().settings();
        assert!(asked.iter().all(|(key, s)| key == KEY && *s == total));
    }
    // The local shares are not touched while the store answers.
    let web1 = stats(&proxies[0], "web-1");
    assert_eq!(
        (
            web1.global_allowed,
            web1.global_limited,
            web1.global_share_tokens
        ),
        (8, 0, Some(4))
    );
    assert_eq!(web1.global_errors, 0);

    // A second later, in turns: the three together admit the total again, not one more.
    store.clock.advance(Duration::from_secs(1));
    let mut total = 0;
    for _round in 0..5 {
        for i in 0..3 {
            total += count(&send(addr(i), 1).await, 200);
        }
    }
    assert_eq!(total, 10);
}

/// An admin endpoint for `h`; its address.
async fn admin(h: &Harness) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Admin::for_proxy(&h.proxy).serve(listener, std::future::pending()));
    addr
}

fn assert_lines(body: &str, lines: &[String]) {
    for line in lines {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
}

fn series(name: &str, label: &str, value: u64) -> String {
    let label = if label.is_empty() {
        String::new()
    } else {
        format!(",{label}")
    };
    format!(r#"{name}{{mesh="default",dataplane="web-1",inbound="{{port}}"{label}}} {value}"#)
}

/// `series` with the inbound's configured port filled in.
fn at_port(lines: &[String], port: u16) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.replace("{port}", &port.to_string()))
        .collect()
}

/// The store's timeout, short: it bounds how long each request waits for the silent store.
const BACKEND: &str =
    "backend:\n  rateLimitService:\n    url: http://ratelimit:10003\n    timeout: 20ms";

#[tokio::test]
async fn a_store_that_never_answers_leaves_each_failure_mode_in_charge() {
    let app = upstream().await;
    let start = |mode: &str| {
        let set = resources(
            app.addr.port(),
            &[global_policy(&format!("{BACKEND}\nfailureMode: {mode}"))],
        );
        let options = ProxyOptions {
            rate_limit_headers: meshlimit_proxy::RateLimitHeaders::Ietf,
            ..ProxyOptions::default().with_shared(Arc::new(Silent))
        };
        Harness::start(vec![limits(&set, "web-1")], options)
    };

    // Open: everything goes through, nothing is known of the tokens left.
    let h = start("Open").await;
    let replies = send(h.addr("web-1"), 6).await;
    assert_eq!(statuses(&replies), [200; 6]);
    assert!(replies[0].headers.get("ratelimit").is_none());
    let s = stats(&h, "web-1");
    assert_eq!(
        (s.global_allowed, s.global_errors, s.global_fallbacks_open),
        (6, 6, 6)
    );
    let port = h.status.borrow().listeners[0].key.port;
    let body = admin_get(admin(&h).await, "/metrics").await.body;
    assert_lines(
        &body,
        &at_port(
            &[
                "# TYPE meshlimit_global_requests_total counter".into(),
                series(
                    "meshlimit_global_requests_total",
                    r#"decision="allowed",policy="web-total""#,
                    6,
                ),
                series(
                    "meshlimit_global_requests_total",
                    r#"decision="limited",policy="web-total""#,
                    0,
                ),
                "# TYPE meshlimit_global_store_errors_total counter".into(),
                series("meshlimit_global_store_errors_total", "", 6),
                "# TYPE meshlimit_global_fallbacks_total counter".into(),
                series("meshlimit_global_fallbacks_total", r#"mode="open""#, 6),
                series("meshlimit_global_fallbacks_total", r#"mode="closed""#, 0),
                series(
                    "meshlimit_global_fallbacks_total",
                    r#"mode="local_share""#,
                    0,
                ),
                series("meshlimit_bucket_tokens", r#"limit="global_share""#, 4),
            ],
            port,
        ),
    );

    // Closed: everything is rejected, with the global limit's answer; retry after one token
    // of the total (100ms, rounded up to a second).
    let hits = app.hits();
    let h = start("Closed").await;
    let replies = send(h.addr("web-1"), 3).await;
    for reply in &replies {
        assert_global_rejection(reply);
        assert_eq!(reply.headers["retry-after"], "1");
        assert_eq!(reply.headers["ratelimit-policy"], "\"web-total\";q=10;w=1");
    }
    assert_eq!(app.hits(), hits);
    let s = stats(&h, "web-1");
    assert_eq!(
        (s.global_limited, s.global_errors, s.global_fallbacks_closed),
        (3, 3, 3)
    );

    // LocalShare: this instance's share decides, as without a store.
    let h = start("LocalShare").await;
    let replies = send(h.addr("web-1"), 6).await;
    assert_eq!(statuses(&replies), [200, 200, 200, 200, 423, 423]);
    assert_eq!(
        replies[0].headers["ratelimit-policy"],
        "\"web-total\";q=4;w=1"
    );
    assert_eq!(replies[0].headers["ratelimit"], "\"web-total\";r=3;t=1");
    let s = stats(&h, "web-1");
    assert_eq!(
        (
            s.global_allowed,
            s.global_limited,
            s.global_errors,
            s.global_fallbacks_local_share,
            s.global_share_tokens
        ),
        (4, 2, 6, 6, Some(0))
    );
    let port = h.status.borrow().listeners[0].key.port;
    let body = admin_get(admin(&h).await, "/metrics").await.body;
    assert_lines(
        &body,
        &at_port(
            &[
                series(
                    "meshlimit_global_requests_total",
                    r#"decision="allowed",policy="web-total""#,
                    4,
                ),
                series(
                    "meshlimit_global_requests_total",
                    r#"decision="limited",policy="web-total""#,
                    2,
                ),
                series("meshlimit_global_store_errors_total", "", 6),
                series(
                    "meshlimit_global_fallbacks_total",
                    r#"mode="local_share""#,
                    6,
                ),
                series("meshlimit_bucket_tokens", r#"limit="global_share""#, 0),
            ],
            port,
        ),
    );
}

#[tokio::test]
async fn a_failing_store_falls_back_until_it_answers_again() {
    let app = upstream().await;
    let set = resources(
        app.addr.port(),
        &[global_policy(&format!(
            "{BACKEND}\nfailureMode: LocalShare"
        ))],
    );
    let store = MemoryStore::new();
    let h = Harness::start(
        vec![limits(&set, "web-1")],
        ProxyOptions::default().with_shared(store.clone()),
    )
    .await;
    let addr = h.addr("web-1");
    // The store answers: 6 of the total of 10.
    assert_eq!(statuses(&send(addr, 6).await), [200; 6]);
    // Down: the local share (4) decides.
    store.down.store(true, Ordering::SeqCst);
    assert_eq!(statuses(&send(addr, 5).await), [200, 200, 200, 200, 423]);
    // Back: the store's 4 tokens left decide again.
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(statuses(&send(addr, 5).await), [200, 200, 200, 200, 423]);
    let s = stats(&h, "web-1");
    assert_eq!(
        (
            s.global_allowed,
            s.global_limited,
            s.global_errors,
            s.global_fallbacks_local_share
        ),
        (14, 2, 5, 5)
    );

    // Shadow with a closed failure mode: what the outage would reject is counted, not refused.
    let set = resources(
        app.addr.port(),
        &[global_policy(&format!(
            "{BACKEND}\nfailureMode: Closed\nmode: Shadow"
        ))],
    );
    store.down.store(true, Ordering::SeqCst);
    let h = Harness::start(
        vec![limits(&set, "web-1")],
        ProxyOptions::default().with_shared(store.clone()),
    )
    .await;
    assert_eq!(statuses(&send(h.addr("web-1"), 3).await), [200; 3]);
    let s = stats(&h, "web-1");
    assert_eq!(
        (
            s.global_shadow_limited,
            s.global_limited,
            s.global_errors,
            s.global_fallbacks_closed
        ),
        (3, 0, 3, 3)
    );
}
