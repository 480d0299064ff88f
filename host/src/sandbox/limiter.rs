//! The per-store memory limiter: enforces the job's memory cap and remembers whether
//! the guest hit it, so a guest that aborts after a failed allocation is reported as
//! "memory limit", not as an anonymous trap.

use wasmtime::ResourceLimiter;

/// Caps linear memory and table growth for one store.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit_bytes: u64,
    /// Set once any growth was refused.
    pub hit: bool,
    /// The largest memory size allowed so far, in bytes (instantiation counts: wasmtime
    /// asks the limiter for a memory's initial size too).
    pub peak: u64,
}

/// Most table elements a guest may have (function tables of real programs are a few
/// thousand entries).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    /// A limiter allowing `limit_bytes` of linear memory.
    pub fn new(limit_bytes: u64) -> Self {
        MemoryLimiter {
            limit_bytes,
            hit: false,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired as u64 <= self.limit_bytes;
        self.hit |= !allowed;
        if allowed {
            self.peak = self.peak.max(desired as u64);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= MAX_TABLE_ELEMENTS;
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        8
    }
}
