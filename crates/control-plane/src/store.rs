//! The durable store: one redb file holding every resource and the store version.
//!
//! Keys are `(mesh, kind, name)`, the kind by its name (`MeshRateLimit`), so a store file does
//! not depend on how the policy crate numbers its kinds; a value is `(version, yaml)`: the store
//! version that last wrote the resource and its canonical YAML (the policy crate's
//! serialization, which parses back to the same resource). A change of any size is one write
//! transaction with immediate durability, so once [`Store::commit`] returns the change survives
//! `kill -9` and power loss, and a crash before that leaves the previous state whole.
//!
//! A file damaged outside redb (a bad disk, a partial copy, an editor) is refused with
//! [`StoreError::Damaged`] rather than trusted: every open verifies the checksum of every page
//! (the store is small), and commits are two-phase so that a damaged latest commit is reported
//! rather than silently rolled back to the one before it.
//!
//! A failed commit (a full disk, an I/O error) leaves redb refusing every later transaction
//! until the database is reopened, so the store closes it at once and reopens it on the next
//! write ([`Store::recover`]); until a commit succeeds again, [`Store::health`] says why the
//! store is not writable. Nothing acknowledged is lost: a failed commit changes nothing.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use meshlimit_policy::Kind;
use redb::{Builder, Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

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
    /// The file is not a whole redb file, or a page fails its checksum.
    #[error(
        "store {path} is damaged ({detail}): restore it from a backup, or move it away to start \
         with an empty store"
    )]
    Damaged { path: String, detail: String },
    /// An empty file is refused rather than initialized: it is not what this store wrote, and
    /// serving it as an empty store would lift every limit of the data planes that follow it.
    #[error("store {path} is empty: not a meshlimit store; remove it to start with an empty store")]
    Empty { path: String },
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

impl StoreError {
    /// A failure of the disk or the database rather than of the request or the file's
    /// contents: the write may succeed once the cause is gone (space freed, disk back).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Db { .. })
    }
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
    slot: Mutex<Slot>,
    path: PathBuf,
    shown: String,
}

/// The open database (none after a failed write, until [`Store::recover`] reopens it) and the
/// store's write health.
struct Slot {
    db: Option<Database>,
    /// Why the last write failed, until one succeeds again.
    failure: Option<String>,
    write_errors: u64,
}

/// Whether the store takes writes, and why not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The last write failed (and nothing has been committed since).
    pub failure: Option<String>,
    /// Writes that failed in the store since the process started.
    pub write_errors: u64,
}

/// The store is closed after a failed write and could not be reopened yet.
const CLOSED: &str = "the store is closed after a failed write";

impl Store {
    /// Opens the store at `path`, creating it if there is no file there. An existing file is
    /// verified page by page before anything is read from it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let db = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::create(path, &shown)?,
            Err(e) => return Err(classify(&shown, e)),
            Ok(meta) if meta.len() == 0 => return Err(StoreError::Empty { path: shown }),
            Ok(_) => Builder::new()
                .set_check_integrity_on_open(true)
                .open(path)
                .map_err(|e| classify(&shown, e))?,
        };
        let store = Store {
            slot: Mutex::new(Slot {
                db: None,
                failure: None,
                write_errors: 0,
            }),
            path: path.to_path_buf(),
            shown,
        };
        // Older stores, and one whose tables were never created, get both tables so that readers
        // never see "table does not exist".
        let txn = store.begin_write(&db)?;
        {
            txn.open_table(RESOURCES).map_err(|e| store.err(e))?;
            txn.open_table(META).map_err(|e| store.err(e))?;
        }
        txn.commit().map_err(|e| store.err(e))?;
        store.lock().db = Some(db);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot holds a handle and counters; a panic elsewhere cannot leave them half-set.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether writes succeed now, and how many failed.
    pub fn health(&self) -> Health {
        let slot = self.lock();
        Health {
            failure: slot.failure.clone(),
            write_errors: slot.write_errors,
        }
    }

    /// After a failed write, reopens the database (once per call: the caller's next write is the
    /// retry) and returns the store version on disk; `None` when the store was open already.
    /// A reopen that fails counts as a failed write and leaves the store closed.
    pub fn recover(&self) -> Result<Option<u64>, StoreError> {
        let mut slot = self.lock();
        if slot.db.is_some() {
            return Ok(None);
        }
        let reopened = Builder::new()
            .set_check_integrity_on_open(true)
            .open(&self.path)
            .map_err(|e| self.err(e))
            .and_then(|db| Ok((version_of(&db).map_err(|e| self.err(e))?, db)));
        match reopened {
            Ok((version, db)) => {
                tracing::info!(store = %self.shown, version, "store reopened after a failed write");
                slot.db = Some(db);
                Ok(Some(version))
            }
            Err(e) => {
                slot.write_errors += 1;
                slot.failure = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// A new store, made under a temporary name and linked into place only once initialized, so
    /// that a crash while creating it never leaves an empty or half-written file at `path`
    /// (which the next start would refuse).
    fn create(path: &Path, shown: &str) -> Result<Database, StoreError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".new");
        let fresh = path.with_file_name(name);
        let err = |e: redb::Error| classify(shown, e);
        let io = |e: std::io::Error| classify(shown, e);
        // Left by a crash during an earlier creation: never linked, so never acknowledged.
        match std::fs::remove_file(&fresh) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let db = Database::create(&fresh).map_err(|e| err(e.into()))?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        {
            txn.open_table(RESOURCES).map_err(|e| err(e.into()))?;
            txn.open_table(META).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))?;
        // A link, not a rename: it fails rather than replace a store another process created
        // at `path` meanwhile.
        std::fs::hard_link(&fresh, path).map_err(io)?;
        std::fs::remove_file(&fresh).map_err(io)?;
        sync_dir(path).map_err(io)?;
        Ok(db)
    }

    /// A write transaction that commits in two phases: with one, a damaged latest commit looks
    /// like a torn one and the next open would silently fall back to the commit before it.
    fn begin_write(&self, db: &Database) -> Result<WriteTransaction, StoreError> {
        let mut txn = db.begin_write().map_err(|e| self.err(e))?;
        txn.set_two_phase_commit(true);
        Ok(txn)
    }

    fn err(&self, source: impl Into<redb::Error>) -> StoreError {
        classify(&self.shown, source)
    }

    fn closed(&self) -> StoreError {
        StoreError::Db {
            path: self.shown.clone(),
            source: redb::Error::Io(std::io::Error::other(CLOSED)),
        }
    }

    /// The store version and every resource, in key order.
    pub fn load(&self) -> Result<(u64, Vec<StoredResource>), StoreError> {
        let slot = self.lock();
        let db = slot.db.as_ref().ok_or_else(|| self.closed())?;
        let txn = db.begin_read().map_err(|e| self.err(e))?;
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
                    path: self.shown.clone(),
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
    ///
    /// A failure other than a stale version closes the database (redb refuses every later
    /// transaction after an I/O error) and is reported by [`Store::health`] until a commit
    /// succeeds; call [`Store::recover`] before the next one.
    pub fn commit(&self, expected_version: u64, changes: &[Change]) -> Result<u64, StoreError> {
        let mut slot = self.lock();
        let result = match &slot.db {
            Some(db) => self.commit_on(db, expected_version, changes),
            None => Err(self.closed()),
        };
        match &result {
            Ok(_) => {
                if let Some(failure) = slot.failure.take() {
                    tracing::info!(store = %self.shown, after = %failure, "store writable again");
                }
            }
            Err(StoreError::Stale { .. }) => {}
            Err(e) => {
                tracing::error!(store = %self.shown, error = %e, "store write failed; the store is reopened on the next write");
                slot.write_errors += 1;
                slot.failure = Some(e.to_string());
                slot.db = None;
            }
        }
        result
    }

    fn commit_on(
        &self,
        db: &Database,
        expected_version: u64,
        changes: &[Change],
    ) -> Result<u64, StoreError> {
        let txn = self.begin_write(db)?;
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
                    path: self.shown.clone(),
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

/// The store version recorded in `db`.
fn version_of(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    Ok(meta.get(VERSION_KEY)?.map(|v| v.value()).unwrap_or(0))
}

/// The error for `e` on the store at `path`: damage gets its own, which says what to do.
fn classify(path: &str, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(detail) => StoreError::Damaged {
            path: path.to_string(),
            detail,
        },
        // What redb reports for a file that is not (or no longer wholly) a redb file: a bad
        // header, or one shorter than its header says.
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Damaged {
                path: path.to_string(),
                detail: io.to_string(),
            }
        }
        source => StoreError::Db {
            path: path.to_string(),
            source,
        },
    }
}

/// Makes the link of a new store durable: without this a crash could lose the name.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(dir)?.sync_all()
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
            let slot = store.lock();
            let txn = slot.db.as_ref().unwrap().begin_write().unwrap();
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

    /// The store version and every resource with its version and YAML.
    type Contents = (u64, Vec<(Key, u64, String)>);

    /// A store with enough resources to span many pages, and what it holds.
    fn written(path: &Path) -> Contents {
        {
            let store = Store::open(path).unwrap();
            let mut version = 0;
            for i in 0..40 {
                version = store
                    .commit(
                        version,
                        &[Change::Put {
                            key: key(&format!("r{i}")),
                            yaml: format!("{i}: {}\n", "x".repeat(300 + i)),
                        }],
                    )
                    .unwrap();
            }
        }
        open_and_load(path).unwrap()
    }

    fn open_and_load(path: &Path) -> Result<Contents, StoreError> {
        let store = Store::open(path)?;
        let (version, resources) = store.load()?;
        let resources = resources
            .into_iter()
            .map(|r| (r.key, r.version, r.yaml))
            .collect();
        Ok((version, resources))
    }

    fn assert_damaged(err: &StoreError, path: &Path) {
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains("restore it from a backup, or move it away to start with an empty store"),
            "{text}"
        );
    }

    #[test]
    fn damage_anywhere_is_refused_or_harmless_and_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let whole = written(&path);
        let bytes = std::fs::read(&path).unwrap();
        let damaged = dir.path().join("damaged.redb");
        let mut refused = 0;
        // Every 512 bytes (so every page and both commit slots), plus inside each page.
        let offsets = (0..bytes.len())
            .step_by(512)
            .chain((0..bytes.len()).step_by(4096).map(|o| o + 77));
        for offset in offsets {
            let mut copy = bytes.clone();
            let end = (offset + 64).min(copy.len());
            for (i, b) in copy[offset..end].iter_mut().enumerate() {
                *b ^= 0x5a ^ i as u8;
            }
            std::fs::write(&damaged, &copy).unwrap();
            let outcome = std::panic::catch_unwind(|| open_and_load(&damaged))
                .unwrap_or_else(|_| panic!("opening with damage at {offset} panicked"));
            match outcome {
                // Damage to a page no commit uses (the older commit slot, free pages).
                Ok(read) => assert!(read == whole, "damage at {offset} was read as data"),
                Err(err) => {
                    assert_damaged(&err, &damaged);
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "no damage was noticed");
    }

    #[test]
    fn a_truncated_file_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        written(&path);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [100, 4096, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = open_and_load(&path).unwrap_err();
            assert_damaged(&err, &path);
        }
    }

    #[test]
    fn an_empty_file_is_not_a_store_but_a_missing_one_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(&path, b"").unwrap();
        let err = Store::open(&path).err().expect("an empty file is refused");
        assert!(matches!(err, StoreError::Empty { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "store {} is empty: not a meshlimit store; remove it to start with an empty store",
                path.display()
            )
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

        std::fs::remove_file(&path).unwrap();
        // A half-made store from a crash while creating one is never the store.
        let fresh = dir.path().join("s.redb.new");
        std::fs::write(&fresh, b"half").unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load().unwrap().0, 0);
        assert!(!fresh.exists());
        drop(store);
        assert_eq!(open_and_load(&path).unwrap(), (0, Vec::new()));
    }
}
