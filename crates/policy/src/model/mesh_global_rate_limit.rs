//! `MeshGlobalRateLimit` (kuma.io/v1alpha1, a Kong Mesh policy): one HTTP request rate shared
//! by every instance of a service, instead of one per instance as `MeshRateLimit` has.
//!
//! The shape is Kong Mesh's:
//!
//! ```yaml
//! type: MeshGlobalRateLimit
//! mesh: default
//! name: demo-rate-limit
//! spec:
//!   targetRef: {kind: MeshService, name: demo-app}
//!   from:
//!     - targetRef: {kind: Mesh}
//!       default:
//!         http:
//!           disabled: false
//!           requestRate: {num: 100, interval: 1s}   # 1s, 1m, 1h or 24h
//!           onRateLimit:
//!             status: 423
//!             headers:
//!               set: [{name: x-kuma-rate-limited, value: "true"}]
//!         mode: Limit                               # or Shadow
//!         backend:
//!           rateLimitService:
//!             url: http://kong-mesh-ratelimit-service:10003
//!             timeout: 25ms
//!             limitOnServiceFail: false
//!         failureMode: Open                         # meshlimit extension
//! ```
//!
//! and the Kubernetes form (`apiVersion: kuma.io/v1alpha1`, `kind: MeshGlobalRateLimit`,
//! `metadata`, `spec`), mesh from the `kuma.io/mesh` label. Where Kong Mesh is silent,
//! meshlimit does what a Kuma user expects from `MeshRateLimit`:
//!
//! - top-level `targetRef` kinds are Kong's: `Mesh`, `MeshSubset`, `MeshService` (sidecars) and
//!   `MeshGateway` (builtin gateways, which have no inbounds and so get nothing from meshlimit
//!   yet); `from[]`/`to[]` entries take kind `Mesh` only, and `to[]` needs a scope that
//!   includes gateways, as for `MeshRateLimit`;
//! - `from` is not deprecated (Kong documents nothing else), and no `default` field is
//!   required: a Mesh-wide policy may set only the backend, a service's only its rate, and the
//!   two merge field by field, the more specific winning (as `MeshRateLimit` policies are
//!   ordered); `requestRate`, the header lists and the backend `url` are replaced whole;
//!   `disabled: true` cancels the limit;
//! - HTTP inbounds only (`kuma.io/protocol` http, http2 or grpc), as in Kong Mesh;
//! - `limitOnServiceFail: true` rejects requests while the rate-limit service cannot be
//!   reached (Envoy's `failure_mode_deny`), `false` (the default) lets them through;
//! - `ratelimitOnRequest` (per-header limits) is refused as not supported rather than
//!   silently ignored.
//!
//! meshlimit extensions, all optional:
//!
//! - `rules[]` with a `default` each, as Kuma 2.10+ policies have them (no `matches`: a global
//!   limit is shared by every client of the service), exclusive with `from`/`to`;
//! - `failureMode: Open | Closed | LocalShare`: what an instance does while the rate-limit
//!   service cannot be reached — admit, reject, or enforce its replica-aware share of the
//!   total locally (see [`crate::global::share`]). It is the same setting as
//!   `limitOnServiceFail` (`Open` = false, `Closed` = true), so one entry sets at most one
//!   of them, and for merging they are one field. Default `Open`, as Envoy's.
//!
//! Without any `rateLimitService` the instances enforce their shares locally: the total holds
//! without a shared store as long as the set of instances is current.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::mesh_rate_limit::{OnRateLimit, TargetRef};
use crate::effective::{FailureMode, GlobalMode};
use crate::quota::Rate;

/// Kong Mesh's timeout for a request to the rate-limit service, when the policy sets none.
pub const DEFAULT_RATE_LIMIT_SERVICE_TIMEOUT: Duration = Duration::from_millis(25);

/// A validated `MeshGlobalRateLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshGlobalRateLimit {
    pub name: String,
    pub mesh: String,
    /// Kubernetes namespace (Kubernetes form only).
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub form: super::Form,
    pub spec: MeshGlobalRateLimitSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshGlobalRateLimitSpec {
    /// Omitted means `{kind: Mesh}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<GlobalFromTo>,
    /// Gateways only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<GlobalFromTo>,
    /// meshlimit extension: catch-all entries in place of `from`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<GlobalRule>,
}

impl MeshGlobalRateLimitSpec {
    /// The top-level targetRef with the default filled in.
    pub fn target(&self) -> TargetRef {
        self.target_ref.clone().unwrap_or_else(TargetRef::mesh)
    }
}

/// A `from[]` or `to[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalFromTo {
    pub target_ref: TargetRef,
    pub default: GlobalConf,
}

/// A `rules[]` entry (meshlimit extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GlobalRule {
    pub default: GlobalConf,
}

/// The configuration a policy entry sets; every field optional so confs can be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalConf {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<GlobalHttp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<GlobalMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<GlobalBackend>,
    /// meshlimit extension; see the module documentation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

impl GlobalConf {
    pub fn rate_limit_service(&self) -> Option<&RateLimitService> {
        self.backend.as_ref()?.rate_limit_service.as_ref()
    }

    /// The failure mode this entry sets, whichever way it was written.
    pub fn failure(&self) -> Option<FailureMode> {
        self.failure_mode.or_else(|| {
            self.rate_limit_service()?
                .limit_on_service_fail
                .map(|limit| {
                    if limit {
                        FailureMode::Closed
                    } else {
                        FailureMode::Open
                    }
                })
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalHttp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// The total for every instance of the service together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalBackend {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<RateLimitService>,
}

/// Where the shared counters are kept: an Envoy rate-limit service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitService {
    /// `http://` or `https://`, a host, and optionally a port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "go_duration"
    )]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_on_service_fail: Option<bool>,
}

fn go_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => crate::duration::serde_go::serialize(d, s),
        None => s.serialize_none(),
    }
}
