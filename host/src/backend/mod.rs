//! Result backends: where job states and results go.
//!
//! [`ResultBackend`] is implemented by the embedded SQLite file ([`sqlite`]) and by the
//! Celery-compatible Redis backend. Workers write results *before* they ack the job
//! (acks-late), so a stored terminal result is the proof a job ran.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod expiry;
pub mod redis;
pub mod sqlite;

/// The state of a job, with Celery's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Unknown to the backend (not run yet, or never sent).
    Pending,
    /// A worker has started running it.
    Started,
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
}

/// Deserializes a field that is present as `Some`, even when it is `null` (a plain
/// `Option<Value>` would turn a stored `null` result into "no result"). A missing field
/// is `None` through `#[serde(default)]`.
fn present_value<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The Celery workflow fields of a stored result (PROTOCOL.md §6): what a Python client
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

/// How a chord header job belongs to its chord (PROTOCOL.md §8.5).
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
            retries: 0,
            fuel_used: None,
            duration_ms: None,
            worker: None,
            started_at: None,
            updated_at: Utc::now(),
            celery: None,
        }
    }
}

/// Errors from a result backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or the connection dropped; retrying may help.
    #[error("result backend connection failed: {0}")]
    Connection(String),
    /// A stored record could not be read back.
    #[error("corrupt result record for {id}: {reason}")]
    Corrupt {
        /// The job id.
        id: String,
        /// What was wrong.
        reason: String,
    },
    /// Any other backend failure.
    #[error("result backend error: {0}")]
    Other(String),
}

impl BackendError {
    /// True when reconnecting and retrying the operation may succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, BackendError::Connection(_))
    }
}

/// Where states and results are stored and read back.
#[async_trait]
pub trait ResultBackend: Send + Sync {
    /// Stores a batch of records, each replacing any earlier record for its id.
    ///
    /// A terminal state is never overwritten by a non-terminal one (a late STARTED must
    /// not hide a SUCCESS).
    ///
    /// # Errors
    /// [`BackendError`] if nothing could be written; then none of the batch was stored.
    async fn store(&self, records: &[ResultRecord]) -> Result<(), BackendError>;

    /// The latest record for `id`, or `None` if the backend knows nothing of it (PENDING).
    ///
    /// # Errors
    /// [`BackendError`] on connection failure or a corrupt record.
    async fn get(&self, id: &str) -> Result<Option<ResultRecord>, BackendError>;

    /// The most recently updated records, newest first (for `sprout status`). Backends
    /// that cannot list cheaply return an empty list.
    ///
    /// # Errors
    /// [`BackendError`].
    async fn recent(&self, limit: usize) -> Result<Vec<ResultRecord>, BackendError> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// How many records are in each state (for `sprout status`); empty when the backend
    /// cannot count cheaply.
    ///
    /// # Errors
    /// [`BackendError`].
    async fn counts(&self) -> Result<Vec<(State, u64)>, BackendError> {
        Ok(Vec::new())
    }

    /// Waits until `id` reaches a terminal state, or `timeout` passes (then returns the
    /// latest record, which may be `None`).
    ///
    /// The default polls [`ResultBackend::get`] every few milliseconds; backends with
    /// push notifications override it.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// # Errors
    /// [`BackendError`] on connection failure.
    async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultRecord>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            let record = self.get(id).await?;
            if record.as_ref().is_some_and(|r| r.state.is_terminal())
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(record);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Deletes the records last updated more than `older_than` ago and returns how many
    /// it deleted: Celery's `result_expires` for backends that keep records until they
    /// are deleted (the embedded SQLite file). The worker calls it periodically (see
    /// [`expiry`]).
    ///
    /// The default deletes nothing and returns 0: the Redis backend writes every record
    /// with a TTL (`SETEX`), so the server expires them itself.
    ///
    /// # Errors
    /// [`BackendError`] if the backend cannot be written; nothing is then lost, the next
    /// sweep tries again.
    async fn expire_results(&self, older_than: Duration) -> Result<u64, BackendError> {
        let _ = older_than;
        Ok(0)
    }

    /// Records that a chord header job reached a terminal state (`record`) and, when it
    /// was the last part, publishes the chord body through `broker` (or stores the
    /// body's `ChordError` FAILURE when a part failed). Call it after storing `record`
    /// and before acking; it does nothing for jobs without `embed.chord`.
    ///
    /// The default does nothing: only backends that keep Celery's chord bookkeeping
    /// (PROTOCOL.md §8.5, the Redis backend) can complete chords.
    ///
    /// # Errors
    /// [`BackendError`]; the header job should then not be acked, so that its
    /// redelivery counts the part again (counting is idempotent per task id).
    async fn on_chord_part_return(
        &self,
        job: &crate::job::Job,
        record: &ResultRecord,
        broker: &dyn crate::broker::Broker,
    ) -> Result<(), BackendError> {
        let _ = (job, record, broker);
        Ok(())
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
