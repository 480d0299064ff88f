//! The `rpc://` result backend: results as messages, the way Celery's RPC backend sends
//! and reads them.
//!
//! A worker sends each record of a job (STARTED, RETRY, the final state) to the queue
//! the job's message named in `reply_to` ([`ResultRecord::reply_to`]), through
//! RabbitMQ's default exchange, with `correlation_id` = the task id and the result
//! meta JSON Celery stores elsewhere (`{task_id, status, result, traceback, children,
//! …}`) as body, non-persistent like Celery's (`result_persistent` off), after a
//! publisher confirm. A message without `reply_to` gets no result, as in Celery.
//!
//! A producer reads: opening the backend declares this process's reply queue (named
//! by [`message::process_oid`], which every message the process publishes carries as
//! `reply_to`; non-durable, auto-deleted, `x-expires` = the result expiry) and consumes
//! it (one consumer per process and server, shared by every handle), keeping the
//! latest record per task id in memory for [`ResultBackend::get`] and
//! [`ResultBackend::wait`]; `get` first makes round trips on the consuming channel,
//! so a result whose `store` returned is seen. Nothing is stored anywhere else: another process cannot
//! read these results, `recent`/`counts` are empty, and chords — which count parts in
//! the backend — need a backend that stores (`redis://`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Notify;

use super::{BackendError, ResultBackend};
use crate::celery::{message, result};
use crate::model::{DEFAULT_RESULT_EXPIRES, ResultRecord};
use crate::storage::amqp::{AmqpOptions, is_connection};

/// The most results kept in memory for reading (oldest dropped first).
const KEPT: usize = 100_000;

struct Link {
    conn: Connection,
    publish: Channel,
    consume: Channel,
}

#[derive(Default)]
struct Received {
    records: HashMap<String, ResultRecord>,
    order: VecDeque<String>,
}

/// What every `rpc://` backend of this process on one server shares: the connection
/// and the one consumer of the process's reply queue (so each handle reads every
/// result, as Celery's app-wide result consumer does).
struct Shared {
    opts: AmqpOptions,
    expires: Duration,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    received: Arc<Mutex<Received>>,
    arrived: Arc<Notify>,
}

/// The shared parts per server (URL without Sprout's keys), while some backend uses them.
fn registry() -> &'static Mutex<HashMap<String, Weak<Shared>>> {
    static SHARED: OnceLock<Mutex<HashMap<String, Weak<Shared>>>> = OnceLock::new();
    SHARED.get_or_init(Mutex::default)
}

/// Results as messages to each producer's `reply_to` queue (Celery's `rpc://`).
pub struct RpcBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RpcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcBackend")
            .field("url", &self.shared.opts.display())
            .field("reply_to", &message::process_oid())
            .finish_non_exhaustive()
    }
}

fn backend_error(e: lapin::Error) -> BackendError {
    if is_connection(&e) {
        BackendError::Connection(e.to_string())
    } else {
        BackendError::Other(e.to_string())
    }
}

impl RpcBackend {
    /// Connects through the broker's server, declares this process's reply queue and
    /// starts reading it (once per process and server: backends opened on the same
    /// server share the connection and what it received). `result_expires` (default
    /// one day) is the reply queue's `x-expires`.
    ///
    /// # Errors
    /// [`BackendError::Connection`] when RabbitMQ cannot be reached.
    pub async fn connect(
        opts: AmqpOptions,
        result_expires: Option<Duration>,
    ) -> Result<RpcBackend, BackendError> {
        let key = opts.uri().to_string();
        let shared = {
            let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(shared) => shared,
                None => {
                    let shared = Arc::new(Shared {
                        opts,
                        expires: result_expires
                            .filter(|d| !d.is_zero())
                            .unwrap_or(DEFAULT_RESULT_EXPIRES),
                        link: tokio::sync::Mutex::new(None),
                        received: Arc::default(),
                        arrived: Arc::new(Notify::new()),
                    });
                    map.insert(key, Arc::downgrade(&shared));
                    shared
                }
            }
        };
        shared.link().await?;
        Ok(RpcBackend { shared })
    }

    /// The queue this backend reads results from: the `reply_to` of what this process
    /// publishes.
    pub fn reply_queue(&self) -> &'static str {
        message::process_oid()
    }
}

impl Shared {
    /// The current connection; a new one (reply queue declared and consumed again)
    /// when it dropped.
    async fn link(&self) -> Result<Arc<Link>, BackendError> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref()
            && link.conn.status().connected()
            && link.publish.status().connected()
            && link.consume.status().connected()
        {
            return Ok(link.clone());
        }
        let conn = self
            .opts
            .connect()
            .await
            .map_err(BackendError::Connection)?;
        let publish = conn.create_channel().await.map_err(backend_error)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(backend_error)?;
        let consume = conn.create_channel().await.map_err(backend_error)?;
        let mut args = FieldTable::default();
        let ms = i64::try_from(self.expires.as_millis()).unwrap_or(i64::MAX);
        // Celery declares its reply queue with `expires`, written as an int ('I' or 'l').
        args.insert(
            "x-expires".into(),
            i32::try_from(ms).map_or(AMQPValue::LongLongInt(ms), AMQPValue::LongInt),
        );
        let queue = message::process_oid();
        consume
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(backend_error)?;
        let consumer = consume
            .basic_consume(
                queue.into(),
                format!("sprout-rpc-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(backend_error)?;
        let (received, arrived) = (Arc::downgrade(&self.received), self.arrived.clone());
        // Runs inside the client's I/O loop: after a round trip on `consume`, every
        // result pushed before it is in `received`.
        consumer.set_delegate(move |delivery: DeliveryResult| {
            if let Ok(Some(d)) = delivery
                && let Some(received) = received.upgrade()
            {
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_string());
                receive(&received, id, &d.data);
                arrived.notify_waiters();
            }
            async {}
        });
        let link = Arc::new(Link {
            conn,
            publish,
            consume,
        });
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Round trips on the consuming channel until every result RabbitMQ held for this
    /// process when it was called has been received: while the reply queue still holds
    /// results it has not sent and that backlog shrinks (a large one reaches the channel
    /// in batches), and then once more, because RabbitMQ's channel may answer a passive
    /// declare before it forwards the deliveries that reached it meanwhile. A backlog
    /// that does not shrink (other workers keep sending) ends the wait, as does
    /// [`SYNC_AT_MOST`].
    async fn sync(&self) -> Result<(), BackendError> {
        let link = self.link().await?;
        let until = tokio::time::Instant::now() + SYNC_AT_MOST;
        let mut last: Option<u32> = None;
        loop {
            let left = unsent_results(&link).await?;
            let shrinking = left > 0
                && last.is_none_or(|last| left < last)
                && tokio::time::Instant::now() < until;
            if !shrinking {
                break;
            }
            last = Some(left);
        }
        unsent_results(&link).await.map(|_| ())
    }
}

/// A round trip on the consuming channel (a passive declare of this process's reply
/// queue): how many results the queue holds that RabbitMQ has not sent us yet.
async fn unsent_results(link: &Link) -> Result<u32, BackendError> {
    let queue = link
        .consume
        .queue_declare(
            message::process_oid().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(backend_error)?;
    Ok(queue.message_count())
}

/// The longest [`Shared::sync`] waits for a shrinking backlog of results.
const SYNC_AT_MOST: Duration = Duration::from_secs(2);

/// Keeps a received result (unreadable ones are logged and dropped).
fn receive(received: &Mutex<Received>, correlation_id: Option<String>, body: &[u8]) {
    let id = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("task_id")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .or(correlation_id);
    let Some(id) = id else {
        tracing::warn!("rpc result without a task id; dropped");
        return;
    };
    let record = match result::decode_meta(&id, body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%id, "unreadable rpc result dropped: {e}");
            return;
        }
    };
    let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
    // A terminal state is never replaced by a later non-terminal one.
    if let Some(old) = r.records.get(&id)
        && old.state.is_terminal()
        && !record.state.is_terminal()
    {
        return;
    }
    if r.records.insert(id.clone(), record).is_none() {
        r.order.push_back(id);
        while r.order.len() > KEPT {
            if let Some(old) = r.order.pop_front() {
                r.records.remove(&old);
            }
        }
    }
}

#[async_trait]
impl ResultBackend for RpcBackend {
    async fn store(&self, records: &[ResultRecord]) -> Result<(), BackendError> {
        let sendable: Vec<&ResultRecord> = records
            .iter()
            .filter(|r| !r.celery.as_ref().is_some_and(|c| c.ignore_result))
            .collect();
        if sendable.is_empty() {
            return Ok(());
        }
        let link = self.shared.link().await?;
        let mut confirms = Vec::with_capacity(sendable.len());
        for record in sendable {
            let reply_to = record.reply_to.as_deref().unwrap_or(message::process_oid());
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_correlation_id(record.id.as_str().into())
                .with_delivery_mode(1);
            let confirm = link
                .publish
                .basic_publish(
                    "".into(),
                    reply_to.into(),
                    BasicPublishOptions::default(),
                    result::encode_meta(record).as_bytes(),
                    props,
                )
                .await
                .map_err(backend_error)?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await.map_err(backend_error)?;
            if confirmation.is_nack() {
                return Err(BackendError::Other(
                    "RabbitMQ did not accept a result (publisher confirm nack)".into(),
                ));
            }
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ResultRecord>, BackendError> {
        self.shared.sync().await?;
        let r = self
            .shared
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(r.records.get(id).cloned())
    }

    async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultRecord>, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let record = self.get(id).await?;
            if record.as_ref().is_some_and(|r| r.state.is_terminal())
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(record);
            }
            // Wakes on any result, and at least every second to notice a dropped
            // connection (reconnecting declares the reply queue again).
            let step = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(step) => {}
            }
        }
    }
}
