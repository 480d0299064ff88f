//! Per-task rate limits (`rate_limit = "10/s"` in a manifest), Celery style.
//!
//! A [`RateLimit`] is "at most N jobs per second, minute or hour, per worker, per task".
//! The [`RateLimiter`] spaces a task's jobs evenly: job *k* of a task limited to N/s may
//! start no earlier than 1/N s after job *k − 1* (a token bucket of capacity one, as
//! Celery's). A job over the limit **waits**; it is never failed for it, and it waits
//! before the pool is asked for a slot, so it holds no instance while it waits (it does
//! keep its reservation, like a Celery prefetched message).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Instant;

use crate::model::time;

/// How many jobs of one task a worker may start per unit of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Jobs per `per`.
    pub count: f64,
    /// The unit.
    pub per: RateUnit,
}

/// The time unit of a [`RateLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    /// `/s`.
    Second,
    /// `/m`.
    Minute,
    /// `/h`.
    Hour,
}

impl RateUnit {
    fn seconds(self) -> f64 {
        match self {
            RateUnit::Second => 1.0,
            RateUnit::Minute => 60.0,
            RateUnit::Hour => 3600.0,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            RateUnit::Second => "s",
            RateUnit::Minute => "m",
            RateUnit::Hour => "h",
        }
    }
}

impl RateLimit {
    /// The time between two job starts (a hand-built rate of 0 or less saturates at
    /// [`time::MAX_SECONDS`]; parsing rejects it).
    pub fn interval(&self) -> Duration {
        if self.count > 0.0 {
            time::saturating_seconds(self.per.seconds() / self.count)
        } else {
            time::MAX_DURATION
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    /// `"N/s"`, `"N/m"`, `"N/h"` or a bare `"N"` (per second); N is a positive number.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "rate limit {text:?} is not N/s, N/m or N/h with N a positive number \
                 (e.g. \"10/s\", \"100/m\", \"0.5/h\")"
            )
        };
        let (number, unit) = match text.trim().split_once('/') {
            Some((n, u)) => (n.trim(), u.trim()),
            None => (text.trim(), "s"),
        };
        let per = match unit {
            "s" => RateUnit::Second,
            "m" => RateUnit::Minute,
            "h" => RateUnit::Hour,
            _ => return Err(bad()),
        };
        let count: f64 = number.parse().map_err(|_| bad())?;
        // The interval must be a valid duration (model::time): at most one job per 100
        // years.
        if !(count.is_finite() && count > 0.0) || time::seconds(per.seconds() / count).is_err() {
            return Err(bad());
        }
        Ok(RateLimit { count, per })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    /// A string (`"10/s"`) or a bare number (jobs per second), as Celery accepts.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        let text = match Raw::deserialize(deserializer) {
            Ok(Raw::Text(text)) => text,
            Ok(Raw::Number(n)) => n.to_string(),
            Err(_) => {
                return Err(serde::de::Error::custom(
                    "rate_limit must be a string like \"10/s\" or a number of jobs per second",
                ));
            }
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The next allowed start of each rate-limited task in this worker process.
#[derive(Debug, Default)]
pub struct RateLimiter {
    next: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    /// A limiter with no history.
    pub fn new() -> Self {
        RateLimiter::default()
    }

    /// Reserves the next start slot of `key` under `limit` and returns how long the caller
    /// must wait for it (zero when the task is under its limit). Slots are handed out in
    /// call order, so waiting jobs start in the order they arrived.
    pub fn reserve(&self, key: &str, limit: &RateLimit) -> Duration {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = next.get(key).copied().filter(|t| *t > now).unwrap_or(now);
        next.insert(key.to_string(), slot + limit.interval());
        slot - now
    }

    /// Waits until a job of `key` may start under `limit`; returns how long it waited.
    ///
    /// # Cancel safety
    /// Cancelling the wait gives up the reserved slot (the next job of the task still
    /// waits as if it had been used): a cancelled wait can only slow the task down,
    /// never let it exceed its limit.
    pub async fn wait(&self, key: &str, limit: &RateLimit) -> Duration {
        let wait = self.reserve(key, limit);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_style_limits() {
        let r: RateLimit = "10/s".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_millis(100));
        let r: RateLimit = "120/m".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_millis(500));
        let r: RateLimit = "2/h".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_secs(1800));
        let r: RateLimit = "4".parse().unwrap();
        assert_eq!(r.interval(), Duration::from_millis(250));
        assert_eq!(r.to_string(), "4/s");
        for bad in [
            "", "0/s", "-1/s", "x/s", "10/d", "10/", "inf/s", "NaN", "1e-12/h",
        ] {
            assert!(
                bad.parse::<RateLimit>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn reserves_evenly_spaced_slots_per_key() {
        let limiter = RateLimiter::new();
        let limit: RateLimit = "10/s".parse().unwrap();
        let waits: Vec<Duration> = (0..4).map(|_| limiter.reserve("a", &limit)).collect();
        // The first at once, then one every 100 ms (give or take the time this takes).
        assert_eq!(waits[0], Duration::ZERO);
        for (k, wait) in waits.iter().enumerate().skip(1) {
            let want = Duration::from_millis(100 * k as u64);
            assert!(
                *wait <= want && *wait > want - Duration::from_millis(50),
                "{k}: {wait:?}"
            );
        }
        // Another task has its own bucket.
        assert_eq!(limiter.reserve("b", &limit), Duration::ZERO);
    }

    #[tokio::test]
    async fn waits_and_keeps_no_burst_credit() {
        let limiter = RateLimiter::new();
        let limit: RateLimit = "50/s".parse().unwrap();
        let start = Instant::now();
        for _ in 0..4 {
            limiter.wait("a", &limit).await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(60),
            "{:?}",
            start.elapsed()
        );
        // After a quiet period there is credit for one job, not a burst.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(limiter.reserve("a", &limit), Duration::ZERO);
        assert!(limiter.reserve("a", &limit) > Duration::from_millis(10));
    }
}
