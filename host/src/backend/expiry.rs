//! Result expiry: Celery's `result_expires` (default one day) for backends that keep
//! records until they are deleted.
//!
//! The Redis backend stores every record with a TTL, so Redis expires them itself. The
//! embedded SQLite file would otherwise grow by one row per job forever; each worker
//! therefore runs [`sweep`], which calls
//! [`ResultBackend::expire_results`] at startup (results that expired while no worker
//! ran) and then every [`sweep_interval`]. Several workers sharing one file each sweep;
//! the deletes are idempotent. A record's age counts from its last update, as a Redis
//! TTL restarts with every `SETEX`.

use std::sync::Arc;
use std::time::Duration;

use super::ResultBackend;

/// How often a worker sweeps when results expire after `expires`: a quarter of it, at
/// least every 60 s and at most every 100 ms. A result therefore lives between
/// `expires` and `expires` plus one interval.
pub fn sweep_interval(expires: Duration) -> Duration {
    (expires / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Deletes results older than `expires` from `backend` now and then every
/// [`sweep_interval`], until the task is dropped or aborted. A failed sweep is logged
/// and tried again at the next interval. Spawn it beside the worker; `expires` of zero
/// means results never expire (do not spawn it then).
pub async fn sweep(backend: Arc<dyn ResultBackend>, expires: Duration) {
    let mut ticks = tokio::time::interval(sweep_interval(expires));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match backend.expire_results(expires).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("expired {n} result(s) older than {}", humanise(expires)),
            Err(e) => tracing::warn!("cannot expire old results (will retry): {e}"),
        }
    }
}

/// `86400 s` as `1d`, `90 s` as `90s`: the unit the flag was probably given in.
fn humanise(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{} ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DEFAULT_RESULT_EXPIRES;

    #[test]
    fn intervals_follow_the_expiry_within_bounds() {
        assert_eq!(
            sweep_interval(DEFAULT_RESULT_EXPIRES),
            Duration::from_secs(60)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
        assert_eq!(humanise(DEFAULT_RESULT_EXPIRES), "1d");
        assert_eq!(humanise(Duration::from_secs(90)), "90s");
    }
}
