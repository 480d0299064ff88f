//! The producer side for programs: send jobs and read their results.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sprout::client::Client;
//! use sprout::model::Job;
//! let client = Client::connect("sqlite:sprout.db").await?;
//! let id = client.send(Job::new("add", vec![2.into(), 3.into()], Default::default())).await?;
//! let record = client.wait(&id, std::time::Duration::from_secs(10)).await?;
//! println!("{:?}", record.and_then(|r| r.result));
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{BackendError, Lookup, ResultBackend};
use crate::broker::{Broker, BrokerError};
use crate::connect::{self, ConnectError, ConnectOptions};
use crate::model::Job;
use crate::model::ResultRecord;

/// The most results [`Client::wait_many`] reads in one round trip.
pub const WAIT_MANY_WINDOW: usize = 256;

/// How long [`Client::wait_many`] waits before looking again when some of the oldest
/// pending jobs have not finished.
pub const WAIT_MANY_POLL: Duration = Duration::from_millis(2);

/// A connection to a broker and its result backend.
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
}

impl Client {
    /// Connects to the broker at `url` and its own result store (see
    /// [`connect::connect`]).
    ///
    /// # Errors
    /// [`ConnectError`] when the URL is unsupported or unreachable.
    pub async fn connect(url: &str) -> Result<Client, ConnectError> {
        let connection = connect::connect(url).await?;
        Ok(Client {
            broker: connection.broker,
            backend: connection.backend,
        })
    }

    /// Connects to the broker at `broker_url` and the result backend `options` name.
    ///
    /// # Errors
    /// [`ConnectError`] when a URL is unsupported or unreachable.
    pub async fn connect_with(
        broker_url: &str,
        options: &ConnectOptions,
    ) -> Result<Client, ConnectError> {
        let connection = connect::connect_with(broker_url, options).await?;
        Ok(Client {
            broker: connection.broker,
            backend: connection.backend,
        })
    }

    /// A client over existing parts.
    pub fn new(broker: Arc<dyn Broker>, backend: Arc<dyn ResultBackend>) -> Self {
        Client { broker, backend }
    }

    /// Enqueues one job; returns its id.
    ///
    /// # Errors
    /// [`BrokerError`].
    pub async fn send(&self, job: Job) -> Result<String, BrokerError> {
        let id = job.id.clone();
        self.broker.publish(std::slice::from_ref(&job)).await?;
        Ok(id)
    }

    /// Enqueues many jobs in one batch.
    ///
    /// # Errors
    /// [`BrokerError`].
    pub async fn send_many(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        self.broker.publish(jobs).await
    }

    /// The latest record for a job (`None` = PENDING: not known to the backend).
    ///
    /// # Errors
    /// [`BackendError`].
    pub async fn result(&self, id: &str) -> Result<Option<ResultRecord>, BackendError> {
        self.backend.get(id).await
    }

    /// The latest records for many jobs, in the order of `ids` (`None` = PENDING; a
    /// record that cannot be decoded is that job's [`BackendError::Corrupt`]), read in
    /// one round trip where the backend can.
    ///
    /// # Errors
    /// [`BackendError`] when the backend cannot be read at all.
    pub async fn results(&self, ids: &[String]) -> Result<Vec<Lookup>, BackendError> {
        self.backend.get_many(ids).await
    }

    /// Waits until every job of `ids` finishes or `timeout` passes; returns the latest
    /// records in the order of `ids` (non-terminal or `None` for those still unfinished
    /// at the deadline). A job whose stored record cannot be decoded is done waiting:
    /// its entry is that [`BackendError::Corrupt`], and the others are still waited on.
    ///
    /// Polls with [`Client::results`] in oldest-first windows that follow the rate
    /// results arrive at: a window that came back all finished doubles (and is read
    /// again at once), one that did not shrinks to what had finished and waits
    /// [`WAIT_MANY_POLL`]. Waiting on 10,000 jobs so costs about one lookup per result
    /// plus one per poll, not one round trip per job per poll.
    ///
    /// # Errors
    /// [`BackendError`] when the backend cannot be read (then nothing is returned).
    pub async fn wait_many(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<Vec<Lookup>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut records: Vec<Lookup> = ids.iter().map(|_| Ok(None)).collect();
        // Indexes into `ids` of the unfinished jobs, oldest first.
        let mut pending: std::collections::VecDeque<usize> = (0..ids.len()).collect();
        let mut window = 1;
        while !pending.is_empty() {
            let past_deadline = tokio::time::Instant::now() >= deadline;
            // At the deadline, read everything still pending once more and stop.
            let take = if past_deadline {
                pending.len()
            } else {
                window.min(pending.len())
            };
            let asked: Vec<usize> = pending.drain(..take).collect();
            let mut unfinished = Vec::new();
            for chunk in asked.chunks(WAIT_MANY_WINDOW) {
                let chunk_ids: Vec<String> = chunk.iter().map(|&i| ids[i].clone()).collect();
                let found = self.backend.get_many(&chunk_ids).await?;
                for (&i, record) in chunk.iter().zip(found) {
                    // Unreadable is as final as it gets: looking again reads the same bytes.
                    let finished = match &record {
                        Ok(record) => record.as_ref().is_some_and(|r| r.state.is_terminal()),
                        Err(_) => true,
                    };
                    records[i] = record;
                    if !finished {
                        unfinished.push(i);
                    }
                }
            }
            if past_deadline {
                break;
            }
            let finished = take - unfinished.len();
            for &i in unfinished.iter().rev() {
                pending.push_front(i);
            }
            if unfinished.is_empty() {
                window = (window * 2).min(WAIT_MANY_WINDOW);
            } else {
                window = finished.max(1);
                tokio::time::sleep_until(
                    deadline.min(tokio::time::Instant::now() + WAIT_MANY_POLL),
                )
                .await;
            }
        }
        Ok(records)
    }

    /// Waits until a job finishes or `timeout` passes; returns the latest record.
    ///
    /// # Errors
    /// [`BackendError`].
    pub async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultRecord>, BackendError> {
        self.backend.wait(id, timeout).await
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The result backend.
    pub fn backend(&self) -> &Arc<dyn ResultBackend> {
        &self.backend
    }
}
