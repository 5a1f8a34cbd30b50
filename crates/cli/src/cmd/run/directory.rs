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
    /// Knows what an earlier run put in the store from `path`, if the record says so.
    pub fn new(path: &Path, store: &Path) -> Directory {
        let mut record = store.as_os_str().to_owned();
        record.push(".directory.json");
        let record = PathBuf::from(record);
        let owned = read_record(&record, path).unwrap_or_default();
        Directory {
            path: path.to_owned(),
            record,
            owned,
        }
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

/// The keys of the record at `record` if it was written for `directory`.
fn read_record(record: &Path, directory: &Path) -> Option<BTreeSet<Key>> {
    let text = std::fs::read_to_string(record).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    if value["directory"].as_str()? != canonical(directory) {
        return None;
    }
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
    Some(keys)
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
    fn the_record_is_read_back_only_for_its_own_directory() {
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

        assert_eq!(Directory::new(&dir, &store).owned, BTreeSet::from([key]));
        assert!(Directory::new(&other, &store).owned.is_empty());
        std::fs::write(temp.path().join("store.redb.directory.json"), "{ not json").unwrap();
        assert!(Directory::new(&dir, &store).owned.is_empty());
    }
}
