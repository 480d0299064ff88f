//! Where a worker's monitoring events go: the transport beside the broker.
//!
//! Celery's events (`-E`) are messages on the `celeryev` exchange; on Redis kombu sends
//! that exchange as pub/sub. An [`EventSink`] takes an event body the Celery codec built
//! (`crate::celery::events`) and sends it the broker's way: [`redis::events`] publishes
//! on the channel Celery's receivers (Flower, `celery events`) subscribe to. The embedded
//! SQLite broker has no subscribers to reach, so `crate::connect::events` gives no sink
//! for it and a worker's `-E` there sends nothing (it says so at start).
//!
//! [`redis::events`]: super::redis::events

use async_trait::async_trait;
use serde_json::Value;

use super::BrokerError;

/// Sends event messages on the broker's `celeryev` exchange.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Sends one event message: `body` (one event, or a list of task events for
    /// `task.multi`) under `routing_key`, from the worker `hostname`.
    ///
    /// # Errors
    /// [`BrokerError`]; the message is lost (events are not persistent in Celery
    /// either: nobody subscribed, nobody gets them).
    async fn send(
        &self,
        routing_key: &str,
        hostname: &str,
        body: &Value,
    ) -> Result<(), BrokerError>;
}
