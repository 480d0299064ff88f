//! Command output on stdout, safe for pipelines.
//!
//! `println!` panics when stdout is a pipe whose reader went away (`sprout status | head
//! -3` closes it after three lines; Rust ignores SIGPIPE, so the write fails with
//! `BrokenPipe` instead of killing the process). Commands print through
//! [`outln!`](crate::outln) instead: once the reader is gone, output is dropped quietly
//! and the command still finishes its work (a `purge` of three queues purges all three
//! even if nobody reads the second line) and exits with its usual code. Any other write
//! error (a full disk behind `> file`) is reported once on stderr, the rest of the
//! output is dropped, and the command exits 1 instead of 0 (see [`crate::cli::commands::exit_code`]).
//!
//! stderr has the same trap: `eprintln!` panics when stderr is a pipe whose reader went
//! away (`sprout worker 2>&1 | head`, a log collector that died). Messages go through
//! [`errln!`](crate::errln) and [`errprint!`](crate::errprint), which drop what cannot be
//! written; the log has its own lossy writer ([`crate::cli::telemetry`]). A closed stderr fd
//! (`2>&-`) is not a problem of its own: Rust opens `/dev/null` in its place at startup.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU8, Ordering};

const OPEN: u8 = 0;
const READER_GONE: u8 = 1;
const FAILED: u8 = 2;

static STDOUT: AtomicU8 = AtomicU8::new(OPEN);

/// Prints a line to stdout like `println!`, but never panics: see the [module docs](self).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(::std::format_args!($($arg)*))
    };
}

/// Writes `args` and a newline to stdout, unless an earlier write found it closed.
/// Use [`outln!`](crate::outln).
pub fn line(args: fmt::Arguments<'_>) {
    if STDOUT.load(Ordering::Relaxed) != OPEN {
        return;
    }
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == io::ErrorKind::BrokenPipe {
            STDOUT.store(READER_GONE, Ordering::Relaxed);
        } else if STDOUT.swap(FAILED, Ordering::Relaxed) == OPEN {
            crate::errln!("error: cannot write to stdout ({e}); the rest of the output is dropped");
        }
    }
}

/// Prints a line to stderr like `eprintln!`, but never panics: a line that cannot be
/// written is dropped (see the [module docs](self)).
#[macro_export]
macro_rules! errln {
    () => {
        $crate::cli::output::err(::std::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::err(::std::format_args!(
            "{}\n",
            ::std::format_args!($($arg)*)
        ))
    };
}

/// Prints to stderr like `eprint!`, but never panics (see [`errln!`](crate::errln)).
#[macro_export]
macro_rules! errprint {
    ($($arg:tt)*) => {
        $crate::cli::output::err(::std::format_args!($($arg)*))
    };
}

/// Writes `args` to stderr, dropping them if that fails. Use [`errln!`](crate::errln)
/// or [`errprint!`](crate::errprint).
pub fn err(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Whether writing to stdout failed for a reason other than its reader going away.
pub fn failed() -> bool {
    STDOUT.load(Ordering::Relaxed) == FAILED
}
