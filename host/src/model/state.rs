//! Job states and result records: what a result backend stores and a client reads back.
//!
//! Plain data shared by the brokers, the result backends and the Celery codec; nothing
//! here knows Redis or SQLite.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long results are kept by default (Celery's `result_expires`): one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// The state of a job, with Celery's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Unknown to the backend (not run yet, or never sent).
    Pending,
    /// A worker has started running it.
    Started,
    /// Running, and the task reported how far it got ([`ResultRecord::progress`]):
    /// Celery's custom `PROGRESS` state, `{"current": …, "total": …}` as its meta.
    Progress,
    /// Finished with a value.
    Success,
    /// Finished with an error; no more retries.
    Failure,
    /// Failed this attempt; another attempt is scheduled.
    Retry,
    /// Never ran: expired or revoked.
    Revoked,
}

impl State {
    /// Celery's spelling (`SUCCESS`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Started => "STARTED",
            State::Progress => "PROGRESS",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Retry => "RETRY",
            State::Revoked => "REVOKED",
        }
    }

    /// Parses Celery's spelling.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "PENDING" => State::Pending,
            "STARTED" => State::Started,
            "PROGRESS" => State::Progress,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "RETRY" => State::Retry,
            "REVOKED" => State::Revoked,
            _ => return None,
        })
    }

    /// SUCCESS, FAILURE and REVOKED are final: nothing changes after them.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed, shaped like a Python exception so Celery clients can re-raise it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Exception-like type name (`ValueError`, `TimeLimitExceeded`, `OutOfFuel`).
    pub kind: String,
    /// Human-readable reason.
    pub message: String,
    /// Extra detail: a wasm backtrace, captured stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// A running job's progress as its task reported it: `current` of `total` done
/// (Celery's `{"current": …, "total": …}` meta convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub current: u64,
    /// Units in all.
    pub total: u64,
}

/// Everything the backend keeps about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// The job id.
    pub id: String,
    /// The task name.
    pub task: String,
    /// Current state.
    pub state: State,
    /// The task's JSON result (SUCCESS only). A task that returned `null` has
    /// `Some(Value::Null)`: it reads back as a present `null`, not as no result.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_value"
    )]
    pub result: Option<Value>,
    /// The failure (FAILURE, RETRY, REVOKED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// How far a running job got, as the task last reported it (PROGRESS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The job's captured log: its log lines, stdout and stderr, bounded by the task's
    /// log limit. Kept with every result, success included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Retries so far.
    #[serde(default)]
    pub retries: u32,
    /// Fuel the last attempt consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_used: Option<u64>,
    /// Wall time of the last attempt in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The worker (hostname) that produced this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When the last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When this state was reached.
    pub updated_at: DateTime<Utc>,
    /// Celery workflow links (parent, group, children, ignore_result) that Celery-compatible
    /// backends write next to the result; `None` for jobs that did not come from Celery.
    /// Fill it with `crate::celery::settle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub celery: Option<CeleryResultMeta>,
    /// The job's [`Job::reply_to`](crate::model::Job::reply_to): where a backend that
    /// sends results as messages (`rpc://`) sends this one. Not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// Deserializes a field that is present as `Some`, even when it is `null` (a plain
/// `Option<Value>` would turn a stored `null` result into "no result"). A missing field
/// is `None` through `#[serde(default)]`.
fn present_value<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The Celery workflow fields of a stored result (docs/PROTOCOL.md §6): what a Python client
/// reads as `AsyncResult.parent`, `.children` and `GroupResult` membership.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CeleryResultMeta {
    /// The task that caused this one (chain step, callback, retry); stored as `parent_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// The group or chord this job belongs to; stored as `group_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Ids of the tasks this job published (next chain step, callbacks, its own retry);
    /// stored as `children: [[[id, null], null], …]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// The message said `ignore_result: true`: Celery-compatible backends store nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_result: bool,
    /// For a chord header job: the chord it counts towards. A backend that keeps Celery's
    /// chord state (Redis) counts the part when it stores a final record carrying this,
    /// and publishes the chord body once the last part is in. Not written to the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chord: Option<ChordMembership>,
}

/// How a chord header job belongs to its chord (docs/PROTOCOL.md §8.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChordMembership {
    /// The job's position in the chord header (`group_index`); orders the body's list.
    pub group_index: i64,
    /// The chord body's signature (the job's `embed.chord`), verbatim.
    pub body: Value,
    /// The job's root id: the body is sent as its follow-up.
    pub root_id: String,
}

impl ResultRecord {
    /// A record in `state` for job `id`, stamped now, with everything else empty.
    pub fn new(id: impl Into<String>, task: impl Into<String>, state: State) -> Self {
        ResultRecord {
            id: id.into(),
            task: task.into(),
            state,
            result: None,
            error: None,
            progress: None,
            log: None,
            retries: 0,
            fuel_used: None,
            duration_ms: None,
            worker: None,
            started_at: None,
            updated_at: Utc::now(),
            celery: None,
            reply_to: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_null_result_reads_back_as_null_and_a_missing_one_as_none() {
        let mut record = ResultRecord::new("id-1", "noop", State::Success);
        record.result = Some(Value::Null);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"result\":null"), "{json}");
        let back: ResultRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.result, Some(Value::Null));

        record.result = None;
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("\"result\""), "{json}");
        let back: ResultRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.result, None);
    }
}
