//! # Sprout: a WebAssembly sandboxed task runner
//!
//! Sprout is a Celery-style worker whose tasks are WebAssembly. The library is built in
//! one-way layers: each module imports only the ones below it (docs in each module say
//! what it may import). A tour, bottom to top:
//!
//! - [`model`] — plain data every layer shares: jobs, limits, capabilities, outcomes,
//!   states and result records. No I/O; imports nothing of ours.
//! - [`storage`] — what a broker and a result backend on the same server share: the
//!   embedded SQLite database file, the Redis connection settings.
//! - [`celery`] — Celery protocol v2: the wire codec (messages, result meta, key names)
//!   and the workflow logic (chains, callbacks, chords, retries). I/O-free.
//! - [`broker`] — where jobs wait: fetch with a lease, extend, ack, retry, dead-letter
//!   ([`broker::sqlite`], [`broker::redis`]). A broker never builds or calls a backend.
//! - [`backend`] — where results go: store, get, wait ([`backend::sqlite`],
//!   [`backend::redis`]); jobs a backend creates (chord bodies) go through the
//!   [`backend::Publisher`] the worker hands in.
//! - [`connect`] — URL scheme → broker and backend constructors, each from its own URL.
//! - [`sandbox`] — one wasmtime engine per process; loads task files (components of
//!   world `sprout:task/task`, or plain WASI commands) and runs each job in a fresh,
//!   fuel-metered, memory-capped instance. The only place that classifies traps.
//! - [`manifest`], [`rate_limit`] and [`registry`] — task files and their manifests,
//!   loaded into the set of task names a worker can run and kept in step with the
//!   directories while it runs (hot reload, [`registry::watch`]).
//! - [`build`] — `sprout build`: Python modules (componentize-py) and Rust crates
//!   turned into task files with their manifests; toolchains and files, no wasm.
//! - [`pool`] — how jobs run: the async pool (many guests on tokio, preempted by fuel)
//!   and the prefork pool (supervised child processes).
//! - [`worker`] — the consume loop: reserve capacity, fetch, run, and settle every
//!   delivery in one place (store the result, then ack); shutdown.
//! - [`client`] — the producer side for programs.
//!
//! The `sprout` command line is the binary's own (`host/src/main.rs`, `host/src/cli/`):
//! the library links no clap (`cargo build -p sprout --lib --no-default-features`).
// `eprintln!` panics on a broken stderr: the binary prints through `errln!` (cli/output.rs).
#![deny(missing_docs)]
#![warn(clippy::print_stderr)]

pub mod backend;
pub mod broker;
pub mod build;
pub mod celery;
pub mod client;
pub mod connect;
pub mod manifest;
pub mod model;
mod panics;
pub mod pool;
pub mod rate_limit;
pub mod registry;
pub mod sandbox;
pub mod storage;
pub mod worker;
