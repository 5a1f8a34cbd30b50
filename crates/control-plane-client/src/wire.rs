//! The JSON bodies of the REST API, shared by the server and the client so the two cannot drift.
//! `openapi.yaml` documents the same shapes.

use meshlimit_policy::effective::{DataplaneLimits, KernelLimit};
use serde::{Deserialize, Serialize};

/// One file of a bulk apply. The name only labels problems (`<name>: document <n> ...`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub content: String,
}

/// `POST /apply` with `Content-Type: application/json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    pub files: Vec<SourceFile>,
    /// Validate against the store and report what would change, without storing anything.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
        })
    }
}

/// What happened to one resource of a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub kind: String,
    pub mesh: String,
    pub name: String,
    pub action: Action,
}

/// The answer to every successful write (`POST /apply`, `PUT`, `DELETE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    /// The store version after the write (unchanged when nothing changed or on a dry run).
    pub version: u64,
    pub dry_run: bool,
    pub results: Vec<Applied>,
    /// Accepted, but worth telling the user (`'from' field is deprecated ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One invalid field, in Kuma's `invalid_parameters` style plus our file/document context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvalidParameter {
    /// The field path inside the document (`spec.from[0].default.local.http.requestRate.num`).
    pub field: String,
    pub reason: String,
    pub file: String,
    pub document: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The whole problem as `meshlimit validate` prints it.
    pub message: String,
}

/// Every error response (`application/problem+json`, RFC 9457 with Kuma's `invalid_parameters`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub status: u16,
    pub title: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_parameters: Vec<InvalidParameter>,
}

/// A page of a list (`?size=&offset=`), as Kuma returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub total: usize,
    pub items: Vec<T>,
    /// The URL of the next page, or `null` on the last one.
    pub next: Option<String>,
}

/// One line of a `?watch=true` stream (newline-delimited JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum StreamEvent<T> {
    /// The limits as of store version `version`; `limits` is `null` while the data plane has no
    /// Dataplane resource.
    Limits { version: u64, limits: Option<T> },
    /// Sent every few seconds when nothing changed, so a client can tell a quiet control plane
    /// from a dead connection.
    Heartbeat { version: u64 },
}

/// `GET /meshes/{mesh}/dataplanes/{name}/limits` (and each line of its watch stream).
pub type DataplaneEvent = StreamEvent<DataplaneLimits>;
/// `GET /kernel-limits` (and each line of its watch stream).
pub type KernelEvent = StreamEvent<Vec<KernelLimit>>;

/// Cumulative counters of one limit on one inbound, as a data plane reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundCounters {
    pub port: u16,
    pub service: String,
    /// `http` (requests) or `tcp` (connections).
    pub protocol: String,
    pub total: u64,
    pub allowed: u64,
    pub limited: u64,
    /// Whole tokens in the bucket now (`null` when the inbound has no limit).
    #[serde(default)]
    pub tokens_available: Option<u64>,
    /// The inbound's global limit (`MeshGlobalRateLimit`), on its `http` row only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalCounters>,
}

/// Cumulative decisions of one inbound's global limit and the health of its shared store.
/// Only requests the local limit admitted reach the global one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalCounters {
    /// Admitted by the global limit (including by a failure mode).
    pub allowed: u64,
    /// Rejected by the global limit.
    pub limited: u64,
    /// Admitted only because the policy is in `Shadow` mode.
    pub shadow_limited: u64,
    /// Checks of the shared store (Redis) that failed or timed out.
    pub store_errors: u64,
    /// Of those, how many each failure mode decided.
    pub fallbacks_open: u64,
    pub fallbacks_closed: u64,
    pub fallbacks_local_share: u64,
    /// Whole tokens in this instance's share of the total (what `local-share` falls back on).
    #[serde(default)]
    pub share_tokens: Option<u64>,
}

/// `POST /meshes/{mesh}/dataplanes/{name}/status`: what a data plane enforces and counted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneReport {
    /// The store version whose limits the data plane enforces now.
    pub version: Option<u64>,
    #[serde(default)]
    pub inbounds: Vec<InboundCounters>,
}

/// Cumulative counters of one kernel destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationCounters {
    pub service: String,
    pub address: String,
    pub port: u16,
    pub total: u64,
    pub allowed: u64,
    pub limited: u64,
    #[serde(default)]
    pub tokens_available: Option<u64>,
}

/// `POST /kernel-agents/{name}/status`: what a kernel agent enforces and counted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub version: Option<u64>,
    /// Whether the BPF programs are attached to the cgroup.
    pub attached: bool,
    /// Why the kernel limiter is off on purpose on this host (`meshlimit run --no-kernel`):
    /// its kernel limits are then not enforced there, by the operator's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
    #[serde(default)]
    pub destinations: Vec<DestinationCounters>,
}

/// Counters plus what the control plane derived from the reports over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesStats {
    pub total: u64,
    pub allowed: u64,
    pub limited: u64,
    pub tokens_available: Option<u64>,
    /// Offered rate (total per second) over the last minute of reports.
    pub rate_per_second: f64,
    /// Rejected per second over the last minute of reports.
    pub limited_per_second: f64,
    /// Offered rate per reporting interval, oldest first (at most 60 points): for sparklines.
    pub history: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundStatus {
    pub port: u16,
    pub service: String,
    pub protocol: String,
    #[serde(flatten)]
    pub stats: SeriesStats,
    /// The inbound's global limit, as last reported (`null`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalStatus>,
}

/// A global limit's counters plus what the control plane derived from the reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalStatus {
    #[serde(flatten)]
    pub counters: GlobalCounters,
    /// Store errors over the last minute of reports.
    pub store_errors_last_minute: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneStatus {
    pub mesh: String,
    pub name: String,
    /// Whether the data plane has a limits stream open now.
    pub connected: bool,
    /// The store version it last reported enforcing.
    pub acknowledged_version: Option<u64>,
    /// Seconds since its last report or stream activity (`null`: never seen).
    pub last_seen_seconds: Option<f64>,
    pub inbounds: Vec<InboundStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStatus {
    pub service: String,
    pub address: String,
    pub port: u16,
    #[serde(flatten)]
    pub stats: SeriesStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub name: String,
    pub connected: bool,
    pub attached: bool,
    /// Why the kernel limiter is off on purpose on this host, as the agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
    pub acknowledged_version: Option<u64>,
    pub last_seen_seconds: Option<f64>,
    pub destinations: Vec<DestinationStatus>,
}

/// `GET /status`: the store version and every data plane and kernel agent the control plane
/// knows of (every Dataplane resource, plus any data plane that connected without one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    pub version: u64,
    pub dataplanes: Vec<DataplaneStatus>,
    pub agents: Vec<AgentStatus>,
    /// Whether the store takes writes (absent from older control planes: assume it does).
    #[serde(default)]
    pub store: StoreCondition,
}

/// Whether the store takes writes: after a failed write (a full disk, an I/O error) every
/// write is refused with 503 until the cause is fixed; the next write then reopens the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreCondition {
    pub writable: bool,
    /// Why the last write failed, while the store is not writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Writes the store failed since the control plane started.
    #[serde(default)]
    pub write_errors: u64,
}

impl Default for StoreCondition {
    fn default() -> Self {
        StoreCondition {
            writable: true,
            error: None,
            write_errors: 0,
        }
    }
}

/// `GET /meshes/{mesh}/{kind}/{name}/_resources/dataplanes`: what a policy selects and the
/// effective limits of each selected inbound.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    pub version: u64,
    pub dataplanes: Vec<DataplaneLimits>,
    /// Kernel destinations (for a `RateLimit`).
    pub kernel: Vec<KernelLimit>,
}

/// `GET /meshes` item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshSummary {
    pub name: String,
    /// Whether a `Mesh` resource exists (the `default` mesh exists implicitly).
    pub stored: bool,
}
