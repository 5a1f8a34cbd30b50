//! Many threads against one bucket never admit more than it holds — also while its settings
//! change under them, on the fast path, on the wide (128-bit) path, and across switches
//! between the two.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use meshlimit_bucket::{Bucket, KeyedBuckets, Refill, Settings};

const THREADS: usize = 4;
const TAKES: usize = 20_000;
const TOKENS: u64 = 10_000;

/// Runs `THREADS` threads that each try `TAKES` times, all starting together; returns the
/// total admitted.
fn hammer(check: impl Fn() -> bool + Sync) -> u64 {
    let barrier = Barrier::new(THREADS);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    (0..TAKES).filter(|_| check()).count() as u64
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

fn no_refill(refill: Refill) -> Settings {
    // One token per hour: nothing comes back while the test runs at a fixed time.
    Settings::new(TOKENS, 1, Duration::from_secs(3600), refill).unwrap()
}

/// The same tokens with no refill during the test, as a wide plan (a month per token).
fn wide_no_refill() -> Settings {
    let s = Settings::new(TOKENS, 1, Duration::from_secs(30 * 86_400), Refill::Smooth).unwrap();
    assert!(s.is_wide());
    s
}

#[test]
fn threads_on_one_wide_bucket_admit_exactly_its_tokens() {
    let bucket = Bucket::new(wide_no_refill(), 1_000);
    let admitted = hammer(|| bucket.check(1_000).admitted());
    assert_eq!(admitted, TOKENS);
    assert_eq!(bucket.peek(1_000), 0);
}

#[test]
fn threads_on_one_wide_key_admit_exactly_its_tokens() {
    let table = KeyedBuckets::new(wide_no_refill(), 1_000);
    let admitted = hammer(|| table.check(&"client", 1_000).admitted());
    assert_eq!(admitted, TOKENS);
    assert_eq!(table.len(), 1);
}

#[test]
fn threads_on_one_bucket_admit_exactly_its_tokens() {
    for refill in [Refill::Smooth, Refill::Interval] {
        let bucket = Bucket::new(no_refill(refill), 1_000);
        let admitted = hammer(|| bucket.check(1_000).admitted());
        assert_eq!(admitted, TOKENS, "{refill:?}");
        assert_eq!(bucket.peek(1_000), 0);
    }
}

#[test]
fn threads_on_one_key_admit_exactly_its_tokens() {
    for refill in [Refill::Smooth, Refill::Interval] {
        let table = KeyedBuckets::new(no_refill(refill), 1_000);
        let admitted = hammer(|| table.check(&"client", 1_000).admitted());
        assert_eq!(admitted, TOKENS, "{refill:?}");
        assert_eq!(table.len(), 1);
    }
}

/// All the settings hold the same number of tokens and refill nothing at a fixed time, so
/// every switch keeps the count: the threads must get exactly TOKENS whatever the interleaving.
fn flip_under_load(plans: &[Settings]) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let bucket = Bucket::new(plans[0], 1_000);
    let done = AtomicBool::new(false);
    let flips = AtomicUsize::new(0);
    let admitted = thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let n = flips.load(Ordering::Relaxed) + 1;
                bucket.reconfigure(plans[n % plans.len()], 1_000);
                flips.store(n, Ordering::Relaxed);
            }
        });
        // The flipper is running (through every plan once) before the checks start, so they
        // overlap however the threads are scheduled.
        while flips.load(Ordering::Relaxed) < plans.len() {
            thread::yield_now();
        }
        let admitted = hammer(|| bucket.check(1_000).admitted());
        done.store(true, Ordering::Relaxed);
        admitted
    });
    assert!(flips.load(Ordering::Relaxed) >= plans.len());
    assert_eq!(admitted, TOKENS);
    assert_eq!(bucket.peek(1_000), 0);
}

#[test]
fn reconfiguring_under_load_neither_loses_nor_invents_tokens() {
    let a = no_refill(Refill::Smooth);
    let b = Settings::new(TOKENS, 7, Duration::from_secs(86_400), Refill::Interval).unwrap();
    flip_under_load(&[a, b]);
}

#[test]
fn switching_between_narrow_and_wide_under_load_neither_loses_nor_invents_tokens() {
    let narrow = no_refill(Refill::Smooth);
    assert!(!narrow.is_wide());
    let interval = Settings::new(TOKENS, 7, Duration::from_secs(86_400), Refill::Interval).unwrap();
    let wide = wide_no_refill();
    let wider = Settings::new(TOKENS, 3, Duration::from_nanos(u64::MAX), Refill::Smooth).unwrap();
    assert!(wider.is_wide());
    flip_under_load(&[narrow, wide, interval, wide, wider, narrow, wider]);
}

/// Threads meet a narrow bucket just as its payload runs out of range (at the end of the
/// clock's range, where it moves to the wide state on the spot): still exactly its tokens.
#[test]
fn threads_on_a_bucket_moving_out_of_range_admit_exactly_its_tokens() {
    // All checks are at one instant, so the refill rate does not matter; the interval one is
    // short enough for its interval count to run out of bits before the clock does.
    let interval = Settings::new(TOKENS, 1, Duration::from_micros(1), Refill::Interval).unwrap();
    for s in [no_refill(Refill::Smooth), interval] {
        let refill = s.refill();
        let bucket = Bucket::new(s, 1_000);
        let late = u64::MAX - 1;
        // Debug names the representation: narrow until the first late check.
        assert!(!format!("{bucket:?}").contains("generation"), "{refill:?}");
        let admitted = hammer(|| bucket.check(late).admitted());
        assert_eq!(admitted, TOKENS, "{refill:?}");
        assert!(format!("{bucket:?}").contains("generation"), "{refill:?}");
        assert_eq!(bucket.peek(late), 0);
    }
}
