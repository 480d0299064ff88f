//! Brokers: where jobs wait until a worker takes them.
//!
//! [`Broker`] is the one trait every broker implements: the embedded SQLite file
//! ([`sqlite`]) and the Celery-protocol Redis broker ([`redis`]). Its shape is
//! "fetch with a lease, then ack": a fetched job is invisible to other workers until its
//! lease (visibility timeout) runs out, so a job whose worker dies is delivered again.
//! `crate::connect` turns a broker URL into the right implementation. A broker never
//! builds or calls a result backend.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{DecodeError, Job};

pub mod redis;
pub mod sqlite;

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
    #[error("unsupported broker URL {0:?}: expected sqlite:PATH or redis://HOST:PORT/DB")]
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
}
