//! Hot reload: keeps a [`Registry`] in step with its task directories while the worker
//! runs.
//!
//! Two triggers feed one loop: filesystem events (inotify through the `notify` crate)
//! for a reaction within a fraction of a second, and a rescan every
//! [`WatchOptions::poll_interval`] as the fallback (a directory that could not be
//! watched, one created later, a network filesystem that sends no events, a missed
//! event). Both only trigger [`Registry::refresh`], which compares each file's
//! (size, mtime, ctime, inode) — and its manifest's — with what it last loaded, so a
//! spurious wake-up costs a few `stat` calls.
//!
//! Half-written files: a file that changed less than [`WatchOptions::settle`] ago is
//! left alone until it has been quiet that long (writers that `cp` in place are caught
//! too, not only those that write a temp file and rename it). A file that still does not
//! load is rejected with a logged reason and its previous version keeps serving; it is
//! tried again when it changes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Refresh, Registry};
use crate::model::Limits;
use crate::sandbox::Sandbox;

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Rescan this often even without filesystem events. Default: 2 s.
    pub poll_interval: Duration,
    /// How long a changed file must stay unchanged before it is loaded. Default: 250 ms.
    pub settle: Duration,
    /// After a filesystem event, wait this long for more before rescanning (one `cp`
    /// makes several events). Default: 50 ms.
    pub debounce: Duration,
    /// Use filesystem events; `false` = polling only. Default: true.
    pub fs_events: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll_interval: Duration::from_secs(2),
            settle: Duration::from_millis(250),
            debounce: Duration::from_millis(50),
            fs_events: true,
        }
    }
}

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `paths` (the same directories or files the registry was loaded
/// from) and refreshing `registry` from them. Must be called inside a tokio runtime.
/// Changes are logged: each file loaded (with its version hash), removed or rejected.
pub fn spawn(
    registry: Arc<Registry>,
    sandbox: Sandbox,
    paths: Vec<PathBuf>,
    defaults: Limits,
    options: WatchOptions,
) -> Watcher {
    let task = tokio::spawn(async move {
        let wake = Arc::new(Notify::new());
        let mut events = options.fs_events.then(|| FsEvents::new(wake.clone()));
        let mut wait = options.poll_interval;
        loop {
            if let Some(events) = &mut events {
                events.watch_missing(&paths);
            }
            tokio::select! {
                _ = wake.notified() => {
                    tokio::time::sleep(options.debounce).await;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            let report = registry
                .refresh(&sandbox, &paths, &defaults, options.settle)
                .await;
            log_refresh(&report);
            // Come back for files still being written as soon as they may have settled.
            wait = if report.unsettled.is_empty() {
                options.poll_interval
            } else {
                options.settle.min(options.poll_interval)
            };
        }
    });
    Watcher { task }
}

/// Logs what a refresh changed.
pub fn log_refresh(report: &Refresh) {
    for (file, hash) in &report.loaded {
        tracing::info!(
            "loaded task file {} (version {})",
            file.display(),
            &hash[..hash.len().min(12)]
        );
    }
    for file in &report.removed {
        tracing::info!("task file {} removed: its tasks are gone", file.display());
    }
    for rejected in &report.rejected {
        tracing::error!(
            "rejected task file {}: {} (a previous version, if any, keeps serving)",
            rejected.file.display(),
            rejected.reason
        );
    }
}

/// The inotify side: wakes the loop on changes in the watched directories.
struct FsEvents {
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
}

impl FsEvents {
    fn new(wake: Arc<Notify>) -> Self {
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                // Our own reads of the files must not wake us up again.
                Ok(event) => match event.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) => false,
                    _ => true,
                },
                Err(_) => true,
            };
            if relevant {
                wake.notify_one();
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!("cannot watch task directories ({e}); polling for changes only");
                None
            }
        };
        FsEvents {
            watcher,
            watched: HashSet::new(),
        }
    }

    /// Watches every directory of `paths` not watched yet (for a file, its folder).
    /// Directories that do not exist yet are tried again on the next round.
    fn watch_missing(&mut self, paths: &[PathBuf]) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        for path in paths {
            let dir = if path.is_dir() {
                path.as_path()
            } else {
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
            };
            if self.watched.contains(dir) || !dir.is_dir() {
                continue;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.to_path_buf());
                }
                Err(e) => tracing::warn!(
                    "cannot watch {} ({e}); polling it for changes",
                    dir.display()
                ),
            }
        }
    }
}
