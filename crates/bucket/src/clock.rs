//! Where buckets get the time: a [`Clock`] gives monotonic nanoseconds. Rate logic takes one as
//! a parameter so that tests drive time by hand with [`FakeClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// A source of monotonic time in nanoseconds. Values never go backwards for one clock.
pub trait Clock: Send + Sync + 'static {
    fn now_ns(&self) -> u64;
}

/// The real clock for data paths: the kernel's `CLOCK_MONOTONIC_COARSE`.
///
/// Reading it costs about 4 ns (a vDSO read of the time kept at the last timer tick), where
/// `CLOCK_MONOTONIC` — what `std::time::Instant::now` reads — costs about 30 ns on the machines
/// we measured (see the crate's benches). Its resolution is one kernel tick (1–4 ms): an
/// arrival is judged at the last tick, never in the future, so a token is never granted before
/// it accrues; at most it is granted one tick late. It never goes backwards and is the same on
/// every core (unlike a raw TSC). Envoy decides on its event loop's cached time in the same way.
/// Use [`PreciseMonotonicClock`] where sub-millisecond timing matters more than cost.
///
/// Why it is monotonic across cores, the way buckets use it. A caller reads the clock and then
/// checks (`bucket.check(clock.now_ns())`); a bucket's state counts the latest time a check
/// applied. So what must hold is: when a check happens-after another one (on any core: the
/// later one saw the earlier one's compare-and-swap, or started after it ended), its clock
/// reading is at least the earlier one's. A clock that breaks this — a per-core TSC whose
/// cores disagree, governor's default `quanta` clock in its issue 299 — makes the later check
/// see the bucket emptier than it is: a false denial, as often as the cores disagree.
/// `CLOCK_MONOTONIC_COARSE` is not a per-core counter: it is the single `timekeeper` value the
/// kernel publishes in the vDSO data page under a sequence count at each tick, and every core
/// reads that same word, so a read that happens-after another sees the same tick or a later
/// one. (Two checks that merely race — the one that read the clock first wins the
/// compare-and-swap second — are not the clock going backwards: the engine judges that check
/// at its own time, never with more tokens than the other left.)
/// `real_clocks_are_monotonic_across_threads_in_happens_before_order` checks the property on
/// two threads that hand a baton back and forth with release/acquire, each reading the clock
/// only once it holds the baton, as work handed from one core to another does.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let id = ClockId::MonotonicCoarse;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let id = ClockId::Monotonic;
        timespec_ns(clock_gettime(id))
    }
}

/// `CLOCK_MONOTONIC` at full resolution (the clock behind `std::time::Instant`), about 30 ns a
/// read. Shares its epoch with [`MonotonicClock`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PreciseMonotonicClock;

impl Clock for PreciseMonotonicClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        timespec_ns(clock_gettime(ClockId::Monotonic))
    }
}

#[inline]
fn timespec_ns(ts: rustix::time::Timespec) -> u64 {
    // Monotonic clocks count from boot: both fields are non-negative.
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock that reads `start_ns` until advanced.
    pub fn new(start_ns: u64) -> FakeClock {
        FakeClock {
            now: Arc::new(AtomicU64::new(start_ns)),
        }
    }

    /// Moves time forward (saturating at `u64::MAX` ns).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Sets the time. Tests that set it backwards get what they ask for.
    pub fn set_ns(&self, now_ns: u64) {
        self.now.store(now_ns, Ordering::Release);
    }
}

impl Clock for FakeClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_clones_share_time_and_saturate() {
        let a = FakeClock::new(5);
        let b = a.clone();
        a.advance(Duration::from_nanos(10));
        assert_eq!(b.now_ns(), 15);
        b.set_ns(u64::MAX - 1);
        a.advance(Duration::from_secs(1));
        assert_eq!(a.now_ns(), u64::MAX);
    }

    /// Two threads pass a baton carrying the last clock value read; each reads the clock only
    /// after it has acquired the baton (what a bucket's compare-and-swap gives two checks) and
    /// must never see an earlier time than the other thread saw.
    #[test]
    fn real_clocks_are_monotonic_across_threads_in_happens_before_order() {
        fn relay(clock: &(dyn Fn() -> u64 + Sync)) {
            const ROUNDS: u64 = 20_000;
            // Bit 0: whose turn; the rest: the time read by the previous holder, shifted.
            let baton = AtomicU64::new(0);
            std::thread::scope(|scope| {
                for me in 0..2u64 {
                    let baton = &baton;
                    scope.spawn(move || {
                        for _ in 0..ROUNDS {
                            let seen = loop {
                                let b = baton.load(Ordering::Acquire);
                                if b & 1 == me {
                                    break b >> 1;
                                }
                                std::hint::spin_loop();
                            };
                            let now = clock() >> 1;
                            assert!(now >= seen, "clock went back from {seen} to {now}");
                            baton.store((now << 1) | (1 - me), Ordering::Release);
                        }
                    });
                }
            });
        }
        relay(&|| MonotonicClock.now_ns());
        relay(&|| PreciseMonotonicClock.now_ns());
    }

    #[test]
    fn real_clocks_move_forward_and_agree() {
        let coarse = MonotonicClock;
        let precise = PreciseMonotonicClock;
        let c1 = coarse.now_ns();
        let p1 = precise.now_ns();
        // The coarse clock is the precise one as of the last tick: never ahead of it.
        assert!(c1 <= p1, "coarse {c1} ahead of precise {p1}");
        assert!(p1 > 0);
        let mut last = c1;
        for _ in 0..1000 {
            let c = coarse.now_ns();
            assert!(c >= last);
            last = c;
        }
    }
}
