//! The control plane's core: the store, the current [`StoreState`], and the channel that tells
//! streams and the xDS server about each new one.
//!
//! Every write goes through one path, [`ControlPlane::write`], in phases: [`canonical_forms`]
//! (each resource in the form the store keeps), [`diff`] (what changes against the current
//! state), [`validate`] (the would-be state as a whole, so cross-resource errors are caught),
//! then the commit in one durable transaction and [`ControlPlane::publish`]. A write that fails
//! any phase changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use meshlimit_policy::{Kind, Origin, Parsed, Problem, Resource};
use tokio::sync::watch;

use crate::insights::Insights;
use crate::model;
use crate::store::{Change, Health, Key, Store, StoreError};
use crate::store_state::{Entry, StoreState};
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
        kind: Kind,
        mesh: String,
        name: String,
    },
    /// 409: the request disagrees with the URL or with the stored version.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// 500: the store failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: a resource that does not survive its own serialization (a bug; nothing is stored).
    #[error("internal error: {0}")]
    Canonical(#[from] CanonicalError),
    /// 500: anything else that is not the request's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a write disagrees with its URL or with what is stored (409).
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    #[error("the body is a {body} but the URL names a {url}")]
    WrongKind { body: Kind, url: Kind },
    #[error("the body's name {body:?} differs from the URL's {url:?}")]
    WrongName { body: String, url: String },
    #[error("the body's mesh {body:?} differs from the URL's {url:?}")]
    WrongMesh { body: String, url: String },
    /// `If-Match` named another version than the stored one.
    #[error(
        "{} {}/{} is at version {}, not {expected}: read it again and retry",
        .key.kind, .key.mesh, .key.name, stored_version(.stored)
    )]
    StaleVersion {
        key: Key,
        stored: Option<u64>,
        expected: u64,
    },
    /// An apply that removes a mesh and keeps resources in it.
    #[error("mesh {mesh:?} would be deleted while resources remain in it")]
    MeshInUse { mesh: String },
    #[error("mesh {mesh:?} still holds {inside} resource(s): delete them first")]
    MeshNotEmpty { mesh: String, inside: usize },
    /// A delete after which the resources that stay no longer validate together.
    #[error(
        "the remaining resources would be inconsistent: {}",
        problems_summary(.0)
    )]
    Inconsistent(Vec<Problem>),
}

/// Why a resource has no canonical form (a bug in its serialization; nothing is stored).
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("{0}")]
    Serialize(#[from] serde_yaml_ng::Error),
    #[error("canonical form does not parse: {}", problems_summary(.0))]
    Unparsable(Vec<Problem>),
    #[error("canonical form is not stable for {kind} {name}")]
    Unstable { kind: Kind, name: String },
}

fn problems_summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn stored_version(stored: &Option<u64>) -> String {
    stored.map_or_else(|| "none (it does not exist)".to_string(), |v| v.to_string())
}

struct Inner {
    store: Store,
    /// Serializes writers so that each validates against the state it commits over.
    writer: Mutex<()>,
    tx: watch::Sender<Arc<StoreState>>,
    insights: Insights,
}

/// The control plane's core, shared by the API handlers (cheap to clone).
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

/// A write before it is committed; `R` is each resource as given, then in canonical form.
enum Write<R> {
    /// Create or update these resources, and delete those of these keys that are stored.
    Upsert(Vec<R>, Vec<Key>),
    Delete(Key),
}

/// A resource in the form the store keeps: its canonical YAML, and the resource that YAML
/// parses to (what a restart loads).
#[derive(Debug)]
struct Canonical {
    key: Key,
    resource: Resource,
    yaml: String,
    origin: Origin,
}

/// What a write changes, before the result is validated as a whole.
#[derive(Debug)]
struct Diff {
    /// Every resource after the write; those it puts are at version 0 until committed.
    entries: BTreeMap<Key, Entry>,
    changes: Vec<Change>,
    results: Vec<Applied>,
}

impl ControlPlane {
    /// Opens (or creates) the store at `path` and loads every resource. Refuses to start when a
    /// stored resource no longer validates, rather than silently dropping it.
    pub fn open(path: &Path) -> Result<ControlPlane, CpError> {
        let store = Store::open(path)?;
        let state = load_state(&store)?;
        let (tx, _) = watch::channel(Arc::new(state));
        Ok(ControlPlane {
            inner: Arc::new(Inner {
                store,
                writer: Mutex::new(()),
                tx,
                insights: Insights::default(),
            }),
        })
    }

    /// Whether the store takes writes now (see [`Store::health`]).
    pub fn store_health(&self) -> Health {
        self.inner.store.health()
    }

    /// [`ControlPlane::store_health`] as `GET /status` and `GET /` show it.
    pub fn store_condition(&self) -> crate::wire::StoreCondition {
        let health = self.store_health();
        crate::wire::StoreCondition {
            writable: health.failure.is_none(),
            error: health.failure,
            write_errors: health.write_errors,
        }
    }

    /// `/ready`: `Err(reason)` while the last write to the store failed.
    pub fn ready(&self) -> Result<(), String> {
        match self.store_health().failure {
            None => Ok(()),
            Some(failure) => Err(format!(
                "store not writable: {failure}; writes are refused until the cause is fixed \
                 (e.g. space freed on its disk), and the next write reopens the store"
            )),
        }
    }

    /// Before a write, after an earlier one failed: reopens the store, and if what is on disk
    /// is not the state served (a failed commit that reached the disk after all), serves what
    /// is on disk, which is the truth a restart would load.
    fn recover_store(&self) -> Result<(), CpError> {
        let Some(version) = self.inner.store.recover()? else {
            return Ok(());
        };
        if version != self.snapshot().version {
            tracing::warn!(
                on_disk = version,
                served = self.snapshot().version,
                "the store on disk differs from the state served: serving what is on disk"
            );
            let state = load_state(&self.inner.store)?;
            self.publish(state);
        }
        Ok(())
    }

    /// The current state.
    pub fn snapshot(&self) -> Arc<StoreState> {
        self.inner.tx.borrow().clone()
    }

    /// A receiver that sees every new state (the newest one when several land at once).
    pub fn subscribe(&self) -> watch::Receiver<Arc<StoreState>> {
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
        let problems = duplicates(&resources);
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
            return Err(Conflict::WrongKind {
                body: resource.kind(),
                url: kind,
            }
            .into());
        }
        if resource.name() != name {
            return Err(Conflict::WrongName {
                body: resource.name().to_string(),
                url: name.to_string(),
            }
            .into());
        }
        if kind != Kind::Mesh && resource.mesh() != mesh {
            return Err(Conflict::WrongMesh {
                body: resource.mesh().to_string(),
                url: mesh.to_string(),
            }
            .into());
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

    /// The one write path: canonical forms → diff → validate → commit → publish.
    fn write(
        &self,
        write: Write<(Resource, Origin)>,
        if_version: Option<u64>,
        dry_run: bool,
    ) -> Result<WriteResult, CpError> {
        let write = canonical_forms(write)?;
        let deleting = matches!(write, Write::Delete(_));
        let _guard = self.lock_writer();
        // A dry run needs no store: it answers even while the store is not writable.
        if let Err(e) = self.recover_store()
            && !dry_run
        {
            return Err(e);
        }
        let current = self.snapshot();
        let Diff {
            entries,
            changes,
            results,
        } = diff(&current.entries, write, if_version)?;
        let next = validate(current.version, entries, deleting)?;
        if dry_run || changes.is_empty() {
            return Ok(WriteResult {
                version: current.version,
                dry_run,
                results,
                warnings: Vec::new(),
            });
        }
        let version = self.inner.store.commit(current.version, &changes)?;
        self.publish(stamp(next, version, &changes));
        Ok(WriteResult {
            version,
            dry_run: false,
            results,
            warnings: Vec::new(),
        })
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        // A poisoned lock only means another writer panicked; the state is still consistent.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last phase of a write: every subscriber (streams, followers, xDS) sees `next`.
    fn publish(&self, next: StoreState) {
        self.inner.tx.send_replace(Arc::new(next));
    }
}

/// Every resource in `store`, parsed and validated as a whole. Refuses a store whose resources
/// no longer validate, rather than silently dropping them.
fn load_state(store: &Store) -> Result<StoreState, CpError> {
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
    StoreState::build(version, entries).map_err(CpError::Invalid)
}

/// Resources named twice in one apply (the second would silently win otherwise).
fn duplicates(resources: &[(Resource, Origin)]) -> Vec<Problem> {
    let mut seen: BTreeMap<Key, &Origin> = BTreeMap::new();
    let mut problems = Vec::new();
    for (resource, origin) in resources {
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
    problems
}

/// Phase 1 (pure): every resource of the write in the form the store keeps.
fn canonical_forms(write: Write<(Resource, Origin)>) -> Result<Write<Canonical>, CanonicalError> {
    Ok(match write {
        Write::Upsert(resources, remove) => Write::Upsert(
            resources
                .into_iter()
                .map(|(resource, origin)| canonical(resource, origin))
                .collect::<Result<_, _>>()?,
            remove,
        ),
        Write::Delete(key) => Write::Delete(key),
    })
}

/// The YAML the store keeps, parsed once: it must give back the same resource, so that the
/// store can always be loaded again and a restart serves what was acknowledged.
fn canonical(resource: Resource, origin: Origin) -> Result<Canonical, CanonicalError> {
    let yaml = model::to_yaml(&resource)?;
    let parsed = model::parse_one("canonical form", &yaml).map_err(CanonicalError::Unparsable)?;
    if parsed != resource {
        return Err(CanonicalError::Unstable {
            kind: resource.kind(),
            name: resource.name().to_string(),
        });
    }
    Ok(Canonical {
        key: model::key_of(&parsed),
        resource: parsed,
        yaml,
        origin,
    })
}

/// Phase 2 (pure): what `write` changes in `entries`, refusing stale `If-Match` versions,
/// deletes of what is not stored, and meshes deleted while resources remain in them.
fn diff(
    entries: &BTreeMap<Key, Entry>,
    write: Write<Canonical>,
    if_version: Option<u64>,
) -> Result<Diff, CpError> {
    let mut entries = entries.clone();
    let mut changes = Vec::new();
    let mut results = Vec::new();
    match write {
        Write::Upsert(resources, remove) => {
            for new in resources {
                let existing = entries.get(&new.key);
                check_version(&new.key, existing.map(|e| e.version), if_version)?;
                let action = match existing {
                    None => Action::Created,
                    Some(e) if e.yaml == new.yaml => Action::Unchanged,
                    Some(_) => Action::Configured,
                };
                results.push(applied(&new.key, action));
                if action != Action::Unchanged {
                    changes.push(Change::Put {
                        key: new.key.clone(),
                        yaml: new.yaml.clone(),
                    });
                    entries.insert(
                        new.key,
                        Entry {
                            resource: new.resource,
                            version: 0,
                            yaml: new.yaml,
                            origin: new.origin,
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
                    && key.kind == Kind::Mesh
                    && entries.keys().any(|k| k.mesh == key.name)
                {
                    return Err(Conflict::MeshInUse {
                        mesh: key.name.clone(),
                    }
                    .into());
                }
            }
        }
        Write::Delete(key) => {
            let Some(existing) = entries.get(&key) else {
                return Err(CpError::NotFound {
                    kind: key.kind,
                    mesh: key.mesh,
                    name: key.name,
                });
            };
            check_version(&key, Some(existing.version), if_version)?;
            if key.kind == Kind::Mesh {
                let inside = entries.keys().filter(|k| k.mesh == key.name).count();
                if inside > 0 {
                    return Err(Conflict::MeshNotEmpty {
                        mesh: key.name,
                        inside,
                    }
                    .into());
                }
            }
            entries.remove(&key);
            results.push(applied(&key, Action::Deleted));
            changes.push(Change::Delete { key });
        }
    }
    Ok(Diff {
        entries,
        changes,
        results,
    })
}

/// Phase 3 (pure): the state after the write, validated as a whole. Its problems are the
/// request's (400) for an upsert, and a conflict with what stays stored (409) for a delete.
fn validate(
    version: u64,
    entries: BTreeMap<Key, Entry>,
    deleting: bool,
) -> Result<StoreState, CpError> {
    StoreState::build(version, entries).map_err(|problems| {
        if deleting {
            Conflict::Inconsistent(problems).into()
        } else {
            CpError::Invalid(problems)
        }
    })
}

/// After the commit (pure): the new state carries the version the store assigned, on itself
/// and on every resource the write put.
fn stamp(mut next: StoreState, version: u64, changes: &[Change]) -> StoreState {
    next.version = version;
    for change in changes {
        if let Change::Put { key, .. } = change
            && let Some(entry) = next.entries.get_mut(key)
        {
            entry.version = version;
        }
    }
    next
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
        kind: key.kind.as_str().to_string(),
        mesh: key.mesh.clone(),
        name: key.name.clone(),
        action,
    }
}

fn check_version(key: &Key, stored: Option<u64>, expected: Option<u64>) -> Result<(), Conflict> {
    match (expected, stored) {
        (None, _) => Ok(()),
        (Some(want), Some(have)) if want == have => Ok(()),
        (Some(expected), stored) => Err(Conflict::StaleVersion {
            key: key.clone(),
            stored,
            expected,
        }),
    }
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

    /// The stored entries `texts` give, at version 1 (what `diff` compares against).
    fn stored(texts: &[&str]) -> BTreeMap<Key, Entry> {
        texts
            .iter()
            .map(|text| {
                let resource = model::parse_one("stored.yaml", text).unwrap();
                let c = canonical(resource, stored_origin("stored")).unwrap();
                let entry = Entry {
                    resource: c.resource,
                    version: 1,
                    yaml: c.yaml,
                    origin: c.origin,
                };
                (c.key, entry)
            })
            .collect()
    }

    fn upsert(texts: &[&str], remove: Vec<Key>) -> Write<Canonical> {
        let resources = texts
            .iter()
            .map(|text| {
                let resource = model::parse_one("new.yaml", text).unwrap();
                canonical(resource, stored_origin("new.yaml")).unwrap()
            })
            .collect();
        Write::Upsert(resources, remove)
    }

    fn actions(diff: &Diff) -> Vec<(&str, Action)> {
        diff.results
            .iter()
            .map(|r| (r.name.as_str(), r.action))
            .collect()
    }

    #[test]
    fn the_canonical_form_is_the_text_stored_and_the_resource_it_parses_to() {
        let resource = model::parse_one("p.yaml", &policy("web", 3)).unwrap();
        let c = canonical(resource.clone(), stored_origin("p.yaml")).unwrap();
        assert_eq!(c.key, model::key(Kind::MeshRateLimit, "default", "web"));
        assert_eq!(c.resource, resource);
        assert_eq!(model::parse_one("again", &c.yaml).unwrap(), resource);
    }

    #[test]
    fn diff_names_each_action_and_puts_only_what_changed() {
        let entries = stored(&[DP, &policy("same", 1), &policy("edited", 1)]);
        let diff = diff(
            &entries,
            upsert(
                &[&policy("same", 1), &policy("edited", 2), &policy("new", 1)],
                vec![
                    model::key(Kind::Dataplane, "default", "web-1"),
                    model::key(Kind::Dataplane, "default", "never-stored"),
                ],
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            actions(&diff),
            [
                ("same", Action::Unchanged),
                ("edited", Action::Configured),
                ("new", Action::Created),
                ("web-1", Action::Deleted),
            ]
        );
        let changed: Vec<&str> = diff
            .changes
            .iter()
            .map(|c| match c {
                Change::Put { key, .. } | Change::Delete { key } => key.name.as_str(),
            })
            .collect();
        assert_eq!(changed, ["edited", "new", "web-1"]);
        assert_eq!(diff.entries.len(), 3);
        let same = &diff.entries[&model::key(Kind::MeshRateLimit, "default", "same")];
        assert_eq!(same.version, 1, "an unchanged resource keeps its version");
    }

    #[test]
    fn diff_refuses_stale_versions_missing_resources_and_meshes_in_use() {
        let mesh = "type: Mesh\nname: demo\n";
        let in_demo = policy("p", 1).replace("mesh: default", "mesh: demo");
        let entries = stored(&[mesh, &in_demo]);
        let p = model::key(Kind::MeshRateLimit, "demo", "p");
        let demo = model::key(Kind::Mesh, "", "demo");

        let stale = diff(&entries, Write::Delete(p.clone()), Some(7)).unwrap_err();
        assert!(
            matches!(
                stale,
                CpError::Conflict(Conflict::StaleVersion {
                    stored: Some(1),
                    expected: 7,
                    ..
                })
            ),
            "{stale}"
        );
        assert_eq!(
            stale.to_string(),
            "MeshRateLimit demo/p is at version 1, not 7: read it again and retry"
        );

        let missing = diff(
            &entries,
            Write::Delete(model::key(Kind::Dataplane, "demo", "x")),
            None,
        )
        .unwrap_err();
        assert_eq!(missing.to_string(), "Dataplane demo/x not found");

        let not_empty = diff(&entries, Write::Delete(demo.clone()), None).unwrap_err();
        assert_eq!(
            not_empty.to_string(),
            "mesh \"demo\" still holds 1 resource(s): delete them first"
        );

        let in_use = diff(&entries, upsert(&[], vec![demo]), None).unwrap_err();
        assert_eq!(
            in_use.to_string(),
            "mesh \"demo\" would be deleted while resources remain in it"
        );

        let deleted = diff(&entries, Write::Delete(p), Some(1)).unwrap();
        assert_eq!(actions(&deleted), [("p", Action::Deleted)]);
    }

    #[test]
    fn validate_blames_the_request_for_an_upsert_and_what_stays_for_a_delete() {
        let elsewhere = policy("p", 1).replace("mesh: default", "mesh: nowhere");
        let entries = stored(&[&elsewhere]);
        let upserting = validate(1, entries.clone(), false).err();
        assert!(
            matches!(upserting, Some(CpError::Invalid(_))),
            "{upserting:?}"
        );
        let deleting = validate(1, entries, true).err();
        assert!(
            matches!(deleting, Some(CpError::Conflict(Conflict::Inconsistent(_)))),
            "{deleting:?}"
        );
        assert!(validate(1, stored(&[DP]), true).is_ok());
    }

    #[test]
    fn stamp_gives_the_committed_version_to_the_state_and_what_was_put() {
        let entries = stored(&[DP, &policy("kept", 1)]);
        let diff = diff(&entries, upsert(&[&policy("new", 1)], Vec::new()), None).unwrap();
        let next = validate(1, diff.entries, false).unwrap();
        let next = stamp(next, 2, &diff.changes);
        assert_eq!(next.version, 2);
        let version = |name: &str| {
            next.get(Kind::MeshRateLimit, "default", name)
                .unwrap()
                .version
        };
        assert_eq!(version("new"), 2);
        assert_eq!(version("kept"), 1);
    }
}
