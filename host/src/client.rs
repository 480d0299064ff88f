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

use crate::backend::{BackendError, ResultBackend};
use crate::broker::{Broker, BrokerError};
use crate::connect::{self, ConnectError, ConnectOptions};
use crate::model::Job;
use crate::model::ResultRecord;

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
