//! The jobs this worker process holds, for remote control: what `inspect active`,
//! `reserved`, `scheduled` and `query_task` list, and the per-job signal `revoke` and
//! `terminate` use to stop exactly one job.
//!
//! Each delivery that decodes to a job is [`Jobs::track`]ed for as long as it is
//! handled; the [`Tracked`] guard takes it out again when dropped, whatever way the
//! delivery ends. A job is *reserved* until it is handed to its pool, *scheduled* while
//! it waits for its eta, *active* while its pool runs it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::model::Job;

/// Where a tracked job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Fetched, not running yet.
    Reserved,
    /// Waiting for its eta.
    Scheduled,
    /// Running in its pool.
    Active,
}

/// What stops a job early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Revoked: a job that has not started does not run (a running one carries on, as
    /// in Celery).
    Revoke(String),
    /// Revoked with terminate: a running job is stopped too (at its next fuel slice).
    Terminate(String),
}

impl Stop {
    /// Why (stored as the `TaskRevokedError` message).
    pub fn reason(&self) -> &str {
        match self {
            Stop::Revoke(r) | Stop::Terminate(r) => r,
        }
    }
}

struct Entry {
    job_id: String,
    task: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    queue: String,
    priority: u8,
    redelivered: bool,
    eta: Option<DateTime<Utc>>,
    stage: Stage,
    started: Option<f64>,
    stop: watch::Sender<Option<Stop>>,
}

/// The jobs a worker process holds now.
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

/// One tracked job; dropping it stops tracking.
pub struct Tracked<'a> {
    jobs: &'a Jobs,
    key: u64,
    stop: watch::Receiver<Option<Stop>>,
}

fn unix_now() -> f64 {
    Utc::now().timestamp_micros() as f64 / 1e6
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking `job` (fetched from `queue`) as reserved.
    pub fn track(&self, job: &Job, queue: &str, redelivered: bool) -> Tracked<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (stop, rx) = watch::channel(None);
        self.lock().insert(
            key,
            Entry {
                job_id: job.id.clone(),
                task: job.task.clone(),
                args: job.args.clone(),
                kwargs: job.kwargs.clone(),
                queue: queue.to_string(),
                priority: job.priority,
                redelivered,
                eta: job.eta,
                stage: Stage::Reserved,
                started: None,
                stop,
            },
        );
        Tracked {
            jobs: self,
            key,
            stop: rx,
        }
    }

    /// Signals every tracked job with id in `ids`; returns the ids of those that were
    /// running (for a terminate: the ones it stops).
    pub fn stop(&self, ids: &[String], stop: &Stop) -> Vec<String> {
        let mut running = Vec::new();
        for entry in self.lock().values() {
            if ids.contains(&entry.job_id) {
                if entry.stage == Stage::Active {
                    running.push(entry.job_id.clone());
                }
                let _ = entry.stop.send(Some(stop.clone()));
            }
        }
        running
    }

    /// How many jobs are in `stage`.
    pub fn count(&self, stage: Stage) -> usize {
        self.lock().values().filter(|e| e.stage == stage).count()
    }

    /// Celery's request dicts of the jobs in `stage`, oldest first.
    pub fn list(&self, stage: Stage, hostname: &str) -> Vec<Value> {
        let entries = self.lock();
        let mut found: Vec<(&u64, &Entry)> =
            entries.iter().filter(|(_, e)| e.stage == stage).collect();
        found.sort_by_key(|(k, _)| **k);
        found
            .into_iter()
            .map(|(_, e)| match stage {
                Stage::Scheduled => json!({
                    "eta": e.eta.map(|t| t.to_rfc3339()),
                    "priority": e.priority,
                    "request": request_info(e, hostname),
                }),
                _ => request_info(e, hostname),
            })
            .collect()
    }

    /// Celery's `query_task` reply: `{id: [state, request]}` for the ids tracked here.
    pub fn query(&self, ids: &[String], hostname: &str) -> Map<String, Value> {
        let mut out = Map::new();
        for e in self.lock().values() {
            if ids.contains(&e.job_id) {
                let state = match e.stage {
                    Stage::Active => "active",
                    Stage::Reserved => "reserved",
                    Stage::Scheduled => "scheduled",
                };
                out.insert(e.job_id.clone(), json!([state, request_info(e, hostname)]));
            }
        }
        out
    }
}

/// One job as Celery's `Request.info()` describes it.
fn request_info(e: &Entry, hostname: &str) -> Value {
    json!({
        "id": e.job_id,
        "name": e.task,
        "args": e.args,
        "kwargs": e.kwargs,
        "type": e.task,
        "hostname": hostname,
        "time_start": e.started,
        "acknowledged": false,
        "delivery_info": {
            "exchange": "",
            "routing_key": e.queue,
            "priority": e.priority,
            "redelivered": e.redelivered,
        },
        "worker_pid": (e.stage == Stage::Active).then(std::process::id),
    })
}

impl Tracked<'_> {
    /// Moves the job to `stage` (to active: records its start time).
    pub fn set(&self, stage: Stage) {
        if let Some(e) = self.jobs.lock().get_mut(&self.key) {
            e.stage = stage;
            if stage == Stage::Active {
                e.started = Some(unix_now());
            }
        }
    }

    /// The stop signalled so far, if any.
    pub fn stopped(&self) -> Option<Stop> {
        self.stop.borrow().clone()
    }

    /// Resolves when the job is asked to stop in a way that applies to a job in
    /// `stage` (a running job only by a terminate). Never resolves otherwise.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches a channel.
    pub async fn until_stopped(&mut self, running: bool) -> Stop {
        loop {
            if let Some(stop) = self.stop.borrow_and_update().clone()
                && (!running || matches!(stop, Stop::Terminate(_)))
            {
                return stop;
            }
            if self.stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.jobs.lock().remove(&self.key);
    }
}
