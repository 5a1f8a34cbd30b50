//! Which bucket settings a global bucket can serve, and the script arguments they become.

use std::time::Duration;

use meshlimit_bucket::{Refill, Settings};

/// The longest a global bucket may take to refill from empty: 2^61 ms, about 73 million years.
///
/// Its key carries a TTL of at least that time, so that an idle bucket vanishes only once it
/// would be full again; Redis keeps a key's expiry as an absolute Unix time in milliseconds in
/// a signed 64-bit integer, and 2^61 ms leaves room for today's clock (2^41 ms) and the margin.
pub const MAX_REFILL_MS: u64 = 1 << 61;

/// The longest TTL margin [`crate::GlobalOptions::ttl_margin`] may add: 2^40 ms (35 years).
pub const MAX_TTL_MARGIN_MS: u64 = 1 << 40;

/// Settings the bucket engine accepts but a global bucket cannot serve exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error(
        "{settings} takes {refill_ms} ms to refill from empty, more than a global bucket's \
         limit of 2^61 ms (about 73 million years): its Redis key needs a TTL at least that \
         long, or an idle bucket would vanish before it is full again; shorten fill_interval, \
         raise tokens_per_fill or lower max_tokens"
    )]
    RefillTooLong { settings: Settings, refill_ms: u128 },
}

/// [`Settings`] checked for a global bucket, with the script's arguments computed once.
///
/// Build one when the limit is configured (not per request): [`GlobalSettings::new`] is where
/// settings the script cannot serve exactly are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GlobalSettings {
    settings: Settings,
    /// ARGV[4] and ARGV[5]. Smooth: `rate_den` and `token`, the engine's scaled units
    /// (tokens_per_fill / g and fill_interval_ns / g for g their gcd); interval:
    /// tokens_per_fill and fill_interval_ns.
    a: u64,
    b: u64,
    refill_ms: u64,
}

impl GlobalSettings {
    /// Accepts every `settings` that refills from empty within [`MAX_REFILL_MS`]; every
    /// quantity of the bucket's arithmetic is then exact in the script, whatever the
    /// settings' other values.
    pub fn new(settings: Settings) -> Result<GlobalSettings, RangeError> {
        let max = settings.max_tokens();
        let per_fill = settings.tokens_per_fill();
        let interval_ns = settings.fill_interval_ns();
        let (a, b, refill_ns) = match settings.refill() {
            Refill::Smooth => {
                let g = gcd(per_fill, interval_ns);
                let refill = (u128::from(max) * u128::from(interval_ns)).div_ceil(per_fill.into());
                (per_fill / g, interval_ns / g, refill)
            }
            Refill::Interval => {
                // Whole fills from empty; the first may be due a whole interval after a check.
                let refill = u128::from(max.div_ceil(per_fill)) * u128::from(interval_ns);
                (per_fill, interval_ns, refill)
            }
        };
        let refill_ms = refill_ns.div_ceil(1_000_000);
        if refill_ms > u128::from(MAX_REFILL_MS) {
            return Err(RangeError::RefillTooLong {
                settings,
                refill_ms,
            });
        }
        Ok(GlobalSettings {
            settings,
            a,
            b,
            refill_ms: refill_ms as u64,
        })
    }

    /// The engine settings these were built from.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The time an empty bucket takes to refill, rounded up to whole milliseconds: the least
    /// TTL its key can have.
    pub fn refill_time(&self) -> Duration {
        Duration::from_millis(self.refill_ms)
    }

    pub(crate) fn refill_ms(&self) -> u64 {
        self.refill_ms
    }

    /// ARGV[2..=5]: mode, max_tokens and the mode's two numbers.
    pub(crate) fn plan_args(&self) -> (&'static str, u64, u64, u64) {
        let mode = match self.settings.refill() {
            Refill::Smooth => "s",
            Refill::Interval => "i",
        };
        (mode, self.settings.max_tokens(), self.a, self.b)
    }

    /// The time one token takes to accrue (what a rejection without a bucket tells a client
    /// to wait), rounded up.
    pub(crate) fn token_time(&self) -> Duration {
        let ns = self
            .settings
            .fill_interval_ns()
            .div_ceil(self.settings.tokens_per_fill());
        Duration::from_nanos(ns)
    }
}

impl TryFrom<Settings> for GlobalSettings {
    type Error = RangeError;

    fn try_from(settings: Settings) -> Result<Self, Self::Error> {
        GlobalSettings::new(settings)
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
    use meshlimit_bucket::{MAX_TOKENS_LIMIT, TOKENS_PER_FILL_LIMIT};

    use super::*;

    fn settings(max: u64, per_fill: u64, ns: u64, refill: Refill) -> Settings {
        Settings::new(max, per_fill, Duration::from_nanos(ns), refill).unwrap()
    }

    #[test]
    fn smooth_arguments_are_the_engines_scaled_units() {
        // 3 per second: time in thirds of a ns, a token is 1e9 of them.
        let g = GlobalSettings::new(settings(5, 3, 1_000_000_000, Refill::Smooth)).unwrap();
        assert_eq!(g.plan_args(), ("s", 5, 3, 1_000_000_000));
        // 10 per 10 s reduces to 1 per second.
        let g = GlobalSettings::new(settings(10, 10, 10_000_000_000, Refill::Smooth)).unwrap();
        assert_eq!(g.plan_args(), ("s", 10, 1, 1_000_000_000));
        assert_eq!(g.refill_time(), Duration::from_secs(10));
        let g = GlobalSettings::new(settings(10, 10, 10_000_000_000, Refill::Interval)).unwrap();
        assert_eq!(g.plan_args(), ("i", 10, 10, 10_000_000_000));
    }

    #[test]
    fn refill_time_rounds_up() {
        // 7 tokens at 2 per 3 ns: 10.5 ns smooth, 4 whole fills (12 ns) by interval: 1 ms.
        for refill in [Refill::Smooth, Refill::Interval] {
            let g = GlobalSettings::new(settings(7, 2, 3, refill)).unwrap();
            assert_eq!(g.refill_time(), Duration::from_millis(1));
        }
        let hour = 3_600_000_000_000;
        let g = GlobalSettings::new(settings(100_001, 100_001, hour, Refill::Smooth)).unwrap();
        assert_eq!(g.refill_time(), Duration::from_secs(3600));
        assert_eq!(g.token_time(), Duration::from_nanos(35_999_641));
    }

    #[test]
    fn the_engines_range_is_served_up_to_the_ttl_limit() {
        // The widest smooth plans the engine serves, and 584-year intervals.
        for (max, per_fill, ns) in [
            (MAX_TOKENS_LIMIT, TOKENS_PER_FILL_LIMIT, u64::MAX),
            (MAX_TOKENS_LIMIT, 1, 1 << 40),
            (1, 1, u64::MAX),
            (MAX_TOKENS_LIMIT, TOKENS_PER_FILL_LIMIT, 1),
        ] {
            for refill in [Refill::Smooth, Refill::Interval] {
                assert!(GlobalSettings::new(settings(max, per_fill, ns, refill)).is_ok());
            }
        }
        let too_long = settings(MAX_TOKENS_LIMIT, 1, u64::MAX, Refill::Smooth);
        let err = GlobalSettings::new(too_long).unwrap_err();
        assert!(matches!(err, RangeError::RefillTooLong { refill_ms, .. }
            if refill_ms == (u128::from(MAX_TOKENS_LIMIT) * u128::from(u64::MAX)).div_ceil(1_000_000)));
        let message = err.to_string();
        assert!(
            message.contains("2^61 ms") && message.contains("fill_interval"),
            "{message}"
        );
        // Just inside and just outside the limit.
        let ms = 1_000_000;
        assert!(
            GlobalSettings::new(settings(1 << 21, 1, (1 << 40) * ms, Refill::Interval)).is_ok()
        );
        assert!(
            GlobalSettings::new(settings((1 << 21) + 1, 1, (1 << 40) * ms, Refill::Interval))
                .is_err()
        );
    }
}
