//! The bucket arithmetic: pure functions of (plan, origin, payload, now), no atomics.
//!
//! A bucket's whole state is one 56-bit *payload*, relative to an *origin* (a clock value kept
//! next to the plan), so that a single compare-and-swap on a `u64` can update it:
//!
//! - **smooth**: time is counted in units of 1/`rate_den` ns and tokens in units of
//!   1/`token` token, where `rate_den / token` is `tokens_per_fill / fill_interval` in lowest
//!   terms; one scaled time unit then accrues exactly one scaled token unit. The payload is the
//!   instant the bucket will be full again (`full_at`); the scaled tokens held at `now` are
//!   `window - (full_at - now)`, or `window` once `now >= full_at`. Taking a token moves
//!   `full_at` forward by `token`. No division, no rounding: exact.
//! - **interval**: the payload packs `k` (whole intervals from the origin to the last top-up)
//!   above `tokens`; a check at or past `origin + (k + 1) × fill_interval` tops up
//!   `tokens_per_fill` per whole interval elapsed, capped at `max_tokens`.
//!
//! Payloads never need more than 56 bits while `now - origin <= rebase_after`; past that the
//! owner *rebases* (moves the origin forward with [`rebase_origin`] and [`shift`]), which is how
//! idle gaps of any length and clock values up to `u64::MAX` stay exact.

use crate::Decision;
use crate::settings::{Refill, Settings, gcd};

/// Bits of a state word that hold the payload; the rest belong to the owner.
pub(crate) const PAYLOAD_BITS: u32 = 56;
pub(crate) const PAYLOAD_MASK: u64 = (1 << PAYLOAD_BITS) - 1;

/// Everything the arithmetic needs, derived once from [`Settings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub refill: Refill,
    pub max: u64,
    pub per_fill: u64,
    pub interval_ns: u64,
    /// Smooth: scaled time units per ns (`tokens_per_fill / g`).
    pub rate_den: u64,
    /// Smooth: scaled units per token (`fill_interval_ns / g`).
    pub token: u64,
    /// Smooth: scaled units in a full bucket (`max × token`).
    pub window: u64,
    /// Interval: bits of the payload that hold the token count.
    pub tbits: u32,
    /// The largest `now - origin` that [`step`] handles without a rebase.
    pub rebase_after: u64,
}

impl Plan {
    pub fn new(settings: Settings) -> Plan {
        let max = settings.max_tokens();
        let per_fill = settings.tokens_per_fill();
        let interval_ns = settings.fill_interval_ns();
        match settings.refill() {
            Refill::Smooth => {
                let g = gcd(per_fill, interval_ns);
                let rate_den = per_fill / g;
                let token = interval_ns / g;
                // Settings::new bounds max × token by 2^55.
                let window = max.saturating_mul(token).min(PAYLOAD_MASK);
                Plan {
                    refill: Refill::Smooth,
                    max,
                    per_fill,
                    interval_ns,
                    rate_den,
                    token,
                    window,
                    tbits: 0,
                    rebase_after: (PAYLOAD_MASK - window) / rate_den,
                }
            }
            Refill::Interval => {
                // max ≤ 2^40 needs at most 41 bits, leaving at least 15 for k.
                let tbits = u64::BITS - max.leading_zeros();
                let kbits = PAYLOAD_BITS - tbits;
                let intervals = 1u128 << kbits;
                let rebase_after =
                    (intervals * u128::from(interval_ns) - 1).min(u128::from(u64::MAX));
                Plan {
                    refill: Refill::Interval,
                    max,
                    per_fill,
                    interval_ns,
                    rate_den: 1,
                    token: 1,
                    window: max,
                    tbits,
                    rebase_after: rebase_after as u64,
                }
            }
        }
    }

    pub fn settings(&self) -> Settings {
        Settings::from_parts(self.max, self.per_fill, self.interval_ns, self.refill)
    }

    /// The payload of a full bucket, whatever the time.
    pub fn full_payload(&self) -> u64 {
        match self.refill {
            Refill::Smooth => 0,
            Refill::Interval => self.max,
        }
    }

    fn tmask(&self) -> u64 {
        (1u64 << self.tbits) - 1
    }
}

/// What one check does to a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Store `payload` (if the state is unchanged) and answer `decision`.
    Admit { payload: u64, decision: Decision },
    /// Nothing to store.
    Deny(Decision),
    /// `now` is too far past the origin for the payload: rebase first.
    Rebase,
}

/// One check at `now`: the hot path, in `u64` arithmetic that cannot overflow.
#[inline]
pub(crate) fn step(plan: &Plan, origin: u64, payload: u64, now: u64) -> Step {
    let now_rel = now.saturating_sub(origin);
    if now_rel > plan.rebase_after {
        return Step::Rebase;
    }
    match plan.refill {
        Refill::Smooth => smooth_step(plan, payload, now_rel),
        Refill::Interval => interval_step(plan, payload, now_rel),
    }
}

#[inline]
fn smooth_step(plan: &Plan, full_at: u64, now_rel: u64) -> Step {
    // now_rel ≤ rebase_after keeps now + window ≤ PAYLOAD_MASK.
    let now = now_rel * plan.rate_den;
    let limit = now + plan.window;
    let base = full_at.max(now);
    let after = base + plan.token;
    if after <= limit {
        let level = limit - after;
        let wait = plan.token - level % plan.token;
        Step::Admit {
            payload: after,
            decision: Decision::from_ns(true, level / plan.token, wait.div_ceil(plan.rate_den)),
        }
    } else {
        Step::Deny(Decision::from_ns(
            false,
            0,
            (after - limit).div_ceil(plan.rate_den),
        ))
    }
}

#[inline]
fn interval_step(plan: &Plan, payload: u64, now_rel: u64) -> Step {
    let interval = u128::from(plan.interval_ns);
    let mut k = payload >> plan.tbits;
    let mut tokens = payload & plan.tmask();
    if u128::from(now_rel) >= (u128::from(k) + 1) * interval {
        let k_now = now_rel / plan.interval_ns;
        tokens = refill_interval(plan, tokens, k_now - k);
        k = k_now;
    }
    let next_top_up = (u128::from(k) + 1) * interval - u128::from(now_rel);
    let wait_ns = u64::try_from(next_top_up).unwrap_or(u64::MAX);
    if tokens == 0 {
        return Step::Deny(Decision::from_ns(false, 0, wait_ns));
    }
    let remaining = tokens - 1;
    Step::Admit {
        payload: (k << plan.tbits) | remaining,
        decision: Decision::from_ns(true, remaining, wait_ns),
    }
}

fn refill_interval(plan: &Plan, tokens: u64, intervals: u64) -> u64 {
    let added = u128::from(intervals) * u128::from(plan.per_fill);
    (u128::from(tokens) + added).min(u128::from(plan.max)) as u64
}

/// A bucket's content at some instant, exactly, for any `now` (no rebase needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Level {
    /// Whole tokens available.
    pub whole: u64,
    /// Smooth: scaled units held (`whole × token` plus the accrued fraction).
    pub scaled: u64,
    pub full: bool,
}

pub(crate) fn level(plan: &Plan, origin: u64, payload: u64, now: u64) -> Level {
    let now_rel = now.saturating_sub(origin);
    match plan.refill {
        Refill::Smooth => {
            let now_s = u128::from(now_rel) * u128::from(plan.rate_den);
            let full_at = u128::from(payload);
            let scaled = if full_at <= now_s {
                plan.window
            } else {
                (now_s + u128::from(plan.window)).saturating_sub(full_at) as u64
            };
            Level {
                whole: scaled / plan.token,
                scaled,
                full: scaled == plan.window,
            }
        }
        Refill::Interval => {
            let k = payload >> plan.tbits;
            let mut tokens = payload & plan.tmask();
            let k_now = now_rel / plan.interval_ns;
            if k_now > k {
                tokens = refill_interval(plan, tokens, k_now - k);
            }
            Level {
                whole: tokens,
                scaled: tokens,
                full: tokens == plan.max,
            }
        }
    }
}

/// The origin to move to when `now` is past `origin + rebase_after`. Interval buckets keep
/// their phase: the origin only moves by whole intervals.
pub(crate) fn rebase_origin(plan: &Plan, origin: u64, now: u64) -> u64 {
    let now_rel = now.saturating_sub(origin);
    match plan.refill {
        Refill::Smooth => origin + now_rel,
        Refill::Interval => origin + (now_rel / plan.interval_ns) * plan.interval_ns,
    }
}

/// Re-expresses `payload` relative to `new_origin` (`>= origin`, a whole number of intervals
/// later for interval buckets). The bucket behaves the same at every instant from
/// `new_origin` on.
pub(crate) fn shift(plan: &Plan, payload: u64, origin: u64, new_origin: u64) -> u64 {
    let delta = new_origin.saturating_sub(origin);
    match plan.refill {
        Refill::Smooth => {
            let delta_s = u128::from(delta) * u128::from(plan.rate_den);
            // A full_at before the new origin means full there: 0 says the same.
            u128::from(payload).saturating_sub(delta_s) as u64
        }
        Refill::Interval => {
            let d = delta / plan.interval_ns;
            let k = payload >> plan.tbits;
            let tokens = payload & plan.tmask();
            if k >= d {
                ((k - d) << plan.tbits) | tokens
            } else {
                refill_interval(plan, tokens, d - k)
            }
        }
    }
}

/// Moves a bucket to new settings at `now`, keeping its tokens (clamped to the new maximum).
/// Smooth buckets keep the accrued fraction of a token too, rounded down to the new rate's
/// resolution; interval buckets keep counting intervals from their last top-up.
/// Returns the new origin and payload.
pub(crate) fn convert(old: &Plan, origin: u64, payload: u64, new: &Plan, now: u64) -> (u64, u64) {
    let at = level(old, origin, payload, now);
    let now = now.max(origin);
    match (old.refill, new.refill) {
        (Refill::Smooth, Refill::Smooth) => {
            let scaled = (u128::from(at.scaled) * u128::from(new.token) / u128::from(old.token))
                .min(u128::from(new.window)) as u64;
            (now, new.window - scaled)
        }
        (Refill::Interval, Refill::Smooth) => {
            let scaled = at.whole.min(new.max) * new.token;
            (now, new.window - scaled)
        }
        (Refill::Smooth, Refill::Interval) => (now, at.whole.min(new.max)),
        (Refill::Interval, Refill::Interval) => {
            let k = (payload >> old.tbits).max(now.saturating_sub(origin) / old.interval_ns);
            let last_top_up = origin + k * old.interval_ns;
            (last_top_up, at.whole.min(new.max))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn plan(max: u64, per_fill: u64, interval_ns: u64, refill: Refill) -> Plan {
        Plan::new(Settings::new(max, per_fill, Duration::from_nanos(interval_ns), refill).unwrap())
    }

    #[test]
    fn smooth_reduces_the_rate_to_lowest_terms() {
        // 10 per 10 s = 1 token per second: one scaled unit per ns, a token is 1e9 units.
        let p = plan(10, 10, 10_000_000_000, Refill::Smooth);
        assert_eq!(
            (p.rate_den, p.token, p.window),
            (1, 1_000_000_000, 10_000_000_000)
        );
        // 3 per second: time in thirds of a ns, so a token is exactly 1e9 units.
        let p = plan(5, 3, 1_000_000_000, Refill::Smooth);
        assert_eq!((p.rate_den, p.token), (3, 1_000_000_000));
    }

    #[test]
    fn an_arrival_at_the_exact_accrual_instant_is_admitted() {
        // 3 per second: the first token after draining accrues at exactly 333_333_333.33 ns.
        let p = plan(1, 3, 1_000_000_000, Refill::Smooth);
        let Step::Admit { payload, .. } = step(&p, 0, p.full_payload(), 0) else {
            panic!("a full bucket admits")
        };
        assert!(matches!(step(&p, 0, payload, 333_333_333), Step::Deny(_)));
        assert!(matches!(
            step(&p, 0, payload, 333_333_334),
            Step::Admit { .. }
        ));
    }

    #[test]
    fn rebase_keeps_behaviour() {
        for p in [
            plan(7, 3, 1_000_000_000, Refill::Smooth),
            plan(7, 3, 1_000_000_000, Refill::Interval),
        ] {
            let mut payload = p.full_payload();
            for t in [0, 1, 2, 3, 400_000_000, 400_000_001, 2_500_000_000] {
                if let Step::Admit { payload: next, .. } = step(&p, 0, payload, t) {
                    payload = next;
                }
            }
            let new_origin = rebase_origin(&p, 0, 3_700_000_000);
            let shifted = shift(&p, payload, 0, new_origin);
            for now in [3_700_000_000, 3_999_999_999, 4_000_000_000, 9_000_000_000] {
                assert_eq!(
                    level(&p, 0, payload, now),
                    level(&p, new_origin, shifted, now),
                    "{p:?} at {now}"
                );
            }
        }
    }
}
