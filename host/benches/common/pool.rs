//! Helpers of the pool benches (`sandbox`, `prefork`): where the example tasks and the
//! compilation cache are, loading the tasks, and running one job on a pool.

use std::path::PathBuf;

use sprout::model::Execution;
use sprout::model::Limits;
use sprout::pool::Pool;
use sprout::registry::Registry;
use sprout::sandbox::{EngineSettings, Preemption, RunRequest, Sandbox};

/// The built example tasks: `SPROUT_BENCH_TASKS`, else `target/tasks`.
pub fn tasks_dir() -> PathBuf {
    std::env::var_os("SPROUT_BENCH_TASKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tasks"))
}

/// The compilation cache the benches share (warm after the first run).
pub fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("sprout-bench-cache")
}

/// A sandbox for up to `max_instances` instances, caching in [`cache_dir`]. The
/// preemption settings come from the environment, to compare them: `SPROUT_BENCH_PREEMPTION`
/// (`fuel` or `epoch`), `SPROUT_BENCH_EPOCH_TICK_US`, `SPROUT_BENCH_FUEL_SLICE`; unset,
/// the engine's defaults.
pub fn sandbox(max_instances: u32) -> Sandbox {
    let defaults = EngineSettings::default();
    let preemption = match std::env::var("SPROUT_BENCH_PREEMPTION").as_deref() {
        Ok("fuel") => Preemption::Fuel,
        Ok("epoch") => Preemption::Epoch,
        Ok(other) => panic!("SPROUT_BENCH_PREEMPTION={other}: expected fuel or epoch"),
        Err(_) => defaults.preemption,
    };
    let tick_us = super::env_usize("SPROUT_BENCH_EPOCH_TICK_US", 0);
    let settings = EngineSettings {
        max_instances,
        preemption,
        epoch_tick: match tick_us {
            0 => defaults.epoch_tick,
            us => std::time::Duration::from_micros(us as u64),
        },
        fuel_slice: super::env_usize("SPROUT_BENCH_FUEL_SLICE", defaults.fuel_slice as usize)
            as u64,
        ..defaults
    };
    Sandbox::new(settings, Some(&cache_dir())).expect("sandbox")
}

/// A registry of the tasks in [`tasks_dir`] with `limits`; panics if any is rejected.
pub async fn registry(sandbox: &Sandbox, limits: &Limits) -> Registry {
    let registry = Registry::new();
    let rejected = registry.load(sandbox, &[tasks_dir()], limits).await;
    assert!(
        rejected.is_empty(),
        "{rejected:?} (run ./tasks/build.sh target/tasks first)"
    );
    registry
}

/// Runs `task` with `args` (a JSON array) on `pool`, with the task's limits.
pub async fn job(
    pool: &dyn Pool,
    registry: &Registry,
    task: &str,
    args: serde_json::Value,
) -> Execution {
    let entry = registry.lookup(task).expect("task");
    let mut request = RunRequest::new(
        entry.export.clone(),
        args.as_array().cloned().unwrap_or_default(),
    );
    request.limits = entry.limits.clone();
    pool.execute(entry, request).await
}
