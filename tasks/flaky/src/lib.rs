//! `flaky(times, countdown_ms=10)`: asks to be retried until the job has been retried
//! `times` times.

use sprout_guest::{TaskError, job, task};
use std::time::Duration;

/// Fails with a retry request (kind `Retry`, countdown `countdown_ms`, default 10 ms) while
/// the job has been retried fewer than `times` times; then returns the number of retries.
#[task]
fn flaky(times: u32, countdown_ms: Option<u64>) -> Result<u32, TaskError> {
    let retries = job().retries;
    if retries < times {
        Err(TaskError::retry_after(
            Duration::from_millis(countdown_ms.unwrap_or(10)),
            format!("flaky: attempt {}", retries + 1),
        ))
    } else {
        Ok(retries)
    }
}

sprout_guest::export_tasks!(flaky);

#[cfg(test)]
mod tests {
    use super::*;
    use sprout_guest::{JobInfo, testing};

    #[test]
    fn retries_then_succeeds() {
        testing::set_job(JobInfo {
            retries: 0,
            ..JobInfo::default()
        });
        let err = flaky(2, None).unwrap_err();
        assert_eq!(err.kind, "Retry");
        assert_eq!(err.message, "flaky: attempt 1");
        assert_eq!(
            err.retry.unwrap().countdown,
            Some(Duration::from_millis(10))
        );

        testing::set_job(JobInfo {
            retries: 2,
            ..JobInfo::default()
        });
        assert_eq!(flaky(2, Some(5)), Ok(2));
        assert_eq!(TASKS.run("flaky", "[1]", "{}").unwrap(), "2");
    }
}
