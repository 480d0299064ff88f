//! Brokers: where jobs wait until a worker takes them.
//!
//! [`Broker`] is the one trait every broker implements: the embedded SQLite file
//! ([`sqlite`]), the Celery-protocol Redis broker ([`redis`]) and the Celery-protocol
//! AMQP broker for RabbitMQ ([`amqp`]). Its shape is
//! "fetch with a lease, then ack": a fetched job is invisible to other workers until its
//! lease (visibility timeout) runs out, so a job whose worker dies is delivered again.
//! `crate::connect` turns a broker URL into the right implementation. A broker never
//! builds or calls a result backend.
//!
//! # Liveness: fast recovery of a dead worker's jobs
//! The lease alone makes a crashed worker's jobs wait for it to run out (on Redis the
//! visibility timeout, kombu's default an hour). So each broker has a process-unique
//! identity ([`BrokerIdentity`]: host, pid, random) and, once a worker calls
//! [`Broker::go_live`], keeps a *liveness record* for it in the broker, refreshed by
//! [`Broker::heartbeat`] (the worker's default: every
//! [`DEFAULT_HEARTBEAT_INTERVAL`], valid for [`DEFAULT_DEAD_AFTER`]). While live, the
//! broker tags every reservation it makes with its identity, and any live broker's sweep
//! (run from `fetch` and from `heartbeat`) restores at once the reservations whose
//! owner's record has lapsed. A live worker's long job is never restored: its record
//! stays fresh. Reservations made without liveness (producers, library users who never
//! call `go_live`, Celery workers) carry no tag and come back after their lease only,
//! as before. [`Broker::sign_off`] removes the record at a clean shutdown. Each broker's
//! module docs say where the records and tags live. A worker that stalls (not crashes)
//! for longer than its dead-after has its jobs restored while it still runs them: they
//! then run twice (at-least-once), so keep `dead_after` well above any pause.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{DecodeError, Job, WorkerRoutes};

pub mod amqp;
pub mod events;
pub mod mailbox;
pub mod redis;
pub mod sqlite;

/// How often a live worker refreshes its liveness record by default.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// After how long without a heartbeat a worker counts as dead by default.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(10);

/// The identity a broker tags its reservations with: `HOST.PID.RANDOM`, unique per
/// broker instance (so per process in practice).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerIdentity(pub String);

impl BrokerIdentity {
    /// A fresh identity for this process.
    pub fn new() -> BrokerIdentity {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let random = &uuid::Uuid::new_v4().simple().to_string()[..12];
        BrokerIdentity(format!("{host}.{}.{random}", std::process::id()))
    }
}

impl Default for BrokerIdentity {
    fn default() -> Self {
        BrokerIdentity::new()
    }
}

impl std::fmt::Display for BrokerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The liveness bookkeeping both brokers share: how many workers of this process are
/// live on the broker, and the longest dead-after they asked for.
#[derive(Debug, Default)]
pub(crate) struct LivenessUsers {
    users: usize,
    dead_after: Duration,
}

impl LivenessUsers {
    /// One more user; returns the dead-after to write.
    pub(crate) fn join(&mut self, dead_after: Duration) -> Duration {
        self.users += 1;
        self.dead_after = self.dead_after.max(dead_after);
        self.dead_after
    }

    /// The dead-after to refresh with, or `None` when nobody is live.
    pub(crate) fn current(&self) -> Option<Duration> {
        (self.users > 0).then_some(self.dead_after)
    }

    /// One user less; true when it was the last (the record goes).
    pub(crate) fn leave(&mut self) -> bool {
        self.users = self.users.saturating_sub(1);
        if self.users == 0 {
            self.dead_after = Duration::ZERO;
            true
        } else {
            false
        }
    }
}

/// When a broker that holds eta messages (Redis, AMQP) hands a decoded job to a worker:
/// its eta, or its expiry if sooner (so it is revoked on time).
pub(crate) fn due_at(job: &Job) -> Option<DateTime<Utc>> {
    match (job.eta, job.expires) {
        (Some(eta), Some(exp)) => Some(eta.min(exp)),
        (eta, _) => eta,
    }
}

/// Identifies one delivery of one message, for ack/requeue/dead-letter. Opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryTag(pub String);

/// One fetched message.
#[derive(Debug)]
pub struct Delivery {
    /// Handle for settling this delivery.
    pub tag: DeliveryTag,
    /// The queue it came from.
    pub queue: String,
    /// The decoded job, or why the message could not be decoded (the worker dead-letters
    /// those with the reason).
    pub job: Result<Job, DecodeError>,
    /// How many times this message has been delivered, including this time (1 = first).
    pub delivery_count: u32,
}

/// Depth of one queue, for `sprout status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Ready to run now.
    pub ready: u64,
    /// Waiting for their eta.
    pub scheduled: u64,
    /// Leased by a worker (running or prefetched).
    pub leased: u64,
    /// Dead-lettered.
    pub dead: u64,
}

/// A dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The job id, if it could be decoded.
    pub id: Option<String>,
    /// The queue it came from.
    pub queue: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Errors from a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached or the connection dropped; retrying may help.
    #[error("broker connection failed: {0}")]
    Connection(String),
    /// The delivery tag is unknown or its lease already expired (someone else may own it).
    #[error("unknown or expired delivery {0:?}")]
    UnknownDelivery(DeliveryTag),
    /// The URL does not name a supported broker.
    #[error(
        "unsupported broker URL {0:?}: expected sqlite:PATH, redis://HOST:PORT/DB or \
         amqp://USER:PASS@HOST:PORT/VHOST"
    )]
    UnsupportedUrl(String),
    /// The settings given with the URL contradict each other or it.
    #[error("invalid broker settings: {0}")]
    InvalidSettings(String),
    /// Any other broker failure.
    #[error("broker error: {0}")]
    Other(String),
}

impl BrokerError {
    /// True when reconnecting and retrying the operation may succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, BrokerError::Connection(_))
    }
}

/// A queue of jobs with leases.
///
/// Every method may be called concurrently from many tasks.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Enqueues jobs on their `queue`, honouring `priority` and `eta`.
    ///
    /// # Errors
    /// [`BrokerError`]; then none, some or all may have been enqueued (at-least-once).
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError>;

    /// Takes up to `max` jobs that are ready now from `queues`, leasing each for `lease`.
    /// Returns an empty vector after at most `wait` when nothing is ready.
    ///
    /// Jobs whose eta is in the future are not returned (the broker holds them), so a
    /// waiting job never takes a pool slot.
    ///
    /// # Cancel safety
    /// Not cancel safe: if the future is dropped after the broker leased jobs, those jobs
    /// are only delivered again when their lease expires. Do not put it in `select!`
    /// against anything but shutdown.
    ///
    /// # Errors
    /// [`BrokerError`]; nothing was leased.
    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BrokerError>;

    /// Extends the leases of running jobs so they are not delivered twice.
    ///
    /// # Errors
    /// [`BrokerError`]; tags whose lease was already lost are skipped silently.
    async fn extend(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError>;

    /// Acknowledges finished deliveries: they are removed for good.
    ///
    /// # Errors
    /// [`BrokerError`]; the deliveries will be redelivered after their lease (at-least-once).
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError>;

    /// Puts a delivery back, unchanged, to be delivered again at once (warm shutdown).
    ///
    /// # Errors
    /// [`BrokerError`]; the delivery will come back after its lease anyway.
    async fn release(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError>;

    /// Replaces a delivery by `job` (usually the same id with `retries + 1` and an eta):
    /// the retry is enqueued and the old delivery acked. Atomic where the broker allows.
    ///
    /// # Errors
    /// [`BrokerError`]; at worst the old delivery is redelivered (at-least-once).
    async fn retry(&self, tag: &DeliveryTag, job: &Job) -> Result<(), BrokerError> {
        self.publish(std::slice::from_ref(job)).await?;
        self.ack(std::slice::from_ref(tag)).await
    }

    /// Moves a delivery to the dead-letter store with a reason.
    ///
    /// # Errors
    /// [`BrokerError`]; the delivery will come back after its lease.
    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError>;

    /// Removes every waiting job from `queue`; returns how many.
    ///
    /// # Errors
    /// [`BrokerError`].
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Depths of all known queues.
    ///
    /// # Errors
    /// [`BrokerError`].
    async fn stats(&self) -> Result<Vec<QueueStats>, BrokerError>;

    /// The most recent dead letters, newest first.
    ///
    /// # Errors
    /// [`BrokerError`].
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Gives back what the broker holds on this worker's behalf beyond the deliveries it
    /// returned — the Redis broker keeps eta/countdown messages reserved until they are
    /// due, as Celery workers do. Call once at warm shutdown, after releasing in-flight
    /// deliveries. The default does nothing.
    ///
    /// # Errors
    /// [`BrokerError`]; held messages then come back after their lease.
    async fn shutdown(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Tells the broker how many deliveries its caller holds at most (running and
    /// waiting to run: a worker's concurrency × prefetch multiplier). A broker that
    /// pushes messages (AMQP) sets its prefetch window (`basic.qos`) to it; the others
    /// fetch what they are asked for and need not know. The default does nothing.
    fn set_prefetch(&self, count: usize) {
        let _ = count;
    }

    /// The identity this broker tags its reservations with while live, if it supports
    /// liveness. The default: none.
    fn identity(&self) -> Option<&BrokerIdentity> {
        None
    }

    /// Joins liveness (see the module docs): writes this process's liveness record,
    /// valid for `dead_after`, and from then on tags new reservations with
    /// [`Broker::identity`]. Each call must be matched by one [`Broker::sign_off`];
    /// several workers on one broker share the record (the longest `dead_after` wins).
    /// The default does nothing.
    ///
    /// # Errors
    /// [`BrokerError`]; then the caller is not live (its reservations are not tagged).
    async fn go_live(&self, dead_after: Duration) -> Result<(), BrokerError> {
        let _ = dead_after;
        Ok(())
    }

    /// Refreshes the liveness record (call well within `dead_after`, e.g. every fifth of
    /// it) and runs the sweep for dead workers' reservations if it is due. Does nothing
    /// when nobody on this broker is live. The default does nothing.
    ///
    /// # Errors
    /// [`BrokerError`]; retry at the next interval.
    async fn heartbeat(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Leaves liveness; the last to leave deletes the liveness record (call after
    /// releasing what is in flight). The default does nothing.
    ///
    /// # Errors
    /// [`BrokerError`]; the record then lapses after its `dead_after`.
    async fn sign_off(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The broker's remote-control channel ([`mailbox`]), if it has one. The default:
    /// none.
    fn mailbox(&self) -> Option<std::sync::Arc<dyn mailbox::Mailbox>> {
        None
    }

    /// Publishes what a worker serves (its task → queue map), replacing its earlier
    /// entry, so senders without task files route by it ([`crate::model::routes`]). The
    /// default does nothing: then senders fall back to the default queue.
    ///
    /// # Errors
    /// [`BrokerError`]; senders then see the previous map.
    async fn publish_routes(&self, routes: &WorkerRoutes) -> Result<(), BrokerError> {
        let _ = routes;
        Ok(())
    }

    /// Removes a worker's entry (on a clean shutdown). The default does nothing.
    ///
    /// # Errors
    /// [`BrokerError`].
    async fn withdraw_routes(&self, worker: &str) -> Result<(), BrokerError> {
        let _ = worker;
        Ok(())
    }

    /// Every worker's published entry. The default: none.
    ///
    /// # Errors
    /// [`BrokerError`].
    async fn routes(&self) -> Result<Vec<WorkerRoutes>, BrokerError> {
        Ok(Vec::new())
    }
}
