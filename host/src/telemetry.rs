//! Logging setup: `tracing` to stderr, filtered by `--log` / `SPROUT_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Bad filters fall back to `info`.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
