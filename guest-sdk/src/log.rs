//! Writing to the job's log.
//!
//! In a worker, lines go to the host, which keeps a bounded log with the job. In native
//! builds (unit tests) they are printed to stderr as `[LEVEL] message` and recorded for
//! [`testing::take_logs`](crate::testing::take_logs).
//!
//! Each level has a function and a same-named `format!`-style macro; importing the name
//! brings in both:
//!
//! ```
//! use sprout_guest::log::info;
//!
//! info("starting");
//! let n = 3;
//! info!("fetched {n} feeds");
//! ```

use std::fmt;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the task survived.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// The upper-case name: `TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `message` to the job's log at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    crate::host::log(level, message.as_ref());
}

/// Writes `message` to the job's log at [`Level::Trace`].
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message);
}

/// Writes `message` to the job's log at [`Level::Debug`].
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Writes `message` to the job's log at [`Level::Info`].
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Writes `message` to the job's log at [`Level::Warn`].
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Writes `message` to the job's log at [`Level::Error`].
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}

/// `format!`-style logging at an explicit level: `log!(Level::Info, "got {n} items")`.
#[doc(hidden)]
#[macro_export]
macro_rules! __sprout_log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log::log($level, ::std::format!($($arg)+))
    };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sprout_trace {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Trace, ::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sprout_debug {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Debug, ::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sprout_info {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Info, ::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sprout_warn {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Warn, ::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sprout_error {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Error, ::std::format!($($arg)+)) };
}

/// `format!`-style logging at [`Level::Debug`]: `debug!("parsed {n} items")`.
#[doc(inline)]
pub use crate::__sprout_debug as debug;
/// `format!`-style logging at [`Level::Error`]: `error!("giving up on {url}")`.
#[doc(inline)]
pub use crate::__sprout_error as error;
/// `format!`-style logging at [`Level::Info`]: `info!("fetched {n} feeds")`.
#[doc(inline)]
pub use crate::__sprout_info as info;
/// `format!`-style logging at an explicit level: `log!(Level::Warn, "retrying {url}")`.
#[doc(inline)]
pub use crate::__sprout_log as log;
/// `format!`-style logging at [`Level::Trace`]: `trace!("state {state:?}")`.
#[doc(inline)]
pub use crate::__sprout_trace as trace;
/// `format!`-style logging at [`Level::Warn`]: `warn!("slow feed {url}")`.
#[doc(inline)]
pub use crate::__sprout_warn as warn;
