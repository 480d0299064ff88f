// Shared body of version_v1 and version_v2: one task, `version`, that answers which
// build it is, after sleeping `seconds` (so a test can keep a job running across a
// reload).

use sprout_guest::{TaskError, task};

/// Sleeps `seconds`, then returns this build's version.
#[task]
fn version(seconds: f64) -> Result<String, TaskError> {
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds.max(0.0)));
    Ok(VERSION.to_string())
}

sprout_guest::export_tasks!(version);
