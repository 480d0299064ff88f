//! `sprout build`: turns a task source into a task file (`<name>.wasm` and its manifest).
//!
//! - A Python module (`shop.py`) or package (a folder with `__init__.py`) is compiled
//!   with `componentize-py` ([`python`]) against the `sprout:task` world plus outgoing
//!   HTTP, with the `sprout_task` SDK this binary carries, so the SDK always matches
//!   the host. Pure-Python dependencies listed beside it are bundled; native ones are
//!   refused, naming the package.
//! - A Rust crate (a folder with `Cargo.toml`) is built with `cargo build --release
//!   --target wasm32-wasip2` ([`rust`]).
//! - A JavaScript module (`.js`) is compiled with componentize-js ([`js`]).
//! - The manifest beside the source (`shop.toml`, or `<crate>.toml` in the folder) is
//!   checked and copied; without one a commented template is written.
//! - The result is compiled for this machine once and stored in the on-disk artifact
//!   cache, so a worker sharing the cache never compiles it on its first job.
//!
//! This module knows toolchains and files; compiling wasm is the sandbox's job.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::manifest::Manifest;

pub mod js;
pub mod python;
pub mod rust;

/// What `sprout build` turns into a task file, detected from the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `.py` file, imported as the module named by its stem.
    PythonModule(PathBuf),
    /// A folder with `__init__.py`, imported as the package named by the folder.
    PythonPackage(PathBuf),
    /// A folder with `Cargo.toml`.
    RustCrate(PathBuf),
    /// A `.js` (or `.mjs`) ES module using the `sprout-task` helper.
    JavaScript(PathBuf),
}

impl Source {
    /// Detects what `path` is.
    ///
    /// # Errors
    /// [`BuildError::Source`]: missing, or neither a `.py` or `.js` file, a Python
    /// package nor a Cargo crate.
    pub fn detect(path: &Path) -> Result<Source, BuildError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| BuildError::Source(format!("{}: {e}", path.display())))?;
        if meta.is_file() {
            return match path.extension().and_then(|e| e.to_str()) {
                Some("py") => {
                    python::check_module_name(path)?;
                    Ok(Source::PythonModule(path.to_path_buf()))
                }
                Some("js" | "mjs") => Ok(Source::JavaScript(path.to_path_buf())),
                Some("toml") if path.file_name().is_some_and(|n| n == "Cargo.toml") => {
                    Ok(Source::RustCrate(parent_of(path)))
                }
                _ => Err(BuildError::Source(format!(
                    "{}: expected a Python module (.py), a Python package folder \
                     (with __init__.py), a Rust crate folder (with Cargo.toml) or a \
                     JavaScript module (.js)",
                    path.display()
                ))),
            };
        }
        if path.join("Cargo.toml").is_file() {
            return Ok(Source::RustCrate(path.to_path_buf()));
        }
        if path.join("__init__.py").is_file() {
            python::check_module_name(path)?;
            return Ok(Source::PythonPackage(path.to_path_buf()));
        }
        Err(BuildError::Source(format!(
            "{}: expected a Python package (a folder with __init__.py) or a Rust crate (a \
             folder with Cargo.toml), and this folder has neither",
            path.display()
        )))
    }

    /// The task file's name: the module, package or crate name.
    pub fn name(&self) -> String {
        match self {
            Source::PythonModule(p) | Source::JavaScript(p) => stem(p),
            Source::PythonPackage(p) => stem(&absolute(p)),
            Source::RustCrate(p) => rust::crate_name(p).unwrap_or_else(|| stem(&absolute(p))),
        }
    }

    /// Where a manifest for this source would be: `<stem>.toml` beside a module,
    /// `<name>.toml` inside a package or crate folder.
    pub fn manifest_path(&self) -> PathBuf {
        match self {
            Source::PythonModule(p) | Source::JavaScript(p) => p.with_extension("toml"),
            Source::PythonPackage(p) | Source::RustCrate(p) => {
                p.join(format!("{}.toml", self.name()))
            }
        }
    }
}

/// What went wrong building a task file.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The source path is not something `sprout build` knows how to build.
    #[error("{0}")]
    Source(String),
    /// A tool the build needs is not installed; the message says what to install.
    #[error("{0}")]
    MissingTool(String),
    /// A dependency cannot go into a task file (a native extension), or could not be
    /// collected.
    #[error("{0}")]
    Dependency(String),
    /// The compiler (componentize-py, cargo) failed; its output is in the message.
    #[error("{0}")]
    Compile(String),
    /// The manifest beside the source is invalid.
    #[error("{0}")]
    Manifest(String),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// Whether the error is the caller's (a bad path or manifest) rather than the
    /// machine's or the compiler's.
    pub fn is_usage_error(&self) -> bool {
        matches!(self, BuildError::Source(_) | BuildError::Manifest(_))
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The task file.
    pub wasm: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Whether the manifest was generated (no manifest beside the source).
    pub manifest_generated: bool,
    /// The task file's size in bytes.
    pub size: u64,
    /// How long the language toolchain took.
    pub build_time: Duration,
    /// Dependencies bundled (Python distributions, `name==version`).
    pub bundled: Vec<String>,
}

/// Builds `source` into `out_dir/<name>.wasm` (+ `<name>.toml`).
///
/// The wasm file is written to a temporary name and renamed into place, so a worker
/// watching `out_dir` never loads half a file.
///
/// # Errors
/// [`BuildError`]: a missing toolchain (naming what to install), a native dependency, a
/// compile error (with the compiler's output), an invalid manifest, I/O.
pub fn build(source: &Source, out_dir: &Path) -> Result<Built, BuildError> {
    let name = source.name();
    // Check the manifest first: a typo should not cost a 15 s compile.
    let manifest_src = source.manifest_path();
    let manifest_text = if manifest_src.is_file() {
        let text = std::fs::read_to_string(&manifest_src)
            .map_err(io_err(format!("reading {}", manifest_src.display())))?;
        Manifest::parse(&text)
            .map_err(|e| BuildError::Manifest(format!("{}: {e}", manifest_src.display())))?;
        Some(text)
    } else {
        None
    };
    std::fs::create_dir_all(out_dir).map_err(io_err(format!("creating {}", out_dir.display())))?;
    // Absolute: the compilers run in scratch folders of their own.
    let out_dir = &std::fs::canonicalize(out_dir)
        .map_err(io_err(format!("resolving {}", out_dir.display())))?;
    let started = Instant::now();
    let staging = out_dir.join(format!(".{name}.wasm.building-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(staging.clone());
    let bundled = match source {
        Source::PythonModule(p) => python::build(p, false, &staging)?,
        Source::PythonPackage(p) => python::build(p, true, &staging)?,
        Source::RustCrate(p) => {
            rust::build(p, &staging)?;
            Vec::new()
        }
        Source::JavaScript(p) => {
            js::build(p, &staging)?;
            Vec::new()
        }
    };
    let build_time = started.elapsed();
    let wasm = out_dir.join(format!("{name}.wasm"));
    let manifest = out_dir.join(format!("{name}.toml"));
    let manifest_generated = manifest_text.is_none();
    let text = manifest_text.unwrap_or_else(|| template_manifest(&name, source));
    write_atomically(&manifest, text.as_bytes())?;
    std::fs::rename(&staging, &wasm).map_err(io_err(format!(
        "moving the task file to {}",
        wasm.display()
    )))?;
    let size = std::fs::metadata(&wasm)
        .map_err(io_err(format!("reading {}", wasm.display())))?
        .len();
    Ok(Built {
        wasm,
        manifest,
        manifest_generated,
        size,
        build_time,
        bundled,
    })
}

/// The manifest written when the source has none: every key commented out.
fn template_manifest(name: &str, source: &Source) -> String {
    let from = match source {
        Source::PythonModule(p)
        | Source::PythonPackage(p)
        | Source::RustCrate(p)
        | Source::JavaScript(p) => p.display().to_string(),
    };
    format!(
        "# {name}.toml: generated by `sprout build` from {from} (no {name}.toml was beside it).\n\
         # Every key is optional; docs/manifest.md is the reference. Put your edits in a\n\
         # {name}.toml beside the source: the next build copies it here.\n\
         #\n\
         # [limits]\n\
         # memory_mib = 256        # linear memory cap (default 64)\n\
         # time_limit = 60.0       # seconds\n\
         #\n\
         # [capabilities]\n\
         # allowed_hosts = [\"https://api.example.com\"]   # outgoing HTTP destinations\n\
         # config = {{ api_url = \"https://api.example.com\" }}  # config(key) in the task\n"
    )
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("writing {}", path.display())))
}

/// Removes a file or folder when dropped (build scratch space, a failed build's output).
pub(crate) struct RemoveOnDrop(pub(crate) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Runs `cmd`, returning its stdout; a failure (or a missing program) is
/// [`BuildError::Compile`] with the command's stderr.
pub(crate) fn run_tool(cmd: &mut Command, what: &str) -> Result<Vec<u8>, BuildError> {
    let output = cmd.output().map_err(|e| {
        BuildError::Compile(format!("{what}: cannot run {:?}: {e}", cmd.get_program()))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        return Err(BuildError::Compile(format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            tail(&stdout, 4000),
            tail(&stderr, 8000)
        )));
    }
    Ok(output.stdout)
}

/// The last `max` bytes of `text` (on a char boundary).
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".into())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Finds `program` on `PATH`, then in `extra` folders, in that order.
pub(crate) fn find_program(program: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
