//! [`StoreState`]: every resource as of one store version, validated as a whole, with the
//! effective limits it gives. Immutable; each committed write publishes a new one (see
//! [`crate::state::ControlPlane::subscribe`]), and everything that reads the store — the API,
//! the streams, [`crate::insights`], [`crate::select`], [`crate::follow`] — reads one of these.

use std::collections::BTreeMap;

use meshlimit_policy::effective::{DataplaneLimits, KernelLimit};
use meshlimit_policy::{Kind, Origin, Parsed, Problem, Resource, ResourceSet};

use crate::model;
use crate::store::Key;

/// One stored resource with the store version that last wrote it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub resource: Resource,
    pub version: u64,
    pub yaml: String,
    /// Where it came from, for problems found across resources.
    pub origin: Origin,
}

/// Everything as of one store version.
pub struct StoreState {
    pub version: u64,
    pub entries: BTreeMap<Key, Entry>,
    pub set: ResourceSet,
    /// `(mesh, dataplane) -> effective limits`.
    pub effective: BTreeMap<(String, String), DataplaneLimits>,
    pub kernel: Vec<KernelLimit>,
}

impl StoreState {
    /// Validates `entries` as a whole (cross-resource problems included) and computes their
    /// effective limits.
    pub(crate) fn build(
        version: u64,
        entries: BTreeMap<Key, Entry>,
    ) -> Result<StoreState, Vec<Problem>> {
        let set = ResourceSet::from_parsed(Parsed {
            resources: entries.values().map(|e| e.resource.clone()).collect(),
            origins: entries.values().map(|e| e.origin.clone()).collect(),
            ..Parsed::default()
        })?;
        let effective = set
            .all_effective()
            .into_iter()
            .map(|limits| ((limits.mesh.clone(), limits.dataplane.clone()), limits))
            .collect();
        let kernel = set.kernel_limits();
        Ok(StoreState {
            version,
            entries,
            set,
            effective,
            kernel,
        })
    }

    pub fn get(&self, kind: Kind, mesh: &str, name: &str) -> Option<&Entry> {
        self.entries.get(&model::key(kind, mesh, name))
    }

    /// The resources of one kind, in one mesh or (with `None`) in all, ordered by mesh and name.
    pub fn list(&self, kind: Kind, mesh: Option<&str>) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|(k, _)| k.kind == kind && mesh.is_none_or(|m| k.mesh == m))
            .map(|(_, e)| e)
            .collect()
    }

    /// The meshes: every `Mesh` resource, plus the implicit `default`.
    pub fn mesh_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list(Kind::Mesh, None)
            .into_iter()
            .map(|e| e.resource.name().to_string())
            .collect();
        if !names.iter().any(|n| n == "default") {
            names.push("default".to_string());
        }
        names.sort();
        names
    }

    pub fn effective(&self, mesh: &str, dataplane: &str) -> Option<&DataplaneLimits> {
        self.effective
            .get(&(mesh.to_string(), dataplane.to_string()))
    }
}
