//! The one place a delivery ends.
//!
//! Every way a delivery can end — success, failure, retry, revoke, expire, dead-letter,
//! release on shutdown, and a panic anywhere in handling it — is a [`Settle`] sent to
//! the [`Settler`], which writes it with one ordering rule:
//!
//! ```text
//! publish follow-ups → store results → count chord parts → ack | retry | dead-letter | release
//! ```
//!
//! Results are stored before the delivery is acknowledged (acks-late, at-least-once):
//! if the worker dies in between, the job runs again and its result is written again.
//! Settles are written in batches (one publish, one store, one ack for many jobs).
//!
//! Failures while settling are decided by the error's policy predicate: a connection
//! error ([`BrokerError::is_connection_error`], [`BackendError::is_connection_error`])
//! is retried with backoff until it goes through; any other error, or a panic inside a
//! broker or backend call, is retried once per delivery on its own, and a delivery that
//! still cannot be settled is dead-lettered with the reason (or, when even that fails,
//! released), so one poisoned result never holds up the others. Whatever happens, the
//! delivery leaves the in-flight set, so its lease is no longer extended.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;

use super::observe::{BrokerOp, JobObserver};
use crate::backend::{BackendError, Publisher, ResultBackend};
use crate::broker::{Broker, BrokerError, DeliveryTag};
use crate::model::{Job, ResultRecord};

/// How a delivery ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The job finished (SUCCESS, FAILURE or REVOKED): publish its follow-ups, store its
    /// records, then ack.
    Complete {
        /// Final records (the job's, plus any the workflow adds).
        records: Vec<ResultRecord>,
        /// Follow-up jobs (chain steps, callbacks, errbacks).
        publish: Vec<Job>,
    },
    /// The attempt failed and runs again: store the RETRY record, then replace the
    /// delivery by `next`.
    Retry {
        /// The RETRY record.
        records: Vec<ResultRecord>,
        /// The next attempt.
        next: Box<Job>,
    },
    /// The message cannot be run at all: store the records (a FAILURE under its id, when
    /// it could be read), then move it to the dead letters with `reason`.
    DeadLetter {
        /// Records to store first (may be empty).
        records: Vec<ResultRecord>,
        /// Why; kept with the dead letter.
        reason: String,
    },
    /// Put the delivery back, unchanged, for another worker (shutdown).
    Release,
}

/// One delivery's end: its tag and how it ends.
#[derive(Debug)]
pub(crate) struct Settle {
    /// The delivery.
    pub tag: DeliveryTag,
    /// How it ends.
    pub ending: Ending,
}

impl Settle {
    fn records(&self) -> &[ResultRecord] {
        match &self.ending {
            Ending::Complete { records, .. }
            | Ending::Retry { records, .. }
            | Ending::DeadLetter { records, .. } => records,
            Ending::Release => &[],
        }
    }

    fn publish(&self) -> &[Job] {
        match &self.ending {
            Ending::Complete { publish, .. } => publish,
            _ => &[],
        }
    }
}

/// The deliveries this worker holds (running, waiting or being settled), whose leases
/// the worker keeps extending until they are settled.
pub(crate) type InFlight = Arc<Mutex<HashSet<DeliveryTag>>>;

/// Publishes a backend's jobs (chord bodies) on a broker: what the worker hands a
/// result backend so that it never holds a broker itself.
#[derive(Clone)]
pub struct BrokerPublisher {
    broker: Arc<dyn Broker>,
}

impl BrokerPublisher {
    /// A publisher onto `broker`.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        BrokerPublisher { broker }
    }
}

#[async_trait]
impl Publisher for BrokerPublisher {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BackendError> {
        self.broker.publish(jobs).await.map_err(|e| {
            if e.is_connection_error() {
                BackendError::Connection(e.to_string())
            } else {
                BackendError::Other(format!("publishing on the broker: {e}"))
            }
        })
    }
}

/// Why one step of settling failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("panic: {0}")]
    Panic(String),
}

impl StepError {
    /// Waiting and trying again may help: the server was unreachable.
    fn is_connection_error(&self) -> bool {
        match self {
            StepError::Broker(e) => e.is_connection_error(),
            StepError::Backend(e) => e.is_connection_error(),
            StepError::Panic(_) => false,
        }
    }
}

/// Runs `step`, turning a panic inside it into [`StepError::Panic`].
async fn guarded<T>(
    step: impl std::future::Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    match AssertUnwindSafe(step).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(StepError::Panic(crate::panics::message(panic.as_ref()))),
    }
}

/// First wait before retrying a step that failed on the connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Writes settles: the only code that stores a delivery's results and acks, retries,
/// dead-letters or releases it.
pub(crate) struct Settler {
    pub broker: Arc<dyn Broker>,
    pub backend: Arc<dyn ResultBackend>,
    pub publisher: BrokerPublisher,
    pub in_flight: InFlight,
    /// Told of failed round trips (metrics).
    pub observer: Arc<dyn JobObserver>,
}

impl Settler {
    /// Settles a batch. Never panics and never gives up on a delivery: each one ends
    /// settled, dead-lettered or released, and leaves the in-flight set.
    pub async fn settle(&self, batch: Vec<Settle>) {
        if batch.is_empty() {
            return;
        }
        let tags: Vec<DeliveryTag> = batch.iter().map(|s| s.tag.clone()).collect();
        if let Err(e) = self.write_with_backoff(&batch).await {
            tracing::warn!(
                "settling {} deliveries together failed ({e}); settling each on its own",
                batch.len()
            );
            for settle in batch {
                self.settle_alone(settle).await;
            }
        }
        self.forget(&tags);
    }

    /// [`Settler::write`], repeated with backoff while it fails on the connection.
    async fn write_with_backoff(&self, batch: &[Settle]) -> Result<(), StepError> {
        let mut delay = FIRST_BACKOFF;
        loop {
            let result = guarded(self.write(batch)).await;
            if let Err(e) = &result {
                self.observer
                    .broker_error(BrokerOp::Settle, e.is_connection_error());
            } else if delay > FIRST_BACKOFF {
                self.observer.reconnected();
            }
            match result {
                Err(e) if e.is_connection_error() => {
                    tracing::warn!(
                        "settling {} deliveries failed, retrying in {delay:?}: {e}",
                        batch.len()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                other => return other,
            }
        }
    }

    /// One delivery that could not be settled in its batch: try it alone; if that still
    /// fails for a reason other than the connection, dead-letter it with the reason.
    async fn settle_alone(&self, settle: Settle) {
        let batch = [settle];
        let Err(e) = self.write_with_backoff(&batch).await else {
            return;
        };
        let [settle] = batch;
        let reason = format!("could not be settled: {e}");
        tracing::error!(tag = ?settle.tag, "dead-lettering a delivery that {reason}");
        let tag = settle.tag;
        let dead = guarded(async { Ok(self.broker.dead_letter(&tag, &reason).await?) }).await;
        if let Err(e) = dead {
            tracing::error!(tag = ?tag, "dead-letter failed too ({e}); releasing it");
            let _ =
                guarded(async { Ok(self.broker.release(std::slice::from_ref(&tag)).await?) }).await;
        }
    }

    /// The ordering rule: publish follow-ups, store, count chord parts, then settle the
    /// deliveries with the broker.
    async fn write(&self, batch: &[Settle]) -> Result<(), StepError> {
        let publish: Vec<Job> = batch.iter().flat_map(|s| s.publish()).cloned().collect();
        if !publish.is_empty() {
            self.broker.publish(&publish).await?;
        }
        let records: Vec<ResultRecord> = batch.iter().flat_map(|s| s.records()).cloned().collect();
        if !records.is_empty() {
            self.backend.store(&records).await?;
        }
        if self.backend.supports_chords() {
            for record in records.iter().filter(|r| is_chord_part(r)) {
                self.backend
                    .on_chord_part_return(record, &self.publisher)
                    .await?;
            }
        } else if let Some(part) = records.iter().find(|r| is_chord_part(r)) {
            tracing::error!(
                id = %part.id,
                "job {} is part of a chord, but this result backend does not store results \
                 it can count: the chord's body will not run. Chords need a storing result \
                 backend (--result-backend redis://…)",
                part.id
            );
        }
        self.finish(batch).await
    }

    /// Acks, retries, dead-letters or releases each delivery of the batch. A delivery
    /// the broker no longer holds is skipped: its lease was lost and another worker owns
    /// it now, or an earlier try of this batch settled it and only the answer was lost.
    async fn finish(&self, batch: &[Settle]) -> Result<(), StepError> {
        let mut acks = Vec::new();
        let mut releases = Vec::new();
        for settle in batch {
            let result = match &settle.ending {
                Ending::Complete { .. } => {
                    acks.push(settle.tag.clone());
                    Ok(())
                }
                Ending::Release => {
                    releases.push(settle.tag.clone());
                    Ok(())
                }
                Ending::Retry { next, .. } => self.broker.retry(&settle.tag, next).await,
                Ending::DeadLetter { reason, .. } => {
                    self.broker.dead_letter(&settle.tag, reason).await
                }
            };
            match result {
                Err(BrokerError::UnknownDelivery(tag)) => {
                    tracing::warn!(
                        ?tag,
                        "the broker no longer holds this delivery: its lease was lost to \
                         another worker, or an earlier try of this settle went through \
                         before its answer was lost"
                    )
                }
                other => other?,
            }
        }
        if !acks.is_empty() {
            self.broker.ack(&acks).await?;
        }
        if !releases.is_empty() {
            self.broker.release(&releases).await?;
            tracing::info!(
                "released {} unfinished job(s) for redelivery",
                releases.len()
            );
        }
        Ok(())
    }

    /// Stops extending the leases of `tags`.
    fn forget(&self, tags: &[DeliveryTag]) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for tag in tags {
            in_flight.remove(tag);
        }
    }
}

/// A final record of a chord header job.
fn is_chord_part(record: &ResultRecord) -> bool {
    record.state.is_terminal()
        && record
            .celery
            .as_ref()
            .is_some_and(|c| c.chord.is_some() && c.group_id.is_some())
}
