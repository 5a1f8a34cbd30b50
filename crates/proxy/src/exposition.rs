//! `/metrics` of the proxy's admin endpoint: the workspace's one exposition (format
//! negotiation, encoding, family helpers), re-exported here so that sources in this crate and
//! beyond name it through the proxy.

pub use meshlimit_exposition::*;
