//! Followers: a data plane's limits as data on a `tokio::sync::watch` channel.
//!
//! [`follow_dataplane`] and [`follow_kernel`] open the control plane's `?watch=true` stream in a
//! task and keep it open for good: a dead connection (no line within
//! [`FollowConfig::idle_timeout`], heartbeats come every few seconds) is reopened after a
//! jittered, capped exponential backoff. Each data path consumes the [`Followed::limits`]
//! receiver the same way whatever the source: the latest [`Versioned`] value is what to enforce,
//! and while the control plane is away it stays the last one received. [`Followed::link`] says
//! whether the stream is up, for the operator. The task ends when every limits receiver is gone.

use std::time::Duration;

use meshlimit_policy::Versioned;
use meshlimit_policy::effective::{DataplaneLimits, KernelLimit};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::client::Client;
use crate::paths;
use crate::wire::StreamEvent;

/// How a follower behaves.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// No line for this long (heartbeats come every 5 s) means the connection is dead.
    pub idle_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        FollowConfig {
            idle_timeout: Duration::from_secs(15),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
        }
    }
}

/// The state of the stream to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// The stream is open and lines arrive.
    Connected,
    /// The stream broke; the follower retries after `retry_in`. The limits stay as they were.
    Disconnected { error: String, retry_in: Duration },
}

/// What a follower yields.
pub struct Followed<T> {
    /// The limits to enforce, as of a store version (`version: None` until the first arrived).
    pub limits: watch::Receiver<Versioned<T>>,
    pub link: watch::Receiver<Link>,
}

/// Follows one dataplane's effective limits: none while the control plane has no Dataplane of
/// that name, else exactly one.
pub fn follow_dataplane(
    client: &Client,
    mesh: &str,
    name: &str,
    config: FollowConfig,
) -> Followed<Vec<DataplaneLimits>> {
    let path = paths::dataplane_limits_watch(mesh, name);
    follow(
        client.clone(),
        path,
        config,
        |limits: Option<DataplaneLimits>| limits.into_iter().collect(),
    )
}

/// Follows every kernel limit, as kernel agent `agent`.
pub fn follow_kernel(
    client: &Client,
    agent: &str,
    config: FollowConfig,
) -> Followed<Vec<KernelLimit>> {
    let path = paths::kernel_limits_watch(agent);
    follow(
        client.clone(),
        path,
        config,
        |limits: Option<Vec<KernelLimit>>| limits.unwrap_or_default(),
    )
}

/// Follows the stream at `path` in a task; `into` turns each event's limits into the value.
fn follow<W, T>(
    client: Client,
    path: String,
    config: FollowConfig,
    into: fn(Option<W>) -> T,
) -> Followed<T>
where
    W: DeserializeOwned + Send + 'static,
    T: Default + PartialEq + Send + Sync + 'static,
{
    let (limits_tx, limits) = watch::channel(Versioned::default());
    let (link_tx, link) = watch::channel(Link::Connecting);
    tokio::spawn(async move {
        tokio::select! {
            () = run(&client, &path, &config, into, &limits_tx, &link_tx) => {}
            () = limits_tx.closed() => {}
        }
    });
    Followed { limits, link }
}

async fn run<W, T>(
    client: &Client,
    path: &str,
    config: &FollowConfig,
    into: fn(Option<W>) -> T,
    limits: &watch::Sender<Versioned<T>>,
    link: &watch::Sender<Link>,
) where
    W: DeserializeOwned,
    T: PartialEq,
{
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    loop {
        let error = match client.watch::<W>(path).await {
            Err(e) => e.to_string(),
            Ok(mut stream) => loop {
                match tokio::time::timeout(config.idle_timeout, stream.next()).await {
                    Err(_) => break format!("no heartbeat for {:?}", config.idle_timeout),
                    Ok(Err(e)) => break e.to_string(),
                    Ok(Ok(None)) => break "the control plane closed the stream".to_string(),
                    Ok(Ok(Some(event))) => {
                        backoff.reset();
                        link.send_if_modified(|l| set(l, Link::Connected));
                        apply(limits, event, into);
                    }
                }
            },
        };
        let retry_in = backoff.next_delay();
        link.send_replace(Link::Disconnected { error, retry_in });
        tokio::time::sleep(retry_in).await;
    }
}

/// A new value is published only when it differs; a heartbeat only moves the version of limits
/// already received.
fn apply<W, T: PartialEq>(
    limits: &watch::Sender<Versioned<T>>,
    event: StreamEvent<W>,
    into: fn(Option<W>) -> T,
) {
    match event {
        StreamEvent::Limits { version, limits: l } => {
            limits.send_if_modified(|current| set(current, Versioned::new(version, into(l))));
        }
        StreamEvent::Heartbeat { version } => {
            limits.send_if_modified(|current| match current.version {
                Some(v) if v != version => {
                    current.version = Some(version);
                    true
                }
                _ => false,
            });
        }
    }
}

fn set<T: PartialEq>(slot: &mut T, value: T) -> bool {
    let changed = *slot != value;
    if changed {
        *slot = value;
    }
    changed
}

/// Exponential backoff with "equal jitter": each delay is half the capped exponential step plus a
/// random share of the other half, so many data planes do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_millis(100)
                .saturating_mul(1 << i)
                .min(Duration::from_secs(5));
            assert!(
                *d >= step / 2 && *d <= step,
                "attempt {i}: {d:?} vs step {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn limits_change_only_when_they_differ_and_heartbeats_move_the_version() {
        let (tx, mut rx) = watch::channel(Versioned::<Vec<u32>>::default());
        let into = |l: Option<Vec<u32>>| l.unwrap_or_default();
        // A heartbeat before any limits says nothing.
        apply(&tx, StreamEvent::Heartbeat { version: 3 }, into);
        assert!(!rx.has_changed().unwrap());
        apply(
            &tx,
            StreamEvent::Limits {
                version: 4,
                limits: Some(vec![1]),
            },
            into,
        );
        assert_eq!(*rx.borrow_and_update(), Versioned::new(4, vec![1]));
        apply(&tx, StreamEvent::Heartbeat { version: 4 }, into);
        assert!(!rx.has_changed().unwrap());
        apply(&tx, StreamEvent::Heartbeat { version: 6 }, into);
        assert_eq!(*rx.borrow_and_update(), Versioned::new(6, vec![1]));
        apply(
            &tx,
            StreamEvent::Limits {
                version: 6,
                limits: Some(vec![1]),
            },
            into,
        );
        assert!(!rx.has_changed().unwrap());
    }
}
