//! The rate-limit service against a real redis-server, asked over gRPC by tonic clients as
//! Envoy asks it.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use meshlimit_global::rls::DOMAIN;
use meshlimit_global::{GlobalBuckets, GlobalOptions, RateLimitServer};
use meshlimit_policy::Rate;
use meshlimit_policy::global::{LocalShare, descriptor, descriptor_with_share};
use meshlimit_testkit::redis::RedisServer;
use tonic::transport::Channel;

fn options() -> GlobalOptions {
    GlobalOptions {
        timeout: Duration::from_secs(10),
        ..GlobalOptions::default()
    }
}

/// The service on a loopback port over `redis`, and its address.
async fn start(redis: &RedisServer) -> (RateLimitServer, String) {
    start_with(redis, meshlimit_global::rls::MAX_SHARE_BUCKETS).await
}

/// As [`start`], keeping at most `shares` local-share fallback buckets.
async fn start_with(redis: &RedisServer, shares: usize) -> (RateLimitServer, String) {
    let buckets = GlobalBuckets::connect(&redis.url(), options())
        .await
        .expect("Redis is up");
    let server = RateLimitServer::new(buckets).with_max_share_buckets(shares);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(server.clone().serve(listener));
    (server, address)
}

async fn client(address: &str) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(address.to_string())
        .await
        .expect("connect to the service")
}

fn request(descriptors: Vec<Vec<(String, String)>>) -> RateLimitRequest {
    RateLimitRequest {
        domain: DOMAIN.to_string(),
        descriptors: descriptors
            .into_iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| Entry { key, value })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .expect("an answer")
        .into_inner()
}

fn hourly(num: u32) -> Rate {
    Rate::new(num, Duration::from_secs(3600)).expect("valid rate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_exactly_the_total() {
    let redis = RedisServer::start();
    let (server, address) = start(&redis).await;
    let (mut a, mut b) = (client(&address).await, client(&address).await);
    let limited = descriptor("mgrl/default/p/web", hourly(7));
    let mut ok = 0;
    for i in 0..20 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        let answer = ask(client, request(vec![limited.clone()])).await;
        let status = &answer.statuses[0];
        assert_eq!(answer.statuses.len(), 1);
        if answer.overall_code == Code::Ok as i32 {
            ok += 1;
            assert_eq!(status.code, Code::Ok as i32);
            assert_eq!(status.duration_until_reset, None);
        } else {
            assert_eq!(answer.overall_code, Code::OverLimit as i32);
            assert_eq!(status.code, Code::OverLimit as i32);
            // One token of 7 per hour: about 514 s away.
            let wait = status.duration_until_reset.expect("a wait");
            assert!((500..=515).contains(&wait.seconds), "{wait:?}");
        }
        let limit = status.current_limit.as_ref().expect("an hourly limit");
        assert_eq!(limit.requests_per_unit, 7);
    }
    assert_eq!(ok, 7, "exactly the total, whichever client asks");
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.checks, stats.over_limit, stats.errors),
        (20, 20, 13, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_admit_exactly_the_total() {
    let redis = RedisServer::start();
    let (_server, address) = start(&redis).await;
    let limited = descriptor("mgrl/default/p/concurrent", hourly(25));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut client = client(&address).await;
        let limited = limited.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..30 {
                let answer = ask(&mut client, request(vec![limited.clone()])).await;
                ok += u32::from(answer.overall_code == Code::Ok as i32);
            }
            ok
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await.expect("client task");
    }
    assert_eq!(ok, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_descriptor_over_its_limit_limits_the_request_and_unknown_ones_pass() {
    let redis = RedisServer::start();
    let (server, address) = start(&redis).await;
    let mut client = client(&address).await;
    let one = descriptor("mgrl/default/p/one", hourly(1));
    let many = descriptor("mgrl/default/p/many", hourly(100));
    let foreign = vec![("generic_key".to_string(), "x".to_string())];
    let malformed = vec![
        ("meshlimit_key".to_string(), "k".to_string()),
        ("meshlimit_rate".to_string(), "lots".to_string()),
    ];
    let all = || {
        request(vec![
            many.clone(),
            one.clone(),
            foreign.clone(),
            malformed.clone(),
        ])
    };
    let first = ask(&mut client, all()).await;
    assert_eq!(first.overall_code, Code::Ok as i32);
    let second = ask(&mut client, all()).await;
    assert_eq!(second.overall_code, Code::OverLimit as i32);
    let codes: Vec<i32> = second.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        [Code::Ok, Code::OverLimit, Code::Ok, Code::Ok].map(|c| c as i32)
    );
    assert_eq!(second.statuses[0].limit_remaining, 98);

    // Another domain is not meshlimit's, whatever its entries say.
    let mut other = request(vec![one.clone()]);
    other.domain = "elsewhere".to_string();
    assert_eq!(ask(&mut client, other).await.overall_code, Code::Ok as i32);
    let stats = server.stats();
    assert_eq!((stats.checks, stats.unknown, stats.over_limit), (4, 5, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_call_fails_so_that_envoy_applies_its_failure_mode() {
    let redis = RedisServer::start();
    let (server, address) = start(&redis).await;
    let mut client = client(&address).await;
    let limited = descriptor("mgrl/default/p/web", hourly(5));
    assert_eq!(
        ask(&mut client, request(vec![limited.clone()]))
            .await
            .overall_code,
        Code::Ok as i32
    );
    redis.kill();
    let status = client
        .should_rate_limit(request(vec![limited]))
        .await
        .expect_err("no Redis, no answer");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(server.stats().errors, 1);

    let mut several = request(vec![]);
    several.hits_addend = 3;
    let status = client
        .should_rate_limit(several)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_local_share_limit_is_decided_by_each_senders_share() {
    let redis = RedisServer::start();
    let (server, address) = start(&redis).await;
    let mut client = client(&address).await;
    let key = "mgrl/default/p/web";
    // A total of 3 an hour between two instances: 2 for instance 0, 1 for instance 1.
    let of = |index, num| {
        descriptor_with_share(
            key,
            hourly(3),
            LocalShare {
                index,
                rate: hourly(num),
            },
        )
    };
    // With Redis, the share is only carried: the total decides.
    assert_eq!(
        ask(&mut client, request(vec![of(0, 2)])).await.overall_code,
        Code::Ok as i32
    );
    redis.kill();
    let mut codes = Vec::new();
    for (index, num) in [(0, 2), (1, 1), (0, 2), (1, 1), (0, 2)] {
        codes.push(
            ask(&mut client, request(vec![of(index, num)]))
                .await
                .overall_code,
        );
    }
    let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
    assert_eq!(
        codes,
        [ok, ok, ok, over, over],
        "the shares add up to the total"
    );
    let stats = server.stats();
    assert_eq!((stats.errors, stats.local_share), (5, 5), "{stats:?}");

    // A request with any descriptor that cannot fall back is left to Envoy's failure mode.
    let plain = descriptor(key, hourly(3));
    let status = client
        .should_rate_limit(request(vec![of(1, 1), plain]))
        .await
        .expect_err("no Redis, no answer");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_descriptors_cannot_refill_a_drained_share() {
    let redis = RedisServer::start();
    let (_server, address) = start_with(&redis, 4).await;
    let mut client = client(&address).await;
    let share = |key: &str, num| {
        descriptor_with_share(
            key,
            hourly(10),
            LocalShare {
                index: 0,
                rate: hourly(num),
            },
        )
    };
    let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
    redis.kill();
    // The real limit: 2 an hour for this instance, drained.
    let real = "mgrl/default/p/web";
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(
            ask(&mut client, request(vec![share(real, 2)]))
                .await
                .overall_code,
        );
    }
    assert_eq!(codes, [ok, ok, over]);
    // A peer floods the service with made-up limits, well past its 4 fallback buckets: each
    // takes one of 5 tokens, so none is full and some must go.
    for i in 0..20 {
        let made_up = format!("mgrl/default/flood-{i}/web");
        let code = ask(&mut client, request(vec![share(&made_up, 5)])).await;
        assert_eq!(code.overall_code, ok);
    }
    // The drained share was never the one pushed out: still no token.
    assert_eq!(
        ask(&mut client, request(vec![share(real, 2)]))
            .await
            .overall_code,
        over,
        "a flood of descriptors handed the limit a fresh burst"
    );
}
