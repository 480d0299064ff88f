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
use std::collections::HashMap;
use std::rc::Rc;

use crate::JobInfo;
use crate::TaskError;
use crate::http::{Request, Response};
use crate::log::Level;

/// A fake HTTP server for native tests (see [`mock_http`]).
pub(crate) type HttpHandler = Rc<dyn Fn(&Request) -> Result<Response, TaskError>>;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) job: JobInfo,
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) progress: Option<(u64, u64)>,
    pub(crate) http: Option<HttpHandler>,
    pub(crate) config: HashMap<String, String>,
}

thread_local! {
    pub(crate) static STATE: RefCell<State> = RefCell::default();
}

/// Sets what [`job`](crate::job) returns on this thread.
pub fn set_job(job: JobInfo) {
    STATE.with_borrow_mut(|s| s.job = job);
}

/// Makes [`config`](crate::config)`(key)` return `value` on this thread, as a manifest's
/// `[capabilities] config = { key = "value" }` does in a worker. Keys never set read as
/// `None`.
///
/// ```
/// use sprout_guest::testing;
///
/// testing::set_config("greeting", "hi");
/// assert_eq!(sprout_guest::config("greeting").as_deref(), Some("hi"));
/// assert_eq!(sprout_guest::config("region"), None);
/// testing::reset();
/// assert_eq!(sprout_guest::config("greeting"), None);
/// ```
pub fn set_config(key: impl Into<String>, value: impl Into<String>) {
    STATE.with_borrow_mut(|s| {
        s.config.insert(key.into(), value.into());
    });
}

/// Returns and clears the log lines written on this thread.
pub fn take_logs() -> Vec<(Level, String)> {
    STATE.with_borrow_mut(|s| std::mem::take(&mut s.logs))
}

/// The last `(done, total)` passed to [`progress`](crate::progress) on this thread.
pub fn last_progress() -> Option<(u64, u64)> {
    STATE.with_borrow(|s| s.progress)
}

/// Answers this thread's [`http`](crate::http) requests with `handler` instead of
/// failing: a fake server for unit tests of task logic. It sees every hop of a
/// redirect as its own [`Request`]; a `Response` whose `url` is empty gets the
/// request's URL.
///
/// ```
/// use sprout_guest::http::{self, Response};
/// use sprout_guest::testing;
///
/// testing::mock_http(|req| {
///     Ok(Response { status: 200, body: format!("you asked for {}", req.url).into(), ..Response::default() })
/// });
/// assert_eq!(http::get("http://feeds.test/a").unwrap().text(), "you asked for http://feeds.test/a");
/// testing::reset();
/// ```
pub fn mock_http(handler: impl Fn(&Request) -> Result<Response, TaskError> + 'static) {
    STATE.with_borrow_mut(|s| s.http = Some(Rc::new(handler)));
}

pub(crate) fn http_handler() -> Option<HttpHandler> {
    STATE.with_borrow(|s| s.http.clone())
}

/// Resets this thread's job, logs, progress, config values and HTTP fake to their
/// defaults.
pub fn reset() {
    STATE.with_borrow_mut(|s| *s = State::default());
}
