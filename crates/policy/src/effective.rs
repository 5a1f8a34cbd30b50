//! What one data-plane instance enforces, after matching and merging: the output of the
//! policy engine and the input of every data path (proxy, kernel agent, xDS).

use serde::{Deserialize, Serialize};

pub use crate::quota::{HeaderValue, Quota, Rate, RejectStatus, TokenBucket};

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
