//! The durable store: one redb file holding every resource and the store version.
//!
//! Keys are `(mesh, kind, name)`; a value is `(version, yaml)`: the store version that last wrote
//! the resource and its canonical YAML (the policy crate's serialization, which parses back to the
//! same resource). A change of any size is one write transaction with immediate durability, so
//! once [`Store::commit`] returns the change survives `kill -9` and power loss, and a crash before
//! that leaves the previous state whole.

use std::path::Path;

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
        "store {path}: version is {found}, expected {expected}: is another process writing this store?"
    )]
    Stale {
        path: String,
        found: u64,
        expected: u64,
    },
}

/// Where a resource lives in the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub mesh: String,
    /// The kind's name as the policy crate spells it (`MeshRateLimit`, `RateLimit`, ...).
    pub kind: String,
    pub name: String,
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
            out.push(StoredResource {
                key: Key {
                    mesh: mesh.to_string(),
                    kind: kind.to_string(),
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
                            .insert(
                                (key.mesh.as_str(), key.kind.as_str(), key.name.as_str()),
                                (new_version, yaml.as_str()),
                            )
                            .map_err(|e| self.err(e))?;
                    }
                    Change::Delete { key } => {
                        table
                            .remove((key.mesh.as_str(), key.kind.as_str(), key.name.as_str()))
                            .map_err(|e| self.err(e))?;
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
            kind: "MeshRateLimit".into(),
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
}
