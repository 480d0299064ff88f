//! The worker: the consume loop that ties broker, registry, pool and result backend.
//!
//! ```text
//! reserve capacity → fetch (lease) → decode → admit (expired? unknown? eta?)
//!   → pool.execute → settle (success | retry | failure) → store result → ack
//! ```
//! Capacity is taken *before* fetching, so the worker never holds more jobs than
//! `concurrency × prefetch_multiplier`. Results are stored before the ack (acks-late,
//! at-least-once): if the worker dies in between, the job runs again. Results and acks
//! are written in batches by one completer task; leases of running jobs are extended in
//! the background so long jobs are not delivered twice.
//!
//! Shutdown: [`Shutdown::Warm`] stops fetching and lets running jobs finish within the
//! grace period, then releases what is left; [`Shutdown::Cold`] stops running jobs at
//! once and releases them, so they are redelivered immediately on restart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::backend::{ErrorInfo, ResultBackend, ResultRecord, State};
use crate::broker::{Broker, Delivery, DeliveryTag};
use crate::celery;
use crate::job::Job;
use crate::outcome::{Execution, Outcome};
use crate::pool::Pool;
use crate::registry::{Registry, TaskEntry};
use crate::sandbox::RunRequest;

/// Most jobs fetched in one broker call.
const FETCH_BATCH: usize = 256;
/// Most results stored (and acks sent) in one batch.
const COMPLETE_BATCH: usize = 1024;
/// How long one fetch call waits for work before the loop checks for shutdown.
const FETCH_WAIT: Duration = Duration::from_millis(200);

/// Shutdown requests, in escalating order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    /// Keep going.
    Running,
    /// Stop fetching; let running jobs finish within the grace period.
    Warm,
    /// Stop now; release running jobs for redelivery.
    Cold,
}

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name in results and logs.
    pub hostname: String,
    /// Queues to consume.
    pub queues: Vec<String>,
    /// Most jobs reserved at once (running + prefetched).
    pub reservations: usize,
    /// Lease (visibility timeout) of fetched jobs; renewed every third of it.
    pub lease: Duration,
    /// How long running jobs may take to finish on warm shutdown.
    pub grace: Duration,
    /// Store STARTED before running each job.
    pub track_started: bool,
    /// Stop (warm) after this many settled jobs.
    pub max_jobs: Option<u64>,
}

/// What a worker did, reported when it stops.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// Jobs that ended SUCCESS.
    pub succeeded: u64,
    /// Jobs that ended FAILURE or REVOKED.
    pub failed: u64,
    /// Attempts that were scheduled for retry.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Jobs released unfinished at shutdown.
    pub released: u64,
    /// Whether the shutdown was cold.
    pub cold: bool,
}

/// A consume loop over one broker and one pool.
pub struct Worker {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    pool: Arc<dyn Pool>,
    config: WorkerConfig,
}

/// State shared by the loop and the per-job tasks.
struct Shared {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    pool: Arc<dyn Pool>,
    config: WorkerConfig,
    in_flight: Arc<Mutex<HashSet<DeliveryTag>>>,
    completions: mpsc::UnboundedSender<Completion>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    settled: AtomicU64,
}

/// A settled job waiting to be stored and acked.
struct Completion {
    tag: DeliveryTag,
    records: Vec<ResultRecord>,
    publish: Vec<Job>,
}

impl Worker {
    /// A worker over the given parts.
    pub fn new(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        registry: Arc<Registry>,
        pool: Arc<dyn Pool>,
        config: WorkerConfig,
    ) -> Self {
        Worker {
            broker,
            backend,
            registry,
            pool,
            config,
        }
    }

    /// Consumes until `shutdown` asks to stop (or `max_jobs` is reached).
    ///
    /// # Errors
    /// Only when the broker keeps failing in a way reconnecting cannot fix is the error
    /// returned; transient broker errors are retried with backoff.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<Shutdown>,
    ) -> anyhow::Result<WorkerReport> {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let completer = Completer {
            broker: self.broker.clone(),
            backend: self.backend.clone(),
            in_flight: in_flight.clone(),
        };
        let completer = tokio::spawn(complete_loop(completer, rx));
        let shared = Arc::new(Shared {
            broker: self.broker,
            backend: self.backend,
            registry: self.registry,
            pool: self.pool,
            config: self.config,
            in_flight,
            completions: tx,
            counters: Arc::default(),
        });
        let lease_keeper = tokio::spawn(extend_leases(shared.clone()));
        let reservations = Arc::new(Semaphore::new(shared.config.reservations.max(1)));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut jobs = JoinSet::new();
        let mut backoff = Duration::from_millis(100);

        'fetching: loop {
            if *shutdown.borrow() != Shutdown::Running || *stop_rx.borrow() {
                break;
            }
            // Take capacity first: wait for one free reservation, then grab what's free.
            let mut permits = tokio::select! {
                permit = reservations.clone().acquire_owned() => permit.expect("never closed"),
                _ = shutdown.changed() => break 'fetching,
                _ = stop_rx.changed() => break 'fetching,
            };
            let extra = reservations.available_permits().min(FETCH_BATCH - 1);
            if extra > 0
                && let Ok(more) = reservations.clone().try_acquire_many_owned(extra as u32)
            {
                permits.merge(more);
            }
            while jobs.try_join_next().is_some() {}
            let wanted = permits.num_permits();
            let fetched = shared
                .broker
                .fetch(
                    &shared.config.queues,
                    wanted,
                    shared.config.lease,
                    FETCH_WAIT,
                )
                .await;
            let deliveries = match fetched {
                Ok(d) => {
                    backoff = Duration::from_millis(100);
                    d
                }
                Err(e) => {
                    tracing::warn!("fetch failed, retrying in {backoff:?}: {e}");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            {
                let mut in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                in_flight.extend(deliveries.iter().map(|d| d.tag.clone()));
            }
            for delivery in deliveries {
                let permit = permits.split(1).expect("one permit per fetched job");
                let shared = shared.clone();
                let stop_tx = stop_tx.clone();
                jobs.spawn(async move {
                    handle_delivery(&shared, delivery, permit).await;
                    let settled = shared.counters.settled.fetch_add(1, Ordering::Relaxed) + 1;
                    if shared.config.max_jobs.is_some_and(|max| settled >= max) {
                        let _ = stop_tx.send(true);
                    }
                });
            }
            // Unused permits go back when `permits` drops here.
        }

        // Stop fetching; drain or cut.
        let mut cold = *shutdown.borrow() == Shutdown::Cold;
        if !cold && !jobs.is_empty() {
            tracing::info!(
                "warm shutdown: waiting up to {:?} for {} running job(s)",
                shared.config.grace,
                jobs.len()
            );
            let deadline = tokio::time::sleep(shared.config.grace);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    next = jobs.join_next() => if next.is_none() { break },
                    _ = &mut deadline => { tracing::warn!("grace period over"); cold = true; break }
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() == Shutdown::Cold {
                            tracing::warn!("cold shutdown: stopping running jobs");
                            cold = true;
                            break;
                        }
                    }
                }
            }
        }
        jobs.shutdown().await;
        lease_keeper.abort();
        let _ = lease_keeper.await;
        // Every job task is gone; dropping the last handle on `shared` closes the
        // completion channel, so the completer stores and acks what is queued and ends.
        let in_flight = shared.in_flight.clone();
        let counters = shared.counters.clone();
        let broker = shared.broker.clone();
        drop(shared);
        completer.await.ok();
        let released = release_unfinished(broker.as_ref(), &in_flight).await;
        // Hand back what the broker itself holds for us (Redis keeps eta jobs reserved).
        if let Err(e) = broker.shutdown().await {
            tracing::warn!("broker shutdown: {e}; held jobs return after their lease");
        }
        Ok(WorkerReport {
            succeeded: counters.succeeded.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            retried: counters.retried.load(Ordering::Relaxed),
            dead_lettered: counters.dead_lettered.load(Ordering::Relaxed),
            released,
            cold,
        })
    }
}

/// Releases every delivery still leased by this worker (jobs stopped unfinished), so
/// they are delivered again at once instead of after their lease.
async fn release_unfinished(broker: &dyn Broker, in_flight: &Mutex<HashSet<DeliveryTag>>) -> u64 {
    let tags: Vec<DeliveryTag> = in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    if tags.is_empty() {
        return 0;
    }
    match broker.release(&tags).await {
        Ok(()) => {
            tracing::info!("released {} unfinished job(s) for redelivery", tags.len());
            tags.len() as u64
        }
        Err(e) => {
            tracing::warn!(
                "could not release {} job(s); they return when their lease expires: {e}",
                tags.len()
            );
            0
        }
    }
}

/// Runs one delivery to a settled state and queues its completion.
async fn handle_delivery(shared: &Shared, delivery: Delivery, permit: OwnedSemaphorePermit) {
    let tag = delivery.tag;
    let job = match delivery.job {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(queue = %delivery.queue, "dead-lettering undecodable message: {}", error.reason);
            shared
                .counters
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = shared.broker.dead_letter(&tag, &error.reason).await {
                tracing::warn!("dead-letter failed (it will be redelivered): {e}");
            }
            forget(shared, &tag);
            if let Some(id) = error.id {
                let mut record = ResultRecord::new(id, "", State::Failure);
                record.error = Some(ErrorInfo {
                    kind: "DecodeError".into(),
                    message: error.reason,
                    traceback: None,
                });
                record.worker = Some(shared.config.hostname.clone());
                let _ = shared.backend.store(&[record]).await;
            }
            return;
        }
    };
    let now = Utc::now();
    if job.is_expired(now) {
        tracing::info!(id = %job.id, task = %job.task, "revoked: expired before it ran");
        let mut record = base_record(shared, &job, State::Revoked);
        record.error = Some(ErrorInfo {
            kind: "TaskRevokedError".into(),
            message: format!("expired at {}", job.expires.unwrap_or(now).to_rfc3339()),
            traceback: None,
        });
        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
        settle(shared, tag, &job, record);
        return;
    }
    // An eta in the future (brokers that deliver early, like Celery's Redis transport):
    // wait without holding a reservation or a pool slot.
    let permit = match job.eta {
        Some(eta) if eta > now => {
            drop(permit);
            let wait = (eta - now).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            None
        }
        _ => Some(permit),
    };
    let Some(entry) = shared.registry.lookup(&job.task) else {
        tracing::warn!(id = %job.id, task = %job.task, "unknown task");
        let execution = Execution::not_started(Outcome::UnknownTask {
            task: job.task.clone(),
        });
        let mut record = base_record(shared, &job, State::Failure);
        apply_execution(&mut record, &execution);
        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
        settle(shared, tag, &job, record);
        return;
    };
    // The manifest's rate limit: wait here, before the job starts or takes a pool slot.
    shared.registry.throttle(&entry).await;
    if shared.config.track_started {
        let mut started = base_record(shared, &job, State::Started);
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
    };
    let started_at = Utc::now();
    let started = Instant::now();
    let execution = shared.pool.execute(entry.clone(), request).await;
    drop(permit);
    tracing::debug!(id = %job.id, task = %job.task, elapsed = ?started.elapsed(), outcome = ?execution.outcome.error_kind(), "job finished");

    if let Some(delay) = retry_delay(&job, &entry, &execution.outcome) {
        let eta = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        let next = celery::retry_job(&job, Some(eta));
        let mut record = base_record(shared, &job, State::Retry);
        apply_execution(&mut record, &execution);
        record.started_at = Some(started_at);
        tracing::info!(id = %job.id, task = %job.task, retries = next.retries, "retry in {delay:?}: {}", execution.outcome.error_message().unwrap_or_default());
        match shared.broker.retry(&tag, &next).await {
            Ok(()) => {
                forget(shared, &tag);
                shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                let store = celery::settle(&job, record).store;
                if let Err(e) = shared.backend.store(&store).await {
                    tracing::warn!(id = %job.id, "could not store RETRY: {e}");
                }
            }
            Err(e) => {
                tracing::warn!(id = %job.id, "retry publish failed; the job will be redelivered: {e}")
            }
        }
        return;
    }
    let state = if execution.outcome.is_success() {
        State::Success
    } else {
        State::Failure
    };
    if state == State::Success {
        shared.counters.succeeded.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(id = %job.id, task = %job.task, "failed: {}: {}", execution.outcome.error_kind().unwrap_or(""), execution.outcome.error_message().unwrap_or_default());
    }
    let mut record = base_record(shared, &job, state);
    apply_execution(&mut record, &execution);
    record.started_at = Some(started_at);
    settle(shared, tag, &job, record);
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

fn base_record(shared: &Shared, job: &Job, state: State) -> ResultRecord {
    let mut record = ResultRecord::new(job.id.clone(), job.task.clone(), state);
    record.retries = job.retries;
    record.worker = Some(shared.config.hostname.clone());
    record
}

/// Copies an execution's result or error, cost and logs into a record.
fn apply_execution(record: &mut ResultRecord, execution: &Execution) {
    record.fuel_used = Some(execution.fuel_used);
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

/// Queues the records (plus Celery follow-ups) to be stored, then the delivery acked.
fn settle(shared: &Shared, tag: DeliveryTag, job: &Job, record: ResultRecord) {
    let settlement = celery::settle(job, record);
    let completion = Completion {
        tag,
        records: settlement.store,
        publish: settlement.publish,
    };
    if shared.completions.send(completion).is_err() {
        tracing::error!(id = %job.id, "completer stopped; the job will be redelivered");
    }
}

fn forget(shared: &Shared, tag: &DeliveryTag) {
    shared
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(tag);
}

/// What the completer needs: it must not hold [`Shared`] (whose sender keeps the
/// channel open).
struct Completer {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    in_flight: Arc<Mutex<HashSet<DeliveryTag>>>,
}

/// Stores results and acks deliveries in batches (publish follow-ups, store, then ack)
/// until every sender is gone and the queue is drained.
async fn complete_loop(completer: Completer, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::with_capacity(COMPLETE_BATCH);
    while rx.recv_many(&mut batch, COMPLETE_BATCH).await > 0 {
        completer.flush(&mut batch).await;
    }
}

impl Completer {
    async fn flush(&self, batch: &mut Vec<Completion>) {
        let publish: Vec<Job> = batch
            .iter()
            .flat_map(|c| c.publish.iter().cloned())
            .collect();
        let records: Vec<ResultRecord> = batch
            .iter()
            .flat_map(|c| c.records.iter().cloned())
            .collect();
        let tags: Vec<DeliveryTag> = batch.iter().map(|c| c.tag.clone()).collect();
        let mut delay = Duration::from_millis(50);
        loop {
            let step = async {
                if !publish.is_empty() {
                    self.broker
                        .publish(&publish)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                self.backend
                    .store(&records)
                    .await
                    .map_err(|e| e.to_string())?;
                self.broker.ack(&tags).await.map_err(|e| e.to_string())
            };
            match step.await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(
                        "storing {} result(s) failed, retrying in {delay:?}: {e}",
                        records.len()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for tag in &tags {
            in_flight.remove(tag);
        }
        batch.clear();
    }
}

/// Renews the leases of every in-flight delivery every third of the lease.
async fn extend_leases(shared: Arc<Shared>) {
    let period = shared.config.lease / 3;
    loop {
        tokio::time::sleep(period).await;
        let tags: Vec<DeliveryTag> = {
            let in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight.iter().cloned().collect()
        };
        if tags.is_empty() {
            continue;
        }
        if let Err(e) = shared.broker.extend(&tags, shared.config.lease).await {
            tracing::warn!("could not extend {} lease(s): {e}", tags.len());
        }
    }
}
