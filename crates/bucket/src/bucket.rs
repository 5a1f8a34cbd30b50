//! One bucket: a check is one atomic load, arithmetic on an immutable plan, and one
//! compare-and-swap; a rejection writes nothing.
//!
//! A bucket starts *narrow* when its plan fits a 63-bit payload for a long time: the state is
//! one `AtomicU64` next to the plan and origin it was created with, which never change. That is
//! the whole fast path — no slot to validate, no second read of the state.
//!
//! Everything rarer goes through the *wide* state: a 128-bit word (one 16-byte
//! compare-and-swap, lock-free wherever the CPU has one) holding a 23-bit *generation* above a
//! 105-bit payload ([`crate::arith`]'s wide arithmetic, exact for every clock value, relative
//! to an origin that never moves). Each generation names an immutable plan in an append-only
//! table, so a state word always says which plan it belongs to and a check never pairs a
//! payload with the wrong plan. A bucket moves there, once and for good, when it is first
//! reconfigured, when its narrow payload would run out of range, or from the start when its
//! settings do not fit 63 bits. The narrow word then holds [`MOVED`], which no payload equals.
//!
//! Reconfiguring (serialised by a mutex that checks never take) computes the tokens held from
//! one state word and replaces that word, in one compare-and-swap, with the new generation and
//! the same tokens: a check that raced with it fails its own compare-and-swap and starts again
//! under the new plan. The same settings get the same generation again, so the table grows
//! with the number of distinct settings a bucket has had, not with how often it changed.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use portable_atomic::AtomicU128;

use crate::Decision;
use crate::arith::{self, PAYLOAD_MASK, Plan, Step, WIDE_BITS, WIDE_MASK, WidePlan, WideStep};
use crate::settings::Settings;

/// The narrow word of a bucket that lives in its wide state (payloads are below 2^63).
const MOVED: u64 = u64::MAX;
/// A narrow plan must run at least this long (about 9.8 hours) before its payload runs out of
/// range; plans that would move to the wide state sooner start there.
const NARROW_FOR_AT_LEAST_NS: u64 = 1 << 45;
/// Plans in the first segment of the generation table; each next segment is twice as large.
const SEGMENT0: usize = 4;
const SEGMENTS: usize = 21;
/// Generations 1..=this live in the segments (generation 0 is the wide state's first plan):
/// all that 23 bits hold, less four.
const MAX_GENERATION: usize = SEGMENT0 * ((1 << SEGMENTS) - 1);
const _: () = assert!(MAX_GENERATION < 1 << (128 - WIDE_BITS));

/// A token bucket shared by any number of threads. A check takes a token with one atomic
/// compare-and-swap, so concurrent checks never admit more than the bucket holds, and checks
/// do not wait for reconfiguration. The only check that takes a lock is the one, at most once
/// in a bucket's life, that moves it out of a payload that ran out of range (and, on a CPU
/// without a 16-byte compare-and-swap, wide checks, through `portable-atomic`'s fallback).
///
/// Times are nanoseconds from a [`crate::Clock`]. They should not go backwards; a check with an
/// earlier time than one already applied is judged conservatively (it never sees more tokens
/// than the later check left).
pub struct Bucket {
    narrow: Narrow,
    /// Set once, before the narrow word becomes [`MOVED`].
    wide: OnceLock<Box<Wide>>,
    /// Serialises writers; the settings of each generation handed out.
    writer: Mutex<HashMap<Settings, u32>>,
}

/// The narrow state and the plan it was made for, on their own cache lines: a check reads
/// both, and only the state is written.
#[repr(align(128))]
struct Narrow {
    state: AtomicU64,
    origin: u64,
    plan: Plan,
}

/// The wide state and the table of plans its generations name.
struct Wide {
    /// Generation (bits 105..128) above the payload.
    state: AtomicU128,
    origin: u64,
    /// Generation 0.
    first: WidePlan,
    /// Generations 1.. in segments of 4, 8, 16, … plans: written once each, before any state
    /// word carries their generation, and never again.
    later: [OnceLock<Box<[OnceLock<WidePlan>]>>; SEGMENTS],
}

impl Wide {
    fn new(origin: u64, first: WidePlan, payload: u128) -> Wide {
        Wide {
            state: AtomicU128::new(payload),
            origin,
            first,
            later: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Which segment and place generation `g ≥ 1` has.
    fn place(generation: u32) -> (usize, usize) {
        let index = generation as usize - 1;
        let segment = (index / SEGMENT0 + 1).ilog2() as usize;
        (segment, index - SEGMENT0 * ((1 << segment) - 1))
    }

    #[inline]
    fn plan(&self, generation: u32) -> &WidePlan {
        if generation == 0 {
            return &self.first;
        }
        self.plan_later(generation)
    }

    fn plan_later(&self, generation: u32) -> &WidePlan {
        let (segment, offset) = Wide::place(generation);
        self.later[segment]
            .get()
            .and_then(|plans| plans[offset].get())
            .expect("a generation's plan is stored before any state carries it")
    }

    /// Stores generation `g ≥ 1`'s plan (once; the caller holds the writers' lock).
    fn publish(&self, generation: u32, plan: WidePlan) {
        let (segment, offset) = Wide::place(generation);
        let plans = self.later[segment]
            .get_or_init(|| (0..SEGMENT0 << segment).map(|_| OnceLock::new()).collect());
        let _ = plans[offset].set(plan);
    }
}

fn generation(state: u128) -> u32 {
    (state >> WIDE_BITS) as u32
}

fn with_generation(generation: u32, payload: u128) -> u128 {
    (u128::from(generation) << WIDE_BITS) | payload
}

impl Bucket {
    /// A full bucket at `now_ns`.
    pub fn new(settings: Settings, now_ns: u64) -> Bucket {
        let plan = Plan::new(settings);
        let bucket = Bucket {
            narrow: Narrow {
                state: AtomicU64::new(plan.full_payload()),
                origin: now_ns,
                plan,
            },
            wide: OnceLock::new(),
            writer: Mutex::new(HashMap::new()),
        };
        if plan.is_wide() || plan.rebase_at < NARROW_FOR_AT_LEAST_NS {
            let first = WidePlan::new(settings);
            let _ = bucket
                .wide
                .set(Box::new(Wide::new(now_ns, first, first.full_state())));
            bucket.writer.lock().insert(settings, 0);
            bucket.narrow.state.store(MOVED, Ordering::Relaxed);
        }
        bucket
    }

    /// Takes one token if there is one.
    // Always inlined: the narrow path is a few instructions, and a call with its register
    // saves would cost as much again; everything rarer is a call.
    #[inline(always)]
    pub fn check(&self, now_ns: u64) -> Decision {
        let narrow = &self.narrow;
        // Acquire pairs with the Release of the compare-and-swap that stores MOVED, so a check
        // that reads MOVED sees the wide state as it was when the bucket moved. For the payload
        // itself Relaxed would do: the plan and origin beside it never change.
        let mut state = narrow.state.load(Ordering::Acquire);
        loop {
            if state == MOVED {
                return self.check_wide(now_ns);
            }
            match arith::step(&narrow.plan, narrow.origin, state, now_ns) {
                Step::Admit { payload, answer } => {
                    // Success can be Relaxed: the word publishes nothing but itself, and a
                    // compare-and-swap of any ordering replaces exactly the value this check
                    // computed from (all writes to one atomic are totally ordered), so two
                    // checks can never both take the same token. Failure is Acquire because
                    // the value read may be MOVED.
                    match narrow.state.compare_exchange_weak(
                        state,
                        payload,
                        Ordering::Relaxed,
                        Ordering::Acquire,
                    ) {
                        // The divisions come after the compare-and-swap (see `Answer`).
                        Ok(_) => return narrow.plan.answer(answer),
                        Err(actual) => state = actual,
                    }
                }
                Step::Deny(decision) => return decision,
                Step::Rebase => {
                    self.move_out(now_ns, None);
                    state = narrow.state.load(Ordering::Acquire);
                }
            }
        }
    }

    /// A check on the wide state.
    #[inline(never)]
    fn check_wide(&self, now_ns: u64) -> Decision {
        let wide = self.wide();
        // Acquire pairs with the Release of the compare-and-swap that stored a new generation,
        // which came after its plan was stored: the plan this state names is there.
        let mut state = wide.state.load(Ordering::Acquire);
        loop {
            let plan = wide.plan(generation(state));
            match arith::wide_take(plan, wide.origin, state & WIDE_MASK, now_ns) {
                WideStep::Admit { payload, answer } => {
                    // As on the narrow word: Relaxed on success, Acquire on failure (the value
                    // read may carry a new generation, whose plan must be visible).
                    match wide.state.compare_exchange_weak(
                        state,
                        (state & !WIDE_MASK) | payload,
                        Ordering::Relaxed,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return plan.answer(answer),
                        Err(actual) => state = actual,
                    }
                }
                WideStep::Deny(decision) => return decision,
            }
        }
    }

    fn wide(&self) -> &Wide {
        self.wide
            .get()
            .expect("the wide state is set before the narrow word says MOVED")
    }

    /// Whole tokens available at `now_ns`, without taking any.
    pub fn peek(&self, now_ns: u64) -> u64 {
        let narrow = &self.narrow;
        let state = narrow.state.load(Ordering::Acquire);
        if state != MOVED {
            return arith::level(&narrow.plan, narrow.origin, state, now_ns).whole;
        }
        let wide = self.wide();
        let state = wide.state.load(Ordering::Acquire);
        let plan = wide.plan(generation(state));
        arith::wide_level(plan, wide.origin, state & WIDE_MASK, now_ns).whole
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        if self.narrow.state.load(Ordering::Acquire) != MOVED {
            return self.narrow.plan.settings();
        }
        let wide = self.wide();
        wide.plan(generation(wide.state.load(Ordering::Acquire)))
            .settings()
    }

    /// Switches to new settings at `now_ns`, keeping the tokens held (clamped to the new
    /// maximum; a smooth bucket keeps the accrued fraction of a token too, rounded down to the
    /// new rate's resolution). An interval bucket keeps counting intervals from its last
    /// top-up. The same settings again change nothing. Checks carry on meanwhile.
    ///
    /// A bucket keeps each distinct plan it has had (about 100 bytes each) until it is
    /// dropped; past about 8 million distinct plans it keeps its settings.
    pub fn reconfigure(&self, settings: Settings, now_ns: u64) {
        if self.narrow.state.load(Ordering::Acquire) != MOVED {
            self.move_out(now_ns, Some(settings));
        } else {
            self.reconfigure_wide(&mut self.writer.lock(), settings, now_ns);
        }
    }

    /// Moves a narrow bucket to the wide state: to new settings, or (with `None`) with the same
    /// ones once its payload is out of range.
    #[cold]
    #[inline(never)]
    fn move_out(&self, now_ns: u64, settings: Option<Settings>) {
        let mut generations = self.writer.lock();
        let narrow = &self.narrow;
        // Only writers store MOVED, under this lock: while we hold it the word stays narrow
        // if it is narrow now.
        let mut state = narrow.state.load(Ordering::Acquire);
        let target = match settings {
            _ if state == MOVED => {
                // Another writer moved it before we took the lock.
                if let Some(settings) = settings {
                    self.reconfigure_wide(&mut generations, settings, now_ns);
                }
                return;
            }
            Some(settings) if settings == narrow.plan.settings() => return,
            Some(settings) => settings,
            None if now_ns.saturating_sub(narrow.origin) < narrow.plan.rebase_at => return,
            None => narrow.plan.settings(),
        };
        let plan = WidePlan::new(target);
        loop {
            let held = arith::held(&narrow.plan, narrow.origin, state, now_ns);
            let wide = self.wide.get_or_init(|| {
                Box::new(Wide::new(
                    arith::wide_origin(&held),
                    plan,
                    plan.full_state(),
                ))
            });
            // No check reads the wide word before the narrow one says MOVED, so it can be
            // written freely until then; the Release below publishes it.
            wide.state.store(
                arith::wide_from(&held, &plan, wide.origin),
                Ordering::Relaxed,
            );
            match narrow
                .state
                .compare_exchange(state, MOVED, Ordering::Release, Ordering::Acquire)
            {
                Ok(_) => {
                    generations.insert(target, 0);
                    return;
                }
                // A check took a token meanwhile: recompute from what it left.
                Err(actual) => state = actual,
            }
        }
    }

    fn reconfigure_wide(
        &self,
        generations: &mut HashMap<Settings, u32>,
        settings: Settings,
        now_ns: u64,
    ) {
        let wide = self.wide();
        let target = WidePlan::new(settings);
        let next_generation = match generations.get(&settings) {
            Some(&g) => g,
            None if generations.len() > MAX_GENERATION => return,
            None => {
                // Generation 0 is in the map, so this is the next free one.
                let g = generations.len() as u32;
                wide.publish(g, target);
                generations.insert(settings, g);
                g
            }
        };
        let mut state = wide.state.load(Ordering::Acquire);
        loop {
            let plan = wide.plan(generation(state));
            if plan.settings() == settings {
                return;
            }
            let held = arith::wide_held(plan, wide.origin, state & WIDE_MASK, now_ns);
            let payload = arith::wide_from(&held, &target, wide.origin);
            // Release publishes the plan stored above to checks that read this generation.
            match wide.state.compare_exchange(
                state,
                with_generation(next_generation, payload),
                Ordering::Release,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Bucket");
        let state = self.narrow.state.load(Ordering::Acquire);
        if state != MOVED {
            d.field("settings", &self.narrow.plan.settings())
                .field("origin_ns", &self.narrow.origin)
                .field("payload", &(state & PAYLOAD_MASK));
        } else {
            let wide = self.wide();
            let state = wide.state.load(Ordering::Acquire);
            d.field("settings", &wide.plan(generation(state)).settings())
                .field("origin_ns", &wide.origin)
                .field("generation", &generation(state))
                .field("wide_payload", &(state & WIDE_MASK));
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::Refill;

    const S: u64 = 1_000_000_000;

    fn settings(max: u64, per_fill: u64, interval: Duration, refill: Refill) -> Settings {
        Settings::new(max, per_fill, interval, refill).unwrap()
    }

    fn admitted_burst(bucket: &Bucket, now: u64) -> u64 {
        let mut n = 0;
        while bucket.check(now).admitted() {
            n += 1;
        }
        n
    }

    #[test]
    fn smooth_matches_envoy_1_40_measurements() {
        // 10 per 10 s, drained at t=0; bursts at 5.03 s, 7.54 s, 10.55 s admit 5, 2, 3.
        let b = Bucket::new(settings(10, 10, Duration::from_secs(10), Refill::Smooth), 0);
        assert_eq!(admitted_burst(&b, 0), 10);
        assert_eq!(admitted_burst(&b, 5_030_000_000), 5);
        assert_eq!(admitted_burst(&b, 7_540_000_000), 2);
        assert_eq!(admitted_burst(&b, 10_550_000_000), 3);
    }

    #[test]
    fn interval_tops_up_in_whole_intervals() {
        let b = Bucket::new(
            settings(10, 10, Duration::from_secs(10), Refill::Interval),
            0,
        );
        assert_eq!(admitted_burst(&b, 0), 10);
        assert_eq!(admitted_burst(&b, 9_999_999_999), 0);
        assert_eq!(admitted_burst(&b, 10 * S), 10);
    }

    #[test]
    fn decisions_report_remaining_and_next_token() {
        let b = Bucket::new(settings(2, 1, Duration::from_secs(1), Refill::Smooth), 0);
        let d = b.check(0);
        assert_eq!((d.admitted(), d.remaining()), (true, 1));
        assert_eq!(d.next_token_in(), Duration::from_secs(1));
        let d = b.check(250_000_000);
        assert_eq!((d.admitted(), d.remaining()), (true, 0));
        assert_eq!(d.next_token_in(), Duration::from_millis(750));
        let d = b.check(300_000_000);
        assert!(!d.admitted());
        assert_eq!(d.next_token_in(), Duration::from_millis(700));
        assert_eq!(b.peek(1_300_000_000), 1);
    }

    #[test]
    fn long_idle_gaps_and_clock_extremes_refill_to_exactly_full() {
        for refill in [Refill::Smooth, Refill::Interval] {
            let s = settings(5, 3, Duration::from_millis(700), refill);
            let b = Bucket::new(s, 0);
            assert_eq!(admitted_burst(&b, 0), 5);
            // Days later, and at the very end of the clock's range.
            assert_eq!(admitted_burst(&b, 3 * 86_400 * S), 5);
            assert_eq!(admitted_burst(&b, u64::MAX - 1), 5);
            assert_eq!(admitted_burst(&b, u64::MAX), 0);
            let late = Bucket::new(s, u64::MAX - 10);
            assert_eq!(admitted_burst(&late, u64::MAX), 5);
        }
    }

    proptest::proptest! {
        /// Rebasing while the bucket is refilling (not just after an idle gap) changes nothing:
        /// arrivals straddle the point where the payload runs out of range.
        #[test]
        fn rebasing_mid_activity_matches_the_model(
            max in proptest::prop_oneof![1u64..50, 1u64..=(1 << 40)],
            per_fill in proptest::prop_oneof![1u64..10, 1u64..=(1 << 32)],
            interval in proptest::prop_oneof![1u64..100, 1u64..10_000_000_000],
            smooth in proptest::bool::ANY,
            start_fraction in 0.0f64..1.0,
            lead in 0u64..200,
            gaps in proptest::collection::vec(0u64..400, 1..100),
        ) {
            let refill = if smooth { Refill::Smooth } else { Refill::Interval };
            let Ok(s) = Settings::new(max, per_fill, Duration::from_nanos(interval), refill) else {
                return Ok(());
            };
            let rebase_after = Plan::new(s).rebase_at.saturating_sub(1);
            if rebase_after >= u64::MAX - (1 << 32) {
                return Ok(()); // never rebases within the clock's range
            }
            // Arrivals start a little before origin + rebase_after and run past it, in steps
            // of a fraction of the time one token takes.
            let start = ((u64::MAX - rebase_after) as f64 * start_fraction) as u64;
            let unit = (interval / per_fill).max(1);
            let first = start + rebase_after.saturating_sub(lead * unit / 4);
            let bucket = Bucket::new(s, start);
            let mut model =
                crate::model::ReferenceBucket::new(max, per_fill, interval, refill, start);
            let mut now = first;
            for gap in gaps {
                now = now.saturating_add(gap * unit / 100);
                proptest::prop_assert_eq!(bucket.check(now), model.decision(now), "at {}", now);
            }
        }
    }

    #[test]
    fn a_wide_bucket_refills_exactly_across_idle_gaps_and_clock_extremes() {
        // 2^40 tokens at 2^32 per (2^32 + 1) ns: coprime, so the window is about 2^72.
        let s = settings(
            1 << 40,
            1 << 32,
            Duration::from_nanos((1 << 32) + 1),
            Refill::Smooth,
        );
        assert!(s.is_wide());
        let b = Bucket::new(s, 0);
        for _ in 0..1000 {
            assert!(b.check(0).admitted());
        }
        assert_eq!(b.peek(0), (1 << 40) - 1000);
        assert_eq!(b.peek(3 * 86_400 * S), 1 << 40);
        assert_eq!(b.check(u64::MAX - 1).remaining(), (1 << 40) - 1);
        let late = Bucket::new(s, u64::MAX - 10);
        assert_eq!(late.check(u64::MAX).remaining(), (1 << 40) - 1);
        assert!(format!("{b:?}").contains("generation"));
    }

    #[test]
    fn a_kuma_hourly_quota_drains_and_refills_at_its_exact_rate() {
        // requestRate {num: 100001, interval: 1h}: one token every 3.6e12 / 100001 ns, which
        // is 35_999_640.0036 ns.
        let s = settings(100_001, 100_001, Duration::from_secs(3600), Refill::Smooth);
        assert!(s.is_wide());
        let b = Bucket::new(s, 5 * S);
        assert_eq!(admitted_burst(&b, 5 * S), 100_001);
        let d = b.check(5 * S);
        assert_eq!(d.next_token_in(), Duration::from_nanos(35_999_641));
        assert!(!b.check(5 * S + 35_999_640).admitted());
        let d = b.check(5 * S + 35_999_641);
        assert!(d.admitted());
        assert_eq!(d.remaining(), 0);
        // The 0.0036 ns left over keeps counting: the next token is 35_999_640 ns later.
        assert_eq!(d.next_token_in(), Duration::from_nanos(35_999_640));
        // Ten tokens' time later, exactly ten tokens (the fractions add up).
        let ten = 5 * S + 11 * 35_999_641 - 1;
        assert_eq!(b.peek(ten), 10);
    }

    #[test]
    fn reconfiguring_between_narrow_and_wide_keeps_tokens_and_fractions() {
        use crate::model::ReferenceBucket;
        let narrow = settings(10, 10, Duration::from_secs(1), Refill::Smooth);
        let wide = settings(100_001, 100_001, Duration::from_secs(3600), Refill::Smooth);
        let wide_small = settings(7, 1, Duration::from_secs(86_400 * 1000), Refill::Smooth);
        let interval = settings(20, 1, Duration::from_secs(1), Refill::Interval);
        assert!(!narrow.is_wide() && wide.is_wide() && wide_small.is_wide());
        let b = Bucket::new(narrow, 0);
        let mut m = ReferenceBucket::new(10, 10, S, Refill::Smooth, 0);
        let mut now = 0;
        for (gap, next) in [
            (250_000_000, wide),
            (0, narrow),
            (123_456_789, wide),
            (987_654_321, wide_small),
            (S, interval),
            (2 * S + 1, wide),
            (77, wide),
            (3 * S, narrow),
        ] {
            for _ in 0..3 {
                assert_eq!(b.check(now), m.decision(now), "at {now}");
            }
            now += gap;
            b.reconfigure(next, now);
            m.reconfigure(
                next.max_tokens(),
                next.tokens_per_fill(),
                next.fill_interval_ns(),
                next.refill(),
                now,
            );
            assert_eq!(b.settings(), next);
            assert_eq!(b.peek(now), m.tokens(now), "after switching to {next}");
            for later in [now + 1, now + 40_000_000, now + 3 * S] {
                assert_eq!(b.peek(later), m.clone().tokens(later), "{next} at {later}");
            }
        }
    }

    #[test]
    fn reconfigure_keeps_tokens_clamped() {
        let b = Bucket::new(settings(10, 10, Duration::from_secs(1), Refill::Smooth), 0);
        for _ in 0..3 {
            assert!(b.check(0).admitted());
        }
        b.reconfigure(settings(5, 1, Duration::from_secs(1), Refill::Smooth), 0);
        assert_eq!(b.peek(0), 5);
        assert_eq!(b.settings().max_tokens(), 5);
        b.reconfigure(settings(20, 1, Duration::from_secs(1), Refill::Interval), 0);
        assert_eq!(b.peek(0), 5);
        assert_eq!(b.settings().refill(), Refill::Interval);
        assert_eq!(admitted_burst(&b, 0), 5);
        assert_eq!(admitted_burst(&b, S), 1);
    }

    #[test]
    fn rejections_write_nothing() {
        let wide = settings(100_001, 100_001, Duration::from_secs(3600), Refill::Smooth);
        let narrow = settings(2, 1, Duration::from_secs(3600), Refill::Smooth);
        let interval = settings(2, 1, Duration::from_secs(3600), Refill::Interval);
        for s in [narrow, wide, interval] {
            let b = Bucket::new(s, 7);
            while b.check(7).admitted() {}
            let before = format!("{b:?}");
            for now in [7, 8, 1_000_000] {
                assert!(!b.check(now).admitted());
                assert_eq!(format!("{b:?}"), before, "{s}");
            }
        }
    }

    #[test]
    fn switching_back_and_forth_reuses_generations() {
        let a = settings(10, 10, Duration::from_secs(1), Refill::Smooth);
        let b = settings(10, 5, Duration::from_secs(1), Refill::Interval);
        let bucket = Bucket::new(a, 0);
        for i in 0..100u64 {
            bucket.reconfigure(if i % 2 == 0 { b } else { a }, i);
        }
        // The first switch made generation 0 (b), the second generation 1 (a); no more since.
        assert_eq!(bucket.writer.lock().len(), 2);
        assert_eq!(bucket.settings(), a);
        assert!(format!("{bucket:?}").contains("generation: 1"));
    }

    #[test]
    fn generations_fill_the_segments_in_order() {
        let places: Vec<_> = [1, 4, 5, 12, 13, 28, 29].map(Wide::place).into();
        assert_eq!(
            places,
            [(0, 0), (0, 3), (1, 0), (1, 7), (2, 0), (2, 15), (3, 0)]
        );
        let (segment, offset) = Wide::place(MAX_GENERATION as u32);
        assert_eq!(
            (segment, offset),
            (SEGMENTS - 1, (SEGMENT0 << (SEGMENTS - 1)) - 1)
        );
        // Plans published in a later segment are found again.
        let plan = WidePlan::new(settings(3, 1, Duration::from_secs(1), Refill::Smooth));
        let wide = Wide::new(0, plan, 0);
        let other = WidePlan::new(settings(4, 1, Duration::from_secs(1), Refill::Smooth));
        wide.publish(29, other);
        assert_eq!(*wide.plan(29), other);
        assert_eq!(*wide.plan(0), plan);
    }
}
