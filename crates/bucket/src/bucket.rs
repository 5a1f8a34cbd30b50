//! One lock-free bucket.
//!
//! The state is one `AtomicU64`: an 8-bit generation above the 56-bit payload of
//! [`crate::arith`]. Next to it sit two plan *slots* (origin + derived settings); the
//! generation's parity says which one the payload belongs to. A check reads the state, reads its
//! slot, computes, and publishes with one compare-and-swap. Reconfiguring or rebasing (rare,
//! serialised by a mutex that checks never take) writes the inactive slot and then swaps in a
//! state of the next generation, so a check never pairs a payload with the wrong slot: a check
//! that raced with the rewrite sees its state word changed and starts over.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use parking_lot::Mutex;

use crate::Decision;
use crate::arith::{self, PAYLOAD_BITS, PAYLOAD_MASK, Plan, Step};
use crate::settings::{Refill, Settings};

/// A token bucket shared by any number of threads. Checks are lock-free: one atomic
/// compare-and-swap takes a token, so concurrent checks never admit more than the bucket holds.
///
/// Times are nanoseconds from a [`crate::Clock`]. They should not go backwards; a check with an
/// earlier time than one already applied is judged conservatively (it never sees more tokens
/// than the later check left).
pub struct Bucket {
    state: Padded<AtomicU64>,
    slots: [Padded<Slot>; 2],
    writer: Mutex<()>,
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
        Bucket {
            state: Padded(AtomicU64::new(plan.full_payload())),
            slots: [
                Padded(Slot::new(now_ns, &plan)),
                Padded(Slot::new(now_ns, &plan)),
            ],
            writer: Mutex::new(()),
        }
    }

    /// Takes one token if there is one.
    #[inline]
    pub fn check(&self, now_ns: u64) -> Decision {
        loop {
            let (state, origin, plan) = self.snapshot();
            match arith::step(&plan, origin, state & PAYLOAD_MASK, now_ns) {
                Step::Admit { payload, decision } => {
                    let next = (state & !PAYLOAD_MASK) | payload;
                    if self
                        .state
                        .0
                        .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return decision;
                    }
                }
                Step::Deny(decision) => return decision,
                Step::Rebase => self.rewrite(now_ns, None),
            }
        }
    }

    /// Whole tokens available at `now_ns`, without taking any.
    pub fn peek(&self, now_ns: u64) -> u64 {
        let (state, origin, plan) = self.snapshot();
        arith::level(&plan, origin, state & PAYLOAD_MASK, now_ns).whole
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.snapshot().2.settings()
    }

    /// Switches to new settings at `now_ns`, keeping the tokens held (clamped to the new
    /// maximum; a smooth bucket keeps the accrued fraction of a token too, rounded down to the
    /// new rate's resolution). An interval bucket keeps counting intervals from its last
    /// top-up. The same settings again change nothing.
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
    /// what the payload can express. Writers are serialised; checks carry on meanwhile.
    fn rewrite(&self, now_ns: u64, settings: Option<Settings>) {
        let _writer = self.writer.lock();
        loop {
            let state = self.state.0.load(Ordering::Acquire);
            let active = slot_of(state);
            // Only writers store to slots, and we are the only writer.
            let (origin, plan) = self.slots[active].0.load();
            let payload = state & PAYLOAD_MASK;
            let (new_origin, new_plan, new_payload) = match settings {
                None => {
                    if now_ns.saturating_sub(origin) <= plan.rebase_after {
                        return; // another thread rebased already
                    }
                    let to = arith::rebase_origin(&plan, origin, now_ns);
                    (to, plan, arith::shift(&plan, payload, origin, to))
                }
                Some(settings) => {
                    if settings == plan.settings() {
                        return;
                    }
                    let new_plan = Plan::new(settings);
                    let (to, moved) = arith::convert(&plan, origin, payload, &new_plan, now_ns);
                    (to, new_plan, moved)
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
                return;
            }
        }
    }
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, origin, plan) = self.snapshot();
        f.debug_struct("Bucket")
            .field("settings", &plan.settings())
            .field("origin_ns", &origin)
            .field("payload", &(state & PAYLOAD_MASK))
            .finish()
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
    rebase_after: AtomicU64,
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
            rebase_after: AtomicU64::new(0),
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
            rebase_after: self.rebase_after.load(Ordering::Relaxed),
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
        self.rebase_after
            .store(plan.rebase_after, Ordering::Relaxed);
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
            let rebase_after = Plan::new(s).rebase_after;
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
