//! `sleep(seconds)`: blocks on WASI p2 clocks (the host suspends the guest while it waits).
//! It also writes one log line and reports progress, so it exercises the host imports.

use sprout_guest::log::info;
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

sprout_guest::export_tasks!(sleep);

#[cfg(test)]
mod tests {
    use super::*;
    use sprout_guest::log::Level;
    use sprout_guest::testing;

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
