//! Timestamps as Python's `datetime.isoformat()` writes them.
//!
//! Celery writes `eta`, `expires` and `date_done` with `isoformat()`:
//! `2026-11-25T21:18:33.690224+00:00`, microseconds dropped when zero
//! (`2030-01-02T03:04:05+00:00`), and no offset at all for a naive datetime
//! (`2030-01-02T03:04:05`), which Celery reads in the app's timezone (UTC by default).

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// Formats an instant like Python's `datetime.isoformat()` on a UTC-aware datetime.
pub fn format(at: DateTime<Utc>) -> String {
    // Python keeps microseconds, never nanoseconds.
    let micros = at.timestamp_subsec_micros();
    let at = at.with_nanosecond(micros * 1000).unwrap_or(at);
    let fmt = if micros == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    // chrono writes `+00:00` (not `Z`) when `use_z` is false, exactly like Python.
    at.to_rfc3339_opts(fmt, false)
}

/// Parses an ISO-8601 timestamp as Celery peers write it: with an offset (any offset,
/// or `Z`), or naive (taken as UTC, Celery's default timezone). A space instead of the
/// `T` is accepted too.
///
/// # Errors
/// A message naming the text that is not a timestamp.
pub fn parse(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(at) = DateTime::<FixedOffset>::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
    ] {
        if let Ok(at) = DateTime::<FixedOffset>::parse_from_str(t, fmt) {
            return Ok(at.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(naive.and_utc());
        }
    }
    Err(format!("{text:?} is not an ISO-8601 timestamp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_like_python() {
        let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(format(at), "2030-01-02T03:04:05+00:00");
        let at = at + chrono::Duration::nanoseconds(690_224_999);
        assert_eq!(format(at), "2030-01-02T03:04:05.690224+00:00");
    }

    #[test]
    fn parses_aware_naive_and_offsets() {
        let want = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(parse("2030-01-02T03:04:05+00:00").unwrap(), want);
        assert_eq!(parse("2030-01-02T03:04:05").unwrap(), want);
        assert_eq!(parse("2030-01-02 03:04:05").unwrap(), want);
        assert_eq!(parse("2030-01-02T03:04:05Z").unwrap(), want);
        assert_eq!(parse("2030-01-02T05:04:05+02:00").unwrap(), want);
        let frac = parse("2026-11-25T21:18:33.690224+00:00").unwrap();
        assert_eq!(frac.timestamp_subsec_micros(), 690_224);
        assert!(parse("tomorrow").is_err());
    }
}
