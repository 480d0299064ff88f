//! The job model: one request to run a task, as it travels through brokers and pools.
//!
//! A [`Job`] is broker-neutral. Each broker has its own wire form (the embedded SQLite
//! broker stores [`Job`] as JSON; the Redis broker speaks Celery protocol v2 through
//! `crate::celery`) and converts to and from this type at its edge.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::time;

/// The queue a job goes to when nobody names one (Celery's default queue name).
pub const DEFAULT_QUEUE: &str = "celery";

/// Longest queue name, in bytes: AMQP's limit (a short string), so a name that works on
/// one broker works on all.
pub const MAX_QUEUE_NAME_BYTES: usize = 255;

/// Checks a queue name given from outside (a flag, a manifest, a remote-control
/// request): 1 to [`MAX_QUEUE_NAME_BYTES`] bytes, no control characters.
///
/// # Errors
/// What is wrong with `name`, quoting it.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a queue name cannot be empty".into());
    }
    if name.len() > MAX_QUEUE_NAME_BYTES {
        return Err(format!(
            "queue name {:?}… is {} bytes: at most {MAX_QUEUE_NAME_BYTES}",
            name.chars().take(20).collect::<String>(),
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("queue name {name:?} has a control character"));
    }
    Ok(())
}

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
    /// Where the producer reads results sent as messages (`rpc://`): the queue its
    /// message's `reply_to` property names (a Celery client's app oid). `None` is the
    /// publishing process's own queue, the default every message carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
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
            reply_to: None,
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

    /// Parses the JSON form the embedded broker stores, and checks its time values
    /// ([`Job::check_times`]).
    ///
    /// # Errors
    /// The bytes are not a JSON job, or a time value is out of range; the message says
    /// which field is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Job, serde_json::Error> {
        let job: Job = serde_json::from_slice(bytes)?;
        job.check_times(Utc::now())
            .map_err(<serde_json::Error as serde::de::Error>::custom)?;
        Ok(job)
    }

    /// Checks the time values a job brings from outside, through [`time`]: its time
    /// limits must be valid seconds ([`LimitOverrides::check`]), its `eta` and `expires`
    /// at most [`time::MAX_SECONDS`] after `now`. Decoders call it, so that an
    /// out-of-range value makes the message a dead letter instead of a panic later.
    ///
    /// # Errors
    /// The field and why it is out of range.
    pub fn check_times(&self, now: DateTime<Utc>) -> Result<(), String> {
        self.limits.check()?;
        for (name, at) in [("eta", self.eta), ("expires", self.expires)] {
            if let Some(at) = at {
                time::instant(at, now).map_err(|e| format!("`{name}`: {e}"))?;
            }
        }
        Ok(())
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

    /// Checks the time limits through [`time::seconds`].
    ///
    /// # Errors
    /// Which limit is out of range, and why.
    pub fn check(&self) -> Result<(), String> {
        for (name, secs) in [
            ("time_limit", self.time_limit),
            ("soft_time_limit", self.soft_time_limit),
        ] {
            if let Some(secs) = secs {
                time::seconds(secs).map_err(|e| format!("`{name}`: {e}"))?;
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored job with an out-of-range time value does not decode (the broker
    /// dead-letters it) instead of panicking when the worker runs it.
    #[test]
    fn stored_jobs_with_out_of_range_times_do_not_decode() {
        let mut job = Job::new("add", vec![], Map::new());
        job.limits.time_limit = Some(1e300);
        let err = Job::from_json(&job.to_json()).unwrap_err().to_string();
        assert!(err.contains("`time_limit`: 1e300 s is more than"), "{err}");

        let mut job = Job::new("add", vec![], Map::new());
        job.limits.soft_time_limit = Some(-1.0);
        let err = Job::from_json(&job.to_json()).unwrap_err().to_string();
        assert!(
            err.contains("`soft_time_limit`: -1.0 s is negative"),
            "{err}"
        );

        let mut job = Job::new("add", vec![], Map::new());
        job.eta = Some(Utc::now() + chrono::TimeDelta::days(365 * 200));
        let err = Job::from_json(&job.to_json()).unwrap_err().to_string();
        assert!(err.contains("`eta`: "), "{err}");

        let mut job = Job::new("add", vec![], Map::new());
        job.limits.time_limit = Some(2.5);
        job.expires = Some(Utc::now() - chrono::TimeDelta::days(1));
        assert_eq!(Job::from_json(&job.to_json()).unwrap(), job);
    }
}
