//! Pools: how a worker runs jobs.
//!
//! - [`async_pool::AsyncPool`] — many instances on this process's tokio runtime,
//!   preempted by fuel slices (Sprout's answer to eventlet/gevent).
//! - [`prefork::PreforkPool`] — N supervised child processes, each with its own engine
//!   (Celery's prefork): crash isolation, memory recycling, all cores for CPU work.
//!
//! A worker may run several pools at once, each bound to its own queues
//! ([`PoolSpec`], `sprout worker --pool io=async:1000 --pool cpu=prefork:2`).
//!
//! Every pool returns the same [`Execution`] for the same job, so one outcome test suite
//! runs against all of them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::outcome::Execution;
use crate::registry::TaskEntry;
use crate::sandbox::RunRequest;

pub mod async_pool;
pub mod prefork;

pub use async_pool::AsyncPool;
pub use prefork::{PreforkConfig, PreforkPool};

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

    /// Releases what the pool holds outside this process (the prefork pool stops its
    /// children). Call it once, after the last worker using the pool has stopped; jobs
    /// still running then end as `WorkerLost`. The default does nothing.
    async fn shutdown(&self) {}
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

/// One of a worker's pools, as `--pool NAME=KIND[:CONCURRENCY[:QUEUES]]` names it.
///
/// - `io=async:1000` — an async pool of 1000 slots named `io`, consuming queue `io`.
/// - `cpu=prefork:2` — two child processes, consuming queue `cpu`.
/// - `cpu=prefork:2:cpu,hogs` — the same, consuming queues `cpu` and `hogs`.
/// - `cpu=prefork` / `cpu=prefork::hogs` — the concurrency is the kind's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name, used in logs and as its default queue.
    pub name: String,
    /// `async` or `prefork` (aliases resolved by [`parse_pool_kind`]).
    pub kind: &'static str,
    /// Jobs at once (for prefork: child processes); `None` = the kind's default.
    pub concurrency: Option<usize>,
    /// The queues it consumes (never empty: defaults to the pool's name).
    pub queues: Vec<String>,
}

/// Parses a named pool, `NAME=KIND[:CONCURRENCY[:QUEUE[,QUEUE...]]]` (see [`PoolSpec`]).
///
/// # Errors
/// A readable message naming what is wrong.
pub fn parse_pool_spec(text: &str) -> Result<PoolSpec, String> {
    let usage = "expected NAME=KIND[:CONCURRENCY[:QUEUE,...]], e.g. io=async:1000 or cpu=prefork:2:cpu,hogs";
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("pool {text:?}: {usage}"))?;
    let name = name.trim();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid_name(name) {
        return Err(format!(
            "pool {text:?}: the name must be letters, digits, '-', '_' or '.'; {usage}"
        ));
    }
    let mut parts = rest.splitn(3, ':');
    let kind = parse_pool_kind(parts.next().unwrap_or_default().trim())
        .map_err(|e| format!("pool {text:?}: {e}"))?;
    let concurrency = match parts.next().map(str::trim) {
        None | Some("") => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "pool {text:?}: concurrency {n:?} is not a positive number; {usage}"
                ));
            }
        },
    };
    let queues: Vec<String> = match parts.next() {
        None => vec![name.to_string()],
        Some(list) => list.split(',').map(|q| q.trim().to_string()).collect(),
    };
    if queues.iter().any(|q| q.is_empty()) {
        return Err(format!("pool {text:?}: an empty queue name; {usage}"));
    }
    Ok(PoolSpec {
        name: name.to_string(),
        kind,
        concurrency,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_specs() {
        let spec = parse_pool_spec("io=async:1000").unwrap();
        assert_eq!(
            spec,
            PoolSpec {
                name: "io".into(),
                kind: "async",
                concurrency: Some(1000),
                queues: vec!["io".into()],
            }
        );
        let spec = parse_pool_spec("cpu=prefork:2:cpu,hogs").unwrap();
        assert_eq!(spec.kind, "prefork");
        assert_eq!(spec.concurrency, Some(2));
        assert_eq!(spec.queues, ["cpu", "hogs"]);
        let spec = parse_pool_spec("feeds=eventlet").unwrap();
        assert_eq!((spec.kind, spec.concurrency), ("async", None));
        assert_eq!(spec.queues, ["feeds"]);
        let spec = parse_pool_spec("cpu=processes::hogs").unwrap();
        assert_eq!((spec.kind, spec.concurrency), ("prefork", None));
        assert_eq!(spec.queues, ["hogs"]);
        for bad in [
            "async",
            "=async",
            "io=threadz",
            "io=async:0",
            "io=async:x",
            "io=async:1:",
            "io=async:1:a,,b",
            "i o=async",
        ] {
            assert!(parse_pool_spec(bad).is_err(), "{bad} should be rejected");
        }
    }
}
