//! The one wasmtime [`Engine`] per process, configured for many small concurrent guests.
//!
//! Choices (measured on the 2-core dev machine, see `WASMTIME-48.md` in the design
//! notes and BENCHMARKS.md): fuel metering for both the CPU budget and preemption by
//! default (fuel slices of ~1M keep tokio's timers and I/O on time even with 100
//! spinning guests; epoch ticks did not), and the pooling allocator (half the per-job
//! cost of on-demand allocation). Epoch preemption ([`Preemption::Epoch`]) is an opt-in
//! setting: its checks cost far less guest compute than fuel counting (fib(30) 1.6× native
//! against 2.5×, with a long tick), but its slices depend on a ticker thread getting a
//! CPU, and beside busy guests on a loaded machine short jobs waited 6–60 ms (p99)
//! instead of fuel's 0.4–4.7 ms.

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy,
};

/// Environment variable naming a profiler for guest code: `perfmap` writes
/// `/tmp/perf-<pid>.map` as code is loaded, so `perf report` names the wasm functions
/// of a running worker. Unset, empty or `none`: no profiler.
pub const PROFILER_ENV: &str = "SPROUT_WASM_PROFILER";

/// Per linear memory, how many bytes of dirtied pages a reset restores in place
/// instead of releasing them (see [`build_engine`]). 2 MiB, because a Rust guest's
/// memory starts with its 1 MiB shadow stack (wasm-ld's default) and its heap begins
/// above it: with 1 MiB kept, every job's heap pages were released and faulted in again,
/// zero-filled, by the next job — 9–10% of a feed-fetching worker's CPU in
/// `clear_page_erms` (BENCHMARKS.md). Only pages a job really dirtied stay resident.
const MEMORY_KEEP_RESIDENT: usize = 2 << 20;
/// The same for each table.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Core module instances one component instance may create: a Python component
/// (componentize-py 0.25) has 14, with headroom for other toolchains.
const CORE_INSTANCES_PER_SLOT: u32 = 20;

/// How running guests are preempted (made to yield to the async runtime), and how their
/// CPU budget is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preemption {
    /// Fuel metering: every wasm instruction is counted; the guest yields every
    /// [`EngineSettings::fuel_slice`] units and stops at its fuel budget. Deterministic,
    /// but the counting costs compute (1.75x on call-heavy code, BENCHMARKS.md).
    #[default]
    Fuel,
    /// Epoch interruption: a ticker thread advances the engine's epoch every
    /// [`EngineSettings::epoch_tick`] while jobs exist (it parks when none does), and a
    /// guest that has held its thread for a whole tick yields at the next one. No fuel is
    /// counted: the CPU budget (`Limits::fuel`) is the thread CPU time spent polling the
    /// job's future, at [`FUEL_PER_NANOSECOND`](super::cpu_meter::FUEL_PER_NANOSECOND)
    /// (1 billion fuel = 50 ms), and `fuel_used` reports that time in the same units; past
    /// the budget the job ends as `OutOfFuel` at the next tick (or, when it finishes
    /// first, as it finishes). Not deterministic (the
    /// same job uses a somewhat different amount each run), and the
    /// ticker costs CPU of its own (a 50 µs tick: ~13–20% of a core here while jobs run).
    Epoch,
}

/// Engine-wide settings. They bound what any task may ask for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineSettings {
    /// Most guests alive at once in this process (pool slots). Default: 1100.
    pub max_instances: u32,
    /// Ceiling for any task's memory limit, in bytes (each slot reserves this much
    /// address space, not memory). Default: 4 GiB.
    pub max_memory_bytes: u64,
    /// Fuel consumed between two yields to the async runtime. Default: 1,000,000
    /// (≈35–70 µs of guest CPU).
    pub fuel_slice: u64,
    /// Native stack for wasm frames. Default: 512 KiB.
    pub max_wasm_stack: usize,
    /// How guests are preempted. Default: [`Preemption::Fuel`].
    #[serde(default)]
    pub preemption: Preemption,
    /// With [`Preemption::Epoch`], the time slice: how often the ticker advances the
    /// epoch. Default: 50 µs.
    #[serde(default = "default_epoch_tick")]
    pub epoch_tick: std::time::Duration,
}

fn default_epoch_tick() -> std::time::Duration {
    std::time::Duration::from_micros(50)
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 1100,
            max_memory_bytes: 4 << 30,
            fuel_slice: 1_000_000,
            max_wasm_stack: 512 << 10,
            preemption: Preemption::default(),
            epoch_tick: default_epoch_tick(),
        }
    }
}

/// Builds the engine.
///
/// # Errors
/// The settings are inconsistent (wasmtime validates them here, once), `fuel_slice` is
/// zero (wasmtime would refuse it only later, in every job's store), or `epoch_tick` is
/// zero under epoch preemption.
pub fn build_engine(settings: &EngineSettings) -> wasmtime::Result<Engine> {
    if settings.fuel_slice == 0 {
        return Err(wasmtime::Error::msg(
            "fuel_slice must be at least 1 (fuel consumed between two yields)",
        ));
    }
    if settings.preemption == Preemption::Epoch && settings.epoch_tick.is_zero() {
        return Err(wasmtime::Error::msg(
            "epoch_tick must be longer than zero (the time slice of epoch preemption)",
        ));
    }
    let mut config = Config::new();
    match settings.preemption {
        Preemption::Fuel => config.consume_fuel(true),
        Preemption::Epoch => config.epoch_interruption(true),
    };
    config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
    config.max_wasm_stack(settings.max_wasm_stack);
    // The fiber stack must hold the wasm stack plus host frames.
    config.async_stack_size(settings.max_wasm_stack * 2);
    config.parallel_compilation(true);
    config.profiler(profiler_from_env()?);

    let slots = settings.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    // A WASI p2 Rust component has 3 core modules (main, shim, fixups), 1 memory and
    // 2 tables; a WASI command module has 1 of each. A Python component
    // (componentize-py: libpython, libc and friends dynamically linked) instantiates 14
    // core modules, and a JavaScript one (componentize-js) 3: size the core-instance
    // pool so every slot can hold a Python job (at 4 per slot, a worker would run out of core
    // instances near 300 Python jobs in flight, by arithmetic). Core-instance slots cost no memory
    // until used.
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(3))
        .total_stacks(slots)
        .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_memory_size(settings.max_memory_bytes as usize)
        .max_unused_warm_slots(slots);
    // Resetting a slot for the next job: by default wasmtime `madvise`s a used memory
    // or table away, and every `madvise` (and every copy-on-write fault on the next
    // job's first write) flushes the TLB of each CPU running this process — an
    // inter-processor interrupt, which in a VM is a trap to the hypervisor. That was
    // over half of all CPU time per job on the 2-core VM. With `PAGEMAP_SCAN`
    // (Linux ≥ 6.7) wasmtime instead finds the pages the job dirtied and restores
    // just those with `memset`, up to the keep-resident sizes: no syscall that flushes,
    // no fault next time. Measured (BENCHMARKS.md): echo at -c 1000 went from 13k to
    // 85–95k jobs/s. Memory kept resident is bounded by the pages jobs really touch.
    pool.pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// The profiler [`PROFILER_ENV`] asks for.
fn profiler_from_env() -> wasmtime::Result<ProfilingStrategy> {
    let value = std::env::var(PROFILER_ENV).unwrap_or_default();
    match value.as_str() {
        "" | "none" => Ok(ProfilingStrategy::None),
        "perfmap" => Ok(ProfilingStrategy::PerfMap),
        other => Err(wasmtime::Error::msg(format!(
            "{PROFILER_ENV}={other:?}: expected perfmap or none"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_fuel_slice_is_refused_up_front() {
        let settings = EngineSettings {
            fuel_slice: 0,
            max_instances: 2,
            ..EngineSettings::default()
        };
        let e = build_engine(&settings).unwrap_err();
        assert!(
            e.to_string().contains("fuel_slice must be at least 1"),
            "{e}"
        );
        let settings = EngineSettings {
            fuel_slice: 1,
            max_instances: 2,
            ..EngineSettings::default()
        };
        assert!(build_engine(&settings).is_ok());
    }
}
