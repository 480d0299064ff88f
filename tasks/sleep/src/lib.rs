//! `sleep(seconds)`: blocks on WASI p2 clocks (the host suspends the guest while it waits).
//! It also writes one log line and reports progress, so it exercises the host imports.
//! `steps(n, seconds)`: n steps of `seconds` each, reporting progress and logging a
//! warning per step, so an operator can watch a job move (`sprout result ID`).

use sprout_guest::log::{info, warn};
use sprout_guest::{TaskError, progress, task};
use std::time::{Duration, Instant};

/// Sleeps `seconds` (a non-negative, finite number) and returns how long it actually slept.
#[task]
fn sleep(seconds: f64) -> Result<f64, TaskError> {
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| {
        TaskError::new(
            "ValueError",
            format!("sleep() seconds must be >= 0 and finite: {e}"),
        )
    })?;
    info!("sleeping {seconds} s");
    progress(0, 1);
    let start = Instant::now();
    std::thread::sleep(duration);
    progress(1, 1);
    Ok(start.elapsed().as_secs_f64())
}

/// Runs `n` steps (at most 10000) of `seconds` each: before each step it reports
/// `progress(i, n)` and logs a warning `step i of n`; returns `n`.
#[task]
fn steps(n: u64, seconds: f64) -> Result<u64, TaskError> {
    if n > 10_000 {
        return Err(TaskError::new("ValueError", "steps() n must be at most 10000"));
    }
    let each = Duration::try_from_secs_f64(seconds).map_err(|e| {
        TaskError::new(
            "ValueError",
            format!("steps() seconds must be >= 0 and finite: {e}"),
        )
    })?;
    for i in 0..n {
        progress(i, n);
        warn!("step {i} of {n}");
        std::thread::sleep(each);
    }
    progress(n, n);
    Ok(n)
}

sprout_guest::export_tasks!(sleep, steps);

#[cfg(test)]
mod tests {
    use super::*;
    use sprout_guest::log::Level;
    use sprout_guest::testing;

    #[test]
    fn steps_report_progress_and_warn() {
        assert_eq!(steps(2, 0.0).unwrap(), 2);
        assert_eq!(testing::last_progress(), Some((2, 2)));
        assert_eq!(
            testing::take_logs(),
            [
                (Level::Warn, "step 0 of 2".to_string()),
                (Level::Warn, "step 1 of 2".to_string())
            ]
        );
        assert!(steps(10_001, 0.0).is_err());
    }

    #[test]
    fn sleeps() {
        assert!(sleep(0.01).unwrap() >= 0.01);
        assert_eq!(testing::last_progress(), Some((1, 1)));
        assert_eq!(
            testing::take_logs(),
            [(Level::Info, "sleeping 0.01 s".to_string())]
        );
        assert_eq!(sleep(-1.0).unwrap_err().kind, "ValueError");
    }
}
