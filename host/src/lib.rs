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
//! - [`manifest`] and [`registry`] — task files and their manifests, loaded into the
//!   set of task names a worker can run, and kept in step with the directories while
//!   it runs (hot reload, [`registry::watch`]); [`rate_limit`] — per-task job rates.
//! - [`pool`] — how jobs run: the async pool (many guests on tokio, preempted by fuel).
//! - [`worker`] — the consume loop: reserve capacity, fetch, run, store, ack; shutdown.
//! - [`client`] — the producer side for programs; [`cli`] and [`commands`] — the
//!   `sprout` command line.
// `eprintln!` panics on a broken stderr: print through `errln!` (commands::output).
#![deny(missing_docs)]
#![warn(clippy::print_stderr)]

pub mod backend;
pub mod broker;
pub mod celery;
pub mod client;
pub mod connect;
pub mod manifest;
pub mod model;
pub mod pool;
pub mod rate_limit;
pub mod registry;
pub mod sandbox;
pub mod storage;
pub mod worker;
