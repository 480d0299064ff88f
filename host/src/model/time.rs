//! The one checked conversion for time values from outside: seconds, milliseconds,
//! countdowns and timestamps.
//!
//! `Duration::from_secs_f64`, `chrono`'s `DateTime + TimeDelta` and `TimeDelta::from_std`
//! panic on infinite, negative or huge values, and such values come from every edge:
//! Celery headers (`timelimit`), signature options (`countdown`, `eta`, `expires`), a
//! stored job, a manifest (`time_limit = inf` is valid TOML), a broker URL key
//! (`visibility_timeout=1e300`), a CLI flag (`--countdown 1e13`), a guest's retry
//! request (`u64` milliseconds). Every one of them goes through this module, which
//! never panics:
//!
//! | value | function | out of range |
//! |---|---|---|
//! | seconds (`f64`) that must be a duration | [`seconds`] | NaN, ±∞, negative, over [`MAX_SECONDS`] |
//! | milliseconds (`u64`) | [`millis`] | over [`MAX_SECONDS`] |
//! | seconds relative to now, past allowed (a Celery `countdown` or `expires`) | [`offset`] | NaN, ±∞, more than [`MAX_SECONDS`] either way |
//! | a timestamp (`eta`, `expires`) | [`instant`] | more than [`MAX_SECONDS`] (plus [`CLOCK_SLACK`]) after now |
//! | `now + duration` | [`eta_after`] | a duration over [`MAX_SECONDS`] |
//!
//! Out-of-range values are errors ([`TimeError`], naming the value) that each edge
//! reports its own way: a dead letter with the reason (messages), a rejected task file
//! naming the file and the key (manifests), a usage error with exit code 2 (CLI flags
//! and broker URLs). The one exception is a guest's retry countdown, which is clamped
//! to the maximum ([`clamp_millis`]): a task asking to be retried "never" is retried in
//! 100 years, not failed.
//!
//! [`MAX_SECONDS`] is 100 years (of 365.25 days): longer than any real time limit,
//! countdown or expiry, and far inside what `std::time` and `chrono` can add to the
//! current time.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The longest duration Sprout accepts from outside, in seconds: 100 years of 365.25
/// days (3 155 760 000 s). Time limits, countdowns, expiries, backoffs, HTTP timeouts,
/// broker URL durations and CLI flags above it are rejected; a guest's retry countdown
/// above it is clamped to it.
pub const MAX_SECONDS: u64 = 3_155_760_000;

/// [`MAX_SECONDS`] as a [`Duration`].
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_SECONDS);

/// A time value from outside that is out of range. The message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// NaN or infinite.
    #[error("{0} is not a finite number of seconds")]
    NotFinite(String),
    /// Below zero where only a duration makes sense.
    #[error("{0} is negative: expected zero or more seconds")]
    Negative(String),
    /// Longer than [`MAX_SECONDS`].
    #[error("{0} is more than the maximum of {MAX_SECONDS} seconds (100 years)")]
    TooLarge(String),
    /// A timestamp more than [`MAX_SECONDS`] after now.
    #[error("{0} is more than the maximum of {MAX_SECONDS} seconds (100 years) from now")]
    TooFar(String),
}

/// A number of seconds as a [`Duration`]: finite, zero or more, at most
/// [`MAX_SECONDS`].
///
/// # Errors
/// [`TimeError`] naming `secs` when it is NaN, infinite, negative or too large.
pub fn seconds(secs: f64) -> Result<Duration, TimeError> {
    let shown = || format!("{secs:?} s");
    if !secs.is_finite() {
        return Err(TimeError::NotFinite(shown()));
    }
    if secs < 0.0 {
        return Err(TimeError::Negative(shown()));
    }
    if secs > MAX_SECONDS as f64 {
        return Err(TimeError::TooLarge(shown()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A number of milliseconds as a [`Duration`], at most [`MAX_SECONDS`].
///
/// # Errors
/// [`TimeError::TooLarge`] naming `ms`.
pub fn millis(ms: u64) -> Result<Duration, TimeError> {
    let d = Duration::from_millis(ms);
    if d > MAX_DURATION {
        return Err(TimeError::TooLarge(format!("{ms} ms")));
    }
    Ok(d)
}

/// A number of milliseconds as a [`Duration`], clamped to [`MAX_DURATION`]: for a
/// guest's retry countdown, where "too long" means "as late as allowed", not an error.
pub fn clamp_millis(ms: u64) -> Duration {
    clamp(Duration::from_millis(ms))
}

/// `d`, or [`MAX_DURATION`] when it is longer.
pub fn clamp(d: Duration) -> Duration {
    d.min(MAX_DURATION)
}

/// Seconds computed inside Sprout from checked inputs (a retry backoff), as a
/// [`Duration`] that saturates instead of failing: NaN and negative are zero, more than
/// [`MAX_SECONDS`] (or infinite) is [`MAX_DURATION`].
pub fn saturating_seconds(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else if secs >= MAX_SECONDS as f64 {
        MAX_DURATION
    } else {
        Duration::from_secs_f64(secs)
    }
}

/// `now + d`.
///
/// # Errors
/// [`TimeError::TooLarge`] when `d` is longer than [`MAX_SECONDS`].
pub fn eta_after(now: DateTime<Utc>, d: Duration) -> Result<DateTime<Utc>, TimeError> {
    let too_large = || TimeError::TooLarge(format!("{:?} s", d.as_secs_f64()));
    if d > MAX_DURATION {
        return Err(too_large());
    }
    TimeDelta::from_std(d)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .ok_or_else(too_large)
}

/// The instant `secs` seconds from `now`; a negative `secs` is in the past (Celery
/// accepts a negative `countdown` or `expires`: the job is due, or expired, at once).
///
/// # Errors
/// [`TimeError`] naming `secs` when it is NaN, infinite, or more than [`MAX_SECONDS`]
/// either way.
pub fn offset(now: DateTime<Utc>, secs: f64) -> Result<DateTime<Utc>, TimeError> {
    let shown = || format!("{secs:?} s");
    if !secs.is_finite() {
        return Err(TimeError::NotFinite(shown()));
    }
    if secs.abs() > MAX_SECONDS as f64 {
        return Err(TimeError::TooLarge(shown()));
    }
    let delta = TimeDelta::from_std(Duration::from_secs_f64(secs.abs()))
        .map_err(|_| TimeError::TooLarge(shown()))?;
    let at = if secs < 0.0 {
        now.checked_sub_signed(delta)
    } else {
        now.checked_add_signed(delta)
    };
    at.ok_or_else(|| TimeError::TooLarge(shown()))
}

/// How much further than [`MAX_SECONDS`] ahead [`instant`] accepts a timestamp: one
/// hour, so that a job given the longest countdown on one machine still decodes on a
/// machine whose clock is behind.
pub const CLOCK_SLACK: Duration = Duration::from_secs(3600);

/// A timestamp from outside (an `eta` or `expires`): any instant up to [`MAX_SECONDS`]
/// (plus [`CLOCK_SLACK`]) after `now`; instants in the past are fine (due, or expired, at
/// once).
///
/// # Errors
/// [`TimeError::TooFar`] naming the timestamp when it is further in the future.
pub fn instant(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>, TimeError> {
    let too_far = || TimeError::TooFar(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    let limit = TimeDelta::from_std(MAX_DURATION + CLOCK_SLACK)
        .ok()
        .and_then(|d| now.checked_add_signed(d));
    match limit {
        Some(limit) if at <= limit => Ok(at),
        _ => Err(too_far()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accepts_durations_and_names_what_it_rejects() {
        assert_eq!(seconds(1.5), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds(0.0), Ok(Duration::ZERO));
        assert_eq!(seconds(MAX_SECONDS as f64), Ok(MAX_DURATION));
        let e = seconds(f64::INFINITY).unwrap_err();
        assert_eq!(e.to_string(), "inf s is not a finite number of seconds");
        assert!(matches!(seconds(f64::NAN), Err(TimeError::NotFinite(_))));
        let e = seconds(-1.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-1.0 s is negative: expected zero or more seconds"
        );
        let e = seconds(1e300).unwrap_err();
        assert_eq!(
            e.to_string(),
            "1e300 s is more than the maximum of 3155760000 seconds (100 years)"
        );
        assert!(seconds(MAX_SECONDS as f64 + 1.0).is_err());
    }

    #[test]
    fn millis_reject_and_clamp() {
        assert_eq!(millis(1500), Ok(Duration::from_millis(1500)));
        let e = millis(u64::MAX).unwrap_err();
        assert!(e.to_string().starts_with("18446744073709551615 ms"), "{e}");
        assert_eq!(clamp_millis(u64::MAX), MAX_DURATION);
        assert_eq!(clamp_millis(10), Duration::from_millis(10));
        assert_eq!(saturating_seconds(f64::INFINITY), MAX_DURATION);
        assert_eq!(saturating_seconds(f64::NAN), Duration::ZERO);
        assert_eq!(saturating_seconds(-3.0), Duration::ZERO);
        assert_eq!(saturating_seconds(2.0), Duration::from_secs(2));
    }

    #[test]
    fn timestamps_never_overflow() {
        let now = Utc::now();
        assert_eq!(
            eta_after(now, Duration::from_secs(2)).unwrap() - now,
            TimeDelta::seconds(2)
        );
        assert!(eta_after(now, MAX_DURATION).is_ok());
        assert!(eta_after(now, Duration::MAX).is_err());
        assert!(eta_after(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)).is_err());

        assert_eq!(offset(now, -5.0).unwrap() - now, TimeDelta::seconds(-5));
        assert_eq!(
            offset(now, 0.25).unwrap() - now,
            TimeDelta::milliseconds(250)
        );
        let e = offset(now, 1e15).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("1000000000000000.0 s is more than"),
            "{e}"
        );
        assert!(offset(now, -1e15).is_err());
        assert!(offset(now, f64::NAN).is_err());

        assert!(instant(now - TimeDelta::days(365 * 1000), now).is_ok());
        assert!(instant(now + TimeDelta::days(365 * 99), now).is_ok());
        let longest = eta_after(now, MAX_DURATION).unwrap();
        assert!(
            instant(longest, now - TimeDelta::minutes(5)).is_ok(),
            "clock slack"
        );
        let far = now + TimeDelta::days(365 * 101);
        let e = instant(far, now).unwrap_err();
        assert!(e.to_string().ends_with("(100 years) from now"), "{e}");
    }
}
