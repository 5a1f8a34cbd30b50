//! The engine against the plain reference model: for any settings, any start time (up to the
//! end of the clock's range) and any non-decreasing arrivals — bursts, long idle gaps,
//! reconfigurations — every decision, every `remaining` and every `next_token_in` is the same.
//! Settings are drawn across the whole accepted range, so both the fast path and wide plans
//! (and switches between them) are covered, and the extremes of every bound are run
//! explicitly.

use std::collections::HashMap;
use std::time::Duration;

use meshlimit_bucket::model::ReferenceBucket;
use meshlimit_bucket::{Bucket, KeyedBuckets, Refill, SMOOTH_WINDOW_LIMIT, Settings};
use proptest::prelude::*;

fn refill() -> impl Strategy<Value = Refill> {
    prop_oneof![Just(Refill::Smooth), Just(Refill::Interval)]
}

/// Small numbers (most behaviour), round numbers (what people write), anything valid, and the
/// extremes of every bound.
fn settings() -> impl Strategy<Value = Settings> {
    prop_oneof![
        4 => drawn_settings(),
        1 => prop::sample::select(edge_settings()),
    ]
}

fn drawn_settings() -> impl Strategy<Value = Settings> {
    let max = prop_oneof![1u64..=12, 1u64..=1_000, 1u64..=(1 << 40)];
    let per_fill = prop_oneof![1u64..=12, 1u64..=1_000_000, 1u64..=(1 << 32)];
    let interval = prop_oneof![
        1u64..=50,
        prop::sample::select(vec![
            1_000u64,
            1_000_000,
            50_000_000,
            100_000_000,
            1_000_000_000,
            10_000_000_000,
            60_000_000_000,
            HOUR,
            30 * DAY,
        ]),
        1u64..=10_000_000_000,
        any::<u64>().prop_map(|n| n.max(1)),
    ];
    (max, per_fill, interval, refill()).prop_map(|(max, per_fill, interval, refill)| {
        Settings::new(max, per_fill, Duration::from_nanos(interval), refill)
            .expect("every value in range is accepted")
    })
}

const HOUR: u64 = 3_600_000_000_000;
const DAY: u64 = 24 * HOUR;

/// The corners of the accepted range, and the quotas that used to be refused, in both modes.
fn edge_settings() -> Vec<Settings> {
    let u32_max = u64::from(u32::MAX);
    let mut all = Vec::new();
    for refill in [Refill::Smooth, Refill::Interval] {
        for (max, per_fill, interval) in [
            (100_001, 100_001, HOUR),
            (u32_max, u32_max, HOUR),
            (u32_max, u32_max, 30 * DAY),
            (u32_max, u32_max, i64::MAX as u64),
            (1 << 40, 1, u64::MAX),
            (1 << 40, 1 << 32, 1),
            (1, 1 << 32, 1),
            (1 << 40, 1 << 32, u64::MAX),
            (1, 1, u64::MAX),
            // Either side of the fast path's boundary.
            (1, 1, 1 << 55),
            (1, 1, (1 << 55) + 1),
            (1 << 20, 3, 3 << 35),
            (1 << 20, 3, (3 << 35) + 3),
        ] {
            all.push(
                Settings::new(max, per_fill, Duration::from_nanos(interval), refill)
                    .expect("in range"),
            );
        }
    }
    all
}

/// Wide settings: those drawn wide as they are, the others moved just past the fast path's
/// boundary (an interval one more than a multiple of tokens_per_fill keeps the gcd at 1, so the
/// window is max_tokens × fill_interval_ns).
fn wide_settings() -> impl Strategy<Value = Settings> {
    settings().prop_map(|s| {
        if s.is_wide() {
            return s;
        }
        let (max, per_fill) = (s.max_tokens(), s.tokens_per_fill());
        let fills = SMOOTH_WINDOW_LIMIT / max / per_fill + 1 + s.fill_interval_ns() % (1 << 20);
        let interval = per_fill * fills + 1;
        let wide = Settings::new(
            max,
            per_fill,
            Duration::from_nanos(interval),
            Refill::Smooth,
        )
        .expect("in range");
        assert!(wide.is_wide(), "{wide}");
        wide
    })
}

/// Narrow settings: those drawn narrow as they are, the others with the largest burst that
/// fits the fast path, or with interval refill when not even one token does.
fn narrow_settings() -> impl Strategy<Value = Settings> {
    settings().prop_map(|s| {
        if !s.is_wide() {
            return s;
        }
        let (per_fill, interval) = (s.tokens_per_fill(), s.fill_interval_ns());
        let token = interval / gcd(per_fill, interval);
        let (max, refill) = match SMOOTH_WINDOW_LIMIT / token {
            0 => (s.max_tokens(), Refill::Interval),
            fits => (fits.min(s.max_tokens()), Refill::Smooth),
        };
        let narrow =
            Settings::new(max, per_fill, Duration::from_nanos(interval), refill).expect("in range");
        assert!(!narrow.is_wide(), "{narrow}");
        narrow
    })
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        0u64..1_000_000_000_000,
        any::<u64>(),
        (u64::MAX - 1_000_000_000_000)..=u64::MAX,
    ]
}

/// Gaps between arrivals, scaled to the settings so that every regime shows up: bursts (0),
/// fractions of a token, a few intervals, and idle gaps of any length.
fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        4 => Just(Gap::Zero),
        4 => (0u64..=1_000).prop_map(Gap::PerMille),
        2 => (0u64..=10_000).prop_map(Gap::PerMille),
        1 => any::<u64>().prop_map(Gap::Nanos),
        1 => (0u64..=1_000_000).prop_map(Gap::Nanos),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Gap {
    Zero,
    /// Thousandths of the time one token takes (or of one interval).
    PerMille(u64),
    Nanos(u64),
}

impl Gap {
    fn nanos(self, s: &Settings) -> u64 {
        match self {
            Gap::Zero => 0,
            Gap::PerMille(m) => {
                let token_ns = u128::from(s.fill_interval_ns()) / u128::from(s.tokens_per_fill());
                let token_ns = token_ns.max(1);
                u64::try_from(token_ns * u128::from(m) / 1000).unwrap_or(u64::MAX)
            }
            Gap::Nanos(n) => n,
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    Check(Gap),
    Peek(Gap),
    Reconfigure(Gap, Settings),
}

fn events(reconfigure: bool) -> impl Strategy<Value = Vec<Event>> {
    events_switching_to(reconfigure.then(|| settings().boxed()))
}

/// Checks and peeks, and with `targets` reconfigurations to settings drawn from it.
fn events_switching_to(
    targets: Option<BoxedStrategy<Settings>>,
) -> impl Strategy<Value = Vec<Event>> {
    let event = match targets {
        Some(targets) => prop_oneof![
            16 => gap().prop_map(Event::Check),
            2 => gap().prop_map(Event::Peek),
            1 => (gap(), targets).prop_map(|(g, s)| Event::Reconfigure(g, s)),
        ]
        .boxed(),
        None => prop_oneof![
            16 => gap().prop_map(Event::Check),
            2 => gap().prop_map(Event::Peek),
        ]
        .boxed(),
    };
    prop::collection::vec(event, 1..200)
}

fn reference(s: &Settings, now: u64) -> ReferenceBucket {
    ReferenceBucket::new(
        s.max_tokens(),
        s.tokens_per_fill(),
        s.fill_interval_ns(),
        s.refill(),
        now,
    )
}

fn run(initial: Settings, start: u64, events: &[Event]) -> Result<(), TestCaseError> {
    let bucket = Bucket::new(initial, start);
    let mut model = reference(&initial, start);
    let mut current = initial;
    let mut now = start;
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Check(gap) => {
                now = now.saturating_add(gap.nanos(&current));
                let got = bucket.check(now);
                let want = model.decision(now);
                prop_assert_eq!(got, want, "event {} (check at {})", i, now);
            }
            Event::Peek(gap) => {
                now = now.saturating_add(gap.nanos(&current));
                prop_assert_eq!(bucket.peek(now), model.tokens(now), "event {} (peek)", i);
            }
            Event::Reconfigure(gap, s) => {
                now = now.saturating_add(gap.nanos(&current));
                bucket.reconfigure(*s, now);
                model.reconfigure(
                    s.max_tokens(),
                    s.tokens_per_fill(),
                    s.fill_interval_ns(),
                    s.refill(),
                    now,
                );
                current = *s;
                prop_assert_eq!(bucket.settings(), *s);
                prop_assert_eq!(
                    bucket.peek(now),
                    model.tokens(now),
                    "event {} (after reconfigure)",
                    i
                );
            }
        }
    }
    Ok(())
}

/// 500 cases per property unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 500;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn bucket_matches_the_model(s in settings(), start in start(), events in events(false)) {
        run(s, start, &events)?;
    }

    #[test]
    fn bucket_matches_the_model_across_reconfigurations(
        s in settings(),
        start in start(),
        events in events(true),
    ) {
        run(s, start, &events)?;
    }

    /// Wide plans only, so that each run exercises the 128-bit path throughout.
    #[test]
    fn wide_buckets_match_the_model(s in wide_settings(), start in start(), events in events(false)) {
        run(s, start, &events)?;
    }

    /// A bucket moving back and forth between the fast path and the wide path keeps its tokens
    /// (and smooth fractions) like any other reconfiguration.
    #[test]
    fn switching_between_narrow_and_wide_matches_the_model(
        s in narrow_settings(),
        start in start(),
        events in events_switching_to(Some(prop_oneof![narrow_settings(), wide_settings()].boxed())),
    ) {
        run(s, start, &events)?;
    }

    /// With room for every key, each key behaves as a model bucket that was full at time 0.
    #[test]
    fn keyed_buckets_match_one_model_per_key(
        s in settings(),
        start in start(),
        arrivals in prop::collection::vec((0u8..6, gap()), 1..300),
    ) {
        let table = KeyedBuckets::new(s, 64);
        let mut models: HashMap<u8, ReferenceBucket> = HashMap::new();
        let mut now = start;
        for (i, (key, gap)) in arrivals.iter().enumerate() {
            now = now.saturating_add(gap.nanos(&s));
            let want = models.entry(*key).or_insert_with(|| reference(&s, 0)).decision(now);
            prop_assert_eq!(table.check(key, now), want, "arrival {} (key {} at {})", i, key, now);
        }
        prop_assert_eq!(table.evicted_while_active(), 0);
    }

    /// A table too small for its keys only ever drops idle keys here (every key waits long
    /// enough to refill before the table needs its place), and then nothing changes.
    #[test]
    fn evicting_idle_keys_changes_no_decision(
        s in settings(),
        start in start(),
        arrivals in prop::collection::vec((0u16..40, gap()), 1..300),
    ) {
        let table = KeyedBuckets::new(s, 4);
        let mut models: HashMap<u16, ReferenceBucket> = HashMap::new();
        let mut now = start;
        for (i, (key, gap)) in arrivals.iter().enumerate() {
            now = now.saturating_add(gap.nanos(&s));
            let want = models.entry(*key).or_insert_with(|| reference(&s, 0)).decision(now);
            let got = table.check(key, now);
            if table.evicted_while_active() > 0 {
                // A busy key was pushed out: from here on it legitimately differs.
                break;
            }
            prop_assert_eq!(got, want, "arrival {} (key {} at {})", i, key, now);
            prop_assert!(table.len() <= 4);
        }
    }
}

/// Every corner of the accepted range, from several start times, through a fixed script of
/// bursts, fractions of a token, idle gaps and the end of the clock's range.
#[test]
fn edge_settings_match_the_model() {
    let script = [
        Event::Check(Gap::Zero),
        Event::Check(Gap::Zero),
        Event::Check(Gap::Zero),
        Event::Check(Gap::PerMille(1)),
        Event::Check(Gap::PerMille(500)),
        Event::Peek(Gap::PerMille(499)),
        Event::Check(Gap::PerMille(1)),
        Event::Check(Gap::PerMille(1000)),
        Event::Check(Gap::Zero),
        Event::Check(Gap::PerMille(10_000)),
        Event::Check(Gap::Nanos(1)),
        Event::Check(Gap::Nanos(HOUR)),
        Event::Check(Gap::Nanos(u64::MAX / 3)),
        Event::Check(Gap::Zero),
        Event::Check(Gap::Nanos(u64::MAX / 3)),
        Event::Peek(Gap::Nanos(1)),
        Event::Check(Gap::Nanos(u64::MAX)),
        Event::Check(Gap::Zero),
        Event::Peek(Gap::Zero),
    ];
    for s in edge_settings() {
        for start in [0, 1, 1 << 62, u64::MAX - 2 * HOUR, u64::MAX - 1] {
            if let Err(e) = run(s, start, &script) {
                panic!("{s} from {start}: {e}");
            }
        }
    }
}

/// Every pair of corners (and a few ordinary plans), switched into each other mid-refill.
#[test]
fn switching_between_edge_settings_matches_the_model() {
    let mut plans = edge_settings();
    plans.extend([
        Settings::new(10, 10, Duration::from_secs(1), Refill::Smooth).unwrap(),
        Settings::new(10, 3, Duration::from_millis(700), Refill::Interval).unwrap(),
    ]);
    for &from in &plans {
        for &to in &plans {
            let script = [
                Event::Check(Gap::Zero),
                Event::Check(Gap::Zero),
                Event::Check(Gap::PerMille(300)),
                Event::Reconfigure(Gap::PerMille(250), to),
                Event::Check(Gap::Zero),
                Event::Check(Gap::PerMille(700)),
                Event::Check(Gap::PerMille(300)),
                Event::Reconfigure(Gap::PerMille(10), from),
                Event::Check(Gap::PerMille(999)),
                Event::Check(Gap::Nanos(u64::MAX / 2)),
                Event::Reconfigure(Gap::Zero, to),
                Event::Check(Gap::Zero),
            ];
            if let Err(e) = run(from, 1_000, &script) {
                panic!("{from} -> {to}: {e}");
            }
        }
    }
}

/// The cases the regression file recorded, kept as they were shrunk (the seeds there now
/// draw from a wider strategy and produce other cases).
#[test]
fn past_regressions_still_pass() {
    let tiny = Settings::new(1, 1, Duration::from_nanos(1), Refill::Smooth).unwrap();
    run(tiny, 0, &[Event::Check(Gap::Zero)]).unwrap();
    let a = Settings::new(1, 1, Duration::from_nanos(1000), Refill::Interval).unwrap();
    let b = Settings::new(2, 1, Duration::from_nanos(1), Refill::Interval).unwrap();
    run(
        tiny,
        0,
        &[
            Event::Reconfigure(Gap::Zero, a),
            Event::Reconfigure(Gap::PerMille(45), b),
        ],
    )
    .unwrap();
}

/// The range a Kuma rate may have (num 1 … 2^32 − 1, an interval from just over 50 ms to 30
/// days and more), both refill modes, as a `requestRate` becomes settings (num tokens, num per
/// interval) and with a small burst: every decision, every `remaining` and `next_token_in`, from
/// several start times, through bursts, fractions of a token, long idle gaps and switches
/// between the corners.
#[test]
fn kuma_range_edges_match_the_model() {
    let u32_max = u64::from(u32::MAX);
    let mut plans = Vec::new();
    for refill in [Refill::Smooth, Refill::Interval] {
        for interval in [
            50_000_001,
            1_000_000_000,
            HOUR,
            30 * DAY,
            30 * DAY + 1,
            31 * DAY,
        ] {
            for (max, per_fill) in [
                (1, 1),
                (2, 1),
                (100_001, 100_001),
                (u32_max - 1, u32_max - 1),
                (u32_max, u32_max),
                (1, u32_max),
                (u32_max, 1),
            ] {
                plans.push(
                    Settings::new(max, per_fill, Duration::from_nanos(interval), refill)
                        .expect("Kuma's range is accepted"),
                );
            }
        }
    }
    let script = |to: Settings| {
        [
            Event::Check(Gap::Zero),
            Event::Check(Gap::Zero),
            Event::Check(Gap::PerMille(1)),
            Event::Check(Gap::PerMille(999)),
            Event::Peek(Gap::PerMille(1)),
            Event::Check(Gap::PerMille(1500)),
            Event::Check(Gap::Nanos(1)),
            Event::Reconfigure(Gap::PerMille(300), to),
            Event::Check(Gap::Zero),
            Event::Check(Gap::PerMille(700)),
            Event::Check(Gap::Nanos(31 * DAY)),
            Event::Check(Gap::Zero),
            Event::Check(Gap::Nanos(u64::MAX / 2)),
            Event::Check(Gap::Zero),
        ]
    };
    for (i, &from) in plans.iter().enumerate() {
        // Each plan switches to a few others (its neighbours in both modes), not all pairs.
        for &to in [i + 1, i + 7, i + 42]
            .iter()
            .map(|j| &plans[j % plans.len()])
        {
            for start in [0, 1_000, 1 << 62, u64::MAX - 2 * 31 * DAY] {
                if let Err(e) = run(from, start, &script(to)) {
                    panic!("{from} -> {to} from {start}: {e}");
                }
            }
        }
        for start in [0, u64::MAX - HOUR] {
            let drain = vec![Event::Check(Gap::Zero); 64];
            if let Err(e) = run(from, start, &drain) {
                panic!("{from} from {start}: {e}");
            }
        }
    }
}
