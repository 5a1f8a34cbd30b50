//! What decides when Redis cannot: the failure modes, and the local share of a global limit.

use std::num::NonZeroU32;
use std::time::Duration;

use meshlimit_bucket::{Decision, Settings, SettingsError};

use crate::GlobalSettings;

/// How a check that failed or timed out is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FailureMode {
    /// Admit (Envoy's rate-limit filter without `failure_mode_deny`): an outage of Redis is
    /// not an outage of the service.
    #[default]
    Open,
    /// Reject, telling the client to retry after one token's time.
    Closed,
    /// Let the caller's local bucket decide, typically one built with [`local_share`] so that
    /// the instances together keep roughly the global rate.
    LocalShare,
}

impl FailureMode {
    /// The decision for a check of `settings` that Redis did not answer; `local` is asked only
    /// in [`FailureMode::LocalShare`].
    pub fn decide(self, settings: GlobalSettings, local: impl FnOnce() -> Decision) -> Decision {
        match self {
            // Nothing is known about the tokens left: claim none.
            FailureMode::Open => Decision::new(true, 0, Duration::ZERO),
            FailureMode::Closed => Decision::new(false, 0, settings.token_time()),
            FailureMode::LocalShare => local(),
        }
    }
}

/// One instance's share of a global limit shared by `instances`: the same tokens per fill
/// every `instances` fill intervals (the rate divided exactly), and the burst divided, rounded
/// down but at least one token. For the local bucket of [`FailureMode::LocalShare`].
pub fn local_share(global: Settings, instances: NonZeroU32) -> Result<Settings, SettingsError> {
    let n = u64::from(instances.get());
    let interval = global
        .fill_interval_ns()
        .checked_mul(n)
        .map(Duration::from_nanos)
        .unwrap_or(Duration::MAX);
    Settings::new(
        (global.max_tokens() / n).max(1),
        global.tokens_per_fill(),
        interval,
        global.refill(),
    )
}

#[cfg(test)]
mod tests {
    use meshlimit_bucket::Refill;

    use super::*;

    #[test]
    fn each_mode_decides_its_way() {
        let s = Settings::new(10, 4, Duration::from_secs(1), Refill::Smooth).unwrap();
        let g = GlobalSettings::new(s).unwrap();
        let local = Decision::new(true, 3, Duration::from_millis(5));
        assert!(FailureMode::Open.decide(g, || unreachable!()).admitted());
        let closed = FailureMode::Closed.decide(g, || unreachable!());
        assert!(!closed.admitted());
        assert_eq!(closed.next_token_in(), Duration::from_millis(250));
        assert_eq!(FailureMode::LocalShare.decide(g, || local), local);
    }

    #[test]
    fn a_share_divides_the_rate_exactly() {
        let s = Settings::new(100, 100, Duration::from_secs(1), Refill::Smooth).unwrap();
        let three = NonZeroU32::new(3).unwrap();
        let share = local_share(s, three).unwrap();
        assert_eq!(
            (
                share.max_tokens(),
                share.tokens_per_fill(),
                share.fill_interval()
            ),
            (33, 100, Duration::from_secs(3))
        );
        let tiny = Settings::new(1, 1, Duration::from_nanos(u64::MAX), Refill::Interval).unwrap();
        assert!(local_share(tiny, three).is_err());
        assert_eq!(
            local_share(tiny, NonZeroU32::MIN).unwrap(),
            tiny,
            "one instance keeps the whole limit"
        );
    }
}
