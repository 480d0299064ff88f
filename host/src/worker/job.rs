//! One delivery's path through the worker, up to how it ends: decode → admit (expired?
//! eta? unknown task? rate limit?) → run in the pool → classify (success, failure,
//! retry). It decides the [`Ending`]; the settler writes it.
//!
//! A panic anywhere on this path (in the task's host code, the pool, the workflow
//! logic) is caught here and ends the job FAILURE with kind `WorkerLostError` and the
//! panic message, like a lost prefork child: the delivery is still settled, its lease
//! no longer extended, and the worker keeps serving.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;

use super::active::{Stage, Tracked};
use super::observe::{self, JobEnd};
use super::settle::{Ending, Settle};
use super::{Count, Shared};
use crate::broker::Delivery;
use crate::celery;
use crate::model::time;
use crate::model::{ErrorInfo, Execution, Job, Outcome, ResultRecord, State};
use crate::registry::TaskEntry;
use crate::sandbox::RunRequest;

/// Runs one delivery to its ending and hands that to the settler.
pub(super) async fn handle(shared: &Shared, delivery: Delivery, permit: OwnedSemaphorePermit) {
    let tag = delivery.tag;
    let ending = match delivery.job {
        Ok(job) => {
            let mut tracked =
                shared
                    .control
                    .jobs
                    .track(&job, &delivery.queue, delivery.delivery_count > 1);
            shared.observer.received(&job);
            let path = AssertUnwindSafe(run_job(shared, &job, permit, &mut tracked)).catch_unwind();
            let ending = match path.await {
                Ok(ending) => ending,
                Err(panic) => panicked(shared, &job, &crate::panics::message(panic.as_ref())),
            };
            shared.control.count(&job.task);
            if let Some(end) = observe::end_of(&job, &ending) {
                shared.observer.ended(&end);
            }
            ending
        }
        Err(error) => {
            tracing::error!(queue = %delivery.queue, "dead-lettering undecodable message: {}", error.reason);
            shared.counters.add(Count::DeadLettered);
            shared.observer.ended(&JobEnd::DeadLettered {
                job: None,
                id: error.id.as_deref(),
                reason: &error.reason,
            });
            let records = match error.id {
                Some(id) => {
                    let mut record = ResultRecord::new(id, "", State::Failure);
                    record.error = Some(ErrorInfo {
                        kind: "DecodeError".into(),
                        message: error.reason.clone(),
                        traceback: None,
                    });
                    record.worker = Some(shared.config.hostname.clone());
                    vec![record]
                }
                None => Vec::new(),
            };
            Ending::DeadLetter {
                records,
                reason: error.reason,
            }
        }
    };
    shared.settle(Settle { tag, ending });
}

/// The ending of a job whose handling panicked: FAILURE `WorkerLostError`.
fn panicked(shared: &Shared, job: &Job, message: &str) -> Ending {
    tracing::error!(id = %job.id, task = %job.task, "panic while handling the job: {message}");
    let execution = Execution::not_started(Outcome::WorkerLost {
        reason: format!("panic while handling the job: {message}"),
    });
    let mut record = base_record(shared, job, State::Failure);
    apply_execution(&mut record, &execution);
    shared.counters.add(Count::Failed);
    complete(job, record)
}

/// A finished job's ending: its record and Celery follow-ups. The workflow logic runs
/// on data from the message; if it panics, the job still ends with its own record.
fn complete(job: &Job, record: ResultRecord) -> Ending {
    let fallback = record.clone();
    match std::panic::catch_unwind(AssertUnwindSafe(|| celery::settle(job, record))) {
        Ok(settlement) => Ending::Complete {
            records: settlement.store,
            publish: settlement.publish,
        },
        Err(panic) => {
            tracing::error!(id = %job.id, "workflow follow-ups panicked: {}", crate::panics::message(panic.as_ref()));
            Ending::Complete {
                records: vec![fallback],
                publish: Vec::new(),
            }
        }
    }
}

/// The ending of a revoked job (by remote control; `started_at` when it was running):
/// REVOKED, `TaskRevokedError` with the reason, as Celery's `mark_as_revoked`.
fn revoked(
    shared: &Shared,
    job: &Job,
    reason: &str,
    started_at: Option<chrono::DateTime<Utc>>,
) -> Ending {
    tracing::info!(id = %job.id, task = %job.task, "revoked: {reason}");
    let mut record = base_record(shared, job, State::Revoked);
    record.started_at = started_at;
    record.error = Some(ErrorInfo {
        kind: "TaskRevokedError".into(),
        message: reason.to_string(),
        traceback: None,
    });
    shared.counters.add(Count::Failed);
    complete(job, record)
}

/// Why a job that has not started yet must not run, if it was revoked.
fn revoked_before_start(shared: &Shared, job: &Job, tracked: &Tracked<'_>) -> Option<String> {
    if let Some(stop) = tracked.stopped() {
        return Some(stop.reason().to_string());
    }
    shared
        .control
        .is_revoked(&job.id)
        .then(|| "revoked".to_string())
}

/// Admits, runs and classifies one decoded job.
async fn run_job(
    shared: &Shared,
    job: &Job,
    permit: OwnedSemaphorePermit,
    tracked: &mut Tracked<'_>,
) -> Ending {
    let now = Utc::now();
    if job.is_expired(now) {
        tracing::info!(id = %job.id, task = %job.task, "revoked: expired before it ran");
        let mut record = base_record(shared, job, State::Revoked);
        record.error = Some(ErrorInfo {
            kind: "TaskRevokedError".into(),
            message: format!("expired at {}", job.expires.unwrap_or(now).to_rfc3339()),
            traceback: None,
        });
        shared.counters.add(Count::Failed);
        return complete(job, record);
    }
    if let Some(reason) = revoked_before_start(shared, job, tracked) {
        return revoked(shared, job, &reason, None);
    }
    // An eta in the future (brokers that deliver early, like Celery's Redis transport):
    // wait without holding a reservation or a pool slot; a revoke ends the wait.
    let permit = match job.eta {
        Some(eta) if eta > now => {
            drop(permit);
            let wait = (eta - now).to_std().unwrap_or_default();
            tracked.set(Stage::Scheduled);
            shared.observer.eta_wait(job, true);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                stop = tracked.until_stopped(false) => {
                    shared.observer.eta_wait(job, false);
                    return revoked(shared, job, stop.reason(), None);
                }
            }
            shared.observer.eta_wait(job, false);
            tracked.set(Stage::Reserved);
            None
        }
        _ => Some(permit),
    };
    let Some(entry) = shared.registry.lookup(&job.task) else {
        if let Some(ending) = requeue_unknown(shared, job) {
            return ending;
        }
        tracing::warn!(id = %job.id, task = %job.task, "unknown task");
        let execution = Execution::not_started(Outcome::UnknownTask {
            task: job.task.clone(),
        });
        let mut record = base_record(shared, job, State::Failure);
        apply_execution(&mut record, &execution);
        shared.counters.add(Count::Failed);
        return complete(job, record);
    };
    let entry = shared.control.adjust(entry);
    // The manifest's rate limit: wait here, before the job starts or takes a pool slot.
    shared.registry.throttle(&entry).await;
    if let Some(reason) = revoked_before_start(shared, job, tracked) {
        return revoked(shared, job, &reason, None);
    }
    if shared.config.track_started {
        let mut started = base_record(shared, job, State::Started);
        started.started_at = Some(Utc::now());
        if let Err(e) = shared.backend.store(&[started]).await {
            tracing::warn!(id = %job.id, "could not store STARTED: {e}");
        }
    }
    let request = RunRequest {
        task: entry.export.clone(),
        args: job.args.clone(),
        kwargs: job.kwargs.clone(),
        limits: entry.limits.lowered_by(&job.limits),
        job_id: job.id.clone(),
        retries: job.retries,
        queue: job.queue.clone(),
        capabilities: entry.capabilities.clone(),
        progress: None,
    };
    let started_at = Utc::now();
    let started = Instant::now();
    tracked.set(Stage::Active);
    shared.observer.started(job);
    // A terminate drops the run's future: the guest stops at its next fuel slice (in
    // a prefork child too, which is told to cancel that job alone).
    let execution = tokio::select! {
        execution = with_progress(shared, job, entry.clone(), started_at, request) => execution,
        stop = tracked.until_stopped(true) => {
            drop(permit);
            shared.observer.stopped(job);
            return revoked(shared, job, stop.reason(), Some(started_at));
        }
    };
    shared.observer.executed(job, &execution);
    drop(permit);
    tracing::debug!(id = %job.id, task = %job.task, elapsed = ?started.elapsed(), outcome = ?execution.outcome.error_kind(), "job finished");

    if let Some(delay) = retry_delay(job, &entry, &execution.outcome) {
        // The delay is at most time::MAX_SECONDS (a guest's countdown is clamped, a
        // manifest's backoff checked); clamped again so the eta can never overflow.
        let now = Utc::now();
        let eta = time::eta_after(now, time::clamp(delay)).unwrap_or(now);
        let next = celery::retry_job(job, Some(eta));
        let mut record = base_record(shared, job, State::Retry);
        apply_execution(&mut record, &execution);
        record.started_at = Some(started_at);
        tracing::info!(id = %job.id, task = %job.task, retries = next.retries, "retry in {delay:?}: {}", execution.outcome.error_message().unwrap_or_default());
        shared.counters.add(Count::Retried);
        let records = match complete(job, record) {
            Ending::Complete { records, .. } => records,
            _ => Vec::new(),
        };
        return Ending::Retry {
            records,
            next: Box::new(next),
        };
    }
    let state = if execution.outcome.is_success() {
        shared.counters.add(Count::Succeeded);
        State::Success
    } else {
        shared.counters.add(Count::Failed);
        tracing::info!(id = %job.id, task = %job.task, "failed: {}: {}", execution.outcome.error_kind().unwrap_or(""), execution.outcome.error_message().unwrap_or_default());
        State::Failure
    };
    let mut record = base_record(shared, job, state);
    apply_execution(&mut record, &execution);
    record.started_at = Some(started_at);
    if shared.log_jobs {
        tracing::info!(id = %job.id, task = %job.task, state = %state, duration_ms = format_args!("{:.1}", execution.duration.as_secs_f64() * 1e3), fuel = execution.fuel_used, "job finished");
    }
    complete(job, record)
}

/// Least time between two PROGRESS writes of one job: a guest may report progress in a
/// tight loop; the backend sees at most a few writes a second, the latest numbers.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Runs the job in the pool while a reporter stores the guest's `progress(done,
/// total)` as a PROGRESS state (throttled to [`PROGRESS_INTERVAL`]). The reporter is
/// stopped, and its last write finished, before this returns, so it never writes after
/// the job's final state.
async fn with_progress(
    shared: &Shared,
    job: &Job,
    entry: std::sync::Arc<TaskEntry>,
    started_at: chrono::DateTime<Utc>,
    mut request: RunRequest,
) -> Execution {
    let (sink, mut progress) = tokio::sync::watch::channel(None);
    request.progress = Some(std::sync::Arc::new(sink));
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
    let mut record = base_record(shared, job, State::Progress);
    record.started_at = Some(started_at);
    let backend = &shared.backend;
    // In the job's own task (no spawn per job): the reporter ends when the run does,
    // after finishing a write it had started.
    let reporter = async move {
        loop {
            tokio::select! {
                biased;
                _ = &mut done => return,
                changed = progress.changed() => if changed.is_err() { return },
            }
            let Some((current, total)) = *progress.borrow_and_update() else {
                continue;
            };
            record.progress = Some(crate::model::Progress { current, total });
            record.updated_at = Utc::now();
            if let Err(e) = backend.store(std::slice::from_ref(&record)).await {
                tracing::debug!(id = %record.id, "could not store PROGRESS: {e}");
            }
            tokio::select! {
                _ = &mut done => return,
                () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
            }
        }
    };
    let run = async move {
        let execution = shared.pool.execute(entry, request).await;
        let _ = done_tx.send(());
        execution
    };
    // Biased: the run is polled first, so the poll in which it ends also ends the
    // reporter (`done` is already sent). `join!`'s default rotation polled the reporter
    // first half of the time; the send then woke this task once more, and the finished
    // job waited a whole turn of the runtime's queue (3 ms on average in a 10,000-feed
    // run) before it freed its slot and went to be settled.
    let (execution, ()) = tokio::join!(biased; run, reporter);
    execution
}

/// The header (kept in `celery.extra`, so it survives a republish on every broker)
/// that remembers when a worker first met a job whose task no loaded file provides.
pub(crate) const UNKNOWN_SINCE_HEADER: &str = "sprout_unknown_task_since";

/// A job for a task no loaded file provides, within the worker's
/// `unknown_task_grace` since a worker first met it: requeued after a backoff (1 s
/// doubling to 10 s, never past the end of the grace), for this worker once the file
/// arrives, or for another worker that has it. Not a task retry: `retries` is unchanged
/// and nothing is stored (a client sees PENDING, as for a job still in the queue).
/// `None`: the grace is over (or zero), and the job fails `NotRegistered`.
fn requeue_unknown(shared: &Shared, job: &Job) -> Option<Ending> {
    let grace = shared.config.unknown_task_grace;
    if grace.is_zero() {
        return None;
    }
    let now = Utc::now();
    let since = job
        .celery
        .as_ref()
        .and_then(|c| c.extra.get(UNKNOWN_SINCE_HEADER))
        .and_then(|v| v.as_str())
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t <= now)
        .unwrap_or(now);
    let waited = (now - since).to_std().unwrap_or_default();
    if waited >= grace {
        return None;
    }
    let delay = waited
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
        .min(grace - waited);
    let mut next = job.clone();
    next.eta = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
    let ctx = next.celery.get_or_insert_with(Default::default);
    if !ctx.extra.is_object() {
        ctx.extra = serde_json::Value::Object(Default::default());
    }
    if let Some(extra) = ctx.extra.as_object_mut() {
        extra.insert(
            UNKNOWN_SINCE_HEADER.into(),
            serde_json::Value::String(since.to_rfc3339()),
        );
        extra.remove("redelivered");
    }
    tracing::info!(id = %job.id, task = %job.task, "unknown task: requeued for {delay:?} (waiting {waited:?} of the {grace:?} grace for its file)");
    Some(Ending::Retry {
        records: Vec::new(),
        next: Box::new(next),
    })
}

/// Whether (and after how long) a failed attempt is retried: a guest's own retry
/// request, or a failure kind the manifest lists in `autoretry_for`, or a lost worker —
/// always within `max_retries` (the job's, else the manifest's).
fn retry_delay(job: &Job, entry: &TaskEntry, outcome: &Outcome) -> Option<Duration> {
    let policy = &entry.manifest.retry;
    let max = job.max_retries.unwrap_or(policy.max_retries);
    if job.retries >= max {
        return None;
    }
    let backoff = policy.backoff_for(job.retries);
    match outcome {
        Outcome::Success { .. } => None,
        Outcome::GuestError {
            retry: Some(request),
            ..
        } => Some(request.countdown.unwrap_or(backoff)),
        Outcome::WorkerLost { .. } if policy.retry_on_worker_lost => Some(backoff),
        other => {
            let kind = other.error_kind()?;
            policy
                .autoretry_for
                .iter()
                .any(|k| k == kind)
                .then_some(backoff)
        }
    }
}

/// A record of `job` in `state` from this worker.
fn base_record(shared: &Shared, job: &Job, state: State) -> ResultRecord {
    let mut record = ResultRecord::new(job.id.clone(), job.task.clone(), state);
    record.retries = job.retries;
    record.worker = Some(shared.config.hostname.clone());
    record.reply_to = job.reply_to.clone();
    record
}

/// Copies an execution's result or error, cost and logs into a record.
fn apply_execution(record: &mut ResultRecord, execution: &Execution) {
    record.fuel_used = Some(execution.fuel_used);
    // The captured log (bounded by the task's log limit) stays with every result.
    record.log = (!execution.logs.is_empty()).then(|| execution.logs.clone());
    record.duration_ms = Some(execution.duration.as_secs_f64() * 1e3);
    match &execution.outcome {
        Outcome::Success { value } => record.result = Some(value.clone()),
        failure => {
            let traceback = match failure {
                Outcome::Trap {
                    backtrace: Some(bt),
                    ..
                } => Some(format!("{bt}\n{}", execution.logs)),
                _ if !execution.logs.is_empty() => Some(execution.logs.clone()),
                _ => None,
            };
            record.error = Some(ErrorInfo {
                kind: failure.error_kind().unwrap_or("Error").to_string(),
                message: failure.error_message().unwrap_or_default(),
                traceback,
            });
        }
    }
}
