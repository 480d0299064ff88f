//! Command output on stdout, safe for pipelines.
//!
//! `println!` panics when stdout is a pipe whose reader went away (`sprout status | head
//! -3` closes it after three lines; Rust ignores SIGPIPE, so the write fails with
//! `BrokenPipe` instead of killing the process). Commands print through [`outln!`]
//! instead: once the reader is gone, output is dropped quietly and the command still
//! finishes its work (a `purge` of three queues purges all three even if nobody reads
//! the second line) and exits with its usual code. Any other write error (a full disk
//! behind `> file`) is reported once on stderr, the rest of the output is dropped, and
//! the command exits 1 instead of 0 (see [`super::exit_code`]).

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
        $crate::commands::output::line(::std::format_args!($($arg)*))
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
            eprintln!("error: cannot write to stdout ({e}); the rest of the output is dropped");
        }
    }
}

/// Whether writing to stdout failed for a reason other than its reader going away.
pub fn failed() -> bool {
    STDOUT.load(Ordering::Relaxed) == FAILED
}
