//! The kernel's token arithmetic against the userspace engine's reference model
//! (`meshlimit_bucket::model::ReferenceBucket`, `interval` refill) over many random arrival
//! sequences, with settings changes, through `BPF_PROG_TEST_RUN` with injected time (no
//! sockets, no waiting).

use meshlimit_bucket::Refill;
use meshlimit_bucket::model::ReferenceBucket;
use meshlimit_kernel::{ArithmeticProbe, BucketSettings};

fn reference(s: BucketSettings, now: u64) -> ReferenceBucket {
    ReferenceBucket::new(
        s.max_tokens,
        s.tokens_per_fill,
        s.fill_interval_ns,
        Refill::Interval,
        now,
    )
}

/// xorshift64*: deterministic sequences, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_settings(rng: &mut Rng) -> BucketSettings {
    let max_tokens = 1 + rng.below(20);
    let tokens_per_fill = 1 + rng.below(max_tokens + 2);
    let fill_interval_ns =
        [1, 7, 1_000, 999_983, 1_000_000_000, 3_600_000_000_000][rng.below(6) as usize];
    BucketSettings {
        max_tokens,
        tokens_per_fill,
        fill_interval_ns,
    }
}

/// Gaps around the interval's scale: bursts at one instant, just under and over whole
/// intervals, and long idle stretches.
fn random_gap(rng: &mut Rng, interval: u64) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => rng.below(interval.max(2)),
        2 => interval.saturating_sub(1),
        3 => interval * (1 + rng.below(3)),
        4 => interval * rng.below(40) + rng.below(interval),
        _ => rng.below(3 * interval + 1),
    }
}

#[test]
fn kernel_decisions_match_the_model_on_random_arrivals() {
    let mut probe = ArithmeticProbe::load().expect("load the arithmetic program");
    let mut compared = 0;
    let mut reconfigured = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut settings = random_settings(&mut rng);
        let mut now = 1_000_000_000_000 + rng.below(1 << 40);
        let mut model = reference(settings, now);
        let mut decisions = Vec::new();
        for step in 0..150 {
            // Now and then the policy changes: the kernel applies new settings to a bucket at
            // its next connect, so the model is reconfigured at that instant.
            if rng.below(25) == 0 {
                settings = random_settings(&mut rng);
                model.reconfigure(
                    settings.max_tokens,
                    settings.tokens_per_fill,
                    settings.fill_interval_ns,
                    Refill::Interval,
                    now,
                );
                reconfigured += 1;
            }
            let kernel = probe.check(seed, settings, now).expect("test run");
            let expected = model.check(now);
            decisions.push(kernel);
            assert_eq!(
                kernel, expected,
                "seed {seed}, step {step}, {settings:?}, now {now}: kernel {kernel}, model {expected}"
            );
            now += random_gap(&mut rng, settings.fill_interval_ns);
            compared += 1;
        }
        // Every sequence must exercise both outcomes to mean anything.
        assert!(decisions.contains(&true), "seed {seed} admitted nothing");
    }
    assert_eq!(compared, 300 * 150);
    assert!(reconfigured > 100, "only {reconfigured} settings changes");
}

#[test]
fn a_burst_then_refill_at_exact_interval_boundaries() {
    let mut probe = ArithmeticProbe::load().unwrap();
    let s = BucketSettings {
        max_tokens: 3,
        tokens_per_fill: 2,
        fill_interval_ns: 1_000,
    };
    let t0 = 5_000_000;
    let run = |probe: &mut ArithmeticProbe, now: u64| probe.check(1, s, now).unwrap();
    assert_eq!(
        [0, 0, 0, 0].map(|dt| run(&mut probe, t0 + dt)),
        [true, true, true, false]
    );
    assert!(!run(&mut probe, t0 + 999));
    assert_eq!(
        [1_000, 1_000, 1_999].map(|dt| run(&mut probe, t0 + dt)),
        [true, true, false]
    );
    // 2 intervals later: 4 tokens earned, capped at 3.
    assert_eq!(
        [3_500, 3_500, 3_500, 3_999].map(|dt| run(&mut probe, t0 + dt)),
        [true, true, true, false]
    );
    // The remainder carried: the next top-up is at t0 + 4000, not 4500.
    assert!(run(&mut probe, t0 + 4_000));
}

#[test]
fn a_settings_change_keeps_the_tokens_clamped() {
    let mut probe = ArithmeticProbe::load().unwrap();
    let wide = BucketSettings {
        max_tokens: 10,
        tokens_per_fill: 1,
        fill_interval_ns: 1_000_000,
    };
    let narrow = BucketSettings {
        max_tokens: 3,
        ..wide
    };
    for _ in 0..4 {
        assert!(probe.check(7, wide, 100).unwrap()); // 6 left
    }
    // Shrunk to 3: three more, then empty.
    let after: Vec<bool> = (0..4)
        .map(|_| probe.check(7, narrow, 200).unwrap())
        .collect();
    assert_eq!(after, [true, true, true, false]);
    // Widened again: still empty until a refill (tokens are kept, not reset).
    assert!(!probe.check(7, wide, 300).unwrap());
    assert!(probe.check(7, wide, 300 + 1_000_000).unwrap());
}

#[test]
fn invalid_settings_are_refused_by_the_program_too() {
    let mut probe = ArithmeticProbe::load().unwrap();
    let zero = BucketSettings {
        max_tokens: 1,
        tokens_per_fill: 1,
        fill_interval_ns: 0,
    };
    let err = probe.check(9, zero, 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "BPF_PROG_TEST_RUN failed: the program refused the settings"
    );
}

/// Settings at the edges of the range the kernel serves: the largest bucket (2^40) and fill
/// (2^32), one token, intervals from 1 ns to 30 days; and small buckets, so that sequences
/// also reach empty buckets (a change to a large bucket keeps the few tokens held).
fn edge_settings(rng: &mut Rng) -> BucketSettings {
    const MAXES: [u64; 5] = [1, 3, (1 << 32) - 1, 1 << 32, 1 << 40];
    const FILLS: [u64; 5] = [1, 2, (1 << 32) - 1, 1 << 32, 5];
    const INTERVALS: [u64; 7] = [
        1,
        3,
        1_000,
        1_000_000,
        50_000_001,
        3_600_000_000_000,
        30 * 24 * 3_600_000_000_000,
    ];
    BucketSettings {
        max_tokens: MAXES[rng.below(5) as usize],
        tokens_per_fill: FILLS[rng.below(5) as usize],
        fill_interval_ns: INTERVALS[rng.below(7) as usize],
    }
}

/// Gaps that cross the program's re-basing threshold (2^20 intervals) and its guard against
/// large products: just under, at and over 2^20 intervals, and idle stretches up to 2^61 ns.
fn edge_gap(rng: &mut Rng, interval: u64) -> u64 {
    const REBASE: u64 = 1 << 20;
    let intervals = |k: u64| interval.saturating_mul(k);
    match rng.below(8) {
        0 => 0,
        1 => rng.below(interval.max(2)),
        2 => intervals(REBASE - 1),
        3 => intervals(REBASE),
        4 => intervals(REBASE + 1).saturating_add(rng.below(interval)),
        5 => rng.below(1 << 61),
        6 => intervals(1 + rng.below(3)),
        _ => interval - 1,
    }
}

#[test]
fn kernel_decisions_match_the_model_at_the_edges_of_the_range() {
    let mut probe = ArithmeticProbe::load().expect("load the arithmetic program");
    let (mut admitted, mut rejected, mut reconfigured) = (0, 0, 0);
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut settings = edge_settings(&mut rng);
        let mut now = 1_000_000_000 + rng.below(1 << 40);
        let mut model = reference(settings, now);
        for step in 0..120 {
            // (Not before the first check: the kernel makes a bucket at its first check.)
            if step > 0 && rng.below(6) == 0 {
                settings = edge_settings(&mut rng);
                model.reconfigure(
                    settings.max_tokens,
                    settings.tokens_per_fill,
                    settings.fill_interval_ns,
                    Refill::Interval,
                    now,
                );
                reconfigured += 1;
            }
            let kernel = probe.check(seed, settings, now).expect("test run");
            let expected = model.check(now);
            assert_eq!(
                kernel, expected,
                "seed {seed}, step {step}, {settings:?}, now {now}: kernel {kernel}, model {expected}"
            );
            if kernel {
                admitted += 1;
            } else {
                rejected += 1;
            }
            // Bursts at one instant drain the small buckets.
            if rng.below(3) != 0 {
                now = now.saturating_add(edge_gap(&mut rng, settings.fill_interval_ns));
            }
            // Keep clear of the end of the clock: the kernel's runs for centuries.
            if now > 1 << 63 {
                break;
            }
        }
    }
    assert!(
        admitted > 1_000 && rejected > 500,
        "{admitted} admitted, {rejected} rejected"
    );
    assert!(reconfigured > 500, "only {reconfigured} settings changes");
}

#[test]
fn a_fast_bucket_refills_exactly_across_the_rebase_and_long_idle_stretches() {
    let mut probe = ArithmeticProbe::load().unwrap();
    // 2^32 tokens per nanosecond: the fastest fill of the range, whose running total passes
    // 2^64 after 2^32 ns (about 4 s) without the program's re-basing.
    let s = BucketSettings {
        max_tokens: 2,
        tokens_per_fill: 1 << 32,
        fill_interval_ns: 1,
    };
    let t0 = 1_000_000;
    let mut model = reference(s, t0);
    let mut check = |probe: &mut ArithmeticProbe, now: u64| {
        let kernel = probe.check(3, s, now).unwrap();
        assert_eq!(kernel, model.check(now), "at {now}");
        kernel
    };
    let mut now = t0;
    assert_eq!([0; 3].map(|_| check(&mut probe, now)), [true, true, false]);
    // Around the re-base, seconds, an hour, a year and centuries later: full again, never a
    // wrapped count.
    for idle in [
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        1 << 32,
        3_600_000_000_000,
        365 * 24 * 3_600_000_000_000,
        1 << 62,
    ] {
        now += idle;
        assert_eq!(
            [0; 3].map(|_| check(&mut probe, now)),
            [true, true, false],
            "after {idle} ns"
        );
    }
}
