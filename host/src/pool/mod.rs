//! Pools: how a worker runs jobs.
//!
//! - [`async_pool::AsyncPool`] — many instances on this process's tokio runtime,
//!   preempted by fuel slices (Sprout's answer to eventlet/gevent).
//! - [`prefork::PreforkPool`] — N supervised child processes, each with its own engine
//!   (Celery's prefork): crash isolation, memory recycling, all cores for CPU work.
//!
//! A worker may run several pools at once, each bound to its own queues
//! ([`PoolSpec`], `sprout worker --pool io=async:1000 --pool cpu=prefork:2`), and a
//! prefork pool's spec may carry its own child settings ([`spec`]).
//!
//! Every pool returns the same [`Execution`] for the same job, so one outcome test suite
//! runs against all of them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::Execution;
use crate::registry::TaskEntry;
use crate::sandbox::RunRequest;

pub mod async_pool;
pub mod prefork;
pub mod spec;

pub use async_pool::AsyncPool;
pub use prefork::{PreforkConfig, PreforkError, PreforkPool};
pub use spec::{PoolKind, PoolSpec, PreforkOptions, parse_pool_spec};

/// Something that runs jobs, at most [`Pool::concurrency`] at a time.
#[async_trait]
pub trait Pool: Send + Sync {
    /// Runs one job of `entry` and reports how it ended. Waits for a free slot first
    /// (a full pool is back-pressure, never an error). Never fails: problems are outcomes.
    async fn execute(&self, entry: Arc<TaskEntry>, request: RunRequest) -> Execution;

    /// How many jobs run at once.
    fn concurrency(&self) -> usize;

    /// `async`, `prefork`.
    fn kind(&self) -> PoolKind;

    /// Changes how many jobs run at once by `delta` (remote control's `pool_grow` /
    /// `pool_shrink`); returns the new concurrency. Shrinking takes effect as running
    /// jobs finish. The default: the pool cannot be resized.
    ///
    /// # Errors
    /// Why the pool cannot be resized (by that much).
    fn resize(&self, delta: i64) -> Result<usize, String> {
        let _ = delta;
        Err(format!("the {} pool cannot be resized", self.kind()))
    }

    /// Releases what the pool holds outside this process (the prefork pool stops its
    /// children). Call it once, after the last worker using the pool has stopped; jobs
    /// still running then end as `WorkerLost`. The default does nothing.
    async fn shutdown(&self) {}
}
