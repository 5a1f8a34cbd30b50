//! The client: one multiplexed Redis connection (kept up by redis-rs's `ConnectionManager`,
//! which pipelines concurrent checks on it), the per-check timeout, the failure mode and the
//! counters.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlimit_bucket::{Clock, Decision};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisResult, ServerErrorKind, Value};

use crate::key::{bucket_key, valid_prefix};
use crate::script;
use crate::settings::MAX_TTL_MARGIN_MS;
use crate::stats::{Counter, Counters, GlobalStats};
use crate::{FailureMode, GlobalError, GlobalSettings};

/// Whose clock a check is judged by.
#[derive(Clone, Default)]
pub enum TimeBase {
    /// The Redis server's `TIME` (microsecond resolution), read inside the script: one time
    /// base for every instance that shares a bucket, whatever their own clocks say.
    #[default]
    Redis,
    /// The caller's clock, passed with each check in nanoseconds. Every instance sharing a
    /// bucket must read the same clock, e.g. [`UnixClock`] on NTP-synchronised hosts (a
    /// monotonic clock counts from each host's boot, so it suits one host only). The bucket
    /// follows the latest time it has seen, so skew between them costs at most its size in
    /// refill, once.
    Caller(Arc<dyn Clock>),
}

impl fmt::Debug for TimeBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeBase::Redis => f.write_str("Redis"),
            TimeBase::Caller(_) => f.write_str("Caller(..)"),
        }
    }
}

/// Nanoseconds since the Unix epoch: the clock hosts can share for [`TimeBase::Caller`].
#[derive(Clone, Copy, Debug, Default)]
pub struct UnixClock;

impl Clock for UnixClock {
    fn now_ns(&self) -> u64 {
        // A clock set before 1970 reads as 1970; refill then just waits.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// How [`GlobalBuckets`] talks to Redis and decides without it.
#[derive(Clone, Debug)]
pub struct GlobalOptions {
    /// The longest a check (or a batch of checks) waits for Redis; past it the check fails
    /// with [`GlobalError::Timeout`]. 25 ms by default.
    pub timeout: Duration,
    /// How [`GlobalBuckets::fallback`] decides a failed check. [`FailureMode::Open`] by
    /// default.
    pub failure_mode: FailureMode,
    /// Whose clock judges the checks. [`TimeBase::Redis`] by default.
    pub time_base: TimeBase,
    /// Put before every key's hash tag; no braces. `meshlimit:` by default.
    pub key_prefix: String,
    /// Added to each key's TTL beyond the bucket's refill time, so that an idle key outlives
    /// the instant it is full by this much (covers a caller clock running slower than the
    /// server's). 1 s by default, at most 2^40 ms.
    pub ttl_margin: Duration,
    /// The longest [`GlobalBuckets::connect`] and each reconnection attempt wait for a TCP
    /// connection. 1 s by default.
    pub connect_timeout: Duration,
}

impl Default for GlobalOptions {
    fn default() -> Self {
        GlobalOptions {
            timeout: Duration::from_millis(25),
            failure_mode: FailureMode::Open,
            time_base: TimeBase::Redis,
            key_prefix: "meshlimit:".to_string(),
            ttl_margin: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// Token buckets in Redis, shared by every client that names the same key. Cheap to clone;
/// clones share the connection and the counters.
#[derive(Clone)]
pub struct GlobalBuckets {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    options: GlobalOptions,
    ttl_margin_ms: u64,
    counters: Counters,
}

impl fmt::Debug for GlobalBuckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalBuckets")
            .field("options", &self.inner.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GlobalBuckets {
    /// Connects to the Redis at `url` (`redis://host:port/db`) and loads the check script,
    /// each within `options.connect_timeout`. Later, a lost connection is re-established in
    /// the background while checks fail by their timeout.
    pub async fn connect(url: &str, options: GlobalOptions) -> Result<GlobalBuckets, GlobalError> {
        let buckets = GlobalBuckets::connect_lazy(url, options)?;
        let timeout = buckets.inner.options.connect_timeout;
        let mut conn = buckets.inner.conn.clone();
        let ready = async {
            // The first command makes the connection; loading the script now spares the
            // first checks a NOSCRIPT round trip each.
            load_script(&mut conn).await.map_err(|e| match e {
                GlobalError::Redis(source) => GlobalError::Connect {
                    url: url.to_string(),
                    source,
                },
                e => e,
            })
        };
        match tokio::time::timeout(timeout, ready).await {
            Ok(loaded) => loaded.map(|()| buckets),
            Err(_) => Err(GlobalError::ConnectTimeout {
                url: url.to_string(),
                timeout,
            }),
        }
    }

    /// Like [`GlobalBuckets::connect`] without waiting: the connection is made by the first
    /// check (which, if Redis is down, fails like any other). For a data plane that must start
    /// while Redis is away.
    pub fn connect_lazy(url: &str, options: GlobalOptions) -> Result<GlobalBuckets, GlobalError> {
        if !valid_prefix(&options.key_prefix) {
            return Err(GlobalError::InvalidOptions(format!(
                "key_prefix {:?} must not contain braces: the key's hash tag follows it",
                options.key_prefix
            )));
        }
        if options.timeout.is_zero() {
            return Err(GlobalError::InvalidOptions(
                "timeout must be longer than zero".to_string(),
            ));
        }
        let ttl_margin_ms = u64::try_from(options.ttl_margin.as_millis()).unwrap_or(u64::MAX);
        if ttl_margin_ms > MAX_TTL_MARGIN_MS {
            return Err(GlobalError::InvalidOptions(format!(
                "ttl_margin {:?} is longer than 2^40 ms",
                options.ttl_margin
            )));
        }
        let client = redis::Client::open(url).map_err(|e| GlobalError::InvalidUrl {
            url: url.to_string(),
            source: crate::error::RedisFailure(e),
        })?;
        // Few, quick reconnection attempts: while Redis is away a check should fail fast
        // (connection refused) rather than queue behind a long backoff; the next check after
        // a failed attempt starts another.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(5))
            .set_max_delay(Duration::from_millis(50));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(GlobalBuckets {
            inner: Arc::new(Inner {
                conn,
                options,
                ttl_margin_ms,
                counters: Counters::default(),
            }),
        })
    }

    /// Takes a token from the bucket `key` if it has one, judged by the configured
    /// [`TimeBase`]. Fails within the timeout; see [`GlobalBuckets::check_or_fallback`] for a
    /// decision either way.
    pub async fn check(
        &self,
        key: &str,
        settings: GlobalSettings,
    ) -> Result<Decision, GlobalError> {
        let cmd = self.cmd(key, &settings, self.caller_now());
        one(self.run(vec![cmd]).await?)
    }

    /// [`GlobalBuckets::check`] at `now_ns` on the caller's time base, whatever the options
    /// say (for replaying arrivals and for tests).
    pub async fn check_at(
        &self,
        key: &str,
        settings: GlobalSettings,
        now_ns: u64,
    ) -> Result<Decision, GlobalError> {
        let cmd = self.cmd(key, &settings, Some(now_ns));
        one(self.run(vec![cmd]).await?)
    }

    /// Several checks in one round trip (one pipeline, run in order; each is atomic, the batch
    /// is not). All answers, or the first failure; one timeout for the whole batch.
    pub async fn check_many(
        &self,
        checks: &[(&str, GlobalSettings)],
    ) -> Result<Vec<Decision>, GlobalError> {
        let now = self.caller_now();
        let cmds = checks
            .iter()
            .map(|(key, s)| self.cmd(key, s, now))
            .collect();
        self.run(cmds).await
    }

    /// [`GlobalBuckets::check_many`] with each check's own time on the caller's time base.
    pub async fn check_many_at(
        &self,
        checks: &[(&str, GlobalSettings, u64)],
    ) -> Result<Vec<Decision>, GlobalError> {
        let cmds = checks
            .iter()
            .map(|(key, s, now)| self.cmd(key, s, Some(*now)))
            .collect();
        self.run(cmds).await
    }

    /// [`GlobalBuckets::check`], and when it fails, the failure mode's decision (`local` is
    /// the caller's own bucket, asked only in [`FailureMode::LocalShare`]).
    pub async fn check_or_fallback(
        &self,
        key: &str,
        settings: GlobalSettings,
        local: impl FnOnce() -> Decision,
    ) -> Decision {
        match self.check(key, settings).await {
            Ok(decision) => decision,
            Err(_) => self.fallback(settings, local),
        }
    }

    /// The configured failure mode's decision for a check of `settings` that failed, counted
    /// as a fallback.
    pub fn fallback(&self, settings: GlobalSettings, local: impl FnOnce() -> Decision) -> Decision {
        self.inner.counters.add(Counter::Fallbacks, 1);
        self.inner.options.failure_mode.decide(settings, local)
    }

    /// The counters so far.
    pub fn stats(&self) -> GlobalStats {
        self.inner.counters.snapshot()
    }

    /// The Redis key that holds the bucket `key`: `<prefix>{<key>}`.
    pub fn key_name(&self, key: &str) -> String {
        bucket_key(&self.inner.options.key_prefix, key)
    }

    /// The options this client was built with.
    pub fn options(&self) -> &GlobalOptions {
        &self.inner.options
    }

    fn caller_now(&self) -> Option<u64> {
        match &self.inner.options.time_base {
            TimeBase::Redis => None,
            TimeBase::Caller(clock) => Some(clock.now_ns()),
        }
    }

    fn cmd(&self, key: &str, settings: &GlobalSettings, now: Option<u64>) -> Cmd {
        // Both terms are bounded (2^61 and 2^40 ms): no overflow.
        let ttl_ms = settings.refill_ms() + self.inner.ttl_margin_ms;
        script::check_cmd(&self.key_name(key), settings, now, ttl_ms.max(1))
    }

    /// Sends `cmds` within the timeout and counts what happened.
    async fn run(&self, cmds: Vec<Cmd>) -> Result<Vec<Decision>, GlobalError> {
        let counters = &self.inner.counters;
        let n = cmds.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        counters.add(Counter::Checks, n);
        let timeout = self.inner.options.timeout;
        match tokio::time::timeout(timeout, self.send(&cmds)).await {
            Ok(Ok(decisions)) => Ok(decisions),
            Ok(Err(e)) => {
                counters.add(Counter::Errors, n);
                Err(e)
            }
            Err(_) => {
                counters.add(Counter::Timeouts, n);
                Err(GlobalError::Timeout(timeout))
            }
        }
    }

    /// EVALSHA for every check; those that find the script missing (a restarted or flushed
    /// server) are sent again, once, after loading it. Only those: the others have run.
    async fn send(&self, cmds: &[Cmd]) -> Result<Vec<Decision>, GlobalError> {
        let mut conn = self.inner.conn.clone();
        let mut replies = exec(&mut conn, cmds.iter()).await?;
        let missing: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| is_noscript(r))
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            load_script(&mut conn).await?;
            let again = exec(&mut conn, missing.iter().map(|&i| &cmds[i])).await?;
            for (i, reply) in missing.into_iter().zip(again) {
                replies[i] = reply;
            }
        }
        replies
            .into_iter()
            .map(|reply| script::decision(reply?))
            .collect()
    }
}

/// The one decision of a one-check batch.
fn one(decisions: Vec<Decision>) -> Result<Decision, GlobalError> {
    decisions
        .into_iter()
        .next()
        .ok_or_else(|| GlobalError::Reply("no answer to a check".to_string()))
}

/// One command alone, or a pipeline whose commands each answer for themselves; one answer
/// per command, or an error.
async fn exec<'a>(
    conn: &mut ConnectionManager,
    cmds: impl ExactSizeIterator<Item = &'a Cmd>,
) -> Result<Vec<RedisResult<Value>>, GlobalError> {
    let n = cmds.len();
    let replies = exec_unchecked(conn, cmds).await?;
    if replies.len() != n {
        return Err(GlobalError::Reply(format!(
            "{} answers to {n} commands",
            replies.len()
        )));
    }
    Ok(replies)
}

async fn exec_unchecked<'a>(
    conn: &mut ConnectionManager,
    mut cmds: impl ExactSizeIterator<Item = &'a Cmd>,
) -> Result<Vec<RedisResult<Value>>, GlobalError> {
    if cmds.len() == 1
        && let Some(cmd) = cmds.next()
    {
        let reply = cmd.query_async::<Value>(conn).await;
        // A server's error answers this command; anything else is the connection's.
        return match reply {
            Err(e) if e.is_io_error() => Err(e.into()),
            reply => Ok(vec![reply]),
        };
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for cmd in cmds {
        pipe.add_command(cmd.clone());
    }
    Ok(pipe.query_async(conn).await?)
}

fn is_noscript(reply: &RedisResult<Value>) -> bool {
    matches!(reply, Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript))
}

async fn load_script(conn: &mut ConnectionManager) -> Result<(), GlobalError> {
    let sha: String = script::load_cmd().query_async(conn).await?;
    if sha != script::sha() {
        return Err(GlobalError::Reply(format!(
            "SCRIPT LOAD answered {sha}, not the script's SHA-1 {}",
            script::sha()
        )));
    }
    Ok(())
}
