//! The `sprout` commands, one module each. They build library objects from parsed
//! flags, call the library and print; `main.rs` maps their errors to exit codes.

use std::process::ExitCode;

use anyhow::bail;
use serde_json::{Map, Value};

use crate::cli::args::LimitArgs;
use sprout::connect::ConnectError;
use sprout::model::{Limits, SizeUnit};
use sprout::sandbox::{ArtifactCache, CompileLimits, EngineSettings, Preemption, Sandbox};

pub mod build;
pub mod completions;
pub mod control;
pub mod purge;
pub mod result;
pub mod run;
pub mod send;
pub mod status;
pub mod tasks;
pub mod worker;

/// Exit code: the task (or a job) failed.
pub const EXIT_TASK_FAILED: u8 = 1;
/// Exit code: bad usage or arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the task file cannot be loaded or does not provide the task (a file over
/// the module caps is [`EXIT_USAGE`] instead: refused before compiling, by a limit the
/// command line sets).
pub const EXIT_INVALID_TASK: u8 = 3;
/// Exit code: timed out waiting for a result (`send --wait`, `result --wait`), or the
/// job is not finished (`result`).
pub const EXIT_NOT_READY: u8 = 4;
/// Exit code: the broker or result backend cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 5;
/// Exit code: interrupted by Ctrl-C (SIGINT) while waiting: 128 + 2, as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

/// An error that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    /// The process exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl ExitError {
    /// An error exiting with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        ExitError {
            code,
            message: message.into(),
        }
    }
}

/// Runs `wait` until it finishes, or until Ctrl-C: then prints "interrupted" and the
/// command exits [`EXIT_INTERRUPTED`].
///
/// # Errors
/// `wait`'s error, or [`ExitError`] with [`EXIT_INTERRUPTED`].
pub async fn until_interrupted<T, E>(
    wait: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::select! {
        result = wait => Ok(result?),
        _ = tokio::signal::ctrl_c() => {
            Err(ExitError::new(EXIT_INTERRUPTED, "interrupted").into())
        }
    }
}

/// Checks that every path given exists: a task directory or file that is not there is
/// a typo, refused as bad usage rather than listed as "no tasks".
///
/// # Errors
/// [`ExitError`] with [`EXIT_USAGE`] naming the first missing path.
pub fn check_task_paths(flag: &str, paths: &[std::path::PathBuf]) -> anyhow::Result<()> {
    for path in paths {
        if !path.exists() {
            let hint = if path.ends_with("tasks") {
                " (the example tasks are built into target/tasks by `make tasks`)"
            } else {
                ""
            };
            bail!(ExitError::new(
                EXIT_USAGE,
                format!("{flag} {}: no such file or directory{hint}", path.display())
            ));
        }
    }
    Ok(())
}

/// Worker-wide default limits from flags.
pub fn default_limits(args: &LimitArgs) -> Limits {
    let mut limits = Limits::default();
    apply_limit_flags(args, &mut limits);
    limits
}

/// The limit flags given (`--fuel`, `--time-limit`, `--soft-time-limit`, `--memory`)
/// replace those of `limits`.
pub fn apply_limit_flags(args: &LimitArgs, limits: &mut Limits) {
    if let Some(fuel) = args.fuel {
        limits.fuel = fuel;
    }
    if let Some(limit) = args.time_limit {
        limits.time_limit = limit;
    }
    if let Some(soft) = args.soft_time_limit {
        limits.soft_time_limit = Some(soft);
    }
    if let Some(mib) = args.memory {
        limits.memory_bytes = SizeUnit::Mib.saturating_bytes(mib);
    }
}

/// Sandbox slots kept beyond a worker's concurrency (loading and inspecting task files
/// instantiates them too).
const SPARE_SLOTS: usize = 16;

/// Address space one slot reserves: two memories of the engine's memory ceiling plus
/// their guard regions (wasmtime's default guard is 32 MiB). For messages only.
fn slot_reservation(settings: &EngineSettings) -> u64 {
    2 * (settings.max_memory_bytes + (32 << 20))
}

/// The most slots an engine with these settings can reserve on this machine (found by
/// building engines, halving the gap: each try only reserves address space), or `None`
/// when even the smallest does not build (then the error is not about concurrency).
fn most_slots(settings: &EngineSettings) -> Option<usize> {
    let builds = |slots: u32| {
        let settings = EngineSettings {
            max_instances: slots,
            ..settings.clone()
        };
        Sandbox::new(settings, None).is_ok()
    };
    let (mut good, mut bad) = (SPARE_SLOTS as u32 + 1, settings.max_instances);
    if !builds(good) {
        return None;
    }
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if builds(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good as usize)
}

/// When an engine with `settings` cannot be built because the machine cannot reserve
/// the address space of its slots (the pooling allocator reserves every slot up front),
/// the usage error that says so, naming `flag` (which asked for `wanted` slots; the
/// engine keeps `spare` more) and the most that fit, instead of mmap's error. `None`
/// when even the smallest engine does not build: then the error is not about slots.
fn too_many_slots(
    settings: &EngineSettings,
    wanted: usize,
    spare: usize,
    flag: &str,
    counted: &str,
) -> Option<ExitError> {
    let most = most_slots(settings)?.saturating_sub(spare);
    let per_slot = sprout::model::human_bytes(slot_reservation(settings));
    Some(ExitError::new(
        EXIT_USAGE,
        format!(
            "{flag} {wanted} is more than this machine can reserve: each slot reserves \
             {per_slot} of address space for its guests' memories (the pooling allocator), \
             and at most {most} slots fit here; lower {flag} ({counted}) to {most} or less",
        ),
    ))
}

/// Checks that a prefork child can build its engine (`settings`: the child's, with
/// room for `child_concurrency` guests) on this machine, before any child is started.
/// No engine is built when the parent's (`parent`, the same but for its slot count)
/// already has as many slots: it was built, so the child's fits.
///
/// # Errors
/// A usage error ([`EXIT_USAGE`]) naming `--child-concurrency` and the most that fits.
/// Any other reason the engine cannot be built is left to the child to report.
pub fn check_child_engine(
    parent: &EngineSettings,
    settings: &EngineSettings,
    child_concurrency: usize,
) -> anyhow::Result<()> {
    if settings.max_instances <= parent.max_instances
        || Sandbox::new(settings.clone(), None).is_ok()
    {
        return Ok(());
    }
    let spare = (settings.max_instances as usize).saturating_sub(child_concurrency);
    match too_many_slots(
        settings,
        child_concurrency,
        spare,
        "--child-concurrency",
        "per prefork child",
    ) {
        Some(usage) => bail!(usage),
        None => Ok(()),
    }
}

/// Builds the process's sandbox with room for `max_instances` concurrent guests.
///
/// # Errors
/// The engine cannot be built; [`EXIT_USAGE`] when that is because the concurrency
/// needs more address space than the machine has, naming the most that fits.
pub fn build_sandbox(args: &LimitArgs, max_instances: usize) -> anyhow::Result<Sandbox> {
    if args.epoch_tick.is_some() && args.preemption != Preemption::Epoch {
        bail!(ExitError::new(
            EXIT_USAGE,
            "--epoch-tick is the time slice of epoch preemption: give it with --preemption epoch",
        ));
    }
    let defaults = EngineSettings::default();
    let settings = EngineSettings {
        max_instances: u32::try_from(max_instances.saturating_add(SPARE_SLOTS)).unwrap_or(u32::MAX),
        preemption: args.preemption,
        epoch_tick: args.epoch_tick.unwrap_or(defaults.epoch_tick),
        ..defaults
    };
    let cache_dir = (!args.no_cache)
        .then(|| args.cache_dir.clone().or_else(ArtifactCache::default_dir))
        .flatten();
    let sandbox = match Sandbox::new(settings.clone(), cache_dir.as_deref()) {
        Ok(sandbox) => sandbox,
        Err(e) => {
            if let Some(usage) = too_many_slots(
                &settings,
                max_instances,
                SPARE_SLOTS,
                "-c/--concurrency",
                "the async pools' added up",
            ) {
                bail!(usage);
            }
            return Err(anyhow::Error::new(e).context("cannot build the wasm engine"));
        }
    };
    sandbox.set_max_task_file_bytes(args.max_task_file_size.saturating_mul(1 << 20));
    if let Some(caps) = args.module_caps {
        sandbox.set_shape_caps(caps);
    }
    // Compile in a child of our own binary, under a memory and time limit.
    match std::env::current_exe() {
        Ok(program) => sandbox.set_compile_limits(Some(CompileLimits {
            program,
            max_rss_bytes: args.compile_memory.saturating_mul(1 << 20),
            timeout: args.compile_timeout,
        })),
        Err(e) => tracing::warn!("compiling task files in process (no executable path: {e})"),
    }
    Ok(sandbox)
}

/// Parses `ARGS_JSON`: an array is the positional arguments, any other JSON value is a
/// single argument.
///
/// # Errors
/// Not JSON.
pub fn parse_args(text: &str) -> anyhow::Result<Vec<Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Array(args)) => Ok(args),
        Ok(other) => Ok(vec![other]),
        Err(e) => Err(ExitError::new(EXIT_USAGE, format!("ARGS is not JSON ({e}): {text}")).into()),
    }
}

/// Parses `--kwargs`: must be a JSON object.
///
/// # Errors
/// Not a JSON object.
pub fn parse_kwargs(text: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!(ExitError::new(EXIT_USAGE, "--kwargs must be a JSON object")),
        Err(e) => bail!(ExitError::new(
            EXIT_USAGE,
            format!("--kwargs is not JSON ({e})")
        )),
    }
}

/// Maps a command result to the process exit code, printing the error chain. A command
/// that succeeded but could not write its output (other than to a reader that went away:
/// see [`output`]) exits 1.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) if code == ExitCode::SUCCESS && crate::cli::output::failed() => ExitCode::from(1),
        Ok(code) => code,
        Err(error) => {
            // A broker or backend URL that cannot be right (unknown scheme, a bad value
            // for one of its keys) is bad usage, like a bad flag.
            let bad_url = error
                .downcast_ref::<ConnectError>()
                .is_some_and(ConnectError::is_usage_error);
            let unreachable = error
                .downcast_ref::<ConnectError>()
                .is_some_and(ConnectError::is_connection_error);
            let code = match error.downcast_ref::<ExitError>() {
                Some(e) => e.code,
                None if bad_url => EXIT_USAGE,
                None if unreachable => EXIT_UNREACHABLE,
                None => 1,
            };
            crate::errln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
