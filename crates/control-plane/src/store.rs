//! The durable store: one redb file holding every resource and the store version.
//!
//! Keys are `(mesh, kind, name)`, the kind by its name (`MeshRateLimit`), so a store file does
//! not depend on how the policy crate numbers its kinds; a value is `(version, yaml)`: the store
//! version that last wrote the resource and its canonical YAML (the policy crate's
//! serialization, which parses back to the same resource). A change of any size is one write
//! transaction with immediate durability, so once [`Store::commit`] returns the change survives
//! `kill -9` and power loss, and a crash before that leaves the previous state whole.

use std::cmp::Ordering;
use std::path::Path;

use meshlimit_policy::Kind;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// `(mesh, kind, name) -> (version, canonical YAML)`.
const RESOURCES: TableDefinition<'_, (&str, &str, &str), (u64, &str)> =
    TableDefinition::new("resources");
/// `"version" -> store version`.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const VERSION_KEY: &str = "version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error(
        "store {path}: {mesh}/{kind}/{name} has a kind this meshlimit does not know: was the \
         store written by a newer version?"
    )]
    UnknownKind {
        path: String,
        mesh: String,
        kind: String,
        name: String,
    },
    #[error(
        "store {path}: version is {found}, expected {expected}: is another process writing this store?"
    )]
    Stale {
        path: String,
        found: u64,
        expected: u64,
    },
}

/// Where a resource lives in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub mesh: String,
    pub kind: Kind,
    pub name: String,
}

impl Key {
    /// The key as the store file spells it.
    fn as_tuple(&self) -> (&str, &str, &str) {
        (&self.mesh, self.kind.as_str(), &self.name)
    }
}

/// Keys sort as the store file sorts them (by the kind's name, not the enum's order), so that
/// listings and cross-resource validation see resources in the order they are stored.
impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_tuple().cmp(&other.as_tuple())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The kind a stored key names: exactly [`Kind::as_str`], which is what [`Store::commit`] writes.
fn kind_named(name: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
}

/// One stored resource, as read back.
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub key: Key,
    /// The store version that last wrote it.
    pub version: u64,
    pub yaml: String,
}

/// One change inside a transaction.
#[derive(Debug, Clone)]
pub enum Change {
    Put { key: Key, yaml: String },
    Delete { key: Key },
}

pub struct Store {
    db: Database,
    path: String,
}

impl Store {
    /// Opens the store at `path`, creating it (and its parent directories' file) if needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let wrap = |source: redb::Error| StoreError::Db {
            path: shown.clone(),
            source,
        };
        let db = Database::create(path).map_err(|e| wrap(e.into()))?;
        // Make sure both tables exist so that readers never see "table does not exist".
        let txn = db.begin_write().map_err(|e| wrap(e.into()))?;
        {
            txn.open_table(RESOURCES).map_err(|e| wrap(e.into()))?;
            txn.open_table(META).map_err(|e| wrap(e.into()))?;
        }
        txn.commit().map_err(|e| wrap(e.into()))?;
        Ok(Store { db, path: shown })
    }

    fn err(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: source.into(),
        }
    }

    /// The store version and every resource, in key order.
    pub fn load(&self) -> Result<(u64, Vec<StoredResource>), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let version = meta
            .get(VERSION_KEY)
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = txn.open_table(RESOURCES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let (mesh, kind, name) = k.value();
            let (version, yaml) = v.value();
            let Some(kind) = kind_named(kind) else {
                return Err(StoreError::UnknownKind {
                    path: self.path.clone(),
                    mesh: mesh.to_string(),
                    kind: kind.to_string(),
                    name: name.to_string(),
                });
            };
            out.push(StoredResource {
                key: Key {
                    mesh: mesh.to_string(),
                    kind,
                    name: name.to_string(),
                },
                version,
                yaml: yaml.to_string(),
            });
        }
        Ok((version, out))
    }

    /// Applies every change in one durable transaction and returns the new store version.
    /// `expected_version` guards against a concurrent writer of the same file (there is only one
    /// process per store, so a mismatch means the caller's view is stale).
    pub fn commit(&self, expected_version: u64, changes: &[Change]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let new_version;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let current = meta
                .get(VERSION_KEY)
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(0);
            if current != expected_version {
                return Err(StoreError::Stale {
                    path: self.path.clone(),
                    found: current,
                    expected: expected_version,
                });
            }
            new_version = current + 1;
            meta.insert(VERSION_KEY, new_version)
                .map_err(|e| self.err(e))?;
            let mut table = txn.open_table(RESOURCES).map_err(|e| self.err(e))?;
            for change in changes {
                match change {
                    Change::Put { key, yaml } => {
                        table
                            .insert(key.as_tuple(), (new_version, yaml.as_str()))
                            .map_err(|e| self.err(e))?;
                    }
                    Change::Delete { key } => {
                        table.remove(key.as_tuple()).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(new_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            mesh: "default".into(),
            kind: Kind::MeshRateLimit,
            name: name.into(),
        }
    }

    #[test]
    fn commits_are_versioned_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.load().unwrap().0, 0);
            let v = store
                .commit(
                    0,
                    &[
                        Change::Put {
                            key: key("a"),
                            yaml: "a: 1\n".into(),
                        },
                        Change::Put {
                            key: key("b"),
                            yaml: "b: 1\n".into(),
                        },
                    ],
                )
                .unwrap();
            assert_eq!(v, 1);
            let v = store
                .commit(1, &[Change::Delete { key: key("a") }])
                .unwrap();
            assert_eq!(v, 2);
        }
        let store = Store::open(&path).unwrap();
        let (version, resources) = store.load().unwrap();
        assert_eq!(version, 2);
        assert_eq!(resources.len(), 1);
        assert_eq!(resources[0].key, key("b"));
        assert_eq!(resources[0].version, 1);
        assert_eq!(resources[0].yaml, "b: 1\n");
    }

    #[test]
    fn a_stale_expected_version_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .commit(
                0,
                &[Change::Put {
                    key: key("a"),
                    yaml: "x".into(),
                }],
            )
            .unwrap();
        let err = store
            .commit(
                0,
                &[Change::Put {
                    key: key("b"),
                    yaml: "y".into(),
                }],
            )
            .unwrap_err();
        assert!(err.to_string().contains("expected 0"), "{err}");
        let (version, resources) = store.load().unwrap();
        assert_eq!(version, 1);
        assert_eq!(resources.len(), 1);
    }

    #[test]
    fn keys_keep_the_kind_by_name_on_disk_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .commit(
                    0,
                    &[Change::Put {
                        key: key("a"),
                        yaml: "x".into(),
                    }],
                )
                .unwrap();
        }
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(RESOURCES).unwrap();
        let stored = table.get(("default", "MeshRateLimit", "a")).unwrap();
        assert_eq!(stored.map(|v| v.value().1.to_string()), Some("x".into()));

        // By name (`Dataplane` < `Mesh` < `MeshRateLimit` ...), whatever the enum's order.
        let mut keys: Vec<Key> = Kind::ALL
            .into_iter()
            .map(|kind| Key { kind, ..key("a") })
            .collect();
        keys.sort();
        let names: Vec<&str> = keys.iter().map(|k| k.kind.as_str()).collect();
        let mut by_name = names.clone();
        by_name.sort_unstable();
        assert_eq!(names, by_name);
    }

    #[test]
    fn a_kind_this_version_does_not_know_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(RESOURCES).unwrap();
                table
                    .insert(("default", "MeshTimeout", "t"), (1, "x"))
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::UnknownKind { .. }), "{err}");
        assert!(err.to_string().contains("default/MeshTimeout/t"), "{err}");
    }
}
