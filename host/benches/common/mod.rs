//! Scaffolding shared by the benches (each bench is its own crate and includes this
//! module with `mod common;`): environment knobs, the runtime, section selection, and
//! the helpers of the broker benches ([`broker`]) and the pool benches ([`pool`]).

// Each bench uses only part of this module.
#![allow(dead_code)]

pub mod broker;
pub mod pool;

/// The value of the environment variable `name` as a number, or `default` when it is
/// unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime every bench runs on: multi-threaded with two workers (the machine's
/// two cores), all drivers enabled.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The sections named on the command line (`cargo bench --bench X -- SECTION...`);
/// flags such as cargo's `--bench` are skipped.
pub struct Sections(Vec<String>);

impl Sections {
    /// The sections of this process's arguments.
    pub fn from_args() -> Self {
        Self(
            std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .collect(),
        )
    }

    /// Whether `section` is to run: every section runs when none is named.
    pub fn wanted(&self, section: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|x| x == section)
    }
}
