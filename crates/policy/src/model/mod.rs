//! The resource types, as validated data. Reading them from YAML is in `crate::parse`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::ser::{Serialize, Serializer};

pub mod dataplane;
pub mod mesh;
pub mod mesh_global_rate_limit;
pub mod mesh_rate_limit;
pub mod rate_limit;

pub use dataplane::{
    Dataplane, Gateway, GatewayType, Inbound, InboundState, Listener, ListenerState, ListenerType,
    Networking, NotEnforced, Outbound,
};
pub use mesh::{DEFAULT_MESH, Mesh};
pub use mesh_global_rate_limit::*;
pub use mesh_rate_limit::*;
pub use rate_limit::{RateLimit, ServiceRules};

/// How a resource was written: Kuma universal (`type`, `mesh`, `name`) or Kubernetes
/// (`apiVersion`, `kind`, `metadata`). Serialization writes it back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Form {
    #[default]
    Universal,
    Kubernetes,
}

/// Any resource meshlimit understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    MeshRateLimit(MeshRateLimit),
    MeshGlobalRateLimit(MeshGlobalRateLimit),
    RateLimit(RateLimit),
    Dataplane(Dataplane),
    Mesh(Mesh),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::MeshRateLimit(_) => Kind::MeshRateLimit,
            Resource::MeshGlobalRateLimit(_) => Kind::MeshGlobalRateLimit,
            Resource::RateLimit(_) => Kind::RateLimit,
            Resource::Dataplane(_) => Kind::Dataplane,
            Resource::Mesh(_) => Kind::Mesh,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::MeshRateLimit(r) => &r.name,
            Resource::MeshGlobalRateLimit(r) => &r.name,
            Resource::RateLimit(r) => &r.name,
            Resource::Dataplane(r) => &r.name,
            Resource::Mesh(r) => &r.name,
        }
    }

    /// The mesh the resource belongs to; a `Mesh` belongs to itself.
    pub fn mesh(&self) -> &str {
        match self {
            Resource::MeshRateLimit(r) => &r.mesh,
            Resource::MeshGlobalRateLimit(r) => &r.mesh,
            Resource::RateLimit(r) => &r.mesh,
            Resource::Dataplane(r) => &r.mesh,
            Resource::Mesh(r) => &r.name,
        }
    }
}

/// The kinds of resource, as named on the command line and in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    MeshRateLimit,
    MeshGlobalRateLimit,
    RateLimit,
    Dataplane,
    Mesh,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::MeshRateLimit,
        Kind::MeshGlobalRateLimit,
        Kind::RateLimit,
        Kind::Dataplane,
        Kind::Mesh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MeshRateLimit => "MeshRateLimit",
            Kind::MeshGlobalRateLimit => "MeshGlobalRateLimit",
            Kind::RateLimit => "RateLimit",
            Kind::Dataplane => "Dataplane",
            Kind::Mesh => "Mesh",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of `Kind::from_str`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown resource kind '{}' (expected meshratelimit, meshglobalratelimit, ratelimit, dataplane or mesh)",
            self.0
        )
    }
}

impl std::error::Error for UnknownKind {}

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Accepts `meshratelimit(s)`/`mrl`, `meshglobalratelimit(s)`/`mgrl`, `ratelimit(s)`/`rl`,
    /// `dataplane(s)`/`dp`, `mesh(es)`, in any case.
    fn from_str(s: &str) -> Result<Kind, UnknownKind> {
        match s.to_ascii_lowercase().as_str() {
            "meshratelimit" | "meshratelimits" | "mrl" => Ok(Kind::MeshRateLimit),
            "meshglobalratelimit" | "meshglobalratelimits" | "mgrl" => {
                Ok(Kind::MeshGlobalRateLimit)
            }
            "ratelimit" | "ratelimits" | "rl" => Ok(Kind::RateLimit),
            "dataplane" | "dataplanes" | "dp" => Ok(Kind::Dataplane),
            "mesh" | "meshes" => Ok(Kind::Mesh),
            _ => Err(UnknownKind(s.to_string())),
        }
    }
}

const KUMA_API: &str = "kuma.io/v1alpha1";
const KMESH_API: &str = "kmesh.net/v1alpha1";

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Universal<'a, S: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<&'a str>,
    name: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    networking: Option<&'a Networking>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Kubernetes<'a, S: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    spec: S,
}

#[derive(serde::Serialize)]
struct Metadata<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum RateLimitSpec<'a> {
    One {
        service: &'a str,
        rules: &'a [crate::quota::TokenBucket],
    },
    Many {
        services: &'a [ServiceRules],
    },
}

/// A kuma.io policy, in the form it was read from.
fn policy<S: Serializer, T: Serialize>(
    s: S,
    kind: &'static str,
    form: Form,
    mesh: &str,
    metadata: Metadata<'_>,
    spec: &T,
) -> Result<S::Ok, S::Error> {
    match form {
        Form::Universal => Universal {
            kind,
            mesh: Some(mesh),
            name: metadata.name,
            labels: metadata.labels,
            spec: Some(spec),
            networking: None,
        }
        .serialize(s),
        Form::Kubernetes => Kubernetes {
            api_version: KUMA_API,
            kind,
            metadata,
            spec,
        }
        .serialize(s),
    }
}

impl Serialize for Resource {
    /// Writes the resource back in the form it was read from, so the output parses again.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Resource::MeshRateLimit(r) => policy(
                s,
                "MeshRateLimit",
                r.form,
                &r.mesh,
                Metadata {
                    name: &r.name,
                    namespace: r.namespace.as_deref(),
                    labels: &r.labels,
                },
                &r.spec,
            ),
            Resource::MeshGlobalRateLimit(r) => policy(
                s,
                "MeshGlobalRateLimit",
                r.form,
                &r.mesh,
                Metadata {
                    name: &r.name,
                    namespace: r.namespace.as_deref(),
                    labels: &r.labels,
                },
                &r.spec,
            ),
            Resource::RateLimit(r) => {
                let spec = match (r.listed, r.services.as_slice()) {
                    (false, [one]) => RateLimitSpec::One {
                        service: &one.name,
                        rules: &one.rules,
                    },
                    _ => RateLimitSpec::Many {
                        services: &r.services,
                    },
                };
                Kubernetes {
                    api_version: KMESH_API,
                    kind: "RateLimit",
                    metadata: Metadata {
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                        labels: &r.labels,
                    },
                    spec,
                }
                .serialize(s)
            }
            Resource::Dataplane(r) => Universal::<()> {
                kind: "Dataplane",
                mesh: Some(&r.mesh),
                name: &r.name,
                labels: &r.labels,
                spec: None,
                networking: Some(&r.networking),
            }
            .serialize(s),
            Resource::Mesh(r) => Universal::<()> {
                kind: "Mesh",
                mesh: None,
                name: &r.name,
                labels: &r.labels,
                spec: None,
                networking: None,
            }
            .serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_short_and_plural_names() {
        for (text, kind) in [
            ("meshratelimit", Kind::MeshRateLimit),
            ("MeshRateLimits", Kind::MeshRateLimit),
            ("mrl", Kind::MeshRateLimit),
            ("meshglobalratelimit", Kind::MeshGlobalRateLimit),
            ("MeshGlobalRateLimits", Kind::MeshGlobalRateLimit),
            ("mgrl", Kind::MeshGlobalRateLimit),
            ("ratelimit", Kind::RateLimit),
            ("ratelimits", Kind::RateLimit),
            ("rl", Kind::RateLimit),
            ("dataplane", Kind::Dataplane),
            ("dataplanes", Kind::Dataplane),
            ("dp", Kind::Dataplane),
            ("mesh", Kind::Mesh),
            ("meshes", Kind::Mesh),
        ] {
            assert_eq!(text.parse::<Kind>(), Ok(kind), "{text}");
        }
        assert!("policy".parse::<Kind>().is_err());
    }
}
