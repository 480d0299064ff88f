//! The `sprout` command line, part of the binary only: the library never links clap.
//!
//! - [`args`] — clap types and nothing else.
//! - [`commands`] — one module per command: build library objects from parsed flags,
//!   call the library, print.
//! - [`output`] — stdout/stderr that never panic on a closed pipe.
//! - [`telemetry`] — the log subscriber.

pub mod args;
pub mod commands;
pub mod output;
pub mod telemetry;
