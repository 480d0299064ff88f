//! The host services behind [`log`](crate::log), [`progress`](crate::progress),
//! [`job`](crate::job) and [`config`](crate::config): the real imports (and the
//! environment the worker grants) in wasm, stand-ins in native builds.

use crate::JobInfo;
use crate::log::Level;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{JobInfo, Level};
    use crate::bindings::sprout::task::host as wit;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    pub fn progress(done: u64, total: u64) {
        wit::progress(done, total);
    }

    pub fn job() -> JobInfo {
        let j = wit::job();
        JobInfo {
            id: j.id,
            task: j.task,
            retries: j.retries,
            queue: j.queue,
        }
    }

    pub fn config(key: &str) -> Option<String> {
        std::env::var(format!("{}{key}", crate::CONFIG_ENV_PREFIX)).ok()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{JobInfo, Level};
    use crate::testing::STATE;

    pub fn log(level: Level, message: &str) {
        eprintln!("[{level}] {message}");
        STATE.with_borrow_mut(|s| s.logs.push((level, message.to_owned())));
    }

    pub fn progress(done: u64, total: u64) {
        STATE.with_borrow_mut(|s| s.progress = Some((done, total)));
    }

    pub fn job() -> JobInfo {
        STATE.with_borrow(|s| s.job.clone())
    }

    pub fn config(key: &str) -> Option<String> {
        STATE.with_borrow(|s| s.config.get(key).cloned())
    }
}

pub(crate) use imp::{config, job, log, progress};
