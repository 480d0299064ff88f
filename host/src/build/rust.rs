//! Rust crates → task files: `cargo build --release --target wasm32-wasip2`.

use std::path::Path;
use std::process::Command;

use super::{BuildError, find_program, io_err, run_tool};

/// The crate's package name from its `Cargo.toml`, with `-` as `_` (the wasm file name
/// cargo writes).
pub fn crate_name(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let doc: toml::Table = toml::from_str(&text).ok()?;
    let name = doc.get("package")?.get("name")?.as_str()?;
    Some(name.replace('-', "_"))
}

/// Builds the crate in `dir` and copies its wasm component to `out`.
///
/// # Errors
/// [`BuildError::MissingTool`] without cargo; [`BuildError::Compile`] with cargo's
/// output; [`BuildError::Source`] when the crate produces no `.wasm` (not a `cdylib`).
pub fn build(dir: &Path, out: &Path) -> Result<(), BuildError> {
    let cargo = std::env::var_os("CARGO")
        .map(Into::into)
        .or_else(|| find_program("cargo", &[]))
        .ok_or_else(|| {
            BuildError::MissingTool(
                "building a Rust task needs cargo: install Rust with rustup, then \
                 `rustup target add wasm32-wasip2`"
                    .into(),
            )
        })?;
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        // Flags an outer cargo or CI may have exported are for the host, not wasm.
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args(["--message-format", "json-render-diagnostics"]);
    let stdout = run_tool(&mut cmd, &format!("cargo build ({})", dir.display()))?;
    let mut wasm = None;
    for line in String::from_utf8_lossy(&stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            for f in files.iter().filter_map(|f| f.as_str()) {
                if f.ends_with(".wasm") {
                    wasm = Some(f.to_string());
                }
            }
        }
    }
    let wasm = wasm.ok_or_else(|| {
        BuildError::Source(format!(
            "{}: cargo built no .wasm file; a task crate needs `[lib] crate-type = [\"cdylib\"]`",
            dir.display()
        ))
    })?;
    std::fs::copy(&wasm, out).map_err(io_err(format!("copying {wasm}")))?;
    Ok(())
}
