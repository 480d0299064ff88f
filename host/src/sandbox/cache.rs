//! Compiled-artifact cache: compiling a component costs 35–100 ms, loading a precompiled
//! artifact ~0.1 ms. Artifacts are keyed by the wasm's content hash and by the engine's
//! compatibility hash (wasmtime version, Config, cargo features), so a changed engine
//! never loads a stale artifact; it just compiles again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;

/// Where precompiled artifacts live on disk.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `engine`.
    pub fn new(dir: impl Into<PathBuf>, engine: &Engine) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        ArtifactCache {
            dir: dir.into(),
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// The default directory: `$SPROUT_CACHE_DIR`, else `$XDG_CACHE_HOME/sprout`, else
    /// `~/.cache/sprout`, else a folder in the system temp dir.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("SPROUT_CACHE_DIR") {
            return dir.into();
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Path::new(&dir).join("sprout");
        }
        if let Some(home) = std::env::var_os("HOME") {
            return Path::new(&home).join(".cache").join("sprout");
        }
        std::env::temp_dir().join("sprout-cache")
    }

    /// The artifact path for wasm with content hash `hash`.
    pub fn path_for(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// Stores an artifact atomically (write to a temp file, then rename), so concurrent
    /// workers never read a half-written file. Failures are logged, not fatal: the cache
    /// is an optimisation.
    pub fn store(&self, hash: &str, artifact: &[u8]) {
        let path = self.path_for(hash);
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{hash}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, artifact)?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            tracing::warn!("cannot write compiled artifact {}: {e}", path.display());
        }
    }
}
