//! [`TaskError`]: how a task fails or asks to be retried.

use std::fmt;
use std::time::Duration;

/// The `kind` values the SDK itself produces. A task may use any other kind name.
pub mod kind {
    /// The arguments do not fit the task's parameters: too many positional arguments, an
    /// unknown or duplicated keyword argument, a missing required argument, a value of the
    /// wrong type, or `args`/`kwargs` that are not a JSON array/object.
    pub const TYPE_ERROR: &str = "TypeError";
    /// `args` or `kwargs` is not valid JSON.
    pub const DECODE_ERROR: &str = "DecodeError";
    /// The task's return value could not be serialised to JSON.
    pub const ENCODE_ERROR: &str = "EncodeError";
    /// The task file has no task of the requested name.
    pub const NOT_REGISTERED: &str = "NotRegistered";
    /// The task asked to be retried ([`TaskError::retry`](crate::TaskError::retry)).
    pub const RETRY: &str = "Retry";
    /// A value was malformed (the kind of `From<serde_json::Error>`).
    pub const VALUE_ERROR: &str = "ValueError";
    /// An I/O operation failed (the kind of `From<std::io::Error>`).
    pub const OS_ERROR: &str = "OSError";
    /// An untyped error (the kind of `From<String>` and `From<&str>`).
    pub const EXCEPTION: &str = "Exception";
    /// [`http`](crate::http): the worker refused the destination (not in the manifest's
    /// `allowed_hosts`).
    pub const PERMISSION_ERROR: &str = "PermissionError";
    /// [`http`](crate::http): connecting, the first byte or a body read took longer than
    /// the worker's HTTP timeout.
    pub const TIMEOUT_ERROR: &str = "TimeoutError";
    /// [`http`](crate::http): the response body is larger than the worker allows.
    pub const RESPONSE_TOO_LARGE: &str = "ResponseTooLarge";
    /// [`http`](crate::http): the connection was refused or lost, or DNS failed.
    pub const CONNECTION_ERROR: &str = "ConnectionError";
    /// [`http`](crate::http): a protocol error, too many redirects, or a non-2xx status
    /// passed to `Response::error_for_status`.
    pub const HTTP_ERROR: &str = "HTTPError";
}

/// Why a task failed, in the shape of a Python exception: Celery's `exc_type` is
/// [`kind`](Self::kind). Set [`retry`](Self::retry) to ask for another attempt instead of
/// failing.
///
/// ```
/// use sprout_guest::TaskError;
/// use std::time::Duration;
///
/// let e = TaskError::new("ValueError", "n must be positive");
/// assert_eq!(e.to_string(), "ValueError: n must be positive");
///
/// let r = TaskError::retry_after(Duration::from_secs(5), "feed is busy");
/// assert_eq!(r.kind, "Retry");
/// assert_eq!(r.retry.unwrap().countdown, Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// An exception-like type name (`ValueError`, `FeedError`); see [`kind`](crate::kind) for
    /// the ones the SDK produces.
    pub kind: String,
    /// Human-readable reason.
    pub message: String,
    /// Set when the task asks to be retried instead of failing.
    pub retry: Option<Retry>,
}

/// A request to run the job again later (subject to the job's retry limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retry {
    /// Delay before the next attempt; `None` uses the worker's backoff policy.
    /// Sent to the host in whole milliseconds (saturating at `u64::MAX`); the worker
    /// clamps it to 100 years (3 155 760 000 s).
    pub countdown: Option<Duration>,
}

impl TaskError {
    /// A failure of kind `kind` (an exception-like name such as `ValueError`) with a message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retry: None,
        }
    }

    /// Asks the worker to run the job again after its usual backoff (kind `Retry`).
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            retry: Some(Retry { countdown: None }),
            ..Self::new(kind::RETRY, message)
        }
    }

    /// Asks the worker to run the job again after `countdown` (kind `Retry`).
    pub fn retry_after(countdown: Duration, message: impl Into<String>) -> Self {
        Self {
            retry: Some(Retry {
                countdown: Some(countdown),
            }),
            ..Self::new(kind::RETRY, message)
        }
    }

    /// Turns this error into a retry request (keeping its kind and message): `None` uses the
    /// worker's backoff, `Some(d)` waits `d`.
    pub fn with_retry(mut self, countdown: Option<Duration>) -> Self {
        self.retry = Some(Retry { countdown });
        self
    }

    /// Whether this error asks for a retry.
    pub fn is_retry(&self) -> bool {
        self.retry.is_some()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<serde_json::Error> for TaskError {
    /// A JSON error inside task logic: kind `ValueError`.
    fn from(e: serde_json::Error) -> Self {
        Self::new(kind::VALUE_ERROR, e.to_string())
    }
}

impl From<std::io::Error> for TaskError {
    /// An I/O error inside task logic: kind `OSError`.
    fn from(e: std::io::Error) -> Self {
        Self::new(kind::OS_ERROR, e.to_string())
    }
}

impl From<String> for TaskError {
    /// An untyped error message: kind `Exception`.
    fn from(message: String) -> Self {
        Self::new(kind::EXCEPTION, message)
    }
}

impl From<&str> for TaskError {
    /// An untyped error message: kind `Exception`.
    fn from(message: &str) -> Self {
        Self::new(kind::EXCEPTION, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors() {
        let e = TaskError::new("ValueError", "bad");
        assert_eq!(e.kind, "ValueError");
        assert_eq!(e.message, "bad");
        assert!(!e.is_retry());
        assert_eq!(e.to_string(), "ValueError: bad");

        let r = TaskError::retry("later");
        assert_eq!(r.kind, "Retry");
        assert_eq!(r.retry, Some(Retry { countdown: None }));

        let r = TaskError::retry_after(Duration::from_millis(10), "soon");
        assert_eq!(r.retry.unwrap().countdown, Some(Duration::from_millis(10)));

        let w = TaskError::new("FeedError", "503").with_retry(None);
        assert_eq!(w.kind, "FeedError");
        assert!(w.is_retry());
    }

    #[test]
    fn conversions() {
        let json_err = serde_json::from_str::<i64>("x").unwrap_err();
        assert_eq!(TaskError::from(json_err).kind, "ValueError");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(TaskError::from(io).kind, "OSError");
        assert_eq!(TaskError::from("boom").kind, "Exception");
        assert_eq!(TaskError::from(String::from("boom")).message, "boom");
    }
}
