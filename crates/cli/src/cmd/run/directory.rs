//! `--resources DIR`: the directory seeds the store and is followed. Each load of the directory
//! is one write to the store that creates or updates every resource in it and deletes the ones
//! an earlier load had put there and that are gone from it; resources written through the API
//! are left alone. Which resources came from the directory is kept next to the store, so that a
//! file removed while `meshlimit run` was stopped is deleted at the next start too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshlimit_control_plane::store::Key;
use meshlimit_control_plane::{ControlPlane, CpError, model};
use meshlimit_control_plane_client::wire::{Action, WriteResult};
use meshlimit_policy::{Problem, load_paths};

use crate::watch::Watcher;

/// A resource directory and what it has put in the store.
pub struct Directory {
    path: PathBuf,
    /// The record of what came from `path`: `<store>.directory.json`.
    record: PathBuf,
    owned: BTreeSet<Key>,
}

impl Directory {
    /// Knows what an earlier run put in the store from `path`, if the record says so. A record
    /// written for another directory counts too: this directory's resources replace what that
    /// one seeded (said in the log), so switching directories never leaves the old ones served.
    pub fn new(path: &Path, store: &Path) -> Directory {
        let mut record = store.as_os_str().to_owned();
        record.push(".directory.json");
        let record = PathBuf::from(record);
        let owned = match read_record(&record) {
            Some((from, keys)) if from != canonical(path) && !keys.is_empty() => {
                tracing::info!(
                    "the store was seeded from {from}; its {} resource(s) from there are replaced \
                     by {}",
                    keys.len(),
                    path.display()
                );
                keys
            }
            Some((_, keys)) => keys,
            None => BTreeSet::new(),
        };
        Directory {
            path: path.to_owned(),
            record,
            owned,
        }
    }

    /// What the store holds before this directory is loaded: `N resource(s) (n from DIR, m
    /// written through the API)`, or `empty`.
    pub fn describe_store(&self, state: &meshlimit_control_plane::StoreState) -> String {
        let total = state.entries.len();
        if total == 0 {
            return "empty".to_string();
        }
        let from_directory = state
            .entries
            .keys()
            .filter(|k| self.owned.contains(k))
            .count();
        format!(
            "version {}, {total} resource(s): {from_directory} seeded from a resource directory, \
             {} written through the API",
            state.version,
            total - from_directory
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the directory into the store in one write; on failure (every problem, one per
    /// line) the store is unchanged.
    pub fn load(&mut self, cp: &ControlPlane) -> Result<WriteResult, String> {
        let parsed = load_paths(&[&self.path]).map_err(|problems| lines(&problems))?;
        for warning in &parsed.warnings {
            tracing::warn!("{warning}");
        }
        let now: BTreeSet<Key> = parsed.resources.iter().map(model::key_of).collect();
        let gone: Vec<Key> = self.owned.difference(&now).cloned().collect();
        let result = cp
            .apply_parsed_and_remove(parsed, &gone)
            .map_err(|error| match error {
                CpError::Invalid(problems) => lines(&problems),
                other => format!("  {other}"),
            })?;
        self.owned = now;
        if let Err(error) = self.write_record() {
            tracing::warn!(
                "cannot record which resources came from {}: {error}",
                self.path.display()
            );
        }
        Ok(result)
    }

    fn write_record(&self) -> std::io::Result<()> {
        let resources: Vec<serde_json::Value> = self
            .owned
            .iter()
            .map(|k| serde_json::json!({"kind": k.kind.as_str(), "mesh": k.mesh, "name": k.name}))
            .collect();
        let text = serde_json::json!({
            "directory": canonical(&self.path),
            "resources": resources,
        });
        let partial = self.record.with_extension("partial");
        std::fs::write(&partial, format!("{text:#}\n"))?;
        std::fs::rename(&partial, &self.record)
    }
}

/// The directory the record at `record` was written for, and its keys.
fn read_record(record: &Path) -> Option<(String, BTreeSet<Key>)> {
    let text = std::fs::read_to_string(record).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let directory = value["directory"].as_str()?.to_string();
    let keys = value["resources"]
        .as_array()?
        .iter()
        .filter_map(|r| {
            Some(Key {
                kind: r["kind"].as_str()?.parse().ok()?,
                mesh: r["mesh"].as_str()?.to_string(),
                name: r["name"].as_str()?.to_string(),
            })
        })
        .collect();
    Some((directory, keys))
}

/// The default store of `meshlimit run --resources DIR`: one per directory, beside the
/// default store, named after the directory and a hash of its full path, so two projects on
/// one machine never share a store by accident.
pub fn default_store_for(directory: &Path, default_store: &Path) -> PathBuf {
    let full = canonical(directory);
    // FNV-1a: stable across releases (std's hasher is not promised to be), enough to tell
    // directories apart.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let name: String = Path::new(&full)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let parent = default_store.parent().unwrap_or(Path::new("."));
    parent.join("run").join(format!("{name}-{hash:016x}.redb"))
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// `created 2, configured 1, deleted 1` (what changed), or `no change`.
pub fn summary(result: &WriteResult) -> String {
    let count = |action: Action| result.results.iter().filter(|r| r.action == action).count();
    let parts: Vec<String> = [Action::Created, Action::Configured, Action::Deleted]
        .into_iter()
        .filter(|&a| count(a) > 0)
        .map(|a| format!("{a} {}", count(a)))
        .collect();
    if parts.is_empty() {
        "no change".to_string()
    } else {
        format!("{} (store version {})", parts.join(", "), result.version)
    }
}

pub fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls the directory and loads it into the store once its files have stopped changing for
/// one interval (editors write in several steps). Runs on its own thread until `stop`.
pub fn follow(
    mut directory: Directory,
    mut watcher: Watcher,
    interval: Duration,
    cp: &ControlPlane,
    stop: &std::sync::atomic::AtomicBool,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(interval);
        if !watcher.settled_change() {
            continue;
        }
        match directory.load(cp) {
            Ok(result) => tracing::info!(
                "{} changed: {}",
                directory.path().display(),
                summary(&result)
            ),
            Err(problems) => tracing::error!(
                "{} changed but does not validate; the change is ignored and the store keeps \
                 the last good resources:\n{problems}",
                directory.path().display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_read_back_and_another_directory_takes_it_over() {
        let temp = tempfile::tempdir().unwrap();
        let (dir, other) = (temp.path().join("dir"), temp.path().join("other"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let store = temp.path().join("store.redb");
        let key = Key {
            kind: meshlimit_policy::Kind::MeshRateLimit,
            mesh: "default".into(),
            name: "web".into(),
        };
        let mut directory = Directory::new(&dir, &store);
        assert!(directory.owned.is_empty());
        directory.owned.insert(key.clone());
        directory.write_record().unwrap();

        assert_eq!(
            Directory::new(&dir, &store).owned,
            BTreeSet::from([key.clone()])
        );
        // Another directory replaces what this one seeded.
        assert_eq!(Directory::new(&other, &store).owned, BTreeSet::from([key]));
        std::fs::write(temp.path().join("store.redb.directory.json"), "{ not json").unwrap();
        assert!(Directory::new(&dir, &store).owned.is_empty());
    }

    #[test]
    fn each_directory_has_its_own_default_store_whatever_its_spelling() {
        let base = std::env::temp_dir().join(format!("meshlimit-stores-{}", std::process::id()));
        let (one, two) = (base.join("one"), base.join("two words"));
        std::fs::create_dir_all(&one).unwrap();
        std::fs::create_dir_all(&two).unwrap();
        let default = Path::new("/data/meshlimit/store.redb");
        let store_one = default_store_for(&one, default);
        assert_eq!(
            store_one,
            default_store_for(&base.join("two words/../one/"), default)
        );
        let store_two = default_store_for(&two, default);
        assert_ne!(store_one, store_two);
        assert_eq!(store_one.parent(), Some(Path::new("/data/meshlimit/run")));
        let name = store_two.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("two_words-") && name.ends_with(".redb"),
            "{name}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
