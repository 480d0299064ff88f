//! The one wasmtime [`Engine`] per process, configured for many small concurrent guests.
//!
//! Choices (measured on the 2-core dev machine, see `WASMTIME-48.md` in the design
//! notes): fuel metering for both the CPU budget and preemption (fuel slices of ~1M keep
//! tokio's timers and I/O on time even with 100 spinning guests; epoch ticks did not),
//! and the pooling allocator (half the per-job cost of on-demand allocation).

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
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 1100,
            max_memory_bytes: 4 << 30,
            fuel_slice: 1_000_000,
            max_wasm_stack: 512 << 10,
        }
    }
}

/// Builds the engine.
///
/// # Errors
/// The settings are inconsistent (wasmtime validates them here, once), or `fuel_slice` is
/// zero (wasmtime would refuse it only later, in every job's store).
pub fn build_engine(settings: &EngineSettings) -> wasmtime::Result<Engine> {
    if settings.fuel_slice == 0 {
        return Err(wasmtime::Error::msg(
            "fuel_slice must be at least 1 (fuel consumed between two yields)",
        ));
    }
    let mut config = Config::new();
    config.consume_fuel(true);
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
