//! Resource limits for one job: CPU (fuel), memory, wall-clock time and output size.
//!
//! Every task runs under [`Limits`]. The defaults are deliberately tight (deny by
//! default); a task's manifest may raise them; a job may only lower them
//! ([`Limits::lowered_by`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::LimitOverrides;
use crate::model::time;

/// The limits a job runs under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU budget in fuel units (≈1 unit per wasm instruction; on this class of machine
    /// 1 billion fuel is 35–70 ms of guest CPU). Running out ends the job with
    /// `OutOfFuel`. Default: 10 billion.
    pub fuel: u64,
    /// Largest linear memory the guest may grow to, in bytes. Default: 64 MiB.
    pub memory_bytes: u64,
    /// Hard wall-clock limit: the guest is stopped at its next yield point
    /// (`TimeLimitExceeded`). Host waits (sleep, HTTP) count, unlike fuel. Default: 300 s.
    pub time_limit: Duration,
    /// Soft wall-clock limit: the guest is stopped with `SoftTimeLimitExceeded`, which a
    /// retry policy may retry (wasm has no asynchronous exceptions, so the guest cannot
    /// catch it the way a Python task can). Default: none.
    pub soft_time_limit: Option<Duration>,
    /// Largest JSON result, in bytes. Default: 1 MiB.
    pub output_bytes: u64,
    /// Captured stdout, stderr and log lines kept per job, in bytes each; the rest is
    /// dropped and marked truncated. Default: 64 KiB.
    pub log_bytes: u64,
    /// Most jobs one instance (store + component instance) of the task file may run, one
    /// at a time, before it is dropped: Celery's `max_tasks_per_child` for one guest.
    /// Above 1, a task component keeps its module state (Python globals, caches)
    /// between jobs and skips instantiation (most of a Python job's cost); every
    /// per-job limit, the job's info, its logs and its fuel count are reset per job,
    /// and an instance that did not finish its job cleanly is never reused. Only task
    /// components under fuel preemption and without `tcp://` grants reuse instances;
    /// others run each job fresh. A manifest sets it (`[limits] jobs_per_instance`);
    /// a job cannot change it. Default: 1 (a fresh instance per job).
    #[serde(default = "one")]
    pub jobs_per_instance: u32,
}

/// Highest `jobs_per_instance` a manifest may set: long-lived instances accumulate
/// whatever their guest leaks (memory, resources) until they are dropped.
pub const MAX_JOBS_PER_INSTANCE: u32 = 100_000;

/// A size unit of the manifest's and the command line's size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeUnit {
    /// KiB (`output_kib`, `log_kib`).
    Kib,
    /// MiB (`memory_mib`, `--memory`).
    Mib,
}

impl SizeUnit {
    /// Bytes in one unit.
    pub const fn bytes(self) -> u64 {
        match self {
            SizeUnit::Kib => 1 << 10,
            SizeUnit::Mib => 1 << 20,
        }
    }

    /// The largest count of this unit whose bytes a `u64` holds (16 EiB in all).
    pub const fn max_count(self) -> u64 {
        u64::MAX / self.bytes()
    }

    /// `count` units in bytes; `None` when that is more than [`SizeUnit::max_count`].
    pub fn to_bytes(self, count: u64) -> Option<u64> {
        count.checked_mul(self.bytes())
    }

    /// `count` units in bytes, `u64::MAX` past [`SizeUnit::max_count`] (for a count its
    /// edge has already checked).
    pub fn saturating_bytes(self, count: u64) -> u64 {
        count.saturating_mul(self.bytes())
    }
}

fn one() -> u32 {
    1
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000_000,
            memory_bytes: 64 << 20,
            time_limit: Duration::from_secs(300),
            soft_time_limit: None,
            output_bytes: 1 << 20,
            log_bytes: 64 << 10,
            jobs_per_instance: 1,
        }
    }
}

impl Limits {
    /// These limits, lowered by what a job asks for. A request above a limit is ignored:
    /// jobs can tighten limits, never loosen them. A time limit that is not a valid
    /// number of seconds ([`time::seconds`]: the job's decoder rejects those, see
    /// [`LimitOverrides::check`]) is ignored too, never a panic.
    pub fn lowered_by(&self, job: &LimitOverrides) -> Limits {
        let secs = |s: f64| time::seconds(s).ok();
        let mut limits = self.clone();
        if let Some(fuel) = job.fuel {
            limits.fuel = limits.fuel.min(fuel);
        }
        if let Some(memory) = job.memory_bytes {
            limits.memory_bytes = limits.memory_bytes.min(memory);
        }
        if let Some(hard) = job.time_limit.and_then(secs) {
            limits.time_limit = limits.time_limit.min(hard);
        }
        if let Some(soft) = job.soft_time_limit.and_then(secs) {
            limits.soft_time_limit = Some(limits.soft_time_limit.map_or(soft, |s| s.min(soft)));
        }
        if let Some(output) = job.output_bytes {
            limits.output_bytes = limits.output_bytes.min(output);
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_lower_but_never_raise() {
        let base = Limits::default();
        let lowered = base.lowered_by(&LimitOverrides {
            fuel: Some(5),
            memory_bytes: Some(u64::MAX),
            time_limit: Some(1.5),
            soft_time_limit: Some(1.0),
            output_bytes: Some(10),
        });
        assert_eq!(lowered.fuel, 5);
        assert_eq!(lowered.memory_bytes, base.memory_bytes);
        assert_eq!(lowered.time_limit, Duration::from_millis(1500));
        assert_eq!(lowered.soft_time_limit, Some(Duration::from_secs(1)));
        assert_eq!(lowered.output_bytes, 10);

        let raised = base.lowered_by(&LimitOverrides {
            fuel: Some(u64::MAX),
            time_limit: Some(1e9),
            ..Default::default()
        });
        assert_eq!(raised, base);

        // Out-of-range values (rejected by decoders) are ignored here, never a panic.
        for bad in [1e300, f64::INFINITY, f64::NAN, -1.0] {
            let job = LimitOverrides {
                time_limit: Some(bad),
                soft_time_limit: Some(bad),
                ..Default::default()
            };
            assert_eq!(base.lowered_by(&job), base, "{bad}");
        }
    }
}
