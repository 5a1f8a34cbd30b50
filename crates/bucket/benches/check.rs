//! meshlimit's bucket engine against `governor` (the peer) on the same quota, in one run:
//! the clock reads, a single-threaded check on one bucket, two threads on one bucket, and a
//! keyed check spread over 1M and over 10M keys (with memory per key).
//!
//! Run: `cargo bench -p meshlimit-bucket --bench check -- --warm-up-time 1 --measurement-time 3`
//!
//! The quota is 10^9 tokens per second with a burst of 10^9, so every check is admitted and
//! writes its bucket (the costly path); `*_rejecting` variants use 1 per hour, drained first.
//! `meshlimit_wide` rows use a plan too wide for a 63-bit state (10^9 burst at a prime rate
//! per hour): the 128-bit state, one 16-byte compare-and-swap per check. `meshlimit_reconfigured`
//! is the admitting bucket after one reconfiguration (which also moves it to the 128-bit
//! state).
//! Each library reads its own default clock in the headline rows (`meshlimit`: coarse
//! monotonic; `governor`: quanta's TSC clock); the `*_same_clock` rows give both the same one.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::clock::{Clock as _, FakeRelativeClock};
use governor::{Quota, RateLimiter};
use meshlimit_bucket::{
    Bucket, Clock, Decision, FakeClock, KeyedBuckets, MonotonicClock, PreciseMonotonicClock,
    Refill, Settings,
};

/// Hands each part of a decision to the optimiser's black box, as a caller reading its fields
/// would (one `black_box` of the whole struct measures a store-forwarding stall of the harness).
#[inline(always)]
fn used(d: Decision) -> bool {
    black_box(d.remaining());
    black_box(d.next_token_in());
    black_box(d.admitted())
}

const RATE: u32 = 1_000_000_000;
const KEYS: u64 = 1_000_000;

fn admitting_settings() -> Settings {
    Settings::new(
        u64::from(RATE),
        u64::from(RATE),
        Duration::from_secs(1),
        Refill::Smooth,
    )
    .expect("valid settings")
}

fn admitting_quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).expect("non-zero"))
}

/// Admits every check too, but its exact state needs 128 bits (see `Settings::is_wide`).
fn wide_settings() -> Settings {
    let s = Settings::new(
        u64::from(RATE),
        999_999_937,
        Duration::from_secs(3600),
        Refill::Smooth,
    )
    .expect("valid settings");
    assert!(s.is_wide());
    s
}

fn rejecting_settings() -> Settings {
    Settings::new(1, 1, Duration::from_secs(3600), Refill::Smooth).expect("valid settings")
}

fn rejecting_quota() -> Quota {
    Quota::per_hour(NonZeroU32::new(1).expect("non-zero"))
}

fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("meshlimit_monotonic_coarse", |b| {
        b.iter(|| black_box(MonotonicClock.now_ns()))
    });
    g.bench_function("meshlimit_monotonic_precise", |b| {
        b.iter(|| black_box(PreciseMonotonicClock.now_ns()))
    });
    g.bench_function("std_instant_now", |b| {
        #[allow(clippy::disallowed_methods)] // measuring the clock the engine avoids
        b.iter(|| black_box(Instant::now()))
    });
    let quanta = governor::clock::DefaultClock::default();
    g.bench_function("governor_default_quanta", |b| {
        b.iter(|| black_box(quanta.now()))
    });
    g.finish();
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_thread");
    let clock = MonotonicClock;

    let bucket = Bucket::new(admitting_settings(), clock.now_ns());
    g.bench_function("meshlimit", |b| {
        b.iter(|| used(bucket.check(clock.now_ns())))
    });
    let limiter = RateLimiter::direct(admitting_quota());
    g.bench_function("governor", |b| {
        b.iter(|| black_box(limiter.check().is_ok()))
    });

    let precise = PreciseMonotonicClock;
    let bucket = Bucket::new(admitting_settings(), precise.now_ns());
    g.bench_function("meshlimit_same_clock_precise", |b| {
        b.iter(|| used(bucket.check(precise.now_ns())))
    });
    let limiter =
        RateLimiter::direct_with_clock(admitting_quota(), governor::clock::MonotonicClock);
    g.bench_function("governor_same_clock_precise", |b| {
        b.iter(|| black_box(limiter.check().is_ok()))
    });

    // Time from an atomic both libraries read the same way: the arithmetic alone.
    let fake = FakeClock::new(1);
    let bucket = Bucket::new(admitting_settings(), 0);
    g.bench_function("meshlimit_same_clock_fake", |b| {
        b.iter(|| used(bucket.check(fake.now_ns())))
    });
    let fake_g = FakeRelativeClock::default();
    let limiter = RateLimiter::direct_with_clock(admitting_quota(), fake_g.clone());
    g.bench_function("governor_same_clock_fake", |b| {
        b.iter(|| black_box(limiter.check().is_ok()))
    });

    let bucket = Bucket::new(rejecting_settings(), clock.now_ns());
    let _ = bucket.check(clock.now_ns());
    g.bench_function("meshlimit_rejecting", |b| {
        b.iter(|| used(bucket.check(clock.now_ns())))
    });

    let bucket = Bucket::new(wide_settings(), clock.now_ns());
    g.bench_function("meshlimit_wide", |b| {
        b.iter(|| used(bucket.check(clock.now_ns())))
    });
    let bucket = Bucket::new(admitting_settings(), clock.now_ns());
    let reconfigured = Settings::new(
        u64::from(RATE) + 1,
        u64::from(RATE),
        Duration::from_secs(1),
        Refill::Smooth,
    )
    .expect("valid settings");
    bucket.reconfigure(reconfigured, clock.now_ns());
    g.bench_function("meshlimit_reconfigured", |b| {
        b.iter(|| used(bucket.check(clock.now_ns())))
    });
    let limiter = RateLimiter::direct(rejecting_quota());
    let _ = limiter.check();
    g.bench_function("governor_rejecting", |b| {
        b.iter(|| black_box(limiter.check().is_ok()))
    });
    g.finish();
}

/// Each of `threads` threads does `iters` checks at once; the time reported per check is the
/// wall time divided by `iters`, i.e. what one check costs each thread under contention.
fn contended(threads: usize, iters: u64, check: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                barrier.wait();
                for _ in 0..iters {
                    check();
                }
                barrier.wait();
            });
        }
        barrier.wait();
        #[allow(clippy::disallowed_methods)] // the benchmark's own stopwatch
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads_one_bucket");
    let clock = MonotonicClock;
    let bucket = Bucket::new(admitting_settings(), clock.now_ns());
    g.bench_function("meshlimit", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, &|| {
                used(bucket.check(clock.now_ns()));
            })
        })
    });
    let limiter = RateLimiter::direct(admitting_quota());
    g.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, &|| {
                black_box(limiter.check().is_ok());
            })
        })
    });
    let bucket = Bucket::new(wide_settings(), clock.now_ns());
    g.bench_function("meshlimit_wide", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, &|| {
                used(bucket.check(clock.now_ns()));
            })
        })
    });
    let bucket = Bucket::new(rejecting_settings(), clock.now_ns());
    let _ = bucket.check(clock.now_ns());
    g.bench_function("meshlimit_rejecting", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, &|| {
                used(bucket.check(clock.now_ns()));
            })
        })
    });
    let limiter = RateLimiter::direct(rejecting_quota());
    let _ = limiter.check();
    g.bench_function("governor_rejecting", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, &|| {
                black_box(limiter.check().is_ok());
            })
        })
    });
    g.finish();
}

/// A fixed pseudo-random walk over `keys` keys (xorshift), so both libraries see the same
/// keys in the same order and the caches cannot predict them.
fn key_walk(n: usize, keys: u64) -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % keys
        })
        .collect()
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`; 0 elsewhere): what a
/// table of N keys really costs, allocator overhead and hash-table slack included.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn per_key(before: u64, keys: u64) -> f64 {
    resident_bytes().saturating_sub(before) as f64 / keys as f64
}

/// Keyed checks over 1M and 10M keys. meshlimit's table is bounded at exactly the number of
/// keys walked, so shards that draw more than their share evict (idle keys first) while the
/// benchmark runs: the bound and eviction are on. governor's keyed store is unbounded.
///
/// Every table stays alive until the end, so that no table is built in memory another one
/// freed (which the allocator keeps and reuses, and the resident set would not show).
fn keyed(c: &mut Criterion) {
    let clock = MonotonicClock;
    let mut alive: Vec<Box<dyn std::any::Any>> = Vec::new();
    for keys in [KEYS, 10 * KEYS] {
        let mut g = c.benchmark_group(format!("keyed_{}m_keys", keys / KEYS));
        let walk = key_walk(1 << 20, keys);

        let before = resident_bytes();
        let table = KeyedBuckets::new(admitting_settings(), keys as usize);
        for key in 0..keys {
            table.check(&key, clock.now_ns());
        }
        eprintln!(
            "keyed {keys} keys: meshlimit {:.1} bytes/key resident ({} held, capacity {}, {} evicted while filling)",
            per_key(before, keys),
            table.len(),
            table.capacity(),
            table.evicted(),
        );
        g.bench_with_input(BenchmarkId::new("meshlimit", keys), &walk, |b, walk| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (walk.len() - 1);
                used(table.check(&walk[i], clock.now_ns()))
            })
        });
        eprintln!(
            "keyed {keys} keys: meshlimit evicted {} in all ({} while active), {} held",
            table.evicted(),
            table.evicted_while_active(),
            table.len()
        );
        assert!(table.len() <= table.capacity());
        alive.push(Box::new(table));

        let before = resident_bytes();
        let limiter = RateLimiter::keyed(admitting_quota());
        for key in 0..keys {
            let _ = limiter.check_key(&key);
        }
        eprintln!(
            "keyed {keys} keys: governor {:.1} bytes/key resident ({} held, never evicts)",
            per_key(before, keys),
            limiter.len(),
        );
        g.bench_with_input(BenchmarkId::new("governor", keys), &walk, |b, walk| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (walk.len() - 1);
                black_box(limiter.check_key(&walk[i]).is_ok())
            })
        });
        alive.push(Box::new(limiter));
        g.finish();
    }
    drop(alive);
}

criterion_group!(benches, clocks, single_thread, two_threads, keyed);
criterion_main!(benches);
