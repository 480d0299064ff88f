//! Logging setup: `tracing` to stderr, filtered by `--log` / `SPROUT_LOG`.
//!
//! Colour (ANSI escape codes) only when stderr is a terminal and `NO_COLOR` is not set:
//! a log redirected to a file, a pipe or a service manager's journal stays plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Bad filters fall back to `info`.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .with_target(false)
        .try_init();
}

/// Whether to colour the log: on a terminal, unless `NO_COLOR` is set to something
/// (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
