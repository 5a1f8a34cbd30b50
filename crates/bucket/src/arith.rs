//! The bucket arithmetic: pure functions of (plan, origin, state, now), no atomics. A plan is
//! built once from [`Settings`] and never changes; checks only read it.
//!
//! A *narrow* bucket's whole state is one 63-bit *payload*, relative to an *origin* (a clock
//! value fixed with the plan), so that a single compare-and-swap on a `u64` can update it:
//!
//! - **smooth**: time is counted in units of 1/`rate` ns and tokens in units of 1/`token`
//!   token, where `rate / token` is `tokens_per_fill / fill_interval` in lowest terms; one
//!   scaled time unit then accrues exactly one scaled token unit. The payload is the instant
//!   the bucket will be full again (`full_at`); the scaled tokens held at `now` are
//!   `window - (full_at - now)`, or `window` once `now >= full_at`. Taking a token moves
//!   `full_at` forward by `token`. No rounding: exact. The two divisions a decision needs
//!   (tokens left, time to the next token) go through [`Divisor`]'s reciprocals.
//! - **interval**: the payload packs `k` (whole intervals from the origin to the last top-up)
//!   above `tokens`; a check at or past `origin + (k + 1) × fill_interval` tops up
//!   `tokens_per_fill` per whole interval elapsed, capped at `max_tokens`.
//!
//! Payloads never need more than 63 bits while `now - origin < rebase_at`; past that the owner
//! *rebases* (the keyed table moves a shard's origin with [`rebase_origin`] and [`shift`]; a
//! single [`crate::Bucket`] moves to the wide state), which is how idle gaps of any length and
//! clock values up to `u64::MAX` stay exact.
//!
//! **Wide state.** A smooth window (`max × token`) can reach 2^104 (2^40 tokens of up to
//! 2^64 − 1 units each), far past 63 bits. [`WidePlan`] runs the same rules on a 105-bit
//! state ([`wide_step`]), relative to an origin that never moves: smooth scaled time is below
//! 2^96 (`u64` ns × `rate` ≤ 2^32) and `full_at` never exceeds scaled time plus the window,
//! so `full_at < 2^105`; an interval state is the last top-up (64 bits) above the tokens
//! (41 bits). That leaves 23 bits of a 128-bit word for the owner, which one 16-byte
//! compare-and-swap updates. [`Plan::new`] turns settings too wide for 63 bits into a
//! *marker* plan with `rebase_at == 0`, on which [`step`] always answers [`Step::Rebase`].
//!
//! Reconfiguration goes through [`Held`], a bucket's content at an instant independent of its
//! representation, so narrow and wide plans convert into each other with the same rules.

use crate::Decision;
use crate::divide::Divisor;
use crate::settings::{Refill, Settings, gcd};

/// Bits of a state word that hold the payload; the rest belong to the owner.
pub(crate) const PAYLOAD_BITS: u32 = 63;
pub(crate) const PAYLOAD_MASK: u64 = (1 << PAYLOAD_BITS) - 1;

/// Everything the fast-path arithmetic needs, derived once from [`Settings`]; for wide
/// settings, a marker (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub refill: Refill,
    pub max: u64,
    pub per_fill: u64,
    pub interval_ns: u64,
    /// Smooth: scaled time units per ns (`tokens_per_fill / g`).
    pub rate: Divisor,
    /// Smooth: scaled units per token (`fill_interval_ns / g`).
    pub token: Divisor,
    /// Smooth: scaled units in a full bucket (`max × token`).
    pub window: u64,
    /// Interval: bits of the payload that hold the token count.
    pub tbits: u32,
    /// The smallest `now - origin` that [`step`] does not handle (it asks for a rebase).
    /// At least 1 for a narrow plan; 0 marks a wide plan.
    pub rebase_at: u64,
}

impl Plan {
    pub fn new(settings: Settings) -> Plan {
        let max = settings.max_tokens();
        let per_fill = settings.tokens_per_fill();
        let interval_ns = settings.fill_interval_ns();
        if settings.is_wide() {
            return Plan {
                refill: Refill::Smooth,
                max,
                per_fill,
                interval_ns,
                rate: Divisor::new(1),
                token: Divisor::new(1),
                window: 0,
                tbits: 0,
                rebase_at: 0,
            };
        }
        match settings.refill() {
            Refill::Smooth => {
                let g = gcd(per_fill, interval_ns);
                let rate_den = per_fill / g;
                let token = interval_ns / g;
                // Not wide: max × token ≤ 2^55.
                let window = max.saturating_mul(token).min(PAYLOAD_MASK);
                Plan {
                    refill: Refill::Smooth,
                    max,
                    per_fill,
                    interval_ns,
                    rate: Divisor::new(rate_den),
                    token: Divisor::new(token),
                    window,
                    tbits: 0,
                    // now + window ≤ PAYLOAD_MASK for every now_rel below this; window ≤ 2^55
                    // and rate_den ≤ 2^32 keep it at 2^30 or more.
                    rebase_at: (PAYLOAD_MASK - window) / rate_den + 1,
                }
            }
            Refill::Interval => {
                // max ≤ 2^40 needs at most 41 bits, leaving at least 22 for k.
                let tbits = u64::BITS - max.leading_zeros();
                let kbits = PAYLOAD_BITS - tbits;
                let intervals = 1u128 << kbits;
                // k = now_rel / interval_ns stays below 2^kbits. Capping at u64::MAX only
                // means a rebase at now_rel = u64::MAX, which is exact like any other.
                let rebase_at = (intervals * u128::from(interval_ns)).min(u128::from(u64::MAX));
                Plan {
                    refill: Refill::Interval,
                    max,
                    per_fill,
                    interval_ns,
                    rate: Divisor::new(1),
                    token: Divisor::new(1),
                    window: max,
                    tbits,
                    rebase_at: rebase_at as u64,
                }
            }
        }
    }

    pub fn settings(&self) -> Settings {
        Settings::from_parts(self.max, self.per_fill, self.interval_ns, self.refill)
    }

    /// Whether this is the marker of a wide plan: its state lives in a [`WidePlan`]'s `u128`.
    #[inline]
    pub fn is_wide(&self) -> bool {
        self.rebase_at == 0
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
    /// Store `payload` (if the state is unchanged); once stored, answer
    /// [`Plan::answer`]`(answer)`.
    Admit { payload: u64, answer: Answer },
    /// Nothing to store.
    Deny(Decision),
    /// `now` is too far past the origin for the payload: rebase first. Always the answer for
    /// a wide plan's marker.
    Rebase,
}

/// What an admission's [`Decision`] is made of, before the divisions that turn it into one.
/// The owner computes the decision only after its compare-and-swap succeeded: on x86 a locked
/// instruction waits for every instruction before it, so work placed ahead of it lengthens
/// every check, while work after it overlaps with the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Smooth: scaled units left; interval: whole tokens left.
    left: u64,
    /// Interval: ns to the next top-up.
    wait_ns: u64,
}

impl Plan {
    /// The decision of an admission that left `answer`.
    #[inline]
    pub fn answer(&self, answer: Answer) -> Decision {
        match self.refill {
            Refill::Smooth => {
                let (remaining, fraction) = self.token.div_rem(answer.left);
                let wait = self.rate.div_ceil(self.token.get() - fraction);
                Decision::from_ns(true, remaining, wait)
            }
            Refill::Interval => Decision::from_ns(true, answer.left, answer.wait_ns),
        }
    }
}

/// One check at `now`: the hot path, in `u64` arithmetic that cannot overflow.
#[inline]
pub(crate) fn step(plan: &Plan, origin: u64, payload: u64, now: u64) -> Step {
    let now_rel = now.saturating_sub(origin);
    if now_rel >= plan.rebase_at {
        return Step::Rebase;
    }
    match plan.refill {
        Refill::Smooth => smooth_step(plan, payload, now_rel),
        Refill::Interval => interval_step(plan, payload, now_rel),
    }
}

#[inline]
fn smooth_step(plan: &Plan, full_at: u64, now_rel: u64) -> Step {
    // now_rel < rebase_at keeps now + window ≤ PAYLOAD_MASK.
    let now = now_rel * plan.rate.get();
    let limit = now + plan.window;
    let base = full_at.max(now);
    let after = base + plan.token.get();
    if after <= limit {
        Step::Admit {
            payload: after,
            answer: Answer {
                left: limit - after,
                wait_ns: 0,
            },
        }
    } else {
        Step::Deny(Decision::from_ns(
            false,
            0,
            plan.rate.div_ceil(after - limit),
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
        answer: Answer {
            left: remaining,
            wait_ns,
        },
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
    /// Smooth: scaled units held (`whole × token` plus the accrued fraction); interval: tokens.
    pub scaled: u128,
    pub full: bool,
}

pub(crate) fn level(plan: &Plan, origin: u64, payload: u64, now: u64) -> Level {
    let now_rel = now.saturating_sub(origin);
    match plan.refill {
        Refill::Smooth => {
            let now_s = u128::from(now_rel) * u128::from(plan.rate.get());
            smooth_level(
                u128::from(payload),
                now_s,
                u128::from(plan.window),
                plan.token.get(),
            )
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
                scaled: u128::from(tokens),
                full: tokens == plan.max,
            }
        }
    }
}

/// The content of a smooth bucket (either width) whose state is `full_at` at scaled time
/// `now_s`.
fn smooth_level(full_at: u128, now_s: u128, window: u128, token: u64) -> Level {
    let scaled = if full_at <= now_s {
        window
    } else {
        (now_s + window).saturating_sub(full_at)
    };
    Level {
        // At most max_tokens ≤ 2^40.
        whole: (scaled / u128::from(token)) as u64,
        scaled,
        full: scaled == window,
    }
}

/// The origin to move to when `now` is past `origin + rebase_at`. Interval buckets keep
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
            let delta_s = u128::from(delta) * u128::from(plan.rate.get());
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

/// Bits of a wide state that hold the payload; the 23 above belong to the owner.
pub(crate) const WIDE_BITS: u32 = 105;
pub(crate) const WIDE_MASK: u128 = (1 << WIDE_BITS) - 1;
/// Bits of a wide interval payload that hold the tokens (max_tokens ≤ 2^40).
const WIDE_TBITS: u32 = 41;
const WIDE_TMASK: u128 = (1 << WIDE_TBITS) - 1;

/// The arithmetic of a wide state: the rules of [`Plan`] on a 105-bit payload relative to an
/// origin that never moves. Any settings have one (narrow ones too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WidePlan {
    pub refill: Refill,
    pub max: u64,
    pub per_fill: u64,
    pub interval_ns: u64,
    /// Smooth: scaled time units per ns (`tokens_per_fill / g`, at most 2^32).
    pub rate: Divisor,
    /// Smooth: scaled units per token (`fill_interval_ns / g`).
    pub token: Divisor,
    /// Smooth: scaled units in a full bucket (`max × token`, below 2^104); interval: `max`.
    pub window: u128,
}

impl WidePlan {
    pub fn new(settings: Settings) -> WidePlan {
        let max = settings.max_tokens();
        let per_fill = settings.tokens_per_fill();
        let interval_ns = settings.fill_interval_ns();
        let (rate, token, window) = match settings.refill() {
            Refill::Smooth => {
                let g = gcd(per_fill, interval_ns);
                (per_fill / g, interval_ns / g, settings.smooth_window())
            }
            Refill::Interval => (1, 1, u128::from(max)),
        };
        WidePlan {
            refill: settings.refill(),
            max,
            per_fill,
            interval_ns,
            rate: Divisor::new(rate),
            token: Divisor::new(token),
            window,
        }
    }

    pub fn settings(&self) -> Settings {
        Settings::from_parts(self.max, self.per_fill, self.interval_ns, self.refill)
    }

    /// The payload of a full bucket whose origin is its creation.
    pub fn full_state(&self) -> u128 {
        match self.refill {
            Refill::Smooth => 0,
            Refill::Interval => u128::from(self.max),
        }
    }
}

/// One check of a wide state at `now`: the new payload (unchanged on a rejection) and the
/// answer. Every quantity stays below 2^105 for every clock value: no rebase, no overflow.
#[cfg(test)]
pub(crate) fn wide_step(plan: &WidePlan, origin: u64, payload: u128, now: u64) -> (u128, Decision) {
    match wide_take(plan, origin, payload, now) {
        WideStep::Admit { payload, answer } => (payload, plan.answer(answer)),
        WideStep::Deny(decision) => (payload, decision),
    }
}

/// What one check does to a wide state; as [`Step`], the decision of an admission is made
/// only once its payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WideStep {
    Admit { payload: u128, answer: WideAnswer },
    Deny(Decision),
}

/// A wide admission's [`Decision`] before its divisions (see [`Answer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WideAnswer {
    /// Smooth: scaled units left (below 2^104); interval: whole tokens left.
    left: u128,
    /// Interval: ns to the next top-up.
    wait_ns: u64,
}

impl WidePlan {
    /// The decision of an admission that left `answer`.
    #[inline]
    pub fn answer(&self, answer: WideAnswer) -> Decision {
        match self.refill {
            Refill::Smooth => {
                // left < window = max × token, so left / token < 2^40: the 128-by-64 division
                // applies.
                let (remaining, fraction) = self.token.div_rem_wide(answer.left);
                let wait = self.rate.div_ceil(self.token.get() - fraction);
                Decision::from_ns(true, remaining, wait)
            }
            Refill::Interval => Decision::from_ns(true, answer.left as u64, answer.wait_ns),
        }
    }
}

/// One check of a wide state at `now`.
#[inline]
pub(crate) fn wide_take(plan: &WidePlan, origin: u64, payload: u128, now: u64) -> WideStep {
    let now_rel = now.saturating_sub(origin);
    match plan.refill {
        Refill::Smooth => wide_smooth_step(plan, payload, now_rel),
        Refill::Interval => wide_interval_step(plan, payload, now_rel),
    }
}

#[inline]
fn wide_smooth_step(plan: &WidePlan, full_at: u128, now_rel: u64) -> WideStep {
    let now = u128::from(now_rel) * u128::from(plan.rate.get());
    let limit = now + plan.window;
    let after = full_at.max(now) + u128::from(plan.token.get());
    if after <= limit {
        WideStep::Admit {
            payload: after,
            answer: WideAnswer {
                left: limit - after,
                wait_ns: 0,
            },
        }
    } else {
        // Only a check at an earlier time than one already applied can wait more than one
        // token's time (up to 2^65 ns): kept at what a Decision holds.
        let wait = plan.rate.div_ceil_wide(after - limit);
        WideStep::Deny(Decision::from_ns(false, 0, wait))
    }
}

/// The last top-up (relative to the origin) and the tokens of a wide interval payload, topped
/// up to `now_rel`.
#[inline]
fn wide_interval_level(plan: &WidePlan, payload: u128, now_rel: u64) -> (u64, u64) {
    let mut last = (payload >> WIDE_TBITS) as u64;
    let mut tokens = (payload & WIDE_TMASK) as u64;
    if now_rel >= last && now_rel - last >= plan.interval_ns {
        let intervals = (now_rel - last) / plan.interval_ns;
        last += intervals * plan.interval_ns;
        let added = u128::from(intervals) * u128::from(plan.per_fill);
        tokens = (u128::from(tokens) + added).min(u128::from(plan.max)) as u64;
    }
    (last, tokens)
}

#[inline]
fn wide_interval_step(plan: &WidePlan, payload: u128, now_rel: u64) -> WideStep {
    let (last, tokens) = wide_interval_level(plan, payload, now_rel);
    let next = u128::from(last) + u128::from(plan.interval_ns);
    let wait_ns = u64::try_from(next - u128::from(now_rel.max(last))).unwrap_or(u64::MAX);
    if tokens == 0 {
        return WideStep::Deny(Decision::from_ns(false, 0, wait_ns));
    }
    let remaining = tokens - 1;
    WideStep::Admit {
        payload: (u128::from(last) << WIDE_TBITS) | u128::from(remaining),
        answer: WideAnswer {
            left: u128::from(remaining),
            wait_ns,
        },
    }
}

/// A wide state's content at `now`.
pub(crate) fn wide_level(plan: &WidePlan, origin: u64, payload: u128, now: u64) -> Level {
    let now_rel = now.saturating_sub(origin);
    match plan.refill {
        Refill::Smooth => {
            let now_s = u128::from(now_rel) * u128::from(plan.rate.get());
            smooth_level(payload, now_s, plan.window, plan.token.get())
        }
        Refill::Interval => {
            let (_, tokens) = wide_interval_level(plan, payload, now_rel);
            Level {
                whole: tokens,
                scaled: u128::from(tokens),
                full: tokens == plan.max,
            }
        }
    }
}

/// A bucket's content at an instant, whatever its representation: what reconfiguration
/// carries from one plan to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// `scaled` units of 1/`token` token (`whole × token` plus the accrued fraction).
    Smooth { scaled: u128, token: u64, at: u64 },
    /// `tokens` whole tokens, the last top-up at `last_top_up`.
    Interval {
        tokens: u64,
        last_top_up: u64,
        at: u64,
    },
}

impl Held {
    fn whole(&self) -> u64 {
        match *self {
            // At most max_tokens ≤ 2^40.
            Held::Smooth { scaled, token, .. } => (scaled / u128::from(token.max(1))) as u64,
            Held::Interval { tokens, .. } => tokens,
        }
    }

    fn at(&self) -> u64 {
        match *self {
            Held::Smooth { at, .. } | Held::Interval { at, .. } => at,
        }
    }

    /// What a smooth plan of `token` units per token and `max` tokens holds after the switch:
    /// the same tokens, clamped, and the fraction rounded down to the new resolution.
    fn smooth_units(&self, token: u64, max: u64) -> u128 {
        let window = u128::from(max) * u128::from(token);
        match *self {
            Held::Smooth {
                scaled, token: old, ..
            } => {
                // scaled × token / old without the 2^168 product: whole tokens convert
                // exactly, and fraction × token < 2^128.
                let old = u128::from(old.max(1));
                let (whole, fraction) = (scaled / old, scaled % old);
                let units = whole * u128::from(token) + fraction * u128::from(token) / old;
                units.min(window)
            }
            Held::Interval { tokens, .. } => u128::from(tokens.min(max)) * u128::from(token),
        }
    }
}

/// The content of a narrow bucket at `now`.
pub(crate) fn held(plan: &Plan, origin: u64, payload: u64, now: u64) -> Held {
    let at = level(plan, origin, payload, now);
    let when = now.max(origin);
    match plan.refill {
        Refill::Smooth => Held::Smooth {
            scaled: at.scaled,
            token: plan.token.get(),
            at: when,
        },
        Refill::Interval => {
            let k = (payload >> plan.tbits).max(now.saturating_sub(origin) / plan.interval_ns);
            Held::Interval {
                tokens: at.whole,
                last_top_up: origin.saturating_add(k.saturating_mul(plan.interval_ns)),
                at: when,
            }
        }
    }
}

/// The content of a wide state at `now`.
pub(crate) fn wide_held(plan: &WidePlan, origin: u64, payload: u128, now: u64) -> Held {
    let at = now.max(origin);
    match plan.refill {
        Refill::Smooth => Held::Smooth {
            scaled: wide_level(plan, origin, payload, now).scaled,
            token: plan.token.get(),
            at,
        },
        Refill::Interval => {
            let (last, tokens) = wide_interval_level(plan, payload, now.saturating_sub(origin));
            Held::Interval {
                tokens,
                last_top_up: origin + last,
                at,
            }
        }
    }
}

/// The clock value a wide state holding `held` can be relative to: no later than any time it
/// refers to.
pub(crate) fn wide_origin(held: &Held) -> u64 {
    match *held {
        Held::Smooth { at, .. } => at,
        Held::Interval {
            last_top_up, at, ..
        } => last_top_up.min(at),
    }
}

/// The payload of a wide state relative to `origin` holding `held` under `new`, by the same
/// rules for every pair of modes: tokens are clamped to the new maximum; a smooth bucket keeps
/// the accrued fraction too, rounded down to the new rate's resolution; an interval bucket keeps
/// counting intervals from its last top-up. Times before `origin` count as `origin` (only a reconfiguration
/// with an earlier time than one already applied has them; it then keeps no more tokens).
pub(crate) fn wide_from(held: &Held, new: &WidePlan, origin: u64) -> u128 {
    match (new.refill, *held) {
        (Refill::Smooth, _) => {
            let units = held.smooth_units(new.token.get(), new.max);
            let at = u128::from(held.at().saturating_sub(origin)) * u128::from(new.rate.get());
            at + (new.window - units)
        }
        (Refill::Interval, Held::Smooth { at, .. }) => {
            let last = u128::from(at.saturating_sub(origin));
            (last << WIDE_TBITS) | u128::from(held.whole().min(new.max))
        }
        (
            Refill::Interval,
            Held::Interval {
                tokens,
                last_top_up,
                ..
            },
        ) => {
            let last = u128::from(last_top_up.saturating_sub(origin));
            (last << WIDE_TBITS) | u128::from(tokens.min(new.max))
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
            (p.rate.get(), p.token.get(), p.window),
            (1, 1_000_000_000, 10_000_000_000)
        );
        // 3 per second: time in thirds of a ns, so a token is exactly 1e9 units.
        let p = plan(5, 3, 1_000_000_000, Refill::Smooth);
        assert_eq!((p.rate.get(), p.token.get()), (3, 1_000_000_000));
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
    fn wide_settings_make_a_marker_that_always_leaves_the_fast_path() {
        let hour = 3_600_000_000_000;
        let p = plan(100_001, 100_001, hour, Refill::Smooth);
        assert!(p.is_wide());
        for now in [0, 1, hour, u64::MAX] {
            assert_eq!(step(&p, 0, p.full_payload(), now), Step::Rebase);
        }
        let w = WidePlan::new(p.settings());
        assert_eq!((w.rate.get(), w.token.get()), (100_001, hour));
        assert_eq!(w.window, 100_001 * u128::from(hour));
        // Narrow plans never carry the marker.
        for p in [
            plan(1 << 40, 1 << 32, 1, Refill::Smooth),
            plan(1, 1, 1 << 55, Refill::Smooth),
            plan(1 << 40, 1, u64::MAX, Refill::Interval),
            plan(1, 1 << 32, u64::MAX, Refill::Interval),
        ] {
            assert!(!p.is_wide() && p.rebase_at >= 2, "{p:?}");
        }
    }

    #[test]
    fn wide_extremes_stay_in_range() {
        // The largest window (2^40 tokens of 2^64 - 1 units) and the fastest scaled clock.
        let s = Settings::new(1 << 40, 1, Duration::from_nanos(u64::MAX), Refill::Smooth).unwrap();
        let w = WidePlan::new(s);
        let (full_at, d) = wide_step(&w, 0, w.full_state(), u64::MAX);
        assert!(d.admitted());
        assert_eq!(d.remaining(), (1 << 40) - 1);
        assert_eq!(d.next_token_in(), Duration::from_nanos(u64::MAX));
        assert_eq!(wide_level(&w, 0, full_at, u64::MAX).whole, (1 << 40) - 1);
        // A check from before the last one waits longer than one token's time: capped.
        let s = Settings::new(1, 1, Duration::from_nanos(u64::MAX), Refill::Smooth).unwrap();
        let w = WidePlan::new(s);
        let (full_at, _) = wide_step(&w, 0, w.full_state(), u64::MAX);
        let (_, d) = wide_step(&w, 0, full_at, 0);
        assert!(!d.admitted());
        assert_eq!(d.next_token_in(), Duration::from_nanos(u64::MAX));
    }

    proptest::proptest! {
        /// The wide arithmetic is the fast path's in more bits: on any plan the fast path
        /// holds, both give the same decisions and the same state.
        #[test]
        fn wide_arithmetic_agrees_with_the_fast_path(
            max in proptest::prop_oneof![1u64..20, 1u64..=(1 << 40)],
            per_fill in proptest::prop_oneof![1u64..20, 1u64..=(1 << 32)],
            interval in proptest::prop_oneof![1u64..1000, 1u64..=(1 << 40)],
            smooth in proptest::bool::ANY,
            gaps in proptest::collection::vec(0u64..2_000, 1..100),
        ) {
            // Clamp the burst so that the window fits the fast path.
            let token = interval / gcd(per_fill, interval);
            let max = max.min(crate::SMOOTH_WINDOW_LIMIT / token).max(1);
            let refill = if smooth { Refill::Smooth } else { Refill::Interval };
            let s = Settings::new(max, per_fill, Duration::from_nanos(interval), refill).unwrap();
            proptest::prop_assert!(!s.is_wide());
            let (narrow, wide) = (Plan::new(s), WidePlan::new(s));
            let unit = (interval / per_fill).max(1);
            let (mut payload, mut state, mut now) = (narrow.full_payload(), wide.full_state(), 0u64);
            for gap in gaps {
                now = now.saturating_add(gap * unit / 1000);
                let (next, decision) = wide_step(&wide, 0, state, now);
                match step(&narrow, 0, payload, now) {
                    Step::Admit { payload: p, answer } => {
                        proptest::prop_assert_eq!(narrow.answer(answer), decision);
                        payload = p;
                    }
                    Step::Deny(d) => proptest::prop_assert_eq!(d, decision),
                    Step::Rebase => break,
                }
                state = next;
                if smooth {
                    proptest::prop_assert_eq!(u128::from(payload), state);
                }
                proptest::prop_assert_eq!(level(&narrow, 0, payload, now), wide_level(&wide, 0, state, now));
            }
        }
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
