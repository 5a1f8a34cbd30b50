//! The token-bucket engine behind every meshlimit data path: exact integer arithmetic,
//! lock-free checks, an injectable [`Clock`], and a bounded table of buckets per key. No I/O.
//!
//! Start with [`Settings`] (what a bucket is: `max_tokens`, `tokens_per_fill`, `fill_interval`
//! and a [`Refill`] mode), then [`Bucket`] (one shared bucket: `check` takes a token) and
//! [`KeyedBuckets`] (one bucket per key, idle keys evicted). The arithmetic itself is in
//! `arith.rs`, as pure functions; [`model::ReferenceBucket`] is the plain model the engine is
//! property-tested against.
//!
//! Every quota within the bounds of [`Settings::new`] is served exactly, in both refill modes:
//! up to [`MAX_TOKENS_LIMIT`] tokens, [`TOKENS_PER_FILL_LIMIT`] per fill, and any interval from
//! 1 ns to `u64::MAX` ns. A check is one atomic load, integer arithmetic on a plan built once
//! (divisions by precomputed reciprocals), and one compare-and-swap; a rejection writes
//! nothing. Most buckets keep their state in one 63-bit word beside their plan. Settings whose
//! exact state needs more — long intervals with large bursts, such as 100001 per hour
//! ([`Settings::is_wide`]) — and any bucket once reconfigured keep it in a 128-bit word instead,
//! updated by a 16-byte compare-and-swap (lock-free where the CPU has one: x86_64, aarch64),
//! with the same answers.

use std::time::Duration;

mod arith;
mod bucket;
mod clock;
mod divide;
mod keyed;
pub mod model;
mod settings;

pub use bucket::Bucket;
pub use clock::{Clock, FakeClock, MonotonicClock, PreciseMonotonicClock};
pub use keyed::KeyedBuckets;
pub use settings::{
    MAX_TOKENS_LIMIT, Refill, SMOOTH_WINDOW_LIMIT, Settings, SettingsError, TOKENS_PER_FILL_LIMIT,
    UnknownRefill,
};

/// The answer to a check: whether a token was taken, the whole tokens left, and the time until
/// one more whole token is available (zero when the bucket is full; after a rejection, when to
/// retry — `Retry-After`).
///
/// Sixteen bytes, so a check returns it in registers: a larger answer went through memory and
/// cost the caller a store-forwarding stall on every check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Bit 63: admitted; the rest: whole tokens left (at most [`MAX_TOKENS_LIMIT`]).
    admitted_and_remaining: u64,
    next_token_in_ns: u64,
}

const ADMITTED_BIT: u64 = 1 << 63;

impl Decision {
    /// `next_token_in` beyond `u64::MAX` nanoseconds (584 years) is kept as that.
    #[inline]
    pub fn new(admitted: bool, remaining: u64, next_token_in: Duration) -> Decision {
        Decision::from_ns(
            admitted,
            remaining,
            u64::try_from(next_token_in.as_nanos()).unwrap_or(u64::MAX),
        )
    }

    #[inline]
    pub(crate) fn from_ns(admitted: bool, remaining: u64, next_token_in_ns: u64) -> Decision {
        debug_assert!(remaining < ADMITTED_BIT);
        Decision {
            admitted_and_remaining: (remaining & !ADMITTED_BIT)
                | if admitted { ADMITTED_BIT } else { 0 },
            next_token_in_ns,
        }
    }

    /// Whether a token was taken.
    #[inline]
    pub fn admitted(&self) -> bool {
        self.admitted_and_remaining & ADMITTED_BIT != 0
    }

    /// Whole tokens left after this check.
    #[inline]
    pub fn remaining(&self) -> u64 {
        self.admitted_and_remaining & !ADMITTED_BIT
    }

    /// Time until one more whole token is available.
    #[inline]
    pub fn next_token_in(&self) -> Duration {
        Duration::from_nanos(self.next_token_in_ns)
    }
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("admitted", &self.admitted())
            .field("remaining", &self.remaining())
            .field("next_token_in", &self.next_token_in())
            .finish()
    }
}
