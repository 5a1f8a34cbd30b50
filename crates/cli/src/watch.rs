//! Notices edits to resource files by polling names, sizes and modification times: portable,
//! no inotify limits, and cheap for a directory of policy files. Watches exactly the files
//! [`meshlimit_policy::load_paths`] reads (the same [`is_resource_file`] filter). Used by
//! `meshlimit run` and `meshlimit agent`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use meshlimit_policy::is_resource_file;

pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

pub struct Watcher {
    path: PathBuf,
    applied: Fingerprint,
    pending: Option<Fingerprint>,
}

impl Watcher {
    pub fn new(path: &Path) -> Watcher {
        Watcher {
            path: path.to_owned(),
            applied: fingerprint(path),
            pending: None,
        }
    }

    /// True once the resources differ from what was last applied and have not changed since
    /// the previous call (a debounce of one poll period). The caller then reloads.
    pub fn settled_change(&mut self) -> bool {
        let now = fingerprint(&self.path);
        if now == self.applied {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            self.applied = now;
            self.pending = None;
            return true;
        }
        self.pending = Some(now);
        false
    }
}

/// The files `load_paths` would read, with their sizes and modification times.
fn fingerprint(path: &Path) -> Fingerprint {
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| is_resource_file(p))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![path.to_owned()]
    };
    let mut print: Fingerprint = files
        .into_iter()
        .map(|file| {
            let meta = std::fs::metadata(&file).ok();
            let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (file, len, modified)
        })
        .collect();
    print.sort();
    print
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_it_has_settled() {
        let dir = std::env::temp_dir().join(format!("meshlimit-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.yaml");
        std::fs::write(&file, "one").unwrap();
        let mut watcher = Watcher::new(&dir);
        assert!(!watcher.settled_change());

        std::fs::write(&file, "two, longer").unwrap();
        assert!(
            !watcher.settled_change(),
            "first sight of a change waits one period"
        );
        assert!(watcher.settled_change());
        assert!(!watcher.settled_change(), "reported once");

        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        assert!(!watcher.settled_change());
        std::fs::remove_file(&file).unwrap();
        assert!(!watcher.settled_change());
        assert!(watcher.settled_change());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
