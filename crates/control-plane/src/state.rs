//! The control plane's state: the store, the current validated snapshot of every resource, and
//! the channel that tells streams and the xDS server about each new snapshot.
//!
//! Every write goes through one path ([`ControlPlane::write`]): parse, build the would-be
//! `ResourceSet` of stored + new resources (so cross-resource errors are caught), commit the
//! changes in one durable transaction, then publish the new snapshot. A write that fails any step
//! changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use meshlimit_policy::effective::{DataplaneLimits, KernelLimit};
use meshlimit_policy::{Kind, Origin, Parsed, Problem, Resource, ResourceSet};
use tokio::sync::watch;

use crate::insights::Insights;
use crate::model;
use crate::store::{Change, Key, Store, StoreError};
use crate::wire::{Action, Applied, SourceFile, WriteResult};

/// Why a read or write was refused. The API turns each variant into one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// 400: documents that do not parse or validate, or that conflict with stored resources.
    #[error("invalid resources: {}", problems_summary(.0))]
    Invalid(Vec<Problem>),
    /// 404.
    #[error("{kind} {mesh}/{name} not found")]
    NotFound {
        kind: String,
        mesh: String,
        name: String,
    },
    /// 409: the request disagrees with the URL or with the stored version.
    #[error("{0}")]
    Conflict(String),
    /// 500: the store failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: a resource that does not survive its own serialization (a bug; nothing is stored).
    #[error("internal error: {0}")]
    Internal(String),
}

fn problems_summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One stored resource with the store version that last wrote it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub resource: Resource,
    pub version: u64,
    pub yaml: String,
    /// Where it came from, for problems found across resources.
    pub origin: Origin,
}

/// Everything as of one store version. Immutable; a write publishes a new one.
pub struct Snapshot {
    pub version: u64,
    pub entries: BTreeMap<Key, Entry>,
    pub set: ResourceSet,
    /// `(mesh, dataplane) -> effective limits`.
    pub effective: BTreeMap<(String, String), DataplaneLimits>,
    pub kernel: Vec<KernelLimit>,
}

impl Snapshot {
    fn build(version: u64, entries: BTreeMap<Key, Entry>) -> Result<Snapshot, Vec<Problem>> {
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
        Ok(Snapshot {
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
        let kind_name = model::kind_name(kind);
        self.entries
            .iter()
            .filter(|(k, _)| k.kind == kind_name && mesh.is_none_or(|m| k.mesh == m))
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

struct Inner {
    store: Store,
    /// Serializes writers so that each validates against the snapshot it commits over.
    writer: Mutex<()>,
    tx: watch::Sender<Arc<Snapshot>>,
    insights: Insights,
}

/// The control plane's core, shared by the API handlers (cheap to clone).
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

/// A write before it is committed.
enum Write {
    /// Create or update these resources, and delete those of these keys that are stored.
    Upsert(Vec<(Resource, Origin)>, Vec<Key>),
    Delete(Key),
}

impl ControlPlane {
    /// Opens (or creates) the store at `path` and loads every resource. Refuses to start when a
    /// stored resource no longer validates, rather than silently dropping it.
    pub fn open(path: &Path) -> Result<ControlPlane, CpError> {
        let store = Store::open(path)?;
        let (version, stored) = store.load()?;
        let mut entries = BTreeMap::new();
        let mut problems = Vec::new();
        for item in stored {
            let label = format!(
                "store {}/{}/{}",
                item.key.mesh, item.key.kind, item.key.name
            );
            match model::parse_one(&label, &item.yaml) {
                Ok(resource) => {
                    entries.insert(
                        item.key,
                        Entry {
                            resource,
                            version: item.version,
                            yaml: item.yaml,
                            origin: stored_origin(&label),
                        },
                    );
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if !problems.is_empty() {
            return Err(CpError::Invalid(problems));
        }
        let snapshot = Snapshot::build(version, entries).map_err(CpError::Invalid)?;
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Ok(ControlPlane {
            inner: Arc::new(Inner {
                store,
                writer: Mutex::new(()),
                tx,
                insights: Insights::default(),
            }),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.tx.borrow().clone()
    }

    /// A receiver that sees every new snapshot (the newest one when several land at once).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.tx.subscribe()
    }

    pub fn insights(&self) -> &Insights {
        &self.inner.insights
    }

    /// Creates or updates every resource of `files`, all or nothing.
    pub fn apply(&self, files: &[SourceFile], dry_run: bool) -> Result<WriteResult, CpError> {
        let mut all = Parsed::default();
        let mut problems = Vec::new();
        for file in files {
            match meshlimit_policy::parse_documents(&file.name, &file.content) {
                Ok(parsed) => {
                    all.resources.extend(parsed.resources);
                    all.warnings.extend(parsed.warnings);
                    all.origins.extend(parsed.origins);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if !problems.is_empty() {
            return Err(CpError::Invalid(problems));
        }
        self.apply_parsed(all, dry_run)
    }

    /// Creates or updates already-parsed resources, all or nothing (the all-in-one seeds its
    /// store this way, from `meshlimit_policy::load_paths`).
    pub fn apply_parsed(&self, parsed: Parsed, dry_run: bool) -> Result<WriteResult, CpError> {
        self.upsert_parsed(parsed, Vec::new(), dry_run)
    }

    /// Like [`ControlPlane::apply_parsed`], and in the same write deletes the resources of
    /// `remove` that are stored (keys that are not stored are skipped): the all-in-one follows
    /// its resource directory this way, so that an edit lands whole or not at all.
    pub fn apply_parsed_and_remove(
        &self,
        parsed: Parsed,
        remove: &[Key],
    ) -> Result<WriteResult, CpError> {
        self.upsert_parsed(parsed, remove.to_vec(), false)
    }

    fn upsert_parsed(
        &self,
        parsed: Parsed,
        remove: Vec<Key>,
        dry_run: bool,
    ) -> Result<WriteResult, CpError> {
        let origins = parsed.origins;
        let resources: Vec<(Resource, Origin)> = parsed
            .resources
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let origin = origins.get(i).cloned().unwrap_or_else(|| Origin {
                    file: "apply".to_string(),
                    document: i + 1,
                });
                (r, origin)
            })
            .collect();
        let mut seen: BTreeMap<Key, &Origin> = BTreeMap::new();
        let mut problems = Vec::new();
        for (resource, origin) in &resources {
            if let Some(first) = seen.insert(model::key_of(resource), origin) {
                problems.push(
                    model::problem(
                        &origin.file,
                        resource,
                        format!(
                            "defined twice in one apply (also {}: document {})",
                            first.file, first.document
                        ),
                    )
                    .at(&origin.file, origin.document),
                );
            }
        }
        if !problems.is_empty() {
            return Err(CpError::Invalid(problems));
        }
        let warnings = parsed.warnings.iter().map(ToString::to_string).collect();
        let mut result = self.write(Write::Upsert(resources, remove), None, dry_run)?;
        result.warnings = warnings;
        Ok(result)
    }

    /// `PUT`: creates or replaces the one resource named by the URL. `if_version` (from
    /// `If-Match`) makes the write conditional on the stored resource's version.
    pub fn put(
        &self,
        kind: Kind,
        mesh: &str,
        name: &str,
        body: &str,
        if_version: Option<u64>,
    ) -> Result<WriteResult, CpError> {
        let label = format!("{}/{mesh}/{name}", model::collection(kind));
        let resource = model::parse_one(&label, body).map_err(CpError::Invalid)?;
        if resource.kind() != kind {
            return Err(CpError::Conflict(format!(
                "the body is a {} but the URL names a {}",
                model::kind_name(resource.kind()),
                model::kind_name(kind)
            )));
        }
        if resource.name() != name {
            return Err(CpError::Conflict(format!(
                "the body's name {:?} differs from the URL's {:?}",
                resource.name(),
                name
            )));
        }
        if kind != Kind::Mesh && resource.mesh() != mesh {
            return Err(CpError::Conflict(format!(
                "the body's mesh {:?} differs from the URL's {:?}",
                resource.mesh(),
                mesh
            )));
        }
        let origin = Origin {
            file: label,
            document: 1,
        };
        self.write(
            Write::Upsert(vec![(resource, origin)], Vec::new()),
            if_version,
            false,
        )
    }

    pub fn delete(
        &self,
        kind: Kind,
        mesh: &str,
        name: &str,
        if_version: Option<u64>,
    ) -> Result<WriteResult, CpError> {
        self.write(
            Write::Delete(model::key(kind, mesh, name)),
            if_version,
            false,
        )
    }

    fn write(
        &self,
        write: Write,
        if_version: Option<u64>,
        dry_run: bool,
    ) -> Result<WriteResult, CpError> {
        // A poisoned lock only means another writer panicked; the snapshot is still consistent.
        let _guard = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.snapshot();
        let mut entries = current.entries.clone();
        let mut changes = Vec::new();
        let mut results = Vec::new();
        let delete_only = matches!(write, Write::Delete(_));
        match write {
            Write::Upsert(resources, remove) => {
                for (resource, origin) in resources {
                    let key = model::key_of(&resource);
                    let existing = entries.get(&key);
                    check_version(&key, existing.map(|e| e.version), if_version)?;
                    let yaml = canonical_yaml(&resource)?;
                    let action = match existing {
                        None => Action::Created,
                        Some(e) if e.yaml == yaml => Action::Unchanged,
                        Some(_) => Action::Configured,
                    };
                    results.push(applied(&key, action));
                    if action != Action::Unchanged {
                        changes.push(Change::Put {
                            key: key.clone(),
                            yaml: yaml.clone(),
                        });
                        entries.insert(
                            key,
                            Entry {
                                resource,
                                version: 0, // set once the commit assigns the version
                                yaml,
                                origin,
                            },
                        );
                    }
                }
                for key in remove {
                    if entries.remove(&key).is_some() {
                        results.push(applied(&key, Action::Deleted));
                        changes.push(Change::Delete { key });
                    }
                }
                for change in &changes {
                    if let Change::Delete { key } = change
                        && key.kind == model::kind_name(Kind::Mesh)
                        && entries.keys().any(|k| k.mesh == key.name)
                    {
                        return Err(CpError::Conflict(format!(
                            "mesh {:?} would be deleted while resources remain in it",
                            key.name
                        )));
                    }
                }
            }
            Write::Delete(key) => {
                let Some(existing) = entries.get(&key) else {
                    return Err(CpError::NotFound {
                        kind: key.kind.clone(),
                        mesh: key.mesh.clone(),
                        name: key.name.clone(),
                    });
                };
                check_version(&key, Some(existing.version), if_version)?;
                if key.kind == model::kind_name(Kind::Mesh) {
                    let inside = entries.keys().filter(|k| k.mesh == key.name).count();
                    if inside > 0 {
                        return Err(CpError::Conflict(format!(
                            "mesh {:?} still holds {inside} resource(s): delete them first",
                            key.name
                        )));
                    }
                }
                entries.remove(&key);
                results.push(applied(&key, Action::Deleted));
                changes.push(Change::Delete { key });
            }
        }
        let mut next = Snapshot::build(current.version, entries).map_err(|problems| {
            if delete_only {
                CpError::Conflict(format!(
                    "the remaining resources would be inconsistent: {}",
                    problems_summary(&problems)
                ))
            } else {
                CpError::Invalid(problems)
            }
        })?;
        if dry_run || changes.is_empty() {
            return Ok(WriteResult {
                version: current.version,
                dry_run,
                results,
                warnings: Vec::new(),
            });
        }
        let version = self.inner.store.commit(current.version, &changes)?;
        next.version = version;
        for change in &changes {
            if let Change::Put { key, .. } = change
                && let Some(entry) = next.entries.get_mut(key)
            {
                entry.version = version;
            }
        }
        self.inner.tx.send_replace(Arc::new(next));
        Ok(WriteResult {
            version,
            dry_run: false,
            results,
            warnings: Vec::new(),
        })
    }
}

/// Stored resources are named by their key in problems found across resources.
fn stored_origin(label: &str) -> Origin {
    Origin {
        file: label.to_string(),
        document: 0,
    }
}

fn applied(key: &Key, action: Action) -> Applied {
    Applied {
        kind: key.kind.clone(),
        mesh: key.mesh.clone(),
        name: key.name.clone(),
        action,
    }
}

fn check_version(key: &Key, stored: Option<u64>, expected: Option<u64>) -> Result<(), CpError> {
    match (expected, stored) {
        (None, _) => Ok(()),
        (Some(want), Some(have)) if want == have => Ok(()),
        (Some(want), have) => Err(CpError::Conflict(format!(
            "{} {}/{} is at version {}, not {want}: read it again and retry",
            key.kind,
            key.mesh,
            key.name,
            have.map_or_else(|| "none (it does not exist)".to_string(), |v| v.to_string())
        ))),
    }
}

/// The YAML the store keeps, checked to parse back to the same YAML so that the store can always
/// be loaded again.
fn canonical_yaml(resource: &Resource) -> Result<String, CpError> {
    let yaml = model::to_yaml(resource).map_err(|e| CpError::Internal(e.to_string()))?;
    let again = model::parse_one("canonical form", &yaml).map_err(|p| {
        CpError::Internal(format!(
            "canonical form does not parse: {}",
            problems_summary(&p)
        ))
    })?;
    let yaml_again = model::to_yaml(&again).map_err(|e| CpError::Internal(e.to_string()))?;
    if yaml_again != yaml {
        return Err(CpError::Internal(format!(
            "canonical form is not stable for {} {}",
            model::kind_name(resource.kind()),
            resource.name()
        )));
    }
    Ok(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DP: &str = "type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 8080
      servicePort: 18080
      tags:
        kuma.io/service: web
        kuma.io/protocol: http
";

    fn policy(name: &str, num: u32) -> String {
        format!(
            "type: MeshRateLimit
mesh: default
name: {name}
spec:
  targetRef:
    kind: MeshService
    name: web
  rules:
    - default:
        local:
          http:
            requestRate:
              num: {num}
              interval: 1s
"
        )
    }

    fn file(name: &str, content: impl Into<String>) -> SourceFile {
        SourceFile {
            name: name.into(),
            content: content.into(),
        }
    }

    #[test]
    fn an_apply_is_validated_as_a_whole_and_stored_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let cp = ControlPlane::open(&path).unwrap();
        let result = cp
            .apply(
                &[file("dp.yaml", DP), file("p.yaml", policy("web", 10))],
                false,
            )
            .unwrap();
        assert_eq!(result.version, 1);
        assert!(result.results.iter().all(|r| r.action == Action::Created));
        let limits = cp
            .snapshot()
            .effective("default", "web-1")
            .cloned()
            .unwrap();
        let http = limits.inbounds[0].http.as_ref().unwrap();
        assert_eq!(http.request_rate.num().get(), 10);

        // One good document and one bad one: nothing of the apply is stored.
        let bad = policy("other", 0);
        let err = cp
            .apply(
                &[file("ok.yaml", policy("web", 20)), file("bad.yaml", bad)],
                false,
            )
            .unwrap_err();
        let CpError::Invalid(problems) = err else {
            panic!("expected problems, got {err}")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.file == "bad.yaml" && p.path.ends_with("requestRate.num")),
            "{problems:?}"
        );
        assert_eq!(cp.snapshot().version, 1);

        // Re-applying the same documents changes nothing and does not bump the version.
        let again = cp
            .apply(&[file("p.yaml", policy("web", 10))], false)
            .unwrap();
        assert_eq!(again.version, 1);
        assert_eq!(again.results[0].action, Action::Unchanged);

        drop(cp);
        let cp = ControlPlane::open(&path).unwrap();
        assert_eq!(cp.snapshot().version, 1);
        assert_eq!(cp.snapshot().entries.len(), 2);
    }

    #[test]
    fn the_same_resource_twice_in_one_apply_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(&dir.path().join("s.redb")).unwrap();
        let err = cp
            .apply(
                &[
                    file("a.yaml", policy("web", 1)),
                    file("b.yaml", policy("web", 2)),
                ],
                false,
            )
            .unwrap_err();
        assert!(err.to_string().contains("defined twice"), "{err}");
        assert_eq!(cp.snapshot().version, 0);
    }

    #[test]
    fn put_checks_the_url_and_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(&dir.path().join("s.redb")).unwrap();
        let created = cp
            .put(
                Kind::MeshRateLimit,
                "default",
                "web",
                &policy("web", 1),
                None,
            )
            .unwrap();
        assert_eq!(created.results[0].action, Action::Created);
        let err = cp
            .put(
                Kind::MeshRateLimit,
                "default",
                "other",
                &policy("web", 1),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, CpError::Conflict(_)), "{err}");
        let err = cp
            .put(
                Kind::MeshRateLimit,
                "default",
                "web",
                &policy("web", 2),
                Some(7),
            )
            .unwrap_err();
        assert!(matches!(err, CpError::Conflict(_)), "{err}");
        let updated = cp
            .put(
                Kind::MeshRateLimit,
                "default",
                "web",
                &policy("web", 2),
                Some(1),
            )
            .unwrap();
        assert_eq!(updated.results[0].action, Action::Configured);
        assert_eq!(updated.version, 2);
    }

    #[test]
    fn apply_and_remove_is_one_write_validated_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(&dir.path().join("s.redb")).unwrap();
        cp.apply(
            &[file("dp.yaml", DP), file("a.yaml", policy("a", 1))],
            false,
        )
        .unwrap();
        let parsed = |text: &str| meshlimit_policy::parse_documents("b.yaml", text).unwrap();
        let a = model::key(Kind::MeshRateLimit, "default", "a");
        let missing = model::key(Kind::MeshRateLimit, "default", "never-stored");

        // A document in a mesh that does not exist: nothing is removed either.
        let elsewhere = policy("b", 1).replace("mesh: default", "mesh: nowhere");
        let err = cp
            .apply_parsed_and_remove(parsed(&elsewhere), std::slice::from_ref(&a))
            .unwrap_err();
        assert!(matches!(err, CpError::Invalid(_)), "{err}");
        assert!(
            cp.snapshot()
                .get(Kind::MeshRateLimit, "default", "a")
                .is_some()
        );
        assert_eq!(cp.snapshot().version, 1);

        // Valid: `b` is created and `a` deleted in one version; unknown keys are skipped.
        let done = cp
            .apply_parsed_and_remove(parsed(&policy("b", 2)), &[a, missing])
            .unwrap();
        assert_eq!(done.version, 2);
        let actions: Vec<(String, Action)> = done
            .results
            .iter()
            .map(|r| (r.name.clone(), r.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("b".to_string(), Action::Created),
                ("a".to_string(), Action::Deleted)
            ]
        );
        let snapshot = cp.snapshot();
        assert!(snapshot.get(Kind::MeshRateLimit, "default", "a").is_none());
        let http = snapshot.effective("default", "web-1").unwrap().inbounds[0]
            .http
            .clone()
            .unwrap();
        assert_eq!(http.request_rate.num().get(), 2);
    }

    #[test]
    fn delete_removes_and_unknown_names_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(&dir.path().join("s.redb")).unwrap();
        cp.apply(&[file("p.yaml", policy("web", 1))], false)
            .unwrap();
        let err = cp
            .delete(Kind::MeshRateLimit, "default", "nope", None)
            .unwrap_err();
        assert!(matches!(err, CpError::NotFound { .. }), "{err}");
        let deleted = cp
            .delete(Kind::MeshRateLimit, "default", "web", None)
            .unwrap();
        assert_eq!(deleted.results[0].action, Action::Deleted);
        assert!(cp.snapshot().entries.is_empty());
    }
}
