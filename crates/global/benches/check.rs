//! Global checks per second against a redis-server on loopback (started here, like the
//! tests'): one hot key and many keys, one check at a time (the round trip) and 64 in flight
//! (pipelined on the one multiplexed connection).

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use meshlimit_bucket::{Refill, Settings};
use meshlimit_global::{GlobalBuckets, GlobalOptions, GlobalSettings};
use meshlimit_testkit::redis::RedisServer;

fn checks(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let options = GlobalOptions {
        timeout: Duration::from_secs(5),
        ..GlobalOptions::default()
    };
    let buckets = rt
        .block_on(GlobalBuckets::connect(&server.url(), options))
        .expect("connect");
    let mut group = c.benchmark_group("global_check");
    group.throughput(Throughput::Elements(1));
    // A service-wide 100k per second (the hot key admits and rejects), in both modes, on the
    // script's narrow path; and 100001 per hour, whose window (3.6e17 scaled units) takes the
    // limb path.
    let second = Duration::from_secs(1);
    let plans = [
        (
            "smooth",
            Settings::new(100_000, 100_000, second, Refill::Smooth),
        ),
        (
            "interval",
            Settings::new(100_000, 100_000, second, Refill::Interval),
        ),
        (
            "smooth_wide",
            Settings::new(100_001, 100_001, 3600 * second, Refill::Smooth),
        ),
    ];
    for (plan, s) in plans {
        let g = GlobalSettings::new(s.expect("settings")).expect("global settings");
        for (keys, label) in [(1usize, "one_key"), (10_000, "many_keys")] {
            let names: Arc<[String]> = (0..keys).map(|i| format!("bench/{plan}/{i}")).collect();
            for in_flight in [1usize, 64] {
                let id = BenchmarkId::new(format!("{plan}/{label}"), in_flight);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        rt.block_on(run(&buckets, g, &names, in_flight, iters as usize))
                    })
                });
            }
        }
    }
    group.finish();
}

/// `total` checks by `in_flight` tasks, each waiting for its answer before the next, over
/// `names` in turn; the time they took.
async fn run(
    buckets: &GlobalBuckets,
    g: GlobalSettings,
    names: &Arc<[String]>,
    in_flight: usize,
    total: usize,
) -> Duration {
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(in_flight);
    for task in 0..in_flight {
        let share = total / in_flight + usize::from(task < total % in_flight);
        let buckets = buckets.clone();
        let names = Arc::clone(names);
        tasks.push(tokio::spawn(async move {
            for i in 0..share {
                let name = &names[(task + i * in_flight) % names.len()];
                std::hint::black_box(buckets.check(name, g).await.expect("check"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    started.elapsed()
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = checks
}
criterion_main!(benches);
