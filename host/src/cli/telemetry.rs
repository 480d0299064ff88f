//! Logging setup: `tracing` to stderr, filtered by `--log` / `SPROUT_LOG`, as text or
//! JSON lines (`--log-format`).
//!
//! Colour (ANSI escape codes) only when stderr is a terminal and `NO_COLOR` is not set:
//! a log redirected to a file, a pipe or a service manager's journal stays plain text.
//!
//! A log line that cannot be written (stderr a pipe whose reader went away, a full disk)
//! is dropped: logging never stops or kills the process. tracing-subscriber would report
//! such a failure with `eprintln!`, which panics on that same broken stderr.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// The levels a bare filter directive may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `--log` filter: tracing's `EnvFilter` syntax, where each comma-separated
/// directive is a level (`info`) or `TARGET=LEVEL` (`sprout::pool=debug`). A bare word
/// that is not a level would be read by `EnvFilter` as a target with every level
/// enabled, and silence everything else (`--log verbose`): it is refused.
///
/// # Errors
/// The directive that is wrong and what is accepted.
pub fn check_filter(filter: &str) -> Result<EnvFilter, String> {
    const ACCEPTED: &str = "expected a level (trace, debug, info, warn, error, off) or \
                            TARGET=LEVEL, comma-separated, e.g. info,sprout::pool=debug";
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() {
            return Err(format!("--log {filter:?}: an empty directive; {ACCEPTED}"));
        }
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None if directive.contains('[') => continue,
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "--log {filter:?}: {level:?} is not a level; {ACCEPTED}"
            ));
        }
    }
    EnvFilter::try_new(filter).map_err(|e| format!("--log {filter:?}: {e}"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The directive added to every filter that does not name lapin. lapin logs each channel
/// the server closes at ERROR, also the NOT_FOUND a passive declare is answered with (how
/// `status` learns that a queue does not exist, which is no error). Sprout reports the
/// closes that matter itself, with their context: a refused declaration, a consumer
/// that ended, a lost connection.
const QUIET_LAPIN_CHANNELS: &str = "lapin::channel=off";

/// Installs the global subscriber.
///
/// # Errors
/// A filter [`check_filter`] refuses.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let mut env_filter = check_filter(filter)?;
    if !filter.contains("lapin")
        && let Ok(quiet) = QUIET_LAPIN_CHANNELS.parse()
    {
        env_filter = env_filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(|| LossyStderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour(io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_levels_or_target_levels() {
        for good in [
            "info",
            "WARN",
            "sprout=debug",
            "info,sprout::pool=trace",
            "off",
        ] {
            assert!(check_filter(good).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("verbose", "\"verbose\" is not a level"),
            ("info,,debug", "empty directive"),
            ("sprout=loud", "\"loud\" is not a level"),
            ("", "empty directive"),
        ] {
            let err = check_filter(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
