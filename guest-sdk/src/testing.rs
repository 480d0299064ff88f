//! Native stand-ins for the host, for unit tests of task logic (not available in wasm).
//!
//! Outside a worker there is no host: [`job`](crate::job) returns the job set here
//! (by default [`JobInfo::default()`]: empty id, task and queue, 0 retries),
//! [`progress`](crate::progress) is recorded, and [`log`](crate::log) lines are printed to
//! stderr and recorded. The state is per thread, so tests running in parallel do not see
//! each other's jobs or logs.
//!
//! ```
//! use sprout_guest::{JobInfo, testing};
//!
//! testing::set_job(JobInfo { retries: 2, ..JobInfo::default() });
//! assert_eq!(sprout_guest::job().retries, 2);
//!
//! sprout_guest::progress(1, 4);
//! assert_eq!(testing::last_progress(), Some((1, 4)));
//!
//! sprout_guest::log::warn("careful");
//! assert_eq!(testing::take_logs(), vec![(sprout_guest::log::Level::Warn, "careful".to_string())]);
//! ```

use std::cell::RefCell;

use crate::JobInfo;
use crate::log::Level;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) job: JobInfo,
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) progress: Option<(u64, u64)>,
}

thread_local! {
    pub(crate) static STATE: RefCell<State> = RefCell::default();
}

/// Sets what [`job`](crate::job) returns on this thread.
pub fn set_job(job: JobInfo) {
    STATE.with_borrow_mut(|s| s.job = job);
}

/// Returns and clears the log lines written on this thread.
pub fn take_logs() -> Vec<(Level, String)> {
    STATE.with_borrow_mut(|s| std::mem::take(&mut s.logs))
}

/// The last `(done, total)` passed to [`progress`](crate::progress) on this thread.
pub fn last_progress() -> Option<(u64, u64)> {
    STATE.with_borrow(|s| s.progress)
}

/// Resets this thread's job, logs and progress to their defaults.
pub fn reset() {
    STATE.with_borrow_mut(|s| *s = State::default());
}
