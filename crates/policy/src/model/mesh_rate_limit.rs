//! `MeshRateLimit` (kuma.io/v1alpha1): per-instance HTTP request and TCP connection rates.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::quota::{HeaderValue, Rate, RejectStatus};

/// A validated `MeshRateLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRateLimit {
    pub name: String,
    pub mesh: String,
    /// Kubernetes namespace (Kubernetes form only).
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub form: super::Form,
    pub spec: MeshRateLimitSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshRateLimitSpec {
    /// Omitted means `{kind: Mesh}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Deprecated in favour of `rules`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<FromTo>,
    /// Gateways only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<FromTo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

impl MeshRateLimitSpec {
    /// The top-level targetRef with the default filled in.
    pub fn target(&self) -> TargetRef {
        self.target_ref.clone().unwrap_or_else(TargetRef::mesh)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TargetRefKind {
    Mesh,
    MeshSubset,
    MeshService,
    MeshServiceSubset,
    MeshGateway,
    #[serde(rename = "MeshHTTPRoute")]
    MeshHttpRoute,
    Dataplane,
    MeshExternalService,
    MeshMultiZoneService,
}

impl TargetRefKind {
    pub const ALL: [TargetRefKind; 9] = [
        TargetRefKind::Mesh,
        TargetRefKind::MeshSubset,
        TargetRefKind::MeshService,
        TargetRefKind::MeshServiceSubset,
        TargetRefKind::MeshGateway,
        TargetRefKind::MeshHttpRoute,
        TargetRefKind::Dataplane,
        TargetRefKind::MeshExternalService,
        TargetRefKind::MeshMultiZoneService,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetRefKind::Mesh => "Mesh",
            TargetRefKind::MeshSubset => "MeshSubset",
            TargetRefKind::MeshService => "MeshService",
            TargetRefKind::MeshServiceSubset => "MeshServiceSubset",
            TargetRefKind::MeshGateway => "MeshGateway",
            TargetRefKind::MeshHttpRoute => "MeshHTTPRoute",
            TargetRefKind::Dataplane => "Dataplane",
            TargetRefKind::MeshExternalService => "MeshExternalService",
            TargetRefKind::MeshMultiZoneService => "MeshMultiZoneService",
        }
    }

    pub fn parse(s: &str) -> Option<TargetRefKind> {
        TargetRefKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ProxyType {
    Sidecar,
    Gateway,
}

/// A reference to what a policy (or one of its entries) applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub kind: TargetRefKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_types: Vec<ProxyType>,
}

impl TargetRef {
    pub fn mesh() -> TargetRef {
        TargetRef::of(TargetRefKind::Mesh)
    }

    pub fn of(kind: TargetRefKind) -> TargetRef {
        TargetRef {
            kind,
            name: None,
            namespace: None,
            labels: BTreeMap::new(),
            tags: BTreeMap::new(),
            mesh: None,
            section_name: None,
            proxy_types: Vec::new(),
        }
    }

    /// Whether the scope may include gateways: MeshGateway, MeshHTTPRoute, or Mesh/MeshSubset
    /// unless `proxyTypes` leaves gateways out.
    pub fn includes_gateways(&self) -> bool {
        match self.kind {
            TargetRefKind::MeshGateway | TargetRefKind::MeshHttpRoute => true,
            TargetRefKind::Mesh | TargetRefKind::MeshSubset => {
                self.proxy_types.is_empty() || self.proxy_types.contains(&ProxyType::Gateway)
            }
            _ => false,
        }
    }
}

/// A `from[]` or `to[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FromTo {
    pub target_ref: TargetRef,
    pub default: Conf,
}

/// A `rules[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
    pub default: Conf,
}

/// One source a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    SpiffeId(StringMatch),
    Sni(StringMatch),
    /// Both in one entry: a client must match both.
    Both {
        spiffe_id: StringMatch,
        sni: StringMatch,
    },
}

impl Match {
    /// The `spiffeID` part, if any.
    pub fn spiffe_id(&self) -> Option<&StringMatch> {
        match self {
            Match::SpiffeId(s) | Match::Both { spiffe_id: s, .. } => Some(s),
            Match::Sni(_) => None,
        }
    }

    /// The `sni` part, if any.
    pub fn sni(&self) -> Option<&StringMatch> {
        match self {
            Match::Sni(s) | Match::Both { sni: s, .. } => Some(s),
            Match::SpiffeId(_) => None,
        }
    }
}

impl Serialize for Match {
    /// `{spiffeID: {...}}`, `{sni: {...}}` or both: a mapping, never a YAML tag.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        if let Some(m) = self.spiffe_id() {
            map.serialize_entry("spiffeID", m)?;
        }
        if let Some(m) = self.sni() {
            map.serialize_entry("sni", m)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StringMatch {
    #[serde(rename = "type")]
    pub kind: MatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum MatchType {
    Exact,
    Prefix,
}

/// The configuration a policy entry sets; every field optional so confs can be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Conf {
    pub local: Local,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Local {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<LocalHttp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<LocalTcp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalHttp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OnRateLimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RejectStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderChanges>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<HeaderValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<HeaderValue>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalTcp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_rate: Option<Rate>,
}
