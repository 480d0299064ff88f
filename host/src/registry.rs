//! The task registry: which task names this worker can run, and with what.
//!
//! A registry is built from task directories (`--tasks DIR`, repeatable) or single
//! files. Every `*.wasm` is validated and compiled through the [`Sandbox`]; its manifest
//! (`<name>.toml` beside it) supplies aliases, queue, limits and retry policy. A file
//! that fails to load is rejected with a reason and does not stop the others.
//!
//! Lookups return `Arc<TaskEntry>`: a job keeps the entry it started with, so replacing
//! the registry's contents (hot reload, [`watch`]) never changes a running job's code.
//! A file's version is the content hash of its wasm bytes ([`TaskModule::hash`]).
//!
//! The registry also holds the per-task rate limiters ([`Registry::throttle`]), since
//! it is the one per-process object every consume loop shares.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::manifest::Manifest;
use crate::model::Capabilities;
use crate::model::Limits;
use crate::rate_limit::RateLimiter;
use crate::sandbox::{LoadError, Sandbox, TaskModule};

pub mod watch;

/// One runnable task name.
#[derive(Debug)]
pub struct TaskEntry {
    /// The name jobs use (a task name or an alias).
    pub name: String,
    /// The name the task file itself knows the task by.
    pub export: String,
    /// The task file it comes from.
    pub file: PathBuf,
    /// The loaded module.
    pub module: Arc<TaskModule>,
    /// The file's manifest.
    pub manifest: Arc<Manifest>,
    /// The task's limits: worker defaults with the manifest applied.
    pub limits: Limits,
    /// What the manifest grants, with relative directories resolved against the
    /// manifest's folder.
    pub capabilities: Arc<Capabilities>,
}

/// A task file that could not be registered.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The file.
    pub file: PathBuf,
    /// Why.
    pub reason: String,
}

/// The set of loaded tasks, swappable as a whole, and what each task file provided.
///
/// [`Registry::refresh`] is the one way its contents change: it looks at the task files
/// under the given paths and reloads only the ones whose (size, mtime, ctime, inode) or
/// manifest changed since it last looked. A file whose new version does not load keeps
/// serving its previous version; a file that disappeared takes its tasks with it.
#[derive(Debug, Default)]
pub struct Registry {
    entries: RwLock<Arc<BTreeMap<String, Arc<TaskEntry>>>>,
    /// Per task file: what it provides now. The async lock also serialises refreshes.
    files: tokio::sync::Mutex<BTreeMap<PathBuf, FileRecord>>,
    rate_limiter: RateLimiter,
}

/// What one task file provides, and the version of it that was last looked at.
#[derive(Debug)]
struct FileRecord {
    stamp: Stamp,
    /// The entries of the version that is serving (empty when no version ever loaded).
    entries: Vec<Arc<TaskEntry>>,
}

/// What a [`Registry::refresh`] did.
#[derive(Debug, Default)]
pub struct Refresh {
    /// Files loaded: new, or changed (wasm or manifest), with the content hash now serving.
    pub loaded: Vec<(PathBuf, String)>,
    /// Files whose tasks were removed because the file is gone.
    pub removed: Vec<PathBuf>,
    /// Files (or task names) that could not be registered, with the reason. A rejected
    /// file that had loaded before keeps serving its previous version.
    pub rejected: Vec<Rejected>,
    /// Files that changed too recently to be read safely (they may still be being
    /// written); a later refresh picks them up.
    pub unsettled: Vec<PathBuf>,
}

impl Refresh {
    /// True when the set of tasks may have changed.
    pub fn changed(&self) -> bool {
        !self.loaded.is_empty() || !self.removed.is_empty()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The entry for `name`, if any file provides it.
    pub fn lookup(&self, name: &str) -> Option<Arc<TaskEntry>> {
        self.snapshot().get(name).cloned()
    }

    /// All entries, by name.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<TaskEntry>>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the whole set of names at once (a later [`Registry::refresh`] rebuilds
    /// it from the files again).
    pub fn replace(&self, entries: BTreeMap<String, Arc<TaskEntry>>) {
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
    }

    /// Loads `paths` (directories or `.wasm` files) and makes them the registry's
    /// contents. Returns the files (or names) that were rejected.
    pub async fn load(
        &self,
        sandbox: &Sandbox,
        paths: &[PathBuf],
        defaults: &Limits,
    ) -> Vec<Rejected> {
        self.refresh(sandbox, paths, defaults, Duration::ZERO)
            .await
            .rejected
    }

    /// Brings the registry up to date with the task files under `paths`: loads new and
    /// changed files, drops the tasks of removed ones. Files changed less than `settle`
    /// ago are left for a later refresh (a writer may not be done with them); zero reads
    /// everything now. Compiling happens off the async threads ([`Sandbox::load`]).
    ///
    /// Jobs already holding an entry keep it: a running job finishes on its version.
    pub async fn refresh(
        &self,
        sandbox: &Sandbox,
        paths: &[PathBuf],
        defaults: &Limits,
        settle: Duration,
    ) -> Refresh {
        let mut files = self.files.lock().await;
        let mut report = Refresh::default();
        let current = task_files(paths);
        let gone: Vec<PathBuf> = files
            .keys()
            .filter(|f| !current.contains(f))
            .cloned()
            .collect();
        for file in gone {
            if files.remove(&file).is_some_and(|r| !r.entries.is_empty()) {
                report.removed.push(file);
            }
        }
        for file in current {
            let Ok(stamp) = Stamp::read(&file) else {
                // Vanished between listing and looking: the next refresh drops it.
                continue;
            };
            if files.get(&file).is_some_and(|r| r.stamp == stamp) {
                continue;
            }
            if !settle.is_zero() && !stamp.settled(settle) {
                report.unsettled.push(file);
                continue;
            }
            match load_file(sandbox, &file, defaults).await {
                Ok(list) => {
                    let hash = list
                        .first()
                        .map(|e| e.module.hash.clone())
                        .unwrap_or_default();
                    let entries = list.into_iter().map(Arc::new).collect();
                    files.insert(file.clone(), FileRecord { stamp, entries });
                    report.loaded.push((file, hash));
                }
                Err(reason) => {
                    // Keep serving the previous version, but remember this one was seen
                    // so it is not retried (and logged) until the file changes again.
                    let entries = files.remove(&file).map(|r| r.entries).unwrap_or_default();
                    files.insert(file.clone(), FileRecord { stamp, entries });
                    report.rejected.push(Rejected { file, reason });
                }
            }
        }
        if report.changed() {
            let mut entries = BTreeMap::new();
            let mut owners: HashMap<String, &Path> = HashMap::new();
            for (file, record) in files.iter() {
                for entry in &record.entries {
                    if let Some(owner) = owners.get(&entry.name) {
                        report.rejected.push(Rejected {
                            file: file.clone(),
                            reason: format!(
                                "task name {:?} is already provided by {}",
                                entry.name,
                                owner.display()
                            ),
                        });
                        continue;
                    }
                    owners.insert(entry.name.clone(), file);
                    entries.insert(entry.name.clone(), entry.clone());
                }
            }
            self.replace(entries);
        }
        report
    }

    /// Waits until a job of `entry` may start under its manifest's `rate_limit` (at once
    /// when it has none); returns how long it waited. Call it before asking a pool for
    /// a slot, so a throttled job holds no instance. Every name of a task (aliases
    /// included) shares one limit per worker process.
    ///
    /// # Cancel safety
    /// See [`RateLimiter::wait`]: cancelling only gives up the reserved start slot.
    pub async fn throttle(&self, entry: &TaskEntry) -> Duration {
        let Some(limit) = &entry.manifest.rate_limit else {
            return Duration::ZERO;
        };
        let key = format!("{}\0{}", entry.file.display(), entry.export);
        let waited = self.rate_limiter.wait(&key, limit).await;
        if !waited.is_zero() {
            tracing::debug!(task = %entry.name, "rate limit {limit}: waited {waited:?}");
        }
        waited
    }
}

/// What identifies one version of a task file and its manifest without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    wasm: FileStamp,
    manifest: Option<FileStamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    dev: u64,
    ino: u64,
    mtime: SystemTime,
    /// The inode change time: also moves on `rename`, which keeps the mtime.
    ctime: (i64, i64),
}

impl FileStamp {
    fn read(path: &Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.modified()?,
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// The later of the modification and change times.
    fn changed_at(&self) -> SystemTime {
        let ctime = u64::try_from(self.ctime.0)
            .ok()
            .map(|secs| {
                SystemTime::UNIX_EPOCH
                    + Duration::new(secs, u32::try_from(self.ctime.1).unwrap_or(0))
            })
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.mtime.max(ctime)
    }
}

impl Stamp {
    fn read(file: &Path) -> std::io::Result<Stamp> {
        let wasm = FileStamp::read(file)?;
        let manifest = match FileStamp::read(&manifest_path(file)) {
            Ok(stamp) => Some(stamp),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Stamp { wasm, manifest })
    }

    /// True when neither file changed within the last `settle` (a writer is probably
    /// done). A change time far in the future (clock skew) counts as settled.
    fn settled(&self, settle: Duration) -> bool {
        let now = SystemTime::now();
        let last = self
            .manifest
            .iter()
            .map(FileStamp::changed_at)
            .fold(self.wasm.changed_at(), SystemTime::max);
        match now.duration_since(last) {
            Ok(age) => age >= settle,
            Err(ahead) => ahead.duration() >= settle,
        }
    }
}

/// Every `*.wasm` file under the given paths (directories are not recursed into
/// sub-directories), sorted for a deterministic order.
pub fn task_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            if let Ok(dir) = std::fs::read_dir(path) {
                files.extend(
                    dir.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file()),
                );
            }
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    files
}

/// The manifest path of a task file: `x.wasm` → `x.toml`.
pub fn manifest_path(file: &Path) -> PathBuf {
    file.with_extension("toml")
}

/// Loads one task file and its manifest into entries (one per task name and alias).
///
/// # Errors
/// A readable reason: the manifest is invalid, the wasm does not load, or an alias
/// points at a task the file does not have.
pub async fn load_file(
    sandbox: &Sandbox,
    file: &Path,
    defaults: &Limits,
) -> Result<Vec<TaskEntry>, String> {
    let manifest = Manifest::load_optional(&manifest_path(file)).map_err(|e| e.to_string())?;
    let module = sandbox
        .load_file(file)
        .await
        .map_err(|e: LoadError| e.to_string())?;
    let exports: Vec<String> = if module.kind.is_command() {
        vec![
            file.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        ]
    } else {
        module.tasks.clone()
    };
    if exports.is_empty() {
        return Err("the task file exports no tasks (`tasks` returned an empty list)".into());
    }
    for (alias, target) in &manifest.aliases {
        if !exports.contains(target) {
            return Err(format!(
                "alias {alias:?} points at {target:?}, which the file does not provide (it has: {})",
                exports.join(", ")
            ));
        }
    }
    let mut capabilities = manifest.capabilities.clone();
    let base = file.parent().unwrap_or(Path::new("."));
    for host in capabilities.dirs.values_mut() {
        if Path::new(host.as_str()).is_relative() {
            *host = base.join(host.as_str()).to_string_lossy().into_owned();
        }
    }
    let capabilities = Arc::new(capabilities);
    let manifest = Arc::new(manifest);
    let limits = manifest.limits.apply(defaults);
    let names = exports
        .iter()
        .map(|e| (e.clone(), e.clone()))
        .chain(manifest.aliases.iter().map(|(a, t)| (a.clone(), t.clone())));
    Ok(names
        .map(|(name, export)| TaskEntry {
            name,
            export,
            file: file.to_path_buf(),
            module: module.clone(),
            manifest: manifest.clone(),
            limits: limits.clone(),
            capabilities: capabilities.clone(),
        })
        .collect())
}

/// Loads every task file under `paths` once (no registry kept). When two files provide
/// the same name, the first (in path order) keeps it and the second is reported.
pub async fn scan(
    sandbox: &Sandbox,
    paths: &[PathBuf],
    defaults: &Limits,
) -> (BTreeMap<String, Arc<TaskEntry>>, Vec<Rejected>) {
    let registry = Registry::new();
    let rejected = registry.load(sandbox, paths, defaults).await;
    let entries = registry.snapshot();
    (Arc::unwrap_or_clone(entries), rejected)
}
