//! The job model: one request to run a task, as it travels through brokers and pools.
//!
//! A [`Job`] is broker-neutral. Each broker has its own wire form (the embedded SQLite
//! broker stores [`Job`] as JSON; the Redis broker speaks Celery protocol v2 through
//! `crate::celery`) and converts to and from this type at its edge.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The queue a job goes to when nobody names one (Celery's default queue name).
pub const DEFAULT_QUEUE: &str = "celery";

/// One request to run a task with arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique job id (Celery's task id); a UUID unless the producer chose one.
    pub id: String,
    /// The task name to run (`add`, `proj.tasks.add`).
    pub task: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// The queue the job was sent to.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Priority 0–9; higher runs sooner (AMQP semantics). Brokers without priorities ignore it.
    #[serde(default)]
    pub priority: u8,
    /// How many times this job has already been retried.
    #[serde(default)]
    pub retries: u32,
    /// Per-job cap on retries; `None` = the task's manifest policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Do not run before this instant (Celery's `eta`, or `countdown` resolved at send time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<DateTime<Utc>>,
    /// Do not run at or after this instant: the job is REVOKED instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// Limits this job asks for; they can only lower the task's limits, never raise them.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
    /// Celery workflow context (chains, callbacks, groups) carried through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub celery: Option<CeleryContext>,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

impl Job {
    /// A new job with a fresh UUID on the default queue.
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Job {
            id: uuid::Uuid::new_v4().to_string(),
            task: task.into(),
            args,
            kwargs,
            queue: default_queue(),
            priority: 0,
            retries: 0,
            max_retries: None,
            eta: None,
            expires: None,
            limits: LimitOverrides::default(),
            celery: None,
        }
    }

    /// Whether the job has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// The JSON form the embedded broker stores.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Job always serialises")
    }

    /// Parses the JSON form the embedded broker stores.
    ///
    /// # Errors
    /// The bytes are not a JSON job; the message says which field is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Job, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A message whose body is not a valid job: the worker dead-letters it with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable message: {reason}")]
pub struct DecodeError {
    /// What was wrong with it.
    pub reason: String,
    /// The job id, when it could be recovered from the envelope.
    pub id: Option<String>,
}

/// Limits a job asks for. Each one can only lower the task's own limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// CPU budget in fuel units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear-memory cap in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Hard wall-clock limit in seconds (Celery's `time_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<f64>,
    /// Soft wall-clock limit in seconds (Celery's `soft_time_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_time_limit: Option<f64>,
    /// Cap on the size of the JSON result in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
}

impl LimitOverrides {
    /// True when the job overrides nothing.
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }
}

/// Celery protocol-v2 context a job carries so that the worker can continue a workflow
/// (chains, link callbacks, groups, chords) after it runs. Brokers that do not speak
/// Celery leave it empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CeleryContext {
    /// `root_id` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// `parent_id` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// `group` header: the group this job belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The rest of the body's embed (`callbacks`, `errbacks`, `chain`, `chord`) verbatim.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub embed: Value,
    /// Message properties and headers that the worker must echo or honour (reply_to,
    /// correlation_id, ignore_result, ...), verbatim.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub extra: Value,
}
