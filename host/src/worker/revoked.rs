//! The ids of revoked jobs a worker remembers, so a revoked job that is delivered (or
//! redelivered) later does not run: bounded and expiring like Celery's `LimitedSet`
//! (at most [`MAX_REVOKED`] ids, each kept [`REVOKE_EXPIRES`]), and kept across restarts
//! in the `--statedb` file when one is given.
//!
//! The state file is JSON, `{"revoked": [[id, revoked_at_unix_seconds], …]}`, written
//! to a temporary file and renamed over the old one after every revoke, so a crash
//! leaves the old or the new set, never half of one. It is Sprout's own format (Celery's
//! is a Python `shelve`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most revoked ids kept (Celery's `CELERY_WORKER_REVOKES_MAX` default).
pub const MAX_REVOKED: usize = 50_000;
/// How long a revoked id is kept (Celery's `CELERY_WORKER_REVOKE_EXPIRES` default).
pub const REVOKE_EXPIRES: Duration = Duration::from_secs(10_800);

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("state db {path}: {reason}")]
pub struct StateDbError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    revoked: Vec<(String, f64)>,
}

#[derive(Debug, Default)]
struct Set {
    at: HashMap<String, f64>,
    order: VecDeque<(String, f64)>,
}

impl Set {
    /// Adds (or refreshes) `id`; an older entry of it in `order` becomes stale.
    fn insert(&mut self, id: String, at: f64) {
        self.at.insert(id.clone(), at);
        self.order.push_back((id, at));
    }

    /// The live entries, oldest first.
    fn live(&self) -> impl Iterator<Item = &(String, f64)> {
        self.order
            .iter()
            .filter(|(id, at)| self.at.get(id) == Some(at))
    }

    /// Drops expired ids and the oldest past the bound.
    fn purge(&mut self, now: f64, max: usize, expires: f64) {
        while let Some((id, at)) = self.order.front() {
            let current = self.at.get(id).copied();
            let stale = current != Some(*at);
            if stale || self.at.len() > max || *at + expires < now {
                if !stale {
                    self.at.remove(id);
                }
                self.order.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Revoked job ids, bounded and expiring, optionally persisted.
#[derive(Debug)]
pub struct Revoked {
    set: Mutex<Set>,
    path: Option<PathBuf>,
    max: usize,
    expires: Duration,
}

fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

impl Default for Revoked {
    fn default() -> Self {
        Revoked::in_memory(MAX_REVOKED, REVOKE_EXPIRES)
    }
}

impl Revoked {
    /// An empty set kept in memory only, of at most `max` ids kept for `expires`.
    pub fn in_memory(max: usize, expires: Duration) -> Revoked {
        Revoked {
            set: Mutex::default(),
            path: None,
            max: max.max(1),
            expires,
        }
    }

    /// The set persisted in `path`, loaded from it when it exists.
    ///
    /// # Errors
    /// [`StateDbError`] when the file exists but cannot be read or is not a state file.
    pub fn open(path: &Path) -> Result<Revoked, StateDbError> {
        let err = |reason: String| StateDbError {
            path: path.to_path_buf(),
            reason,
        };
        let revoked = Revoked {
            path: Some(path.to_path_buf()),
            ..Revoked::default()
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: StateFile = serde_json::from_slice(&bytes)
                    .map_err(|e| err(format!("not a Sprout state file: {e}")))?;
                let mut set = revoked.lock();
                for (id, at) in file.revoked {
                    if at.is_finite() {
                        set.insert(id, at);
                    }
                }
                set.purge(unix_now(), revoked.max, revoked.expires.as_secs_f64());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
        Ok(revoked)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Set> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `ids` and writes the state file (when there is one).
    ///
    /// # Errors
    /// [`StateDbError`] when the file cannot be written; the ids are revoked in memory.
    pub fn add(&self, ids: &[String]) -> Result<(), StateDbError> {
        let now = unix_now();
        let snapshot = {
            let mut set = self.lock();
            for id in ids {
                set.insert(id.clone(), now);
            }
            set.purge(now, self.max, self.expires.as_secs_f64());
            self.path.as_ref().map(|_| StateFile {
                revoked: set.live().cloned().collect(),
            })
        };
        match (&self.path, snapshot) {
            (Some(path), Some(file)) => write_atomically(path, &file),
            _ => Ok(()),
        }
    }

    /// Whether `id` is revoked (and not expired).
    pub fn contains(&self, id: &str) -> bool {
        let mut set = self.lock();
        set.purge(unix_now(), self.max, self.expires.as_secs_f64());
        set.at.contains_key(id)
    }

    /// The revoked ids, oldest first.
    pub fn list(&self) -> Vec<String> {
        let mut set = self.lock();
        set.purge(unix_now(), self.max, self.expires.as_secs_f64());
        set.live().map(|(id, _)| id.clone()).collect()
    }
}

fn write_atomically(path: &Path, file: &StateFile) -> Result<(), StateDbError> {
    let err = |reason: String| StateDbError {
        path: path.to_path_buf(),
        reason,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let bytes = serde_json::to_vec(file).map_err(|e| err(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|e| err(format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot replace: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let set = Revoked::in_memory(3, Duration::from_secs(3600));
        let ids: Vec<String> = (0..5).map(|i| format!("id{i}")).collect();
        set.add(&ids).unwrap();
        assert_eq!(set.list(), vec!["id2", "id3", "id4"]);
        assert!(!set.contains("id0"));
        let gone = Revoked::in_memory(10, Duration::ZERO);
        gone.add(&ids).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!gone.contains("id1"));
        assert!(gone.list().is_empty());
    }

    #[test]
    fn persisted_across_opens() {
        let dir = std::env::temp_dir().join(format!("sprout-revoked-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        Revoked::open(&path)
            .unwrap()
            .add(&["a".into(), "b".into()])
            .unwrap();
        let again = Revoked::open(&path).unwrap();
        assert!(again.contains("a") && again.contains("b") && !again.contains("c"));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(Revoked::open(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
