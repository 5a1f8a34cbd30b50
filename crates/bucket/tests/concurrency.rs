//! Many threads against one bucket never admit more than it holds — also while its settings
//! change under them.

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

#[test]
fn reconfiguring_under_load_neither_loses_nor_invents_tokens() {
    // Both settings hold the same number of tokens and refill nothing at a fixed time, so every
    // switch keeps the count: the threads must get exactly TOKENS whatever interleaving.
    let a = no_refill(Refill::Smooth);
    let b = Settings::new(TOKENS, 7, Duration::from_secs(86_400), Refill::Interval).unwrap();
    let bucket = Bucket::new(a, 1_000);
    let done = std::sync::atomic::AtomicBool::new(false);
    let admitted = thread::scope(|scope| {
        let flipper = scope.spawn(|| {
            let mut flips = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                bucket.reconfigure(if flips.is_multiple_of(2) { b } else { a }, 1_000);
                flips += 1;
            }
            flips
        });
        let admitted = hammer(|| bucket.check(1_000).admitted());
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let flips = flipper.join().unwrap();
        assert!(flips > 0);
        admitted
    });
    assert_eq!(admitted, TOKENS);
}
