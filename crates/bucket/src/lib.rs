//! The token-bucket engine behind every meshlimit data path: exact integer arithmetic,
//! lock-free checks, an injectable [`Clock`], and a bounded table of buckets per key. No I/O.
//!
//! Start with [`Settings`] (what a bucket is: `max_tokens`, `tokens_per_fill`, `fill_interval`
//! and a [`Refill`] mode), then [`Bucket`] (one shared bucket: `check` takes a token) and
//! [`KeyedBuckets`] (one bucket per key, idle keys evicted). The arithmetic itself is in
//! `arith.rs`, as pure functions; [`model::ReferenceBucket`] is the plain model the engine is
//! property-tested against.

use std::time::Duration;

mod arith;
mod bucket;
mod clock;
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

/// The answer to a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether a token was taken.
    pub admitted: bool,
    /// Whole tokens left after this check.
    pub remaining: u64,
    /// Time until one more whole token is available (zero when the bucket is full). After a
    /// rejection this is when to retry (`Retry-After`).
    pub next_token_in: Duration,
}
