//! Remote control on Redis, as kombu's Redis transport does it (capture:
//! `tests/celery/captures/monitor_control_events.txt`):
//!
//! - requests: `PUBLISH <prefix>/<db>.celery.pidbox <envelope>`; a worker listens with
//!   `PSUBSCRIBE` on the same name (kombu's `fanout_patterns`).
//! - replies: a client binds its reply queue `<oid>.reply.celery.pidbox` by adding
//!   `<oid>\x06\x16\x06\x16<queue>` to `<prefix>_kombu.binding.reply.celery.pidbox`, and
//!   pops it; a worker looks the routing key up in that set and `LPUSH`es to every
//!   queue bound to it (none bound: the client has gone, the reply is dropped).
//!
//! The key prefix is kombu's `global_keyprefix`, which kombu puts in front of pub/sub
//! channels too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::{OnceCell, mpsc};

use super::broker_error;
use crate::broker::BrokerError;
use crate::broker::mailbox::{LISTEN_BUFFER, Mailbox, collect_reply, forward};
use crate::celery::control::{self, ControlRequest, Reply, ReplyTo};
use crate::storage::redis::RedisOptions;

/// Longest wait between two reconnection attempts of the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The pidbox mailbox of a Redis broker.
pub struct RedisMailbox {
    opts: RedisOptions,
    client: redis::Client,
    db: i64,
    /// Opened on first use, on the runtime that first uses it.
    conn: OnceCell<ConnectionManager>,
}

impl RedisMailbox {
    /// The mailbox of the server and database in `opts`. Connects lazily.
    ///
    /// # Errors
    /// [`BrokerError::UnsupportedUrl`] when the URL is not one the Redis client takes.
    pub fn new(opts: RedisOptions) -> Result<Arc<RedisMailbox>, BrokerError> {
        let client = opts.client()?;
        let db = client.get_connection_info().redis_settings().db();
        Ok(Arc::new(RedisMailbox {
            opts,
            client,
            db,
            conn: OnceCell::new(),
        }))
    }

    /// The pub/sub channel requests are broadcast on.
    fn channel(&self) -> String {
        self.opts
            .key(&control::fanout_channel(self.db, control::EXCHANGE))
    }

    async fn conn(&self) -> Result<ConnectionManager, BrokerError> {
        self.conn
            .get_or_try_init(|| async { self.opts.connect().await.map_err(BrokerError::from) })
            .await
            .cloned()
    }
}

/// Subscribes and forwards requests until `tx` closes; reconnects with backoff.
async fn listen_loop(
    client: redis::Client,
    channel: String,
    tx: mpsc::Sender<ControlRequest>,
    first: redis::aio::PubSub,
) {
    let mut pubsub = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut sub = match pubsub.take() {
            Some(sub) => sub,
            None => {
                let connected = async {
                    let mut sub = client.get_async_pubsub().await?;
                    sub.psubscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(sub)
                };
                match connected.await {
                    Ok(sub) => {
                        backoff = Duration::from_millis(50);
                        sub
                    }
                    Err(e) => {
                        tracing::warn!("remote control: cannot subscribe to {channel}: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = tx.closed() => return,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        let mut messages = sub.on_message();
        loop {
            let msg = tokio::select! {
                msg = messages.next() => msg,
                _ = tx.closed() => return,
            };
            let Some(msg) = msg else {
                tracing::warn!("remote control: lost the subscription to {channel}; resubscribing");
                break;
            };
            forward(msg.get_payload_bytes(), &tx);
        }
    }
}

#[async_trait]
impl Mailbox for RedisMailbox {
    async fn listen(&self) -> Result<mpsc::Receiver<ControlRequest>, BrokerError> {
        let channel = self.channel();
        let mut sub = self.client.get_async_pubsub().await.map_err(broker_error)?;
        sub.psubscribe(&channel).await.map_err(broker_error)?;
        let (tx, rx) = mpsc::channel(LISTEN_BUFFER);
        tokio::spawn(listen_loop(self.client.clone(), channel, tx, sub));
        Ok(rx)
    }

    async fn reply(
        &self,
        request: &ControlRequest,
        hostname: &str,
        reply: Value,
    ) -> Result<(), BrokerError> {
        let Some(reply_to) = &request.reply_to else {
            return Ok(());
        };
        let mut conn = self.conn().await?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.opts.key(&control::binding_key(&reply_to.exchange)))
            .query_async(&mut conn)
            .await
            .map_err(broker_error)?;
        let body = control::encode_reply(
            hostname,
            request.ticket.as_deref(),
            &reply_to.routing_key,
            reply,
            1,
        );
        let queues: Vec<&str> = control::bound_queues(&members, &reply_to.routing_key).collect();
        if queues.is_empty() {
            tracing::debug!(
                "remote control: nobody waits for the reply to {} any more",
                request.method
            );
        }
        for queue in queues {
            redis::cmd("LPUSH")
                .arg(self.opts.key(queue))
                .arg(&body)
                .query_async::<()>(&mut conn)
                .await
                .map_err(broker_error)?;
        }
        Ok(())
    }

    async fn call(
        &self,
        mut request: ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Reply>, BrokerError> {
        let mut conn = self.conn().await?;
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        let binding = self
            .opts
            .key(&control::binding_key(control::REPLY_EXCHANGE));
        let member = control::reply_binding(&oid);
        let queue = self.opts.key(&control::reply_queue(&oid));
        request.ticket = Some(ticket.clone());
        request.reply_to = Some(ReplyTo {
            exchange: control::REPLY_EXCHANGE.into(),
            routing_key: oid,
        });
        redis::cmd("SADD")
            .arg(&binding)
            .arg(&member)
            .query_async::<()>(&mut conn)
            .await
            .map_err(broker_error)?;
        let expires = chrono::Utc::now().timestamp_micros() as f64 / 1e6 + timeout.as_secs_f64();
        let sent = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(control::encode_request(&request, expires, 1))
            .query_async::<i64>(&mut conn)
            .await
            .map_err(broker_error);
        let collected = match sent {
            Ok(_) => collect(&mut conn, &queue, &ticket, timeout, limit).await,
            Err(e) => Err(e),
        };
        // Unbind and drop the queue whatever happened, as kombu does.
        let _ = redis::pipe()
            .cmd("SREM")
            .arg(&binding)
            .arg(&member)
            .cmd("DEL")
            .arg(&queue)
            .query_async::<()>(&mut conn)
            .await;
        collected
    }
}

/// Pops replies to `ticket` from `queue` until `timeout` or `limit`.
async fn collect(
    conn: &mut ConnectionManager,
    queue: &str,
    ticket: &str,
    timeout: Duration,
    limit: Option<usize>,
) -> Result<Vec<Reply>, BrokerError> {
    let deadline = Instant::now() + timeout;
    let mut replies = Vec::new();
    let mut pause = Duration::from_millis(1);
    while limit.is_none_or(|l| replies.len() < l) {
        let popped: Option<Vec<u8>> = redis::cmd("RPOP")
            .arg(queue)
            .query_async(conn)
            .await
            .map_err(broker_error)?;
        match popped {
            Some(raw) => collect_reply(&raw, ticket, &mut replies),
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
    Ok(replies)
}
