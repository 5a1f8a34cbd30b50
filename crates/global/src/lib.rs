//! Global token buckets: one bucket shared by every instance of a service, kept in Redis and
//! judged with exactly the arithmetic of `meshlimit-bucket` (the same [`Settings`], [`Refill`]
//! modes and [`Decision`]s), so that "100 per second for the whole service" means what a local
//! bucket means, across any number of instances.
//!
//! [`rls`] serves these buckets to Envoy as its rate-limit service ([`RateLimitServer`]).
//!
//! Start with [`GlobalBuckets`] (connect, then `check(key, settings)`), [`GlobalSettings`]
//! (engine settings checked once for what a global bucket can serve) and [`FailureMode`] (what
//! decides when Redis does not answer within the timeout). The bucket logic itself is one Lua
//! script, `check.lua`, which Redis runs atomically per check: it reads the bucket's key,
//! refills, takes a token if there is one and writes the key back with a TTL. Redis, because
//! a shared bucket needs one place that serialises every instance's checks, and Redis does
//! that with a single atomic script per check — one round trip, pipelined with the other
//! checks on one multiplexed connection — as Envoy's own rate-limit service does. The rest of
//! the tree sees only this small interface, never Redis.
//!
//! **Time base.** The script takes the time as its first argument, so that one script serves
//! both bases. By default the argument is empty and the script reads Redis's own `TIME`:
//! instances sharing a bucket then share one clock however far their hosts' clocks drift,
//! which is what a shared bucket needs. (A script that reads `TIME` and then writes is
//! replicated by its effects, the only mode of Redis 7, which Debian ships, and the default
//! since 5; the script asks for it on older servers.) The cost is the server's microsecond
//! resolution. [`TimeBase::Caller`] passes the caller's clock in nanoseconds instead: exact
//! arrival times for tests and replay (the property tests judge the script against the model
//! this way), or hosts on one synchronised clock. Either way the bucket follows the latest
//! time it has seen: a clock behind that gets no refill until it catches up, and a clock
//! ahead (a host's, or a failed-over server's) advances the bucket by at most its lead, once.
//!
//! **Exactness.** Lua numbers are doubles, exact only below 2^53, while the engine's
//! quantities reach 2^104 (a smooth bucket of 2^40 tokens of up to 2^64 scaled units each) and
//! its clock values 2^64. The state is the engine's: smooth buckets in its scaled units (time
//! in 1/`rate_den` ns, tokens in 1/`token`), so accrual is exact with no rounding; interval
//! buckets count whole fill intervals from their last top-up. The script has two paths with
//! the same answers. Most checks — a plan whose largest quantity (the smooth window, or the
//! fill interval) is below 2^53, within 104 days of the bucket's last write — run in plain
//! doubles: the elapsed time is taken apart into seconds and nanoseconds, and the only two
//! products that can round do so only past 2^53, where every comparison they feed comes out
//! the same. Every other check runs on natural numbers in 21-bit limbs, in which every limb
//! product and carry stays below 2^53; division estimates the quotient in doubles, shrunk so
//! that it never overshoots, and corrects it exactly. Every setting the engine accepts is
//! served exactly except those whose refill from empty takes over 2^61 ms (73 million
//! years), which [`GlobalSettings::new`] refuses: a key's TTL must cover its refill time, and
//! Redis cannot hold a longer one. The property tests compare both paths with the engine's
//! [`model::ReferenceBucket`](meshlimit_bucket::model::ReferenceBucket) on a real server.

mod client;
mod error;
mod failure;
mod key;
pub mod rls;
mod script;
mod settings;
mod stats;

pub use client::{GlobalBuckets, GlobalOptions, TimeBase, UnixClock};
pub use error::{GlobalError, RedisFailure};
pub use failure::{FailureMode, local_share};
pub use key::hash_tag;
pub use meshlimit_bucket::{Decision, Refill, Settings};
pub use rls::{RateLimitServer, RlsStats};
pub use settings::{GlobalSettings, MAX_REFILL_MS, MAX_TTL_MARGIN_MS, RangeError};
pub use stats::GlobalStats;
