//! The epoch ticker of [`Preemption::Epoch`](super::engine::Preemption): one thread per
//! engine that advances the engine's epoch every tick while any job's store exists, and
//! sleeps (parked, no wake-ups) while none does.
//!
//! Every running guest checks the epoch at function entries and loop heads and yields to
//! the async runtime once it passed the guest's deadline (the next tick), so the tick is
//! the time slice. An idle worker costs no ticks: the first store to appear wakes the
//! thread, the last one to go lets it park again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// State shared by the ticker thread, its owner and the stores' guards.
#[derive(Debug)]
struct Shared {
    /// Stores alive (jobs running or parked in a host call).
    active: AtomicUsize,
    /// Set when the owner is dropped: the thread ends.
    stop: AtomicBool,
}

/// Owns the ticker thread; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Held by one store: while any guard exists the ticker ticks.
#[derive(Debug)]
pub(crate) struct TickGuard {
    shared: Arc<Shared>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`, advancing its epoch every `tick` while a
    /// [`TickGuard`] exists.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub(crate) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sprout-epoch".into())
            .spawn(move || run(&engine, tick, &state))?;
        Ok(EpochTicker {
            shared,
            thread: Some(thread),
        })
    }

    /// A guard for one store: the ticker ticks until it is dropped.
    pub(crate) fn guard(&self) -> TickGuard {
        if self.shared.active.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
        TickGuard {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for TickGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The thread: tick while stores exist, park while none does.
fn run(engine: &Engine, tick: Duration, shared: &Shared) {
    // Timer slack (50 µs by default) would stretch every sleep of a sub-millisecond tick;
    // ask for the least the kernel gives. Best effort: without it ticks are only longer.
    let slack_nanos: libc::c_ulong = 1;
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, slack_nanos, 0, 0, 0);
    }
    while !shared.stop.load(Ordering::Acquire) {
        if shared.active.load(Ordering::Acquire) == 0 {
            // A guard's unpark between the load and here makes this return at once.
            std::thread::park();
            continue;
        }
        std::thread::sleep(tick);
        engine.increment_epoch();
    }
}
