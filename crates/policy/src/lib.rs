//! The policy engine: resource types, parsing, validation, matching, merging, and the
//! effective limits each data-plane instance enforces. Pure functions apart from
//! [`load_paths`], which reads files.
//!
//! Start with [`parse_documents`] (YAML text to validated [`Resource`]s, or [`Problem`]s
//! naming file, document, field path and reason), then [`ResourceSet`] (a consistent set of
//! resources) and its [`ResourceSet::effective`], which matches and merges `MeshRateLimit`
//! and `MeshGlobalRateLimit` policies for one `Dataplane` into [`DataplaneLimits`]. The
//! selection, ordering and merge rules are in [`matching`]; the resource types in [`model`];
//! how a global limit is shared among the instances of a service in [`global`].

pub mod duration;
pub mod effective;
pub mod global;
pub mod model;

pub mod matching;
mod parse;
mod problem;
pub mod quota;
mod set;
mod tree;

pub use effective::{
    DataplaneLimits, FailureMode, GlobalLimit, GlobalMode, HttpLimit, InboundLimits, KernelLimit,
    Protocol, RejectHeaders, SourceLimit, SpiffeIdMatch, SpiffeMatchType, TcpLimit, Versioned,
};
pub use global::share;
pub use matching::Source;
pub use model::{Form, Kind, Resource, UnknownKind};
pub use parse::{
    MAX_FILE_BYTES, MAX_FLOW_DEPTH, MESH_LABEL, Origin, Parsed, is_resource_file, load_paths,
    parse_documents,
};
pub use problem::Problem;
pub use quota::{HeaderValue, Quota, QuotaError, Rate, RejectStatus, TokenBucket};
pub use set::{ResourceSet, SourceLimits};
