//! Result backends: where job states and results go.
//!
//! [`ResultBackend`] is implemented by the embedded SQLite file ([`sqlite`]), by the
//! Celery-compatible Redis backend ([`redis`]) and by Celery's `rpc://` backend
//! ([`rpc`]: results as messages to the producer, over RabbitMQ). A backend is opened from its own URL
//! (`crate::connect`), never by a broker, and never calls one: jobs it creates (chord
//! bodies) go through the [`Publisher`] the worker hands in. Workers write results *before* they ack the job
//! (acks-late), so a stored terminal result is the proof a job ran.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Job, ResultRecord, State};

pub mod expiry;
pub mod redis;
pub mod rpc;
pub mod sqlite;

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

/// One id's answer from [`ResultBackend::get_many`]: its latest record (`None`: not
/// known to the backend), or [`BackendError::Corrupt`] when its stored record cannot be
/// decoded.
pub type Lookup = Result<Option<ResultRecord>, BackendError>;

/// One id's read as a [`Lookup`]: a record that cannot be decoded stays that id's
/// answer, any other error (the backend cannot be read) is returned as the call's.
///
/// # Errors
/// The read's error, unless it is [`BackendError::Corrupt`].
pub fn lookup(read: Result<Option<ResultRecord>, BackendError>) -> Result<Lookup, BackendError> {
    match read {
        Err(e @ BackendError::Corrupt { .. }) => Ok(Err(e)),
        other => other.map(Ok),
    }
}

/// Publishes jobs a backend creates (a chord's body and errbacks) on the worker's
/// broker. The worker hands one in; a backend never holds a broker.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Enqueues `jobs` on their queues.
    ///
    /// # Errors
    /// [`BackendError`]; then none, some or all may have been enqueued (at-least-once).
    async fn publish(&self, jobs: &[Job]) -> Result<(), BackendError>;
}

/// Where states and results are stored and read back.
#[async_trait]
pub trait ResultBackend: Send + Sync {
    /// Stores a batch of records, each replacing the earlier record for its id, with
    /// two exceptions every backend keeps:
    ///
    /// - a terminal state is never overwritten by a non-terminal one (a late STARTED
    ///   must not hide a SUCCESS);
    /// - on Celery-compatible backends (Redis) a stored SUCCESS is final, as Celery's
    ///   own backend guards it; the embedded SQLite backend lets the latest terminal
    ///   record of an at-least-once job win. [`ResultBackend::success_is_final`] says
    ///   which.
    ///
    /// # Errors
    /// [`BackendError`] if nothing could be written; then none of the batch was stored.
    async fn store(&self, records: &[ResultRecord]) -> Result<(), BackendError>;

    /// The latest record for `id`, or `None` if the backend knows nothing of it (PENDING).
    ///
    /// # Errors
    /// [`BackendError`] on connection failure or a corrupt record.
    async fn get(&self, id: &str) -> Result<Option<ResultRecord>, BackendError>;

    /// The latest records for `ids`, in the order of `ids` (`None` where the backend
    /// knows nothing of an id): what a client waiting on many jobs polls. One id's
    /// record that cannot be decoded is that id's [`BackendError::Corrupt`]; the others
    /// are still read. The default asks [`ResultBackend::get`] once per id; backends
    /// that can read many in one round trip override it (SQLite: one read transaction
    /// on one reader connection; Redis: `MGET`).
    ///
    /// # Errors
    /// [`BackendError`] when the backend cannot be read at all (connection failure);
    /// then nothing is returned for any id.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Lookup>, BackendError> {
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            records.push(lookup(self.get(id).await)?);
        }
        Ok(records)
    }

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

    /// Counts a chord header job's final `record` towards its chord and, when it was
    /// the last part, publishes the chord body through `publisher` (or stores the
    /// body's `ChordError` FAILURE and publishes its errbacks when a part failed). The
    /// worker calls it after storing `record` and before acking; it does nothing for
    /// records that are not final or belong to no chord (see
    /// [`ChordMembership`](crate::model::ChordMembership)).
    ///
    /// The default does nothing: only backends that keep Celery's chord bookkeeping
    /// (docs/PROTOCOL.md §8.5, the Redis backend) can complete chords.
    ///
    /// # Errors
    /// [`BackendError`]; the header job should then not be acked, so that its
    /// redelivery counts the part again (counting is idempotent per task id).
    async fn on_chord_part_return(
        &self,
        record: &ResultRecord,
        publisher: &dyn Publisher,
    ) -> Result<(), BackendError> {
        let _ = (record, publisher);
        Ok(())
    }

    /// Whether a stored SUCCESS is never replaced (Celery's guard, kept by the Redis
    /// backend). Default: false (the latest terminal record wins).
    fn success_is_final(&self) -> bool {
        false
    }

    /// Whether this backend completes chords ([`ResultBackend::on_chord_part_return`]).
    /// Default: false.
    fn supports_chords(&self) -> bool {
        false
    }
}
