//! Pools: how a worker runs jobs.
//!
//! - [`async_pool::AsyncPool`] — many instances on this process's tokio runtime,
//!   preempted by fuel slices (Sprout's answer to eventlet/gevent).
//!
//! Every pool returns the same [`Execution`] for the same job, so one outcome test suite
//! runs against all of them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::outcome::Execution;
use crate::registry::TaskEntry;
use crate::sandbox::RunRequest;

pub mod async_pool;

pub use async_pool::AsyncPool;

/// Something that runs jobs, at most [`Pool::concurrency`] at a time.
#[async_trait]
pub trait Pool: Send + Sync {
    /// Runs one job of `entry` and reports how it ended. Waits for a free slot first
    /// (a full pool is back-pressure, never an error). Never fails: problems are outcomes.
    async fn execute(&self, entry: Arc<TaskEntry>, request: RunRequest) -> Execution;

    /// How many jobs run at once.
    fn concurrency(&self) -> usize;

    /// `async`, `prefork`.
    fn kind(&self) -> &'static str;
}

/// Parses a `-P` pool name. `eventlet`, `gevent`, `threads` and `solo` are accepted as
/// names of the async pool, as Celery users type them.
pub fn parse_pool_kind(name: &str) -> Result<&'static str, String> {
    match name {
        "async" | "eventlet" | "gevent" | "threads" | "solo" => Ok("async"),
        "prefork" | "processes" => Ok("prefork"),
        other => Err(format!(
            "unknown pool {other:?}: expected async (alias eventlet, gevent) or prefork"
        )),
    }
}
