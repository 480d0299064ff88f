//! The worker: the consume loop that ties broker, registry, pool and result backend.
//!
//! ```text
//! reserve capacity → fetch (lease) → [job] decode → admit (expired? unknown? eta?)
//!   → pool.execute → classify → [settle] publish follow-ups → store → ack
//! ```
//! - `job` — one delivery's path up to how it ends (an `Ending`), with panics caught.
//! - `settle` — the one place a delivery ends: success, failure, retry, revoke, expire,
//!   dead-letter, release, and a panic while handling it. Results are stored before the
//!   ack (acks-late, at-least-once); settles are written in batches by one task.
//!
//! Capacity is taken *before* fetching, so the worker never holds more jobs than
//! `concurrency × prefetch_multiplier`. Leases of running jobs are extended in the
//! background so long jobs are not delivered twice, until they are settled.
//!
//! Liveness: the worker joins the broker's liveness (`Broker::go_live`) before it
//! fetches, heartbeats every [`Liveness::interval`] beside the lease keeper, and signs
//! off after releasing what is left, so if the process dies its reservations are
//! restored by other workers within about [`Liveness::dead_after`] instead of after
//! their lease (see [`crate::broker`]).
//!
//! Remote control ([`control`]): every consume loop of a process attaches to one
//! [`ControlPlane`], which tracks the jobs it holds (each with its own stop signal, so
//! `revoke --terminate` stops exactly one job) and answers Celery's inspect/control
//! commands on a thread of its own.
//!
//! Shutdown: [`Shutdown::Warm`] stops fetching and lets running jobs finish within the
//! grace period, then releases what is left; [`Shutdown::Cold`] stops running jobs at
//! once and releases them, so they are redelivered immediately on restart.

mod active;
pub mod control;
pub mod events;
mod job;
pub mod metrics;
pub mod observe;
pub mod revoked;
pub mod routes;
mod settle;

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

pub use control::ControlPlane;
pub use observe::{JobObserver, Observers};
pub use settle::BrokerPublisher;
use settle::{Ending, InFlight, Settle, Settler};

use crate::backend::ResultBackend;
use crate::broker::{Broker, BrokerError, DeliveryTag};
use crate::pool::Pool;
use crate::registry::Registry;

/// Most jobs fetched in one broker call.
const FETCH_BATCH: usize = 256;
/// Most deliveries settled in one batch.
const SETTLE_BATCH: usize = 1024;
/// How long one fetch call waits for work before the loop checks for shutdown.
const FETCH_WAIT: Duration = Duration::from_millis(200);
/// Fetch failures in a row, other than connection failures, after which the worker
/// stops with the error: a broker that refuses every fetch is misconfigured or broken,
/// and retrying forever would hide it.
pub const MAX_FETCH_FAILURES: u32 = 5;

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
    /// Most jobs reserved at once (running + prefetched): 1 to [`MAX_RESERVATIONS`]
    /// (0 is taken as 1, more as the maximum).
    pub reservations: usize,
    /// Lease (visibility timeout) of fetched jobs; renewed every third of it.
    pub lease: Duration,
    /// How long running jobs may take to finish on warm shutdown.
    pub grace: Duration,
    /// Store STARTED before running each job.
    pub track_started: bool,
    /// Stop (warm) after this many settled jobs.
    pub max_jobs: Option<u64>,
    /// How long a job for a task no loaded file provides is requeued (with backoff, 1 s
    /// doubling to 10 s) before it fails `NotRegistered`: a job sent just before its
    /// task file is deployed, or to a fleet where only some workers have it, still runs.
    /// Zero fails it at once.
    pub unknown_task_grace: Duration,
}

/// Most jobs one worker reserves at once: far beyond any pool's slots times a sane
/// prefetch, and low enough that the reservation count can grow (`pool_grow`) without
/// overflowing.
pub const MAX_RESERVATIONS: usize = u32::MAX as usize;

impl WorkerConfig {
    /// [`WorkerConfig::reservations`] within its bounds.
    fn reservations(&self) -> usize {
        self.reservations.clamp(1, MAX_RESERVATIONS)
    }
}

/// How a worker tells the broker it is alive (see [`crate::broker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// How often the liveness record is refreshed: at least [`MIN_HEARTBEAT_INTERVAL`]
    /// (less is taken as that).
    pub interval: Duration,
    /// How long after the last heartbeat the worker counts as dead and its
    /// reservations are restored by others.
    pub dead_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            interval: crate::broker::DEFAULT_HEARTBEAT_INTERVAL,
            dead_after: crate::broker::DEFAULT_DEAD_AFTER,
        }
    }
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

/// Why a worker stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker failed [`MAX_FETCH_FAILURES`] fetches in a row with errors that are
    /// not connection failures (connection failures are retried for as long as they
    /// last).
    #[error("the broker keeps failing: {0}")]
    Broker(#[source] BrokerError),
}

/// A consume loop over one broker and one pool.
pub struct Worker {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    pool: Arc<dyn Pool>,
    config: WorkerConfig,
    liveness: Option<Liveness>,
    control: Option<(Arc<ControlPlane>, String)>,
    observers: Observers,
    log_jobs: bool,
}

/// State shared by the loop and the per-job tasks.
struct Shared {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    pool: Arc<dyn Pool>,
    config: WorkerConfig,
    in_flight: InFlight,
    settles: mpsc::UnboundedSender<Settle>,
    counters: Arc<Counters>,
    control: Arc<ControlPlane>,
    link: control::PoolLink,
    observer: Arc<dyn JobObserver>,
    /// An INFO line per finished job ([`Worker::log_jobs`]).
    log_jobs: bool,
}

impl Shared {
    /// Hands a delivery's ending to the settler.
    fn settle(&self, settle: Settle) {
        if let Err(unsent) = self.settles.send(settle) {
            // Only after the settler is gone (never while jobs run): the lease brings
            // the job back.
            tracing::error!(tag = ?unsent.0.tag, "settler stopped; the job will be redelivered");
        }
    }
}

/// What the worker counts.
#[derive(Debug, Clone, Copy)]
enum Count {
    Succeeded,
    Failed,
    Retried,
    DeadLettered,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    settled: AtomicU64,
}

impl Counters {
    fn add(&self, what: Count) {
        let counter = match what {
            Count::Succeeded => &self.succeeded,
            Count::Failed => &self.failed,
            Count::Retried => &self.retried,
            Count::DeadLettered => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
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
            liveness: Some(Liveness::default()),
            control: None,
            observers: Observers::default(),
            log_jobs: false,
        }
    }

    /// Attaches the worker to the process's control plane, as the pool called `name`
    /// (default: a plane of its own, which nobody but the worker itself sees).
    pub fn control(mut self, plane: Arc<ControlPlane>, name: impl Into<String>) -> Self {
        self.control = Some((plane, name.into()));
        self
    }

    /// Adds an observer of the job path (events, metrics; see [`observe`]).
    pub fn observe(mut self, observer: Arc<dyn JobObserver>) -> Self {
        self.observers.0.push(observer);
        self
    }

    /// Logs one INFO line per finished job: task, id, state, duration and fuel
    /// (default: off, as a line per job costs throughput on a busy worker).
    pub fn log_jobs(mut self, on: bool) -> Self {
        self.log_jobs = on;
        self
    }

    /// Sets how the worker heartbeats (default: [`Liveness::default`]); `None` turns
    /// liveness off, so a dead worker's jobs come back only after their lease.
    pub fn liveness(mut self, liveness: Option<Liveness>) -> Self {
        self.liveness = liveness;
        self
    }

    /// Consumes until `shutdown` asks to stop (or `max_jobs` is reached).
    ///
    /// Connection failures of the broker are retried with backoff for as long as they
    /// last; so are failures to settle (store results, ack).
    ///
    /// # Errors
    /// [`WorkerError::Broker`] when fetching fails [`MAX_FETCH_FAILURES`] times in a row
    /// for a reason other than the connection. Running jobs are then stopped and
    /// released, as on a cold shutdown.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<Shutdown>,
    ) -> Result<WorkerReport, WorkerError> {
        self.broker.set_prefetch(self.config.reservations());
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight: InFlight = Arc::new(Mutex::new(HashSet::new()));
        let observer: Arc<dyn JobObserver> = Arc::new(self.observers);
        let settler = Arc::new(Settler {
            broker: self.broker.clone(),
            backend: self.backend.clone(),
            publisher: BrokerPublisher::new(self.broker.clone()),
            in_flight: in_flight.clone(),
            observer: observer.clone(),
        });
        let settling = tokio::spawn(settle_loop(settler.clone(), rx));
        let heart = match self.liveness {
            Some(live) => match self.broker.go_live(live.dead_after).await {
                Ok(()) => Some(tokio::spawn(heartbeat(self.broker.clone(), live.interval))),
                Err(e) => {
                    tracing::warn!(
                        "could not join broker liveness ({e}); if this worker dies its jobs \
                         come back only after their lease"
                    );
                    None
                }
            },
            None => None,
        };
        let reservations = Arc::new(Semaphore::new(self.config.reservations()));
        let (plane, pool_name) = self.control.unwrap_or_else(|| {
            let plane = ControlPlane::new(&self.config.hostname, Default::default());
            (plane, self.pool.kind().to_string())
        });
        let link = plane.attach(
            &pool_name,
            self.pool.clone(),
            self.config.queues.clone(),
            reservations.clone(),
            self.config.reservations() / self.pool.concurrency().max(1),
            self.registry.clone(),
        );
        let shared = Arc::new(Shared {
            broker: self.broker,
            backend: self.backend,
            registry: self.registry,
            pool: self.pool,
            config: self.config,
            in_flight,
            settles: tx,
            counters: Arc::default(),
            control: plane,
            link,
            observer,
            log_jobs: self.log_jobs,
        });
        let lease_keeper = tokio::spawn(extend_leases(shared.clone()));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut jobs = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        let mut disconnected = false;
        let mut failures = 0u32;
        let mut fatal = None;

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
            let queues = shared.link.queues();
            if queues.is_empty() {
                // Every queue was cancelled by remote control: wait for one to be added.
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(FETCH_WAIT) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let fetched = shared
                .broker
                .fetch(&queues, wanted, shared.config.lease, FETCH_WAIT)
                .await;
            let deliveries = match fetched {
                Ok(d) => {
                    if std::mem::take(&mut disconnected) {
                        shared.observer.reconnected();
                    }
                    backoff = Duration::from_millis(100);
                    failures = 0;
                    d
                }
                Err(e) => {
                    drop(permits);
                    observe::report(&*shared.observer, observe::BrokerOp::Fetch, &e);
                    disconnected |= e.is_connection_error();
                    if !e.is_connection_error() {
                        failures += 1;
                        if failures >= MAX_FETCH_FAILURES {
                            tracing::error!(
                                "fetch failed {failures} times in a row; stopping: {e}"
                            );
                            fatal = Some(e);
                            break 'fetching;
                        }
                    }
                    tracing::warn!("fetch failed, retrying in {backoff:?}: {e}");
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
                    job::handle(&shared, delivery, permit).await;
                    let settled = shared.counters.settled.fetch_add(1, Ordering::Relaxed) + 1;
                    if shared.config.max_jobs.is_some_and(|max| settled >= max) {
                        let _ = stop_tx.send(true);
                    }
                });
            }
            // Unused permits go back when `permits` drops here.
        }

        // Stop fetching; drain or cut. Jobs that ended while the fetch waited are not
        // running: reaped first, so the count below is of running ones.
        while jobs.try_join_next().is_some() {}
        let mut cold = fatal.is_some() || *shutdown.borrow() == Shutdown::Cold;
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
        // settle channel, so the settler writes what is queued and ends.
        let counters = shared.counters.clone();
        let broker = shared.broker.clone();
        drop(shared);
        settling.await.ok();
        // What is still in flight was stopped unfinished: release it, through the same
        // settle path, so it is delivered again at once instead of after its lease.
        let released = release_unfinished(&settler).await;
        // Hand back what the broker itself holds for us (Redis keeps eta jobs reserved).
        if let Err(e) = broker.shutdown().await {
            tracing::warn!("broker shutdown: {e}; held jobs return after their lease");
        }
        if let Some(heart) = heart {
            heart.abort();
            let _ = heart.await;
            if let Err(e) = broker.sign_off().await {
                tracing::warn!("could not remove the liveness record: {e}");
            }
        }
        if let Some(e) = fatal {
            return Err(WorkerError::Broker(e));
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

/// Settles every delivery still in flight (jobs stopped unfinished) by releasing it.
async fn release_unfinished(settler: &Settler) -> u64 {
    let tags: Vec<DeliveryTag> = settler
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let released = tags.len() as u64;
    let batch = tags
        .into_iter()
        .map(|tag| Settle {
            tag,
            ending: Ending::Release,
        })
        .collect();
    settler.settle(batch).await;
    released
}

/// Settles in batches until every sender is gone and the channel is drained. A panic
/// inside a batch is already contained by the settler; this catches anything else, so
/// the loop itself never dies while jobs still send to it.
async fn settle_loop(settler: Arc<Settler>, mut rx: mpsc::UnboundedReceiver<Settle>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let work = std::mem::take(&mut batch);
        let tags: Vec<DeliveryTag> = work.iter().map(|s| s.tag.clone()).collect();
        if let Err(panic) = AssertUnwindSafe(settler.settle(work)).catch_unwind().await {
            tracing::error!(
                "settling {} deliveries panicked: {}; they return after their lease",
                tags.len(),
                crate::panics::message(panic.as_ref())
            );
            let mut in_flight = settler.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for tag in &tags {
                in_flight.remove(tag);
            }
        }
    }
}

/// Refreshes the broker's liveness record every `interval` (the broker also sweeps dead
/// workers' reservations from here, so even a worker too busy to fetch recovers them).
/// Shortest time between two heartbeats: each is a write to the broker, and a worker
/// beating faster would only load it.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

async fn heartbeat(broker: Arc<dyn Broker>, interval: Duration) {
    let interval = interval.max(MIN_HEARTBEAT_INTERVAL);
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = broker.heartbeat().await {
            tracing::warn!("heartbeat failed: {e}");
        }
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
