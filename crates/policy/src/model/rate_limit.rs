//! `RateLimit` (kmesh.net/v1alpha1): a kernel token bucket on connections towards a service.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::quota::TokenBucket;

/// A validated `RateLimit`. Both written forms (`service` + `rules`, or `services[]`) become
/// a list of services, each with its rules; `form` remembers which one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    /// `metadata.labels["kuma.io/mesh"]`, else `default`.
    pub mesh: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub services: Vec<ServiceRules>,
    /// True when written as `spec.services[]`, false for `spec.service` + `spec.rules`.
    pub listed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRules {
    /// A `kuma.io/service` value: every Dataplane inbound carrying it is limited.
    pub name: String,
    pub rules: Vec<TokenBucket>,
}
