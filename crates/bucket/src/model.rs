//! The plain, obviously-correct token bucket that the engine (and the kernel limiter's BPF
//! arithmetic) is tested against. No packing, no scaling tricks, no atomics: tokens are exact
//! fractions in `u128`, refilled step by step as the issue describes them.
//!
//! It is exact for every valid setting: a smooth amount is at most 2^40 tokens × 2^64 ns-units
//! (2^104), a refill adds at most 2^64 ns × 2^32 tokens (2^96), and the one product that
//! could pass 2^128 (rescaling a fraction on reconfiguration) is split into whole tokens and
//! fraction.

use std::time::Duration;

use crate::{Decision, Refill};

/// A single-threaded reference bucket. Arrival times must not go backwards (an earlier time
/// is treated as no time passing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceBucket {
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval_ns: u64,
    refill: Refill,
    /// Smooth: tokens × fill_interval_ns (so one token is `fill_interval_ns`); interval: tokens.
    amount: u128,
    /// Smooth: the last time seen; interval: the last top-up.
    last_ns: u64,
}

impl ReferenceBucket {
    /// A full bucket at `now_ns`. Panics on zero arguments (tests build it from valid settings).
    pub fn new(
        max_tokens: u64,
        tokens_per_fill: u64,
        fill_interval_ns: u64,
        refill: Refill,
        now_ns: u64,
    ) -> ReferenceBucket {
        assert!(max_tokens > 0 && tokens_per_fill > 0 && fill_interval_ns > 0);
        let mut bucket = ReferenceBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval_ns,
            refill,
            amount: 0,
            last_ns: now_ns,
        };
        bucket.amount = bucket.capacity();
        bucket
    }

    /// Takes one token if there is one.
    pub fn check(&mut self, now_ns: u64) -> bool {
        self.decision(now_ns).admitted()
    }

    /// [`ReferenceBucket::check`] with the same details the engine reports.
    pub fn decision(&mut self, now_ns: u64) -> Decision {
        self.refill_to(now_ns);
        let one = self.one_token();
        let admitted = self.amount >= one;
        if admitted {
            self.amount -= one;
        }
        Decision::new(admitted, self.whole_tokens(), self.next_token_in(now_ns))
    }

    /// Whole tokens available at `now_ns`.
    pub fn tokens(&mut self, now_ns: u64) -> u64 {
        self.refill_to(now_ns);
        self.whole_tokens()
    }

    /// New settings at `now_ns`, keeping the tokens held (clamped to the new maximum). A smooth
    /// bucket keeps the accrued fraction too, rounded down to the new rate's resolution
    /// (1 / (fill_interval_ns / gcd(tokens_per_fill, fill_interval_ns)) of a token); an interval
    /// bucket keeps counting intervals from its last top-up.
    pub fn reconfigure(
        &mut self,
        max_tokens: u64,
        tokens_per_fill: u64,
        fill_interval_ns: u64,
        refill: Refill,
        now_ns: u64,
    ) {
        if (max_tokens, tokens_per_fill, fill_interval_ns, refill)
            == (
                self.max_tokens,
                self.tokens_per_fill,
                self.fill_interval_ns,
                self.refill,
            )
        {
            return;
        }
        self.refill_to(now_ns);
        let old_one = self.one_token();
        let whole = self.whole_tokens();
        let old_refill = self.refill;
        let old_amount = self.amount;
        self.max_tokens = max_tokens;
        self.tokens_per_fill = tokens_per_fill;
        self.fill_interval_ns = fill_interval_ns;
        self.refill = refill;
        self.amount = match (old_refill, refill) {
            (Refill::Smooth, Refill::Smooth) => {
                // The new resolution: `step` units per token, each `g` ns-units of amount.
                let g = gcd(tokens_per_fill, fill_interval_ns);
                let step = u128::from(fill_interval_ns / g);
                // units = old_amount × step / old_one, split so that no product passes 2^128
                // (old_amount reaches 2^104 and step 2^64).
                let units = old_amount / old_one * step + old_amount % old_one * step / old_one;
                units.min(u128::from(max_tokens) * step) * u128::from(g)
            }
            (_, Refill::Smooth) => u128::from(whole) * u128::from(fill_interval_ns),
            (_, Refill::Interval) => u128::from(whole),
        }
        .min(self.capacity());
        if old_refill == Refill::Smooth || refill == Refill::Smooth {
            self.last_ns = self.last_ns.max(now_ns);
        }
    }

    fn capacity(&self) -> u128 {
        u128::from(self.max_tokens) * self.one_token()
    }

    fn one_token(&self) -> u128 {
        match self.refill {
            Refill::Smooth => u128::from(self.fill_interval_ns),
            Refill::Interval => 1,
        }
    }

    fn whole_tokens(&self) -> u64 {
        (self.amount / self.one_token()) as u64
    }

    fn refill_to(&mut self, now_ns: u64) {
        match self.refill {
            Refill::Smooth => {
                if now_ns > self.last_ns {
                    let elapsed = u128::from(now_ns - self.last_ns);
                    let gained = elapsed * u128::from(self.tokens_per_fill);
                    self.amount = self.amount.saturating_add(gained).min(self.capacity());
                    self.last_ns = now_ns;
                }
            }
            Refill::Interval => {
                if now_ns > self.last_ns {
                    let intervals = (now_ns - self.last_ns) / self.fill_interval_ns;
                    self.last_ns += intervals * self.fill_interval_ns;
                    let gained = u128::from(intervals) * u128::from(self.tokens_per_fill);
                    self.amount = (self.amount + gained).min(self.capacity());
                }
            }
        }
    }

    fn next_token_in(&self, now_ns: u64) -> Duration {
        if self.amount == self.capacity() {
            return Duration::ZERO;
        }
        match self.refill {
            Refill::Smooth => {
                let one = self.one_token();
                let missing = one - self.amount % one;
                let ns = missing.div_ceil(u128::from(self.tokens_per_fill));
                Duration::from_nanos(ns as u64)
            }
            Refill::Interval => {
                let next = u128::from(self.last_ns) + u128::from(self.fill_interval_ns);
                let ns = next - u128::from(now_ns.max(self.last_ns));
                Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
            }
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_1_40_example() {
        let s = 1_000_000_000;
        let mut b = ReferenceBucket::new(10, 10, 10 * s, Refill::Smooth, 0);
        let burst = |b: &mut ReferenceBucket, t: u64| (0..20).filter(|_| b.check(t)).count();
        assert_eq!(burst(&mut b, 0), 10);
        assert_eq!(burst(&mut b, 5_030_000_000), 5);
        assert_eq!(burst(&mut b, 7_540_000_000), 2);
        assert_eq!(burst(&mut b, 10_550_000_000), 3);
    }

    #[test]
    fn interval_carries_the_remainder() {
        let mut b = ReferenceBucket::new(2, 1, 100, Refill::Interval, 0);
        assert!(b.check(0) && b.check(0) && !b.check(0));
        assert!(b.check(150));
        assert!(!b.check(199));
        assert!(b.check(200));
    }
}
