//! Plain counters of what the client did, read with [`crate::GlobalBuckets::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    checks: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    fallbacks: AtomicU64,
}

/// A snapshot of the counters, each counted since the client was built (clones share them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Checks asked of Redis (each check of a batch counts).
    pub checks: u64,
    /// Checks that failed with an error other than a timeout (each check of a failed batch).
    pub errors: u64,
    /// Checks that got no answer within the timeout.
    pub timeouts: u64,
    /// Decisions made by the failure mode instead of Redis.
    pub fallbacks: u64,
}

pub(crate) enum Counter {
    Checks,
    Errors,
    Timeouts,
    Fallbacks,
}

impl Counters {
    pub(crate) fn add(&self, counter: Counter, n: usize) {
        let c = match counter {
            Counter::Checks => &self.checks,
            Counter::Errors => &self.errors,
            Counter::Timeouts => &self.timeouts,
            Counter::Fallbacks => &self.fallbacks,
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> GlobalStats {
        GlobalStats {
            checks: self.checks.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}
