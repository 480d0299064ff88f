//! Compiled-artifact cache: compiling a component costs 35–100 ms, loading a precompiled
//! artifact ~0.1 ms. Artifacts are keyed by the wasm's content hash and by the engine's
//! compatibility hash (wasmtime version, Config, cargo features), so a changed engine
//! never loads a stale artifact; it just compiles again.
//!
//! # Trust
//! A precompiled artifact is native code: whoever can write the cache directory can run
//! code in the worker. So the cache is used only when nobody else can write it:
//! - the directory is created `0700`; there is no shared fallback (no `$TMPDIR`
//!   folder when `$HOME` is unset: then there is no default cache at all);
//! - a directory not owned by the worker's user, or writable by its group or others, is
//!   refused with a warning (every task file is compiled afresh, nothing is written);
//! - each artifact file must be a regular file owned by the worker's user and not
//!   writable by group or others, or it is ignored (with a warning) and recompiled.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;

/// Where precompiled artifacts live on disk.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
    /// Whether the directory passed the trust checks; an untrusted cache is never read
    /// or written.
    trusted: bool,
}

/// Mode bits that let the group or others write.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Why a cache directory or artifact is not trusted, if it is not.
fn distrust(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Some(format!(
            "{} is owned by uid {}, not by this worker's user (uid {me})",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & WRITABLE_BY_OTHERS != 0 {
        return Some(format!(
            "{} is writable by its group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    None
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `engine`. Creates the directory (`0700`) if it
    /// is missing; refuses it, with a warning, if another user owns it or others may
    /// write it (see the `sandbox::cache` module docs).
    pub fn new(dir: impl Into<PathBuf>, engine: &Engine) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let dir = dir.into();
        let trusted = match Self::prepare(&dir) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    "refusing the compiled-artifact cache: {why}; compiling task files afresh"
                );
                false
            }
        };
        ArtifactCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            trusted,
        }
    }

    /// Creates `dir` (`0700`) if missing and checks that only this user can write it.
    fn prepare(dir: &Path) -> Result<(), String> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        distrust(dir, &meta).map_or(Ok(()), Err)
    }

    /// Whether the directory passed the trust checks (an untrusted cache is unused).
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// The default directory: `$SPROUT_CACHE_DIR`, else `$XDG_CACHE_HOME/sprout`, else
    /// `~/.cache/sprout`. `None` when none of them is set: never a shared directory such
    /// as the system temp dir, where another user could plant artifacts.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("SPROUT_CACHE_DIR") {
            return Some(dir.into());
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(Path::new(&dir).join("sprout"));
        }
        std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache").join("sprout"))
    }

    /// The artifact for wasm with content hash `hash`, if the cache has a trusted one.
    /// A file that fails the trust checks is ignored with a warning. Artifacts are read
    /// into memory, deliberately not mmapped (`deserialize_file`): a cache file
    /// truncated or rewritten in place would then crash the process with SIGBUS.
    pub fn load(&self, hash: &str) -> Option<Vec<u8>> {
        if !self.trusted {
            return None;
        }
        let path = self.path_for(hash);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let why = if meta.is_file() {
            distrust(&path, &meta)
        } else {
            Some(format!("{} is not a regular file", path.display()))
        };
        if let Some(why) = why {
            tracing::warn!("not loading a compiled artifact: {why}; compiling afresh");
            return None;
        }
        std::fs::read(&path).ok()
    }

    /// The artifact path for wasm with content hash `hash`.
    pub fn path_for(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// Stores an artifact atomically (write to a temp file, then rename), so concurrent
    /// workers never read a half-written file. Failures are logged, not fatal: the cache
    /// is an optimisation.
    pub fn store(&self, hash: &str, artifact: &[u8]) {
        if !self.trusted {
            return;
        }
        let path = self.path_for(hash);
        let result = (|| -> std::io::Result<()> {
            let tmp = self.dir.join(format!(".{hash}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, artifact)?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            tracing::warn!("cannot write compiled artifact {}: {e}", path.display());
        }
    }
}
