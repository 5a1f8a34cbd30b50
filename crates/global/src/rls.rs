//! An Envoy rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`) over
//! [`GlobalBuckets`]: what Envoy's `envoy.filters.http.ratelimit` filter asks, for the
//! descriptors meshlimit's xDS renders for a `MeshGlobalRateLimit`.
//!
//! Each descriptor names its bucket and carries its total (see
//! [`meshlimit_policy::global::descriptor`]), so the service holds no configuration: a
//! descriptor takes one token from the bucket `meshlimit_key`, a smooth bucket of `num` tokens
//! refilled at `num` per interval. The answer is `OVER_LIMIT` if any descriptor is over its
//! limit, else `OK`.
//!
//! - Descriptors that are not meshlimit's (another domain, no `meshlimit_key`) or that do not
//!   parse are answered `OK` and counted as unknown: the service cannot judge them, and
//!   rejecting traffic for a descriptor nobody configured here would be worse than letting it
//!   through.
//! - When Redis fails or times out the call fails with `UNAVAILABLE`, so that Envoy applies
//!   its own `failure_mode_deny`, which is where the policy's `Open` and `Closed` failure
//!   modes live. A `LocalShare` limit's descriptor carries the sending instance's share
//!   ([`meshlimit_policy::global::DESCRIPTOR_SHARE`]): then the service itself decides, from a
//!   bucket per (limit, instance) held in memory, so that the instances together keep the
//!   total as the meshlimit proxies' own shares do. Those buckets live only while Redis is
//!   failing in effect: they start full, and at [`MAX_SHARE_BUCKETS`] the service forgets the
//!   full ones (exactly: a full bucket is a new one), then, if it must, the one closest to
//!   full, never a drained one.
//! - `hits_addend` above 1 is refused (`INVALID_ARGUMENT`): a check takes exactly one token,
//!   and taking several is not one atomic step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use meshlimit_bucket::{Bucket, Clock, Decision, MonotonicClock};
use meshlimit_policy::Rate;
use meshlimit_policy::global::{LocalShare, parse_descriptor};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::{GlobalBuckets, GlobalSettings};

/// The rate-limit domain of meshlimit's descriptors (the filter's `domain`).
pub const DOMAIN: &str = meshlimit_policy::global::DESCRIPTOR_DOMAIN;

/// The most (limit, instance) share buckets kept for `LocalShare` fallbacks, so that
/// descriptors made up by a peer cannot grow the service's memory; nor can they refill a
/// drained bucket by pushing it out (see [`ShareBuckets::make_room`]).
pub const MAX_SHARE_BUCKETS: usize = 10_000;

/// The service; cheap to clone, clones share the buckets and the counters.
#[derive(Clone)]
pub struct RateLimitServer {
    buckets: GlobalBuckets,
    counters: Arc<RlsCounters>,
    shares: Arc<ShareBuckets>,
}

impl std::fmt::Debug for RateLimitServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitServer")
            .field("buckets", &self.buckets)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Each instance's share of a `LocalShare` limit, for when Redis fails.
struct ShareBuckets {
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<(String, u32), Arc<Bucket>>>,
    capacity: usize,
}

impl ShareBuckets {
    fn check(&self, key: &str, share: LocalShare) -> Decision {
        let now = self.clock.now_ns();
        let settings = share.rate.settings();
        let bucket = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if buckets.len() >= self.capacity
                && !buckets.contains_key(&(key.to_string(), share.index))
            {
                Self::make_room(&mut buckets, self.capacity, now);
            }
            buckets
                .entry((key.to_string(), share.index))
                .or_insert_with(|| Arc::new(Bucket::new(settings, now)))
                .clone()
        };
        // The share moves when instances join or leave: keep the tokens, take the new rate.
        if bucket.settings() != settings {
            bucket.reconfigure(settings, now);
        }
        bucket.check(now)
    }

    /// Room for one more bucket: the full ones go (a full bucket is exactly a new one), and
    /// while that is not enough the one with the fewest tokens missing. A drained bucket is
    /// the last to go, so that a flood of made-up descriptors cannot hand its limit a fresh
    /// burst.
    fn make_room(buckets: &mut HashMap<(String, u32), Arc<Bucket>>, capacity: usize, now: u64) {
        let missing = |bucket: &Bucket| {
            bucket
                .settings()
                .max_tokens()
                .saturating_sub(bucket.peek(now))
        };
        buckets.retain(|_, bucket| missing(bucket) > 0);
        while buckets.len() >= capacity {
            let Some(closest) = buckets
                .iter()
                .min_by_key(|(_, bucket)| missing(bucket))
                .map(|(key, _)| key.clone())
            else {
                return;
            };
            buckets.remove(&closest);
        }
    }
}

#[derive(Debug, Default)]
struct RlsCounters {
    requests: AtomicU64,
    checks: AtomicU64,
    over_limit: AtomicU64,
    unknown: AtomicU64,
    errors: AtomicU64,
    local_share: AtomicU64,
}

/// What the service answered so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RlsStats {
    /// `ShouldRateLimit` calls.
    pub requests: u64,
    /// Descriptors checked against a bucket (one token each).
    pub checks: u64,
    /// Of those, the ones over their limit.
    pub over_limit: u64,
    /// Descriptors answered `OK` without a check: not meshlimit's, or malformed.
    pub unknown: u64,
    /// Calls that Redis failed (unreachable or late, including those then decided by a
    /// local share) or that were refused.
    pub errors: u64,
    /// Descriptors decided by the sender's local share because Redis failed.
    pub local_share: u64,
}

impl RateLimitServer {
    pub fn new(buckets: GlobalBuckets) -> RateLimitServer {
        RateLimitServer::with_clock(buckets, Arc::new(MonotonicClock))
    }

    /// With the clock of the `LocalShare` fallback buckets.
    pub fn with_clock(buckets: GlobalBuckets, clock: Arc<dyn Clock>) -> RateLimitServer {
        RateLimitServer {
            buckets,
            counters: Arc::default(),
            shares: Arc::new(ShareBuckets {
                clock,
                buckets: Mutex::default(),
                capacity: MAX_SHARE_BUCKETS,
            }),
        }
    }

    /// Keeps at most `capacity` `LocalShare` fallback buckets (default
    /// [`MAX_SHARE_BUCKETS`]; at least 1).
    pub fn with_max_share_buckets(self, capacity: usize) -> RateLimitServer {
        let shares = ShareBuckets {
            clock: Arc::clone(&self.shares.clock),
            buckets: Mutex::default(),
            capacity: capacity.max(1),
        };
        RateLimitServer {
            shares: Arc::new(shares),
            ..self
        }
    }

    pub fn stats(&self) -> RlsStats {
        let c = &self.counters;
        RlsStats {
            requests: c.requests.load(Ordering::Relaxed),
            checks: c.checks.load(Ordering::Relaxed),
            over_limit: c.over_limit.load(Ordering::Relaxed),
            unknown: c.unknown.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            local_share: c.local_share.load(Ordering::Relaxed),
        }
    }

    /// The buckets the service checks.
    pub fn buckets(&self) -> &GlobalBuckets {
        &self.buckets
    }

    /// The tonic service, to mount next to other gRPC services on one server.
    pub fn into_service(self) -> RateLimitServiceServer<RateLimitServer> {
        RateLimitServiceServer::new(self)
    }

    /// Serves gRPC over HTTP/2 without TLS until the listener fails.
    pub async fn serve(self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    }

    /// Serves until `signal` completes.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
            .await
    }

    /// The answer to one request (the gRPC method without its envelope).
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        if request.hits_addend > 1 {
            c.errors.fetch_add(1, Ordering::Relaxed);
            return Err(Status::invalid_argument(format!(
                "hits_addend {} is not supported: each request takes one token",
                request.hits_addend
            )));
        }
        let ours = request.domain == DOMAIN;
        // (descriptor index, bucket, settings, total, share) of every descriptor to check.
        let mut checks = Vec::new();
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            let entries = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()));
            let parsed = ours.then(|| parse_descriptor(entries).ok()).flatten();
            // Every rate a policy holds is within what a global bucket serves; a hand-made
            // descriptor beyond it is as unknown as a malformed one.
            let settings = parsed
                .as_ref()
                .and_then(|d| GlobalSettings::new(d.total.settings()).ok());
            match (parsed, settings) {
                (Some(d), Some(settings)) => checks.push((i, d.key, settings, d.total, d.share)),
                _ => {
                    c.unknown.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let batch: Vec<(&str, GlobalSettings)> = checks
            .iter()
            .map(|(_, k, s, _, _)| (k.as_str(), *s))
            .collect();
        let decisions = match self.buckets.check_many(&batch).await {
            Ok(decisions) => decisions,
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                // Only when every descriptor can fall back to its sender's share; otherwise
                // Envoy's own failure mode decides the whole request.
                let shares: Option<Vec<LocalShare>> = checks.iter().map(|(.., s)| *s).collect();
                match shares {
                    Some(shares) if !checks.is_empty() => {
                        c.local_share
                            .fetch_add(shares.len() as u64, Ordering::Relaxed);
                        checks
                            .iter()
                            .zip(shares)
                            .map(|((_, key, ..), share)| self.shares.check(key, share))
                            .collect()
                    }
                    _ => {
                        return Err(Status::unavailable(format!(
                            "rate-limit counters unavailable: {e}"
                        )));
                    }
                }
            }
        };
        c.checks
            .fetch_add(decisions.len() as u64, Ordering::Relaxed);

        let mut statuses = vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            };
            request.descriptors.len()
        ];
        let mut overall = Code::Ok;
        for ((i, _, _, total, _), decision) in checks.iter().zip(&decisions) {
            let admitted = decision.admitted();
            if !admitted {
                overall = Code::OverLimit;
                c.over_limit.fetch_add(1, Ordering::Relaxed);
            }
            statuses[*i] = DescriptorStatus {
                code: if admitted { Code::Ok } else { Code::OverLimit } as i32,
                current_limit: current_limit(*total),
                limit_remaining: u32::try_from(decision.remaining()).unwrap_or(u32::MAX),
                // How long until the next request can pass: meaningful only when this one
                // could not.
                duration_until_reset: (!admitted).then(|| duration(decision.next_token_in())),
                ..Default::default()
            };
        }
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitServer {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}

/// The total in the service's units, when its interval is exactly one of them (the protocol
/// has no others; the field is informational).
fn current_limit(total: Rate) -> Option<RateLimit> {
    let unit = match total.interval().as_secs() {
        _ if total.interval().subsec_nanos() != 0 => return None,
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => return None,
    };
    Some(RateLimit {
        requests_per_unit: total.num().get(),
        unit: unit as i32,
        ..Default::default()
    })
}

fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_units_are_reported_as_the_current_limit() {
        let rate = |num, d| Rate::new(num, d).expect("valid rate");
        let limit = current_limit(rate(5, Duration::from_secs(60))).expect("a minute");
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (5, Unit::Minute as i32)
        );
        assert_eq!(current_limit(rate(5, Duration::from_secs(10))), None);
        assert_eq!(current_limit(rate(5, Duration::from_millis(1500))), None);
    }
}
