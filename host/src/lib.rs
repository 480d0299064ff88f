//! # Sprout: a WebAssembly sandboxed task runner
//!
//! Sprout is a Celery-style worker whose tasks are WebAssembly. A tour, bottom to top:
//!
//! - [`job`] — the job model: one request to run a task, broker-neutral.
//! - [`limits`] and [`outcome`] — what a job may use, and the one enum of how it ended.
//! - [`sandbox`] — one wasmtime engine per process; loads task files (components of
//!   world `sprout:task/task`, or plain WASI commands) and runs each job in a fresh,
//!   fuel-metered, memory-capped instance. The only place that classifies traps.
//! - [`broker`] and [`backend`] — where jobs wait (fetch with a lease, ack) and where
//!   results go; the embedded SQLite file is the default.
pub mod backend;
pub mod broker;
pub mod celery;
pub mod job;
pub mod limits;
pub mod outcome;
pub mod sandbox;
