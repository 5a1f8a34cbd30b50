//! Global buckets against a real redis-server (each test starts its own): the script's
//! decisions against the engine's reference model, atomicity under concurrency, TTLs, hash
//! tags in a real cluster node, and what checks do while Redis is gone and after it is back.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meshlimit_bucket::model::ReferenceBucket;
use meshlimit_bucket::{
    Bucket, Decision, FakeClock, MAX_TOKENS_LIMIT, Refill, Settings, TOKENS_PER_FILL_LIMIT,
};
use meshlimit_global::{
    FailureMode, GlobalBuckets, GlobalError, GlobalOptions, GlobalSettings, RangeError, TimeBase,
    hash_tag, local_share,
};
use meshlimit_testkit::redis::RedisServer;
use proptest::prelude::*;
use tokio::time::Instant;

fn settings(max: u64, per_fill: u64, ns: u64, refill: Refill) -> Settings {
    Settings::new(max, per_fill, Duration::from_nanos(ns), refill).unwrap()
}

fn global(s: Settings) -> GlobalSettings {
    GlobalSettings::new(s).unwrap()
}

fn model(s: Settings, now: u64) -> ReferenceBucket {
    ReferenceBucket::new(
        s.max_tokens(),
        s.tokens_per_fill(),
        s.fill_interval_ns(),
        s.refill(),
        now,
    )
}

/// Patient options for tests that are about answers, not latency.
fn patient() -> GlobalOptions {
    GlobalOptions {
        timeout: Duration::from_secs(10),
        ..GlobalOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

static CASE: AtomicU64 = AtomicU64::new(0);

fn fresh_key() -> String {
    format!("case/{}", CASE.fetch_add(1, Ordering::Relaxed))
}

/// Settings across the engine's whole range, small values often (where boundaries are) and
/// the largest ones too (where every limb of the script's arithmetic is used), cut down to
/// what a global bucket serves.
fn any_settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![1u64..=20, 1u64..=MAX_TOKENS_LIMIT],
        prop_oneof![1u64..=20, 1u64..=TOKENS_PER_FILL_LIMIT],
        prop_oneof![1u64..=2_000, 1u64..=(1 << 40), (1u64 << 40)..=u64::MAX],
        prop_oneof![Just(Refill::Smooth), Just(Refill::Interval)],
    )
        .prop_map(|(mut max, per_fill, ns, refill)| {
            loop {
                let s = settings(max, per_fill, ns, refill);
                if GlobalSettings::new(s).is_ok() {
                    break s;
                }
                max = (max / 2).max(1);
            }
        })
}

/// Gaps between arrivals, in units of 1/64 of a token's time: bursts (0), fractions, a few
/// tokens' worth, whole refills and beyond, and steps back in time (a clock behind another).
fn arrivals() -> impl Strategy<Value = Vec<i64>> {
    proptest::collection::vec(
        prop_oneof![
            4 => Just(0i64),
            6 => 1i64..=200,
            1 => 1_000i64..=1_000_000,
            1 => -200i64..0,
        ],
        1..60,
    )
}

/// The arrival times for `gaps` from `start`, on `s`'s scale, clamped to `u64`.
fn times(s: Settings, start: u64, gaps: &[i64]) -> Vec<u64> {
    let token_ns = u128::from(s.fill_interval_ns().div_ceil(s.tokens_per_fill()));
    let mut now = u128::from(start);
    gaps.iter()
        .map(|&g| {
            let step = token_ns * u128::from(g.unsigned_abs()) / 64 + u128::from(g != 0);
            now = if g < 0 {
                now.saturating_sub(step)
            } else {
                (now + step).min(u128::from(u64::MAX))
            };
            now as u64
        })
        .collect()
}

/// Runs `test` on a few hundred cases of `strategy`, against one server and client for them
/// all (a server per case would cost seconds); the server dies with the test.
fn property<S: Strategy>(
    strategy: S,
    test: impl Fn(&GlobalBuckets, &tokio::runtime::Runtime, S::Value) -> Result<(), TestCaseError>,
) {
    let server = RedisServer::start();
    let rt = runtime();
    let buckets = rt
        .block_on(GlobalBuckets::connect(&server.url(), patient()))
        .unwrap();
    let config = ProptestConfig {
        cases: 300,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, |value| test(&buckets, &rt, value)) {
        panic!("{e}");
    }
}

/// Every decision of the script, pipelined per case, is the reference model's: both refill
/// modes, the whole range of settings and of clock values, bursts, idle gaps and clocks that
/// step back.
#[test]
fn the_script_decides_like_the_reference_model() {
    let start = prop_oneof![0u64..1_000, any::<u64>()];
    property(
        (any_settings(), start, arrivals()),
        |buckets, rt, (s, start, gaps)| {
            let key = fresh_key();
            let g = global(s);
            let at = times(s, start, &gaps);
            let checks: Vec<_> = at.iter().map(|&t| (key.as_str(), g, t)).collect();
            let got = rt
                .block_on(buckets.check_many_at(&checks))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut reference = model(s, at[0]);
            let want: Vec<Decision> = at.iter().map(|&t| reference.decision(t)).collect();
            prop_assert_eq!(got, want, "{} at {:?}", s, at);
            Ok(())
        },
    );
}

/// A bucket whose settings change keeps what the model keeps: whole tokens (clamped), a
/// smooth fraction rounded to the new resolution, an interval bucket's phase.
#[test]
fn changed_settings_carry_the_bucket_over_like_the_model() {
    let start = prop_oneof![0u64..1_000, any::<u64>()];
    let cases = (
        any_settings(),
        any_settings(),
        start,
        arrivals(),
        arrivals(),
    );
    property(
        cases,
        |buckets, rt, (first, second, start, before, after)| {
            let key = fresh_key();
            let at_first = times(first, start, &before);
            let last = at_first.last().copied().unwrap_or(start);
            let at_second = times(second, last, &after);
            let mut checks: Vec<_> = at_first
                .iter()
                .map(|&t| (key.as_str(), global(first), t))
                .collect();
            checks.extend(at_second.iter().map(|&t| (key.as_str(), global(second), t)));
            let got = rt
                .block_on(buckets.check_many_at(&checks))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut reference = model(first, at_first[0]);
            let mut want: Vec<Decision> = at_first.iter().map(|&t| reference.decision(t)).collect();
            for &t in &at_second {
                let s = second;
                let (max, per_fill, ns) =
                    (s.max_tokens(), s.tokens_per_fill(), s.fill_interval_ns());
                reference.reconfigure(max, per_fill, ns, s.refill(), t);
                want.push(reference.decision(t));
            }
            prop_assert_eq!(
                got,
                want,
                "{} then {} at {:?} then {:?}",
                first,
                second,
                at_first,
                at_second
            );
            Ok(())
        },
    );
}

#[test]
fn the_extremes_of_the_range_are_exact() {
    let server = RedisServer::start();
    let rt = runtime();
    let buckets = rt
        .block_on(GlobalBuckets::connect(&server.url(), patient()))
        .unwrap();
    let cases = [
        (MAX_TOKENS_LIMIT, TOKENS_PER_FILL_LIMIT, u64::MAX),
        (MAX_TOKENS_LIMIT, TOKENS_PER_FILL_LIMIT, 1),
        (MAX_TOKENS_LIMIT, 1, 1 << 40),
        (1, 1, u64::MAX),
        (100_001, 100_001, 3_600_000_000_000),
        (17, 17, 30 * 86_400_000_000_000),
    ];
    for (max, per_fill, ns) in cases {
        for refill in [Refill::Smooth, Refill::Interval] {
            let s = settings(max, per_fill, ns, refill);
            for start in [0, u64::MAX - ns.min(u64::MAX / 2), u64::MAX] {
                let key = fresh_key();
                let at: Vec<u64> = [0, 0, 1, ns / 3, ns / 2, ns, ns, u64::MAX]
                    .iter()
                    .map(|&d| start.saturating_add(d))
                    .collect();
                let checks: Vec<_> = at.iter().map(|&t| (key.as_str(), global(s), t)).collect();
                let got = rt.block_on(buckets.check_many_at(&checks)).unwrap();
                let mut reference = model(s, at[0]);
                let want: Vec<Decision> = at.iter().map(|&t| reference.decision(t)).collect();
                assert_eq!(got, want, "{s} from {start}");
            }
        }
    }
}

#[test]
fn settings_outside_the_range_are_refused_when_built() {
    // 2^40 tokens at one per 584 years: the engine serves it, but its key would need a TTL of
    // 6.4e14 years.
    let s = settings(MAX_TOKENS_LIMIT, 1, u64::MAX, Refill::Smooth);
    let err = GlobalSettings::new(s).unwrap_err();
    assert!(matches!(err, RangeError::RefillTooLong { settings, .. } if settings == s));
    assert!(err.to_string().contains("2^61 ms"), "{err}");
    assert!(GlobalSettings::try_from(settings(1, 1, u64::MAX, Refill::Smooth)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_clock_judges_by_default() {
    let server = RedisServer::start();
    let buckets = GlobalBuckets::connect(&server.url(), GlobalOptions::default())
        .await
        .unwrap();
    // 3 per hour: no refill within the test.
    let g = global(settings(3, 3, 3_600_000_000_000, Refill::Smooth));
    let mut decisions = Vec::new();
    for _ in 0..4 {
        decisions.push(buckets.check("svc/a", g).await.unwrap());
    }
    let admitted: Vec<bool> = decisions.iter().map(Decision::admitted).collect();
    assert_eq!(admitted, [true, true, true, false]);
    assert_eq!(decisions[2].remaining(), 0);
    // The next token is due within 20 minutes of the first check.
    let wait = decisions[3].next_token_in();
    assert!(
        wait <= Duration::from_secs(1200) && wait > Duration::from_secs(1190),
        "{wait:?}"
    );
    // A batch in one round trip, on two keys.
    let batch = buckets
        .check_many(&[("svc/a", g), ("svc/b", g), ("svc/b", g)])
        .await
        .unwrap();
    let admitted: Vec<bool> = batch.iter().map(Decision::admitted).collect();
    assert_eq!(admitted, [false, true, true]);
    assert_eq!(batch[2].remaining(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_time_follows_the_callers_clock() {
    let server = RedisServer::start();
    let clock = FakeClock::new(5_000_000_000);
    let options = GlobalOptions {
        time_base: TimeBase::Caller(Arc::new(clock.clone())),
        ..patient()
    };
    let buckets = GlobalBuckets::connect(&server.url(), options)
        .await
        .unwrap();
    // Envoy 1.40's example: 10 per 10 s, smooth.
    let g = global(settings(10, 10, 10_000_000_000, Refill::Smooth));
    let burst = |n| {
        let buckets = buckets.clone();
        async move {
            let checks = vec![("envoy", g); n];
            let d = buckets.check_many(&checks).await.unwrap();
            d.iter().filter(|d| d.admitted()).count()
        }
    };
    assert_eq!(burst(20).await, 10);
    clock.advance(Duration::from_millis(5_030));
    assert_eq!(burst(20).await, 5);
    clock.advance(Duration::from_millis(2_510));
    assert_eq!(burst(20).await, 2);
    clock.advance(Duration::from_millis(3_010));
    assert_eq!(burst(20).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_admit_exactly_the_buckets_tokens() {
    let server = RedisServer::start();
    for refill in [Refill::Smooth, Refill::Interval] {
        // Separate clients, as separate instances would be; one token per hour comes back.
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                GlobalBuckets::connect(&server.url(), patient())
                    .await
                    .unwrap(),
            );
        }
        let g = global(settings(300, 1, 3_600_000_000_000, refill));
        let key = format!("hammered/{refill}");
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..16 {
            let buckets = clients[task % clients.len()].clone();
            let key = key.clone();
            tasks.spawn(async move {
                let mut admitted = 0;
                for _ in 0..50 {
                    if buckets.check(&key, g).await.unwrap().admitted() {
                        admitted += 1;
                    }
                }
                admitted
            });
        }
        let mut admitted = 0;
        while let Some(n) = tasks.join_next().await {
            admitted += n.unwrap();
        }
        assert_eq!(admitted, 300, "{refill}: 800 checks of a 300-token bucket");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_a_ttl_and_vanish_when_idle() {
    let server = RedisServer::start();
    let buckets = GlobalBuckets::connect(&server.url(), patient())
        .await
        .unwrap();
    // 10 per 10 s: full again 10 s after the last check; 1 s margin.
    let g = global(settings(10, 10, 10_000_000_000, Refill::Smooth));
    buckets.check("ttl/slow", g).await.unwrap();
    let name = buckets.key_name("ttl/slow");
    let pttl: i64 = integer(&server.command(&["PTTL", &name]));
    assert!(pttl > 10_000 && pttl <= 11_000, "PTTL {pttl}");
    // The state is readable: the plan, then the last time and the units missing.
    let value = server.command(&["GET", &name]);
    assert!(value.contains("s 10 1 1000000000|"), "{value}");
    assert!(value.trim_end().ends_with(" 1000000000"), "{value}");

    // 1 per 50 ms and no margin: gone 50 ms after the check, and full when next asked.
    let quick = GlobalBuckets::connect(
        &server.url(),
        GlobalOptions {
            ttl_margin: Duration::ZERO,
            ..patient()
        },
    )
    .await
    .unwrap();
    let g = global(settings(1, 1, 50_000_000, Refill::Interval));
    assert!(quick.check("ttl/quick", g).await.unwrap().admitted());
    assert!(!quick.check("ttl/quick", g).await.unwrap().admitted());
    let name = quick.key_name("ttl/quick");
    let pttl: i64 = integer(&server.command(&["PTTL", &name]));
    assert!(pttl > 0 && pttl <= 50, "PTTL {pttl}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while integer(&server.command(&["EXISTS", &name])) == 1 {
        assert!(Instant::now() < deadline, "{name} outlived its TTL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(quick.check("ttl/quick", g).await.unwrap().admitted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_keeps_to_one_slot_of_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.conf");
    let server = RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        nodes.to_str().unwrap(),
    ]);
    // One node holding every slot: a whole cluster, which refuses keys it cannot place.
    assert!(
        server
            .command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
            .starts_with("+OK")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .command(&["CLUSTER", "INFO"])
        .contains("cluster_state:ok")
    {
        assert!(Instant::now() < deadline, "the cluster never became ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let buckets = GlobalBuckets::connect(&server.url(), patient())
        .await
        .unwrap();
    let g = global(settings(2, 1, 1_000_000_000, Refill::Interval));
    for key in ["svc/api", "tenant:{acme}", "odd}key", "100%"] {
        let d = buckets.check(key, g).await.unwrap();
        assert!(d.admitted() && d.remaining() == 1, "{key}");
        let name = buckets.key_name(key);
        assert!(
            name.starts_with("meshlimit:{") && name.ends_with('}'),
            "{name}"
        );
        assert_eq!(integer(&server.command(&["EXISTS", &name])), 1, "{name}");
        // The slot is the tag's: the whole caller key (escaped).
        let tag = hash_tag(&name);
        assert_eq!(tag, &name["meshlimit:{".len()..name.len() - 1]);
        assert_eq!(
            server.command(&["CLUSTER", "KEYSLOT", &name]),
            server.command(&["CLUSTER", "KEYSLOT", tag]),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_fails_checks_within_the_timeout_and_then_recovers() {
    let server = RedisServer::start();
    let port = server.port;
    let timeout = Duration::from_millis(25);
    let client = |failure_mode| {
        let url = server.url();
        async move {
            let options = GlobalOptions {
                timeout,
                failure_mode,
                ..GlobalOptions::default()
            };
            GlobalBuckets::connect(&url, options).await.unwrap()
        }
    };
    let open = client(FailureMode::Open).await;
    let closed = client(FailureMode::Closed).await;
    let shared = client(FailureMode::LocalShare).await;
    // 100 per second for the service; this instance's share of 4 is 25 per second.
    let s = settings(100, 100, 1_000_000_000, Refill::Smooth);
    let g = global(s);
    let share = local_share(s, NonZeroU32::new(4).unwrap()).unwrap();
    let local = Bucket::new(share, 0);
    for c in [&open, &closed, &shared] {
        assert!(c.check("lost", g).await.unwrap().admitted());
    }

    server.kill();
    for round in 0..30 {
        for (c, mode) in [
            (&open, FailureMode::Open),
            (&closed, FailureMode::Closed),
            (&shared, FailureMode::LocalShare),
        ] {
            let started = Instant::now();
            let result = c.check("lost", g).await;
            let took = started.elapsed();
            // The timeout bounds every check (plus scheduling slack on a busy machine).
            assert!(
                took < timeout + Duration::from_millis(75),
                "{mode:?} took {took:?}"
            );
            let err = result.expect_err("no server");
            assert!(
                matches!(err, GlobalError::Timeout(_) | GlobalError::Redis(_)),
                "{err}"
            );
            let decision = c.fallback(g, || local.check(0));
            match mode {
                FailureMode::Open => assert!(decision.admitted()),
                FailureMode::Closed => {
                    assert!(!decision.admitted());
                    assert_eq!(decision.next_token_in(), Duration::from_millis(10));
                }
                // The local share's 25-token burst, then rejections.
                FailureMode::LocalShare => assert_eq!(decision.admitted(), round < 25),
            }
        }
    }
    for c in [&open, &closed, &shared] {
        let stats = c.stats();
        assert_eq!(stats.checks, 31);
        assert_eq!(stats.errors + stats.timeouts, 30, "{stats:?}");
        assert_eq!(stats.fallbacks, 30);
    }
    // check_or_fallback decides either way, never waiting past the timeout.
    let started = Instant::now();
    assert!(
        !closed
            .check_or_fallback("lost", g, || unreachable!())
            .await
            .admitted()
    );
    assert!(started.elapsed() < timeout + Duration::from_millis(75));

    // A new server on the same port: empty (so the bucket is full again) and without the
    // script, which the client loads when told NOSCRIPT.
    let _server = RedisServer::start_on(port, &[]).expect("a new server on the same port");
    for c in [&open, &closed, &shared] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let decision = loop {
            match c.check("lost", g).await {
                Ok(d) => break d,
                Err(e) => assert!(Instant::now() < deadline, "no recovery: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(decision.admitted());
    }
}

/// The integer of a RESP integer reply (`:N`).
fn integer(reply: &str) -> i64 {
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_connect_fails_and_a_lazy_client_falls_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let err = GlobalBuckets::connect(&url, GlobalOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, GlobalError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");

    let options = GlobalOptions {
        failure_mode: FailureMode::Closed,
        ..GlobalOptions::default()
    };
    let lazy = GlobalBuckets::connect_lazy(&url, options).unwrap();
    let g = global(settings(5, 5, 1_000_000_000, Refill::Interval));
    let started = Instant::now();
    assert!(
        !lazy
            .check_or_fallback("k", g, || unreachable!())
            .await
            .admitted()
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(lazy.stats().fallbacks, 1);

    let bad = GlobalOptions {
        key_prefix: "a{b}:".to_string(),
        ..GlobalOptions::default()
    };
    let err = GlobalBuckets::connect_lazy(&url, bad).unwrap_err();
    assert!(matches!(err, GlobalError::InvalidOptions(_)), "{err}");
    assert!(matches!(
        GlobalBuckets::connect_lazy("http://nope", GlobalOptions::default()),
        Err(GlobalError::InvalidUrl { .. })
    ));
}
