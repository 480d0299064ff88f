//! The task registry: which task names this worker can run, and with what.
//!
//! A registry is built from task directories (`--tasks DIR`, repeatable) or single
//! files. Every `*.wasm` is validated and compiled through the [`Sandbox`]; its manifest
//! (`<name>.toml` beside it) supplies aliases, queue, limits and retry policy. A file
//! that fails to load is rejected with a reason and does not stop the others.
//!
//! Lookups return `Arc<TaskEntry>`: a job keeps the entry it started with, so replacing
//! the registry's contents (hot reload) never changes a running job's code.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::limits::Limits;
use crate::manifest::{Capabilities, Manifest};
use crate::sandbox::{LoadError, Sandbox, TaskModule};

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

/// The set of loaded tasks, swappable as a whole.
#[derive(Debug, Default)]
pub struct Registry {
    entries: RwLock<Arc<BTreeMap<String, Arc<TaskEntry>>>>,
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

    /// Replaces the whole set at once.
    pub fn replace(&self, entries: BTreeMap<String, Arc<TaskEntry>>) {
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
    }

    /// Loads `paths` (directories or `.wasm` files) and makes them the registry's
    /// contents. Returns the files that were rejected.
    pub async fn load(
        &self,
        sandbox: &Sandbox,
        paths: &[PathBuf],
        defaults: &Limits,
    ) -> Vec<Rejected> {
        let (entries, rejected) = scan(sandbox, paths, defaults).await;
        self.replace(entries);
        rejected
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

/// Loads every task file under `paths`. When two files provide the same name, the
/// first (in path order) keeps it and the second is reported.
pub async fn scan(
    sandbox: &Sandbox,
    paths: &[PathBuf],
    defaults: &Limits,
) -> (BTreeMap<String, Arc<TaskEntry>>, Vec<Rejected>) {
    let mut entries = BTreeMap::new();
    let mut owners: HashMap<String, PathBuf> = HashMap::new();
    let mut rejected = Vec::new();
    for file in task_files(paths) {
        match load_file(sandbox, &file, defaults).await {
            Ok(list) => {
                for entry in list {
                    if let Some(owner) = owners.get(&entry.name) {
                        rejected.push(Rejected {
                            file: file.clone(),
                            reason: format!(
                                "task name {:?} is already provided by {}",
                                entry.name,
                                owner.display()
                            ),
                        });
                        continue;
                    }
                    owners.insert(entry.name.clone(), file.clone());
                    entries.insert(entry.name.clone(), Arc::new(entry));
                }
            }
            Err(reason) => rejected.push(Rejected { file, reason }),
        }
    }
    (entries, rejected)
}
