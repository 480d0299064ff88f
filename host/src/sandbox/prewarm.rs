//! Pre-warming instance slots: run each slot of the pooling allocator once at start, so
//! the first real jobs do not pay for faulting in fresh pages.
//!
//! A slot's first job faults in the pages it touches — its linear memory (stack, data,
//! heap), tables and fiber stack — each a zero-filled (or copied) page from the kernel;
//! once a slot has been used, those pages stay resident (`keep_resident` with
//! `PAGEMAP_SCAN`, see `engine.rs`) and later jobs only restore what they dirtied. The
//! pooling allocator hands a slot back to the module that used it last (module
//! affinity), so warming `n` slots with one module makes its next `n` concurrent jobs
//! start warm. Warming runs the component's `tasks` export (no task code): instantiation,
//! the SDK's start-up and a call, as every job does.

use std::time::{Duration, Instant};

use super::Sandbox;
use super::module::{ModuleKind, TaskModule};

/// What [`Sandbox::prewarm`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prewarmed {
    /// Slots instantiated and run once.
    pub slots: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// Why [`Sandbox::prewarm`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum PrewarmError {
    /// Only task components (the SDK's `tasks`/`run` world) can be pre-warmed.
    #[error("only task components can be pre-warmed, not a command")]
    NotATask,
    /// Instantiating or calling the component failed (e.g. no free slot left).
    #[error("pre-warming slot {slot}: {reason}")]
    Failed {
        /// How many slots were warmed before.
        slot: usize,
        /// The error.
        reason: String,
    },
}

impl Sandbox {
    /// Instantiates `module` in `slots` instance slots at once (so each takes its own
    /// slot), calls its `tasks` export in each, then frees them all: the slots and fiber
    /// stacks are then warm, and affine to `module`. Capped at the engine's instance
    /// slots. Meant for worker start, before jobs run (warming takes the slots it uses
    /// away from jobs meanwhile).
    ///
    /// # Errors
    /// [`PrewarmError`]: `module` is not a task component, or a slot failed (the slots
    /// warmed so far are freed and stay warm).
    pub async fn prewarm(
        &self,
        module: &TaskModule,
        slots: usize,
    ) -> Result<Prewarmed, PrewarmError> {
        let ModuleKind::Task(pre) = &module.kind else {
            return Err(PrewarmError::NotATask);
        };
        let started = Instant::now();
        let slots = slots.min(self.inner.settings.max_instances as usize);
        let mut held = Vec::with_capacity(slots);
        for slot in 0..slots {
            let (mut store, usage) = self.host_call_store("prewarm");
            let warmed = async {
                let task = pre.instantiate_async(&mut store).await?;
                task.call_tasks(&mut store).await
            };
            if let Err(e) = usage.meter(warmed).await {
                return Err(PrewarmError::Failed {
                    slot,
                    reason: format!("{e:#}"),
                });
            }
            // Held until all are warm, so that each instance took a slot of its own.
            held.push(store);
        }
        drop(held);
        Ok(Prewarmed {
            slots,
            elapsed: started.elapsed(),
        })
    }
}
