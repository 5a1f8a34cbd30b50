//! What one data-plane instance enforces, after matching and merging: the output of the
//! policy engine and the input of every data path (proxy, kernel agent, xDS).

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::quota::{HeaderValue, Quota, Rate, RejectStatus, TokenBucket};

/// Data as of a store version: what a follower yields on its `watch` channel and a data path
/// enforces. `version` is `None` until the first value arrived from the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versioned<T> {
    pub version: Option<u64>,
    pub value: T,
}

impl<T> Versioned<T> {
    pub fn new(version: u64, value: T) -> Versioned<T> {
        Versioned {
            version: Some(version),
            value,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RejectHeaders {
    /// Overwrite (or add) these headers on a rejected response.
    pub set: Vec<HeaderValue>,
    /// Append these headers on a rejected response.
    pub add: Vec<HeaderValue>,
}

/// The HTTP limit of one inbound; present only when something is enforced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpLimit {
    pub request_rate: Rate,
    /// The policy whose `requestRate` won the merge: rejections and the rate-limit header
    /// fields name it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    /// 429 when the policy leaves it unset.
    pub status: RejectStatus,
    pub headers: RejectHeaders,
}

/// The TCP limit of one inbound; present only when something is enforced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpLimit {
    pub connection_rate: Rate,
}

/// What an instance does with a request over a global limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GlobalMode {
    /// Reject it.
    #[default]
    Limit,
    /// Let it through, and count it as rejected (to try a limit out).
    Shadow,
}

/// What an instance does while the rate-limit service holding a global limit's counters
/// cannot be reached (a meshlimit extension of Kong's `limitOnServiceFail`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureMode {
    /// Admit every request (Envoy's default, and `limitOnServiceFail: false`).
    #[default]
    Open,
    /// Reject every request (`limitOnServiceFail: true`).
    Closed,
    /// Enforce this instance's [`GlobalLimit::share`] locally.
    LocalShare,
}

/// A `MeshGlobalRateLimit` on one inbound: a total for every instance of the service, and
/// this instance's part of it. Present only when something is enforced.
///
/// With a `rate_limit_service` the instances count against one shared bucket, named `key`;
/// without one (or, in [`FailureMode::LocalShare`], while it cannot be reached) each enforces
/// `share` locally, and the shares of the live instances add up to `request_rate`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalLimit {
    /// The inbound's `kuma.io/service` tag.
    pub service: String,
    /// The shared bucket: `mgrl/<mesh>/<policy>/<service>`, where `<policy>` is the
    /// `MeshGlobalRateLimit` whose `requestRate` won the merge. Mesh and policy names cannot
    /// hold `/`, so the service (which may) comes last. Every instance enforcing the same
    /// rate from the same policy for the same service shares it, whatever its inbound port.
    pub key: String,
    /// The total, for all instances together.
    pub request_rate: Rate,
    /// This instance's part of the total, from [`crate::global::share`].
    pub share: Rate,
    /// How many live instances share `key`.
    pub instances: u32,
    /// This instance's place among them, ordered by (Dataplane name, inbound port).
    pub index: u32,
    pub mode: GlobalMode,
    /// 429 when the policy leaves it unset.
    pub status: RejectStatus,
    pub headers: RejectHeaders,
    /// The rate-limit service's URL; `None` when the shares are enforced locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<String>,
    /// For a request to the rate-limit service (25ms when unset, as Kong's).
    #[serde(with = "crate::duration::serde_go")]
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    /// The `MeshGlobalRateLimit` whose `requestRate` won the merge (it names `key`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    /// Names of the `MeshGlobalRateLimit`s that contributed, least specific first.
    pub policies: Vec<String>,
}

impl GlobalLimit {
    /// The rate-limit descriptor an Envoy sends for this limit (see
    /// [`crate::global::descriptor`]); with `LocalShare`, it carries this instance's share,
    /// which the rate-limit service enforces for it when Redis fails.
    pub fn descriptor(&self) -> Vec<(String, String)> {
        match self.failure_mode {
            FailureMode::LocalShare => crate::global::descriptor_with_share(
                &self.key,
                self.request_rate,
                crate::global::LocalShare {
                    index: self.index,
                    rate: self.share,
                },
            ),
            _ => crate::global::descriptor(&self.key, self.request_rate),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

/// One inbound of a Dataplane and what is enforced on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundLimits {
    pub port: u16,
    pub service_port: u16,
    /// The inbound's `kuma.io/service` tag.
    pub service: String,
    pub protocol: Protocol,
    pub http: Option<HttpLimit>,
    pub tcp: Option<TcpLimit>,
    /// Names of the policies that contributed, least specific first.
    pub policies: Vec<String>,
    /// The `MeshGlobalRateLimit` on this inbound, if any (HTTP inbounds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalLimit>,
    /// HTTP limits for clients matched by `rules[].matches[].spiffeID`, most specific first:
    /// the routes Kuma's Envoy takes for a client certificate with a matching URI SAN. The
    /// first matching one applies instead of `http`. meshlimit's proxy sees no client
    /// certificate, so only Envoy enforces these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceLimit>,
}

/// The HTTP limit for clients whose SPIFFE ID matches (see [`InboundLimits::sources`]);
/// `http` is `None` when the merged conf for them enforces nothing (disabled, or no rate).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceLimit {
    pub spiffe_id: SpiffeIdMatch,
    /// The TLS server name the client must also have asked for (a match with both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    pub http: Option<HttpLimit>,
}

/// A `spiffeID` match: the client's ID equals `value`, or starts with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpiffeIdMatch {
    #[serde(rename = "type")]
    pub kind: SpiffeMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpiffeMatchType {
    Exact,
    Prefix,
}

/// A `RateLimit` rule resolved to one destination (an inbound of some Dataplane). On the wire
/// the bucket's fields sit beside the destination's (`maxTokens`, `tokensPerFill`,
/// `fillIntervalNs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "KernelLimitForm", into = "KernelLimitForm")]
pub struct KernelLimit {
    pub service: String,
    pub address: String,
    pub port: u16,
    pub bucket: TokenBucket,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KernelLimitForm {
    service: String,
    address: String,
    port: u16,
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval_ns: u64,
}

impl From<KernelLimit> for KernelLimitForm {
    fn from(l: KernelLimit) -> KernelLimitForm {
        KernelLimitForm {
            max_tokens: l.bucket.max_tokens(),
            tokens_per_fill: l.bucket.tokens_per_fill(),
            fill_interval_ns: l.bucket.fill_interval_ns(),
            service: l.service,
            address: l.address,
            port: l.port,
        }
    }
}

impl TryFrom<KernelLimitForm> for KernelLimit {
    type Error = crate::quota::QuotaError;

    fn try_from(f: KernelLimitForm) -> Result<KernelLimit, Self::Error> {
        Ok(KernelLimit {
            bucket: TokenBucket::new(f.max_tokens, f.tokens_per_fill, f.fill_interval_ns)?,
            service: f.service,
            address: f.address,
            port: f.port,
        })
    }
}

/// Everything one Dataplane enforces. Serialized, this is the JSON of `meshlimit inspect -o json`
/// and of the admin `/config` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneLimits {
    pub dataplane: String,
    pub mesh: String,
    /// `networking.address` of the Dataplane (not part of the inspect JSON contract, but
    /// needed by the proxy to bind its listeners).
    pub address: String,
    pub inbounds: Vec<InboundLimits>,
    pub kernel: Vec<KernelLimit>,
}
