//! One bucket: lock-free for plans that fit a 56-bit payload, a short lock for wide ones.
//!
//! The state is one `AtomicU64`: an 8-bit generation above the 56-bit payload of
//! [`crate::arith`]. Next to it sit two plan *slots* (origin + derived settings); the
//! generation's parity says which one the payload belongs to. A check reads the state, reads its
//! slot, computes, and publishes with one compare-and-swap. Reconfiguring or rebasing (rare,
//! serialised by a mutex that narrow checks never take) writes the inactive slot and then swaps
//! in a state of the next generation, so a check never pairs a payload with the wrong slot: a
//! check that raced with the rewrite sees its state word changed and starts over.
//!
//! A wide plan (see [`crate::Settings::is_wide`]) needs a 128-bit state, more than one
//! compare-and-swap can update, so it lives inside that same writers' mutex, and the active slot
//! holds the plan's marker. The marker makes the fast path's first comparison fail, so a check
//! reaches the wide path from the branch it already has for rebasing and a narrow check costs
//! exactly what it did. Every switch between the two representations happens with the mutex
//! held, so under it the wide state is present exactly when the active slot is a marker: a check
//! that finds the marker but no wide state (the bucket went narrow meanwhile) starts over, and a
//! narrow check that raced with a switch to wide fails its compare-and-swap, because the switch
//! moved the state word to a new generation.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use parking_lot::Mutex;

use crate::Decision;
use crate::arith::{self, Held, PAYLOAD_BITS, PAYLOAD_MASK, Plan, Step, WidePlan};
use crate::settings::{Refill, Settings};

/// A token bucket shared by any number of threads. Checks are lock-free for plans that fit the
/// fast path: one atomic compare-and-swap takes a token, so concurrent checks never admit more
/// than the bucket holds. [Wide](Settings::is_wide) plans are just as exact; their checks are
/// serialised by a short lock.
///
/// Times are nanoseconds from a [`crate::Clock`]. They should not go backwards; a check with an
/// earlier time than one already applied is judged conservatively (it never sees more tokens
/// than the later check left).
pub struct Bucket {
    state: Padded<AtomicU64>,
    slots: [Padded<Slot>; 2],
    /// Serialises writers; holds the state while the plan is wide.
    writer: Mutex<Option<Wide>>,
}

/// A wide bucket's whole state.
#[derive(Clone, Copy, Debug)]
struct Wide {
    origin: u64,
    plan: WidePlan,
    full_at: u128,
}

impl Wide {
    fn new(settings: Settings, origin: u64) -> Wide {
        let plan = WidePlan::new(settings);
        Wide {
            origin,
            plan,
            full_at: plan.full_state(),
        }
    }
}

/// Keeps the contended state word and the read-mostly slots on separate cache lines.
#[repr(align(128))]
struct Padded<T>(T);

const GEN_SHIFT: u32 = PAYLOAD_BITS;
const GEN_MASK: u64 = 0xff;

fn slot_of(state: u64) -> usize {
    ((state >> GEN_SHIFT) & 1) as usize
}

impl Bucket {
    /// A full bucket at `now_ns`.
    pub fn new(settings: Settings, now_ns: u64) -> Bucket {
        let plan = Plan::new(settings);
        let wide = plan.is_wide().then(|| Wide::new(settings, now_ns));
        Bucket {
            state: Padded(AtomicU64::new(plan.full_payload())),
            slots: [
                Padded(Slot::new(now_ns, &plan)),
                Padded(Slot::new(now_ns, &plan)),
            ],
            writer: Mutex::new(wide),
        }
    }

    /// Takes one token if there is one.
    #[inline]
    pub fn check(&self, now_ns: u64) -> Decision {
        'snapshot: loop {
            let (mut state, origin, plan) = self.snapshot();
            // The plan is validated for `state`'s generation; while a failed compare-and-swap
            // reports the same generation, no writer has published another slot (writers move
            // the generation before they touch a slot checks may read), so a retry under
            // contention only redoes the arithmetic on the new payload. (Like the
            // compare-and-swap itself, this assumes the 8-bit generation does not wrap through
            // 256 reconfigurations during one check.)
            loop {
                match arith::step(&plan, origin, state & PAYLOAD_MASK, now_ns) {
                    Step::Admit { payload, decision } => {
                        let next = (state & !PAYLOAD_MASK) | payload;
                        // Success: Release publishes the new payload to the next check's
                        // Acquire load; Acquire is not needed for correctness (the payload we
                        // replace is the one we computed from), but on x86 every locked
                        // instruction is a full barrier, so AcqRel costs nothing extra and keeps
                        // the ordering obvious. Failure: Relaxed is enough, because the value
                        // is only used if its generation matches the snapshot's, whose slot was
                        // already acquired and validated.
                        match self.state.0.compare_exchange_weak(
                            state,
                            next,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => return decision,
                            Err(actual) if (actual ^ state) >> GEN_SHIFT == 0 => state = actual,
                            Err(_) => continue 'snapshot,
                        }
                    }
                    Step::Deny(decision) => return decision,
                    Step::Rebase => {
                        if !plan.is_wide() {
                            self.rewrite(now_ns, None);
                        } else if let Some(decision) = self.check_wide(now_ns) {
                            return decision;
                        }
                        continue 'snapshot;
                    }
                }
            }
        }
    }

    /// A check on the wide state; `None` if the bucket is no longer wide.
    #[cold]
    fn check_wide(&self, now_ns: u64) -> Option<Decision> {
        let mut guard = self.writer.lock();
        let wide = guard.as_mut()?;
        let (full_at, decision) = arith::wide_step(&wide.plan, wide.origin, wide.full_at, now_ns);
        wide.full_at = full_at;
        Some(decision)
    }

    /// Whole tokens available at `now_ns`, without taking any.
    pub fn peek(&self, now_ns: u64) -> u64 {
        loop {
            let (state, origin, plan) = self.snapshot();
            if !plan.is_wide() {
                return arith::level(&plan, origin, state & PAYLOAD_MASK, now_ns).whole;
            }
            if let Some(w) = self.writer.lock().as_ref() {
                return arith::wide_level(&w.plan, w.origin, w.full_at, now_ns).whole;
            }
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.snapshot().2.settings()
    }

    /// Switches to new settings at `now_ns`, keeping the tokens held (clamped to the new
    /// maximum; a smooth bucket keeps the accrued fraction of a token too, rounded down to the
    /// new rate's resolution). An interval bucket keeps counting intervals from its last
    /// top-up. The same settings again change nothing. This holds between any two plans,
    /// narrow or wide.
    pub fn reconfigure(&self, settings: Settings, now_ns: u64) {
        self.rewrite(now_ns, Some(settings));
    }

    /// A consistent (state, origin, plan) triple: the slot was read while the state word,
    /// which names the slot, stayed the same.
    #[inline]
    fn snapshot(&self) -> (u64, u64, Plan) {
        loop {
            let state = self.state.0.load(Ordering::Acquire);
            let (origin, plan) = self.slots[slot_of(state)].0.load();
            fence(Ordering::Acquire);
            if self.state.0.load(Ordering::Relaxed) == state {
                return (state, origin, plan);
            }
        }
    }

    /// Moves to new settings, or (with `None`) moves the origin forward when `now_ns` is past
    /// what the payload can express. Writers are serialised; narrow checks carry on meanwhile,
    /// wide ones wait.
    fn rewrite(&self, now_ns: u64, settings: Option<Settings>) {
        let mut wide = self.writer.lock();
        loop {
            let state = self.state.0.load(Ordering::Acquire);
            let active = slot_of(state);
            // Only writers store to slots, and we are the only writer.
            let (origin, plan) = self.slots[active].0.load();
            let payload = state & PAYLOAD_MASK;
            let (new_origin, new_plan, new_payload, new_wide) = match settings {
                None => {
                    if plan.is_wide() || now_ns.saturating_sub(origin) < plan.rebase_at {
                        return; // a wide state needs no rebase, or another thread rebased
                    }
                    let to = arith::rebase_origin(&plan, origin, now_ns);
                    (to, plan, arith::shift(&plan, payload, origin, to), None)
                }
                Some(settings) => {
                    if settings == plan.settings() {
                        return;
                    }
                    // Under the lock the wide state is present exactly when the plan is wide.
                    let held: Held = match wide.as_ref() {
                        Some(w) => arith::wide_held(&w.plan, w.origin, w.full_at, now_ns),
                        None => arith::held(&plan, origin, payload, now_ns),
                    };
                    let new_plan = Plan::new(settings);
                    if new_plan.is_wide() {
                        let wide_plan = WidePlan::new(settings);
                        let (to, full_at) = arith::wide_from(&held, &wide_plan);
                        let new_wide = Wide {
                            origin: to,
                            plan: wide_plan,
                            full_at,
                        };
                        // The payload is unused while wide; the slot's origin only for Debug.
                        (to, new_plan, 0, Some(new_wide))
                    } else {
                        let (to, moved) = arith::narrow_from(&held, &new_plan);
                        (to, new_plan, moved, None)
                    }
                }
            };
            // Pairs with the fence in `snapshot`: a check that sees any of the slot stores
            // below also sees that the state has moved past the generation it read.
            fence(Ordering::Release);
            self.slots[1 - active].0.store(new_origin, &new_plan);
            let generation = ((state >> GEN_SHIFT) + 1) & GEN_MASK;
            let next = (generation << GEN_SHIFT) | new_payload;
            if self
                .state
                .0
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // Still under the lock: wide checks that saw the new slot wait for this.
                *wide = new_wide;
                return;
            }
        }
    }
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, origin, plan) = self.snapshot();
        let mut d = f.debug_struct("Bucket");
        d.field("settings", &plan.settings());
        if plan.is_wide() {
            let wide = *self.writer.lock();
            match wide {
                Some(w) => d.field("origin_ns", &w.origin).field("full_at", &w.full_at),
                None => d.field("origin_ns", &origin), // switched meanwhile
            };
        } else {
            d.field("origin_ns", &origin)
                .field("payload", &(state & PAYLOAD_MASK));
        }
        d.finish()
    }
}

/// A plan and its origin, stored field by field in atomics so that a writer can replace it
/// while checks read the other slot.
struct Slot {
    origin: AtomicU64,
    max: AtomicU64,
    per_fill: AtomicU64,
    interval_ns: AtomicU64,
    /// Bit 63: smooth; low bits: `tbits`.
    mode: AtomicU64,
    rate_den: AtomicU64,
    token: AtomicU64,
    window: AtomicU64,
    rebase_at: AtomicU64,
}

const SMOOTH_BIT: u64 = 1 << 63;

impl Slot {
    fn new(origin: u64, plan: &Plan) -> Slot {
        let slot = Slot {
            origin: AtomicU64::new(0),
            max: AtomicU64::new(0),
            per_fill: AtomicU64::new(0),
            interval_ns: AtomicU64::new(0),
            mode: AtomicU64::new(0),
            rate_den: AtomicU64::new(0),
            token: AtomicU64::new(0),
            window: AtomicU64::new(0),
            rebase_at: AtomicU64::new(0),
        };
        slot.store(origin, plan);
        slot
    }

    #[inline]
    fn load(&self) -> (u64, Plan) {
        let mode = self.mode.load(Ordering::Relaxed);
        let plan = Plan {
            refill: if mode & SMOOTH_BIT != 0 {
                Refill::Smooth
            } else {
                Refill::Interval
            },
            max: self.max.load(Ordering::Relaxed),
            per_fill: self.per_fill.load(Ordering::Relaxed),
            // A slot torn by a concurrent writer is discarded by the caller's validation; the
            // floors keep the arithmetic on it from dividing by zero meanwhile.
            interval_ns: self.interval_ns.load(Ordering::Relaxed).max(1),
            rate_den: self.rate_den.load(Ordering::Relaxed).max(1),
            token: self.token.load(Ordering::Relaxed).max(1),
            window: self.window.load(Ordering::Relaxed),
            tbits: (mode & 0x3f) as u32,
            rebase_at: self.rebase_at.load(Ordering::Relaxed),
        };
        (self.origin.load(Ordering::Relaxed), plan)
    }

    fn store(&self, origin: u64, plan: &Plan) {
        let smooth = if plan.refill == Refill::Smooth {
            SMOOTH_BIT
        } else {
            0
        };
        self.origin.store(origin, Ordering::Relaxed);
        self.max.store(plan.max, Ordering::Relaxed);
        self.per_fill.store(plan.per_fill, Ordering::Relaxed);
        self.interval_ns.store(plan.interval_ns, Ordering::Relaxed);
        self.mode
            .store(smooth | u64::from(plan.tbits), Ordering::Relaxed);
        self.rate_den.store(plan.rate_den, Ordering::Relaxed);
        self.token.store(plan.token, Ordering::Relaxed);
        self.window.store(plan.window, Ordering::Relaxed);
        self.rebase_at.store(plan.rebase_at, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
            proptest::prop_assume!(rebase_after < u64::MAX / 2);
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
        assert!(format!("{b:?}").contains("full_at"));
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
}
