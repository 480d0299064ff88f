//! Instance reuse (`[limits] jobs_per_instance`): idle task-component instances kept
//! between jobs, the way a Celery prefork child runs up to `max_tasks_per_child` tasks.
//!
//! Instantiating a Python (componentize-py) component is most of a Python job's cost
//! (~1.3–2.2 ms CPU: element segments, page faults, import wiring). A task file whose
//! manifest allows it runs up to N jobs in one [`Instance`], one at a time; between jobs
//! the instance waits here, idle. [`Sandbox::run`](super::Sandbox::run) takes one out
//! for a job (so nothing is shared while a job runs) and puts it back only after a
//! clean finish.
//!
//! Bounds. An idle instance holds a pool slot (its memories, tables and core
//! instances) and its dirtied pages stay resident, so the cache is bounded three ways:
//! - at most [`MAX_IDLE`] idle instances in all, and at most [`MAX_IDLE_MEMORY`] bytes
//!   of linear memory between them (an instance bigger than that is never kept);
//! - slot pressure: jobs in flight plus idle instances never exceed the engine's
//!   `max_instances`. Every job counts itself in flight ([`InstanceCache::enter`])
//!   before it instantiates anything, and a job about to instantiate afresh first drops
//!   the least recently used idle instances until its slot is free
//!   ([`InstanceCache::make_room`]): an idle instance never makes another job fail to
//!   get a slot;
//! - an instance idle for [`IDLE_TIMEOUT`] is dropped at the next take or put.
//!
//! What is reset per job is [`Instance::start_job`]'s business; the store's WASI
//! context (environment, directories) is built once per instance, so an idle instance
//! only serves jobs with the same capabilities and memory limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::component::{ComponentState, Task};
use super::deny::JobLabel;
use super::output::CapturedOutput;
use crate::model::Capabilities;

/// Most idle instances kept per process, all task files together.
pub const MAX_IDLE: usize = 64;
/// Most linear memory (bytes, the instances' memory sizes) idle instances hold together.
pub const MAX_IDLE_MEMORY: u64 = 512 << 20;
/// An idle instance unused this long is dropped (at the next take or put).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One task-component instance that may run several jobs: its store (with the
/// per-instance WASI context) and its instantiated task exports.
pub(crate) struct Instance {
    pub store: Store<ComponentState>,
    /// `None` until the first job instantiates it (inside that job's limits).
    pub task: Option<Task>,
    /// The WASI stderr capture (stdout and `log` lines go to the state's `log`).
    pub stderr: CapturedOutput,
    /// Whom the WASI context's socket backstop names in its log lines.
    pub label: JobLabel,
    /// Jobs this instance has run so far.
    pub jobs: u32,
    key: Key,
}

/// Which jobs an idle instance may serve.
#[derive(Clone, PartialEq)]
pub(crate) struct Key {
    /// The task file's content hash.
    pub module: String,
    /// The memory limit its limiter enforces (its memory may already be that large).
    pub memory_bytes: u64,
    /// The capabilities its WASI context was built with.
    pub capabilities: Arc<Capabilities>,
}

impl Key {
    fn matches(&self, other: &Key) -> bool {
        self.module == other.module
            && self.memory_bytes == other.memory_bytes
            && (Arc::ptr_eq(&self.capabilities, &other.capabilities)
                || self.capabilities == other.capabilities)
    }
}

impl Instance {
    /// A new, not yet instantiated, instance for jobs of `key`.
    pub fn new(
        store: Store<ComponentState>,
        stderr: CapturedOutput,
        label: JobLabel,
        key: Key,
    ) -> Self {
        Instance {
            store,
            task: None,
            stderr,
            label,
            jobs: 0,
            key,
        }
    }

    /// The linear memory this instance holds (its limiter's high-water mark).
    fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.peak
    }
}

struct Idle {
    instance: Instance,
    since: Instant,
}

/// The idle instances of one process (one [`Sandbox`](super::Sandbox)), and its jobs in
/// flight.
pub(crate) struct InstanceCache {
    idle: Mutex<VecDeque<Idle>>,
    /// Jobs between [`InstanceCache::enter`] and the drop of its guard.
    in_flight: AtomicUsize,
    /// The engine's pool slots (`EngineSettings::max_instances`).
    slots: usize,
}

/// A job counted in flight; dropping it stops counting it.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InstanceCache {
    /// An empty cache for an engine of `slots` pool slots.
    pub fn new(slots: u32) -> Self {
        InstanceCache {
            idle: Mutex::new(VecDeque::new()),
            in_flight: AtomicUsize::new(0),
            slots: slots.max(1) as usize,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a job in flight until the guard drops. Call it before the job
    /// instantiates anything (or takes an instance).
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.in_flight)
    }

    /// Drops least recently used idle instances until the jobs in flight and the idle
    /// instances fit the pool's slots. A job (counted by [`InstanceCache::enter`])
    /// calls it before it instantiates afresh.
    pub fn make_room(&self) {
        let mut evicted = Vec::new();
        {
            let mut idle = self.lock();
            let in_flight = self.in_flight.load(Ordering::Acquire);
            while !idle.is_empty() && in_flight + idle.len() > self.slots {
                evicted.extend(idle.pop_front());
            }
        }
        // Dropped outside the lock: freeing a store resets its pool slots.
        drop(evicted);
    }

    /// The most recently used idle instance for `key`, if any (taken out: the caller
    /// owns it while the job runs).
    pub fn take(&self, key: &Key) -> Option<Instance> {
        let (taken, expired) = {
            let mut idle = self.lock();
            let expired = expire(&mut idle);
            let taken = idle
                .iter()
                .rposition(|i| i.instance.key.matches(key))
                .and_then(|at| idle.remove(at))
                .map(|i| i.instance);
            (taken, expired)
        };
        drop(expired);
        taken
    }

    /// Keeps `instance` idle for a later job of its key, unless that would break a
    /// bound (then it, or the least recently used instances, are dropped).
    pub fn put(&self, instance: Instance) {
        let mut dropped = Vec::new();
        {
            let mut idle = self.lock();
            dropped.extend(expire(&mut idle));
            if instance.memory_bytes() > MAX_IDLE_MEMORY {
                dropped.push(Idle {
                    instance,
                    since: Instant::now(),
                });
            } else {
                idle.push_back(Idle {
                    instance,
                    since: Instant::now(),
                });
                // The putting job is still in flight: it counts itself and its instance.
                let in_flight = self.in_flight.load(Ordering::Acquire).saturating_sub(1);
                let mut memory: u64 = idle.iter().map(|i| i.instance.memory_bytes()).sum();
                while idle.len() > MAX_IDLE
                    || memory > MAX_IDLE_MEMORY
                    || in_flight + idle.len() > self.slots
                {
                    let Some(oldest) = idle.pop_front() else {
                        break;
                    };
                    memory -= oldest.instance.memory_bytes();
                    dropped.push(oldest);
                }
            }
        }
        drop(dropped);
    }

    /// Idle instances now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// Takes the instances idle longer than [`IDLE_TIMEOUT`] out of `idle` (oldest first).
fn expire(idle: &mut VecDeque<Idle>) -> Vec<Idle> {
    let mut expired = Vec::new();
    while idle
        .front()
        .is_some_and(|i| i.since.elapsed() >= IDLE_TIMEOUT)
    {
        expired.extend(idle.pop_front());
    }
    expired
}
