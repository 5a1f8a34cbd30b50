//! The engine against the plain reference model: for any settings, any start time (up to the
//! end of the clock's range) and any non-decreasing arrivals — bursts, long idle gaps,
//! reconfigurations — every decision, every `remaining` and every `next_token_in` is the same.

use std::collections::HashMap;
use std::time::Duration;

use meshlimit_bucket::model::ReferenceBucket;
use meshlimit_bucket::{Bucket, KeyedBuckets, Refill, Settings};
use proptest::prelude::*;

fn refill() -> impl Strategy<Value = Refill> {
    prop_oneof![Just(Refill::Smooth), Just(Refill::Interval)]
}

/// Small numbers (most behaviour), round numbers (what people write) and anything valid.
fn settings() -> impl Strategy<Value = Settings> {
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
            3_600_000_000_000,
        ]),
        1u64..=10_000_000_000,
        any::<u64>().prop_map(|n| n.max(1)),
    ];
    (max, per_fill, interval, refill()).prop_filter_map(
        "settings whose smooth window is out of range",
        |(max, per_fill, interval, refill)| {
            Settings::new(max, per_fill, Duration::from_nanos(interval), refill).ok()
        },
    )
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
    let event = if reconfigure {
        prop_oneof![
            16 => gap().prop_map(Event::Check),
            2 => gap().prop_map(Event::Peek),
            1 => (gap(), settings()).prop_map(|(g, s)| Event::Reconfigure(g, s)),
        ]
        .boxed()
    } else {
        prop_oneof![
            16 => gap().prop_map(Event::Check),
            2 => gap().prop_map(Event::Peek),
        ]
        .boxed()
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
