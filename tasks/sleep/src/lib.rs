//! `sleep(seconds)`: blocks on WASI p2 clocks (the host suspends the guest while it waits).

use sprout_guest::{TaskError, task};
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
    let start = Instant::now();
    std::thread::sleep(duration);
    Ok(start.elapsed().as_secs_f64())
}

sprout_guest::export_tasks!(sleep);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps() {
        assert!(sleep(0.01).unwrap() >= 0.01);
        assert_eq!(sleep(-1.0).unwrap_err().kind, "ValueError");
    }
}
