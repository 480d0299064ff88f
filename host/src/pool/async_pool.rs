//! The async pool: each job is a fresh wasm instance driven by `call_async` on tokio.
//!
//! Guests written in blocking style park in async host imports (sleep, HTTP) without
//! holding a thread, and CPU-heavy guests yield every fuel slice, so thousands of jobs
//! share a couple of threads fairly.
//!
//! A panic in host code while a job runs (a host import, the sandbox, a log sink) ends
//! that job as [`Outcome::WorkerLost`] with the panic's message; the other jobs and the
//! pool carry on (tested in `tests/all/outcomes.rs`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::sync::Semaphore;

use super::{Pool, PoolKind};
use crate::model::{Execution, Outcome};
use crate::registry::TaskEntry;
use crate::sandbox::{RunRequest, Sandbox};

/// Runs up to `concurrency` jobs at once on the current tokio runtime.
pub struct AsyncPool {
    sandbox: Sandbox,
    slots: Arc<Semaphore>,
    concurrency: AtomicUsize,
}

impl AsyncPool {
    /// A pool of `concurrency` slots over `sandbox`. The sandbox's engine must have at
    /// least that many instance slots (see `EngineSettings::max_instances`).
    pub fn new(sandbox: Sandbox, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        AsyncPool {
            sandbox,
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency: AtomicUsize::new(concurrency),
        }
    }
}

#[async_trait]
impl Pool for AsyncPool {
    async fn execute(&self, entry: Arc<TaskEntry>, request: RunRequest) -> Execution {
        let _permit = self
            .slots
            .acquire()
            .await
            .expect("the pool semaphore is never closed");
        // The job runs inside the caller's task (no hand-off to another task and thread:
        // a job's round trip is a plain poll). A host bug that panics while running one
        // job fails that job, not the worker. Dropping this future (a cold shutdown, a
        // caller's timeout) drops the guest: it stops at its next yield point and its
        // slot is freed.
        match AssertUnwindSafe(self.sandbox.run(&entry.module, request))
            .catch_unwind()
            .await
        {
            Ok(execution) => execution,
            Err(panic) => Execution::not_started(Outcome::WorkerLost {
                reason: format!(
                    "the host panicked while running the job: {}",
                    crate::panics::message(panic.as_ref())
                ),
            }),
        }
    }

    fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::SeqCst)
    }

    fn kind(&self) -> PoolKind {
        PoolKind::Async
    }

    /// Grows at once (up to the engine's instance slots, which every async pool of the
    /// process shares); shrinks by taking slots out as running jobs give them back
    /// (never below one).
    fn resize(&self, delta: i64) -> Result<usize, String> {
        let max = self.sandbox.settings().max_instances as usize;
        let mut result = Ok(0);
        let _ = self
            .concurrency
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                let wanted = i64::try_from(now).unwrap_or(i64::MAX).saturating_add(delta);
                if wanted < 1 {
                    result = Err(format!("cannot shrink below 1 (the pool runs {now})"));
                    None
                } else if wanted as usize > max {
                    result = Err(format!(
                        "cannot grow past {max}, the engine's instance slots (the pool runs {now})"
                    ));
                    None
                } else {
                    result = Ok(wanted as usize);
                    Some(wanted as usize)
                }
            });
        let new = result?;
        match delta {
            d if d > 0 => self.slots.add_permits(d as usize),
            d if d < 0 => {
                let slots = self.slots.clone();
                let n = u32::try_from(d.unsigned_abs()).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many_owned(n).await {
                        permits.forget();
                    }
                });
            }
            _ => {}
        }
        Ok(new)
    }
}
