//! `sprout build SRC [-o DIR]`: a task file from source, compiled once into the cache.

use std::process::ExitCode;
use std::time::Instant;

use crate::cli::args::BuildArgs;
use sprout::build::{BuildError, Source};

use super::{EXIT_USAGE, ExitError};

/// Runs the command.
///
/// # Errors
/// Bad usage ([`EXIT_USAGE`]: not a buildable source, an invalid manifest) or a failed
/// build (1).
pub async fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let usage = |e: BuildError| -> anyhow::Error {
        if e.is_usage_error() {
            ExitError::new(EXIT_USAGE, e.to_string()).into()
        } else {
            ExitError::new(1, e.to_string()).into()
        }
    };
    let source = Source::detect(&args.src).map_err(usage)?;
    let out = args.out.clone();
    let built = tokio::task::spawn_blocking(move || sprout::build::build(&source, &out))
        .await?
        .map_err(usage)?;
    crate::outln!(
        "built {} ({:.1} MiB) in {:.1} s",
        built.wasm.display(),
        built.size as f64 / f64::from(1 << 20),
        built.build_time.as_secs_f64()
    );
    if !built.bundled.is_empty() {
        crate::outln!("bundled: {}", built.bundled.join(", "));
    }
    crate::outln!(
        "manifest: {}{}",
        built.manifest.display(),
        if built.manifest_generated {
            " (generated template: no manifest beside the source)"
        } else {
            ""
        }
    );
    if args.no_precompile {
        return Ok(ExitCode::SUCCESS);
    }
    // Compile for this machine into the artifact cache (the same engine `sprout run` and
    // the worker build), and list the tasks the file provides.
    let sandbox = super::build_sandbox(&args.limits, 1)?;
    let started = Instant::now();
    let module = sandbox.load_file(&built.wasm).await.map_err(|e| {
        ExitError::new(
            1,
            format!("{}: built, but it does not load: {e}", built.wasm.display()),
        )
    })?;
    crate::outln!(
        "compiled for this machine in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if args.limits.no_cache {
            " (--no-cache: a worker compiles it again)"
        } else {
            " (cached: a worker sharing the cache starts it without compiling)"
        }
    );
    crate::outln!("tasks: {}", module.tasks.join(", "));
    Ok(ExitCode::SUCCESS)
}
