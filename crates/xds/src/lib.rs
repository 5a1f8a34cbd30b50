//! Envoy integration: the same effective limits that meshlimit's own proxy enforces, turned
//! into Envoy configuration and served to Envoy sidecars over the aggregated discovery service
//! (ADS, state of the world).
//!
//! Start reading at [`resources`] (pure: [`DataplaneLimits`] to listeners and clusters, after
//! Kuma's `MeshRateLimit` translation), then [`XdsServer`] / [`XdsHandle`] (the gRPC server,
//! fed by [`XdsHandle::follow`] from a `watch` of limits such as the control plane's store; the
//! ACK/NACK rules live in the `protocol` module as a plain state machine, the per-node versions
//! in `node_table`), [`bootstrap`] (what an Envoy starts with) and [`render`] (the resources as
//! YAML for people).
//!
//! An Envoy is identified by its node id, `<mesh>.<dataplane>` ([`node_id`]).
//!
//! [`DataplaneLimits`]: meshlimit_policy::effective::DataplaneLimits

pub mod bootstrap;
mod node_table;
mod protocol;
pub mod render;
pub mod resources;
mod server;
mod status;

pub use bootstrap::{Bootstrap, XdsAddress};
pub use render::render_yaml;
pub use resources::node_id;
pub use server::{NodeCounts, XdsError, XdsHandle, XdsServer};
pub use status::{Nack, NodeStatus, TypeStatus, XdsStatus};
