//! Logging setup: `tracing` to stderr, filtered by `--log` / `SPROUT_LOG`.
//!
//! Colour (ANSI escape codes) only when stderr is a terminal and `NO_COLOR` is not set:
//! a log redirected to a file, a pipe or a service manager's journal stays plain text.
//!
//! A log line that cannot be written (stderr a pipe whose reader went away, a full disk)
//! is dropped: logging never stops or kills the process. tracing-subscriber would report
//! such a failure with `eprintln!`, which panics on that same broken stderr.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Bad filters fall back to `info`.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(colour(io::stderr().is_terminal()))
        .with_target(false)
        .try_init();
}

/// Whether to colour the log: on a terminal, unless `NO_COLOR` is set to something
/// (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// stderr, where a write that fails is dropped instead of reported.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}
