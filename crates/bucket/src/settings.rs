//! What a bucket is configured with, and the bounds that keep its arithmetic exact.
//!
//! Every combination within the bounds is exact, in both refill modes, for any clock value.
//! Most plans fit a 63-bit state word; a smooth plan whose window (see [`SMOOTH_WINDOW_LIMIT`])
//! is wider than that is *wide* ([`Settings::is_wide`]) and keeps its state in a 128-bit word
//! instead. Wide plans are ordinary quotas — 100001 per hour is one — so they are served, not
//! refused, with the same lock-free check on a 16-byte compare-and-swap.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How tokens come back into a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refill {
    /// `tokens_per_fill` at the end of every whole `fill_interval` counted from the bucket's
    /// creation (the remainder of an interval carries over). Classic Envoy's timer and the
    /// kernel limiter's arithmetic; the default for `RateLimit` resources.
    Interval,
    /// Continuously, at `tokens_per_fill / fill_interval`, fractions kept. What Envoy 1.40 does;
    /// the default for `MeshRateLimit`.
    Smooth,
}

impl Refill {
    /// The lower-case name used on the command line and in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Refill::Interval => "interval",
            Refill::Smooth => "smooth",
        }
    }
}

impl fmt::Display for Refill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refill mode name that is neither `smooth` nor `interval`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown refill mode {0:?} (use smooth or interval)")]
pub struct UnknownRefill(pub String);

impl FromStr for Refill {
    type Err = UnknownRefill;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interval" => Ok(Refill::Interval),
            "smooth" => Ok(Refill::Smooth),
            other => Err(UnknownRefill(other.to_string())),
        }
    }
}

/// The largest `max_tokens` a bucket accepts (2^40, about 1.1 × 10^12).
pub const MAX_TOKENS_LIMIT: u64 = 1 << 40;
/// The largest `tokens_per_fill` a bucket accepts (2^32, about 4.3 × 10^9).
pub const TOKENS_PER_FILL_LIMIT: u64 = 1 << 32;
/// The widest smooth refill window a 63-bit state word holds, in units of 1/q ns where
/// q = tokens_per_fill / gcd(tokens_per_fill, fill_interval_ns): the window is
/// `max_tokens × fill_interval_ns / gcd(tokens_per_fill, fill_interval_ns)`. When
/// tokens_per_fill divides the interval this is simply the time to refill an empty bucket:
/// 2^55 ns, about 417 days. Smooth plans with a wider window are accepted too; they are
/// [wide](Settings::is_wide) and keep a 128-bit state. Interval refill always fits.
pub const SMOOTH_WINDOW_LIMIT: u64 = 1 << 55;

/// Why [`Settings::new`] refused a combination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error("tokens_per_fill must be at least 1")]
    ZeroTokensPerFill,
    #[error("fill_interval must be longer than zero")]
    ZeroFillInterval,
    #[error("max_tokens {0} is too large (at most {MAX_TOKENS_LIMIT})")]
    MaxTokensTooLarge(u64),
    #[error("tokens_per_fill {0} is too large (at most {TOKENS_PER_FILL_LIMIT})")]
    TokensPerFillTooLarge(u64),
    #[error("fill_interval {0:?} is too long (at most 2^64-1 ns, about 584 years)")]
    FillIntervalTooLong(Duration),
}

/// A validated bucket configuration. Every combination within the bounds of [`Settings::new`]
/// is tracked exactly for the whole range of clock values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Settings {
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval_ns: u64,
    refill: Refill,
}

impl Settings {
    /// Validates and builds settings: all three numbers at least 1, `max_tokens` at most
    /// [`MAX_TOKENS_LIMIT`], `tokens_per_fill` at most [`TOKENS_PER_FILL_LIMIT`], and
    /// `fill_interval` at most `u64::MAX` nanoseconds, in either refill mode.
    pub fn new(
        max_tokens: u64,
        tokens_per_fill: u64,
        fill_interval: Duration,
        refill: Refill,
    ) -> Result<Settings, SettingsError> {
        if max_tokens == 0 {
            return Err(SettingsError::ZeroMaxTokens);
        }
        if tokens_per_fill == 0 {
            return Err(SettingsError::ZeroTokensPerFill);
        }
        if fill_interval.is_zero() {
            return Err(SettingsError::ZeroFillInterval);
        }
        if max_tokens > MAX_TOKENS_LIMIT {
            return Err(SettingsError::MaxTokensTooLarge(max_tokens));
        }
        if tokens_per_fill > TOKENS_PER_FILL_LIMIT {
            return Err(SettingsError::TokensPerFillTooLarge(tokens_per_fill));
        }
        let fill_interval_ns = u64::try_from(fill_interval.as_nanos())
            .map_err(|_| SettingsError::FillIntervalTooLong(fill_interval))?;
        if fill_interval_ns == 0 {
            // Sub-nanosecond intervals round to zero.
            return Err(SettingsError::ZeroFillInterval);
        }
        Ok(Settings {
            max_tokens,
            tokens_per_fill,
            fill_interval_ns,
            refill,
        })
    }

    /// The most tokens the bucket holds (and holds when new).
    pub fn max_tokens(&self) -> u64 {
        self.max_tokens
    }

    /// Tokens added per `fill_interval`.
    pub fn tokens_per_fill(&self) -> u64 {
        self.tokens_per_fill
    }

    /// The refill period.
    pub fn fill_interval(&self) -> Duration {
        Duration::from_nanos(self.fill_interval_ns)
    }

    /// The refill period in nanoseconds.
    pub fn fill_interval_ns(&self) -> u64 {
        self.fill_interval_ns
    }

    /// The refill mode.
    pub fn refill(&self) -> Refill {
        self.refill
    }

    /// Whether these settings are too wide for a 63-bit state word: smooth refill whose window
    /// exceeds [`SMOOTH_WINDOW_LIMIT`]. Buckets with wide settings are just as exact and
    /// lock-free; their state is a 128-bit word (a 16-byte compare-and-swap per check).
    pub fn is_wide(&self) -> bool {
        self.refill == Refill::Smooth && self.smooth_window() > u128::from(SMOOTH_WINDOW_LIMIT)
    }

    /// `max_tokens × fill_interval_ns / gcd(tokens_per_fill, fill_interval_ns)`: scaled units
    /// in a full smooth bucket (below 2^104).
    pub(crate) fn smooth_window(&self) -> u128 {
        let g = gcd(self.tokens_per_fill, self.fill_interval_ns);
        u128::from(self.max_tokens) * u128::from(self.fill_interval_ns / g)
    }

    /// Rebuilds settings that were validated before (from a stored plan).
    pub(crate) fn from_parts(
        max_tokens: u64,
        tokens_per_fill: u64,
        fill_interval_ns: u64,
        refill: Refill,
    ) -> Settings {
        Settings {
            max_tokens,
            tokens_per_fill,
            fill_interval_ns,
            refill,
        }
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max {} tokens, {} per {:?}, {} refill",
            self.max_tokens,
            self.tokens_per_fill,
            self.fill_interval(),
            self.refill
        )
    }
}

pub(crate) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zeroes_and_out_of_range_values() {
        let s = Duration::from_secs(1);
        assert_eq!(
            Settings::new(0, 1, s, Refill::Smooth),
            Err(SettingsError::ZeroMaxTokens)
        );
        assert_eq!(
            Settings::new(1, 0, s, Refill::Smooth),
            Err(SettingsError::ZeroTokensPerFill)
        );
        assert_eq!(
            Settings::new(1, 1, Duration::ZERO, Refill::Interval),
            Err(SettingsError::ZeroFillInterval)
        );
        assert_eq!(
            Settings::new(
                1,
                1,
                Duration::from_nanos(0) + Duration::new(0, 0),
                Refill::Smooth
            ),
            Err(SettingsError::ZeroFillInterval)
        );
        assert_eq!(
            Settings::new(MAX_TOKENS_LIMIT + 1, 1, s, Refill::Interval),
            Err(SettingsError::MaxTokensTooLarge(MAX_TOKENS_LIMIT + 1))
        );
        assert_eq!(
            Settings::new(1, TOKENS_PER_FILL_LIMIT + 1, s, Refill::Interval),
            Err(SettingsError::TokensPerFillTooLarge(
                TOKENS_PER_FILL_LIMIT + 1
            ))
        );
        assert_eq!(
            Settings::new(1, 1, Duration::MAX, Refill::Interval),
            Err(SettingsError::FillIntervalTooLong(Duration::MAX))
        );
    }

    #[test]
    fn every_quota_is_accepted_and_only_wide_smooth_windows_leave_the_fast_path() {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3600);
        // 1000 tokens, 1 per day: an empty bucket needs 1000 days to refill (wide)...
        assert!(
            Settings::new(1000, 1, day, Refill::Smooth)
                .unwrap()
                .is_wide()
        );
        // ...while the same numbers refill in whole intervals on the fast path.
        assert!(
            !Settings::new(1000, 1, day, Refill::Interval)
                .unwrap()
                .is_wide()
        );
        // 1000 per day with a 1000 burst refills in one day.
        assert!(
            !Settings::new(1000, 1000, day, Refill::Smooth)
                .unwrap()
                .is_wide()
        );
        // A Kuma requestRate of 100001 per hour.
        assert!(
            Settings::new(100_001, 100_001, hour, Refill::Smooth)
                .unwrap()
                .is_wide()
        );
        // The extremes of every bound, in both modes.
        for refill in [Refill::Smooth, Refill::Interval] {
            for (max, per_fill, ns) in [
                (MAX_TOKENS_LIMIT, 1, u64::MAX),
                (MAX_TOKENS_LIMIT, TOKENS_PER_FILL_LIMIT, 1),
                (1, 1, u64::MAX),
                (u64::from(u32::MAX), u64::from(u32::MAX), i64::MAX as u64),
            ] {
                let s = Settings::new(max, per_fill, Duration::from_nanos(ns), refill).unwrap();
                assert_eq!(s.fill_interval_ns(), ns);
            }
        }
        // The boundary itself stays on the fast path.
        let edge = Duration::from_nanos(SMOOTH_WINDOW_LIMIT);
        assert!(!Settings::new(1, 1, edge, Refill::Smooth).unwrap().is_wide());
        let past = Duration::from_nanos(SMOOTH_WINDOW_LIMIT + 1);
        assert!(Settings::new(1, 1, past, Refill::Smooth).unwrap().is_wide());
    }

    #[test]
    fn refill_names_round_trip() {
        for r in [Refill::Interval, Refill::Smooth] {
            assert_eq!(r.as_str().parse::<Refill>(), Ok(r));
        }
        assert!("burst".parse::<Refill>().is_err());
    }
}
