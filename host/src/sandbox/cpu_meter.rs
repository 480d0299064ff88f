//! The per-job CPU budget under [`Preemption::Epoch`](super::engine::Preemption), where
//! no fuel is counted: the CPU time of the thread while it polls the job's future (its
//! guest code, and the host work it does inline) is summed, and the epoch callback stops
//! the guest at the first tick past the budget.
//!
//! The budget and the usage are still reported in fuel units, at a fixed rate of
//! [`FUEL_PER_NANOSECOND`] (1 billion fuel = 50 ms), the middle of what fuel metering
//! counts per second of guest code on the dev machine: limits, outcomes (`OutOfFuel`),
//! events and metrics keep their meaning in either mode. Time is the thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`, read at the start and end of each poll and at each tick:
//! a system call, ≈0.4 µs here), so time the OS gives other processes during a slice is
//! not charged to the job.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Fuel units one nanosecond of guest time stands for under epoch preemption.
pub const FUEL_PER_NANOSECOND: u64 = 20;

/// Raised by the epoch callback when a job's time passed its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the job used its CPU budget ({budget_fuel} fuel = {} ms of guest time)", budget_fuel / FUEL_PER_NANOSECOND / 1_000_000)]
pub struct CpuBudgetExceeded {
    /// The budget, in fuel units.
    pub budget_fuel: u64,
}

/// The calling thread's CPU time, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
fn now_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// One job's time: what its finished polls took, and when the current poll began.
#[derive(Debug, Default)]
pub struct CpuMeter {
    used_nanos: AtomicU64,
    /// 0 when no poll is under way.
    poll_started: AtomicU64,
}

impl CpuMeter {
    /// The time used so far, in nanoseconds, counting the poll under way.
    pub fn used_nanos(&self) -> u64 {
        let used = self.used_nanos.load(Ordering::Relaxed);
        match self.poll_started.load(Ordering::Relaxed) {
            0 => used,
            started => used.saturating_add(now_nanos().saturating_sub(started)),
        }
    }

    /// How much CPU the poll under way has used (zero between polls). Only meaningful
    /// on the thread that polls (the epoch callback runs there).
    pub fn current_poll(&self) -> std::time::Duration {
        match self.poll_started.load(Ordering::Relaxed) {
            0 => std::time::Duration::ZERO,
            started => std::time::Duration::from_nanos(now_nanos().saturating_sub(started)),
        }
    }

    /// The time used so far, in fuel units.
    pub fn used_fuel(&self) -> u64 {
        self.used_nanos().saturating_mul(FUEL_PER_NANOSECOND)
    }

    /// `Err` once the time used passed `budget_fuel`.
    pub fn check(&self, budget_fuel: u64) -> Result<(), CpuBudgetExceeded> {
        if self.used_fuel() > budget_fuel {
            Err(CpuBudgetExceeded { budget_fuel })
        } else {
            Ok(())
        }
    }

    /// `future`, with the time of each of its polls added to this meter.
    pub fn meter<F: Future>(self: &Arc<Self>, future: F) -> Metered<F> {
        Metered {
            future: Box::pin(future),
            meter: Some(self.clone()),
        }
    }
}

/// A future whose polls are timed into a [`CpuMeter`] (or not, when it has none).
pub struct Metered<F> {
    future: Pin<Box<F>>,
    meter: Option<Arc<CpuMeter>>,
}

impl<F> Metered<F> {
    /// `future` as it is, timed by no meter.
    pub fn unmetered(future: F) -> Self {
        Metered {
            future: Box::pin(future),
            meter: None,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(meter) = self.meter.clone() else {
            return self.future.as_mut().poll(cx);
        };
        let started = now_nanos().max(1);
        meter.poll_started.store(started, Ordering::Relaxed);
        let result = self.future.as_mut().poll(cx);
        let took = now_nanos().saturating_sub(started);
        meter.poll_started.store(0, Ordering::Relaxed);
        meter.used_nanos.fetch_add(took, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_polls_and_not_the_waits_between_them() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let meter = Arc::new(CpuMeter::default());
        rt.block_on(meter.meter(async {
            // Busy 20 ms of CPU, parked 100 ms, busy 20 ms of CPU.
            let spin = |ms: u64| {
                let t = now_nanos();
                while now_nanos() - t < ms * 1_000_000 {}
            };
            spin(20);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            spin(20);
        }));
        let used_ms = meter.used_nanos() / 1_000_000;
        assert!((40..100).contains(&used_ms), "{used_ms} ms");
        assert_eq!(meter.used_fuel(), meter.used_nanos() * FUEL_PER_NANOSECOND);
        assert!(meter.check(u64::MAX).is_ok());
        assert_eq!(
            meter.check(1_000),
            Err(CpuBudgetExceeded { budget_fuel: 1_000 })
        );
    }
}
