//! Celery events on Redis: kombu sends the `celeryev` topic exchange as pub/sub,
//! `PUBLISH <key prefix>/<db>.celeryev/<routing key> <envelope>` (its `fanout_prefix`
//! and `fanout_patterns`, on by default for Celery), and receivers `PSUBSCRIBE
//! <key prefix>/<db>.celeryev/*`. Pub/sub channels are not per database, hence the
//! database number in the name.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use serde_json::Value;

use super::broker_error;
use crate::broker::BrokerError;
use crate::broker::events::EventSink;
use crate::celery::events as wire;
use crate::storage::redis::RedisOptions;

/// Publishes events where Celery's receivers on the same Redis database listen.
pub struct RedisEvents {
    conn: ConnectionManager,
    /// `<key prefix>/<db>.celeryev/`.
    channel_prefix: String,
}

impl std::fmt::Debug for RedisEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEvents")
            .field("channel_prefix", &self.channel_prefix)
            .finish_non_exhaustive()
    }
}

/// The channel prefix of the `celeryev` exchange for `opts`.
pub fn channel_prefix(opts: &RedisOptions) -> Result<String, BrokerError> {
    let db = opts.client()?.get_connection_info().redis_settings().db();
    Ok(opts.key(&format!("/{db}.{}/", wire::EXCHANGE)))
}

impl RedisEvents {
    /// Connects to the server in `opts` (its own connection, so events never wait
    /// behind a fetch).
    ///
    /// # Errors
    /// [`BrokerError::Connection`] when Redis cannot be reached.
    pub async fn connect(opts: &RedisOptions) -> Result<RedisEvents, BrokerError> {
        Ok(RedisEvents {
            conn: opts.connect().await?,
            channel_prefix: channel_prefix(opts)?,
        })
    }
}

#[async_trait]
impl EventSink for RedisEvents {
    async fn send(
        &self,
        routing_key: &str,
        hostname: &str,
        body: &Value,
    ) -> Result<(), BrokerError> {
        let channel = format!("{}{routing_key}", self.channel_prefix);
        let envelope = wire::envelope(body, routing_key, hostname);
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(envelope)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(broker_error)
    }
}
