//! The async pool: each job is a fresh wasm instance driven by `call_async` on tokio.
//!
//! Guests written in blocking style park in async host imports (sleep, HTTP) without
//! holding a thread, and CPU-heavy guests yield every fuel slice, so thousands of jobs
//! share a couple of threads fairly.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::Pool;
use crate::outcome::{Execution, Outcome};
use crate::registry::TaskEntry;
use crate::sandbox::{RunRequest, Sandbox};

/// Runs up to `concurrency` jobs at once on the current tokio runtime.
pub struct AsyncPool {
    sandbox: Sandbox,
    slots: Arc<Semaphore>,
    concurrency: usize,
}

impl AsyncPool {
    /// A pool of `concurrency` slots over `sandbox`. The sandbox's engine must have at
    /// least that many instance slots (see `EngineSettings::max_instances`).
    pub fn new(sandbox: Sandbox, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        AsyncPool {
            sandbox,
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
        }
    }
}

#[async_trait]
impl Pool for AsyncPool {
    async fn execute(&self, entry: Arc<TaskEntry>, request: RunRequest) -> Execution {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the pool semaphore is never closed");
        let sandbox = self.sandbox.clone();
        // A separate task: a host bug that panics while running one job fails that job,
        // not the worker.
        let mut handle = AbortOnDrop(tokio::spawn(async move {
            let execution = sandbox.run(&entry.module, request).await;
            drop(permit);
            execution
        }));
        match (&mut handle.0).await {
            Ok(execution) => execution,
            Err(e) => Execution::not_started(Outcome::WorkerLost {
                reason: format!("the host task running the job failed: {e}"),
            }),
        }
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn kind(&self) -> &'static str {
        "async"
    }
}

/// Cancels the job's task when the caller stops waiting for it (a cold shutdown, a
/// caller's timeout): the guest stops at its next yield point and its slot is freed.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
