//! The arithmetic-only comparison (both libraries on the same fake clock, one thread, every
//! check admitted), measured so that a busy machine cannot favour either side: short blocks of
//! meshlimit and governor checks alternate, many times, and the best and median block of each
//! are reported. Interference only ever adds time, so the best blocks compare the checks
//! themselves.
//!
//! Run: `cargo bench -p meshlimit-bucket --bench interleaved`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter};
use meshlimit_bucket::{Bucket, Clock, FakeClock, Refill, Settings};

const RATE: u32 = 1_000_000_000;
const ROUNDS: usize = 101;
const CHECKS: u64 = 200_000;

/// Nanoseconds per call of `f` over one block.
fn block(mut f: impl FnMut()) -> f64 {
    #[allow(clippy::disallowed_methods)] // the benchmark's own stopwatch
    let start = Instant::now();
    for _ in 0..CHECKS {
        f();
    }
    start.elapsed().as_nanos() as f64 / CHECKS as f64
}

fn report(name: &str, mut ns: Vec<f64>) -> f64 {
    ns.sort_by(f64::total_cmp);
    let (best, median) = (ns[0], ns[ns.len() / 2]);
    println!("{name:10} best {best:6.2} ns  median {median:6.2} ns");
    best
}

fn main() {
    let settings = Settings::new(
        u64::from(RATE),
        u64::from(RATE),
        Duration::from_secs(1),
        Refill::Smooth,
    )
    .expect("valid settings");
    let quota = Quota::per_second(NonZeroU32::new(RATE).expect("non-zero"));
    let clock = FakeClock::new(1);
    let bucket = Bucket::new(settings, 0);
    let limiter = RateLimiter::direct_with_clock(quota, FakeRelativeClock::default());
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(block(|| {
            // As the check bench hands a decision to the optimiser: field by field.
            let d = bucket.check(clock.now_ns());
            black_box(d.remaining());
            black_box(d.next_token_in());
            black_box(d.admitted());
        }));
        theirs.push(block(|| {
            black_box(limiter.check().is_ok());
        }));
    }
    // Neither bucket runs dry: 2 × 10^7 checks of a 10^9 burst.
    assert!(bucket.check(clock.now_ns()).admitted());
    let ours = report("meshlimit", ours);
    let theirs = report("governor", theirs);
    println!(
        "best-block ratio meshlimit / governor: {:.2}",
        ours / theirs
    );
}
