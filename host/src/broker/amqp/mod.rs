//! The AMQP 0-9-1 broker (RabbitMQ), speaking Celery protocol v2 as kombu's AMQP
//! transport does (`celery::amqp`), so Sprout workers, Celery workers and Celery
//! clients share one queue.
//!
//! # Declarations
//! Each queue is declared as Celery declares it: a durable direct exchange named after
//! the queue, the durable queue with [`AmqpOptions::queue_arguments`] (`x-max-priority`,
//! `x-queue-type` from the URL; none by default, as Celery), and a binding with the
//! queue's name as routing key. Whichever side declares first, the other's declaration
//! is equivalent; a mismatch is reported naming the URL keys that fix it. Declarations
//! run on a short-lived channel, so a refused one never takes the consumers down.
//!
//! # Consuming: prefetch, leases, acks
//! RabbitMQ pushes: the broker opens one consumer per queue it is asked to fetch from,
//! on one channel whose global `basic.qos` prefetch is what the worker holds at most
//! ([`Broker::set_prefetch`]: concurrency × prefetch multiplier). Deliveries are decoded
//! as they arrive (bytes stay bytes until then) into an in-memory buffer; `fetch` hands
//! them out best priority first (with `max_priority`), then in arrival order. A
//! zero-wait fetch first makes a round trip on the consuming channel (a passive
//! declare), after which everything RabbitMQ had pushed is in the buffer: a message
//! published before a fetch is seen by it.
//!
//! AMQP has no lease: a delivery stays unacknowledged until it is acked or its channel
//! closes, when RabbitMQ redelivers it (`redelivered` set; `delivery_count` 2, or the
//! quorum queue's `x-delivery-count` + 1). The lease is kept here: a handed-out delivery
//! whose lease runs out without an [`Broker::extend`] is rejected with requeue, so a
//! stuck caller's jobs come back like on the other brokers. A worker that dies closes
//! its connection, and RabbitMQ redelivers at once (no liveness records needed).
//!
//! Acks go to the channel the delivery came on, once: a delivery leaves the broker's
//! books before its ack is sent, and a delivery from a closed connection is never
//! acked on another (RabbitMQ has already put it back; acking it would close the
//! channel). So nothing is acked twice, and nothing unacked is lost.
//!
//! # eta and countdown
//! A message whose eta (or expiry) is in the future is held unacknowledged in memory,
//! as a Celery worker holds it, and the channel's prefetch is raised by one for it (up
//! to [`AmqpOptions::max_held`]), so waiting jobs never take a slot. It is handed out
//! from the first fetch at or after its time.
//!
//! # Retries, dead letters
//! `retry` publishes the next attempt with a publisher confirm, then acks. A dead letter
//! is the message's own bytes and properties, published (confirmed) to the `sprout.dead`
//! direct exchange and queue with the reason in the `x-sprout-reason` header (and
//! `x-sprout-queue`, `x-sprout-id`, `x-sprout-at`), then acked. The queue's own
//! `x-dead-letter-exchange` argument is not used: it would make Sprout's declaration
//! differ from Celery's.
//!
//! # Connection loss
//! Any call that finds the connection broken opens a new one (the worker's loop retries
//! with backoff), re-declares and re-subscribes its queues, and forgets the old
//! connection's buffer and leases: RabbitMQ redelivers those messages. A job finished
//! on the old connection is acked as a no-op and runs again (at-least-once).

mod dead;
mod link;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties};
use tokio::sync::Notify;
use tokio::time::Instant;

use self::link::Link;
use super::{Broker, BrokerError, DeadLetter, Delivery, DeliveryTag, QueueStats, due_at};
use crate::celery::amqp::{self as wire, AmqpProperties};
use crate::model::{DecodeError, Job};
use crate::storage::amqp::{AmqpOptions, map_of, table_of};

/// The prefetch window until the caller says how much it holds.
const DEFAULT_PREFETCH: usize = 1000;
/// The most AMQP allows for `basic.qos`.
const MAX_PREFETCH: usize = u16::MAX as usize;

/// A received message: what acks it, and its bytes for a dead letter.
struct Raw {
    generation: u64,
    delivery_tag: u64,
    acker: Acker,
    body: Vec<u8>,
    properties: BasicProperties,
}

/// A decoded delivery waiting in the buffer (or held for its eta).
struct Buffered {
    seq: u64,
    queue: String,
    job: Result<Job, DecodeError>,
    delivery_count: u32,
    raw: Raw,
}

/// A delivery handed out, until it is settled or its lease runs out.
struct Leased {
    queue: String,
    id: Option<String>,
    deadline: Instant,
    raw: Raw,
}

#[derive(Default)]
struct State {
    /// The current connection's generation.
    generation: u64,
    seq: u64,
    ready: Vec<Buffered>,
    /// eta messages by (due, seq).
    held: BTreeMap<(DateTime<Utc>, u64), Buffered>,
    leased: HashMap<String, Leased>,
    /// Queues declared on the current connection.
    declared: HashSet<String>,
    /// Queues with a consumer on the current connection.
    consuming: HashMap<String, String>,
    /// Queues this broker fetches from (subscribed again after a reconnect).
    wanted: HashSet<String>,
    /// The prefetch the caller asked for.
    prefetch: Option<usize>,
    /// The prefetch last sent on the current connection.
    qos_sent: Option<usize>,
    dead_declared: bool,
    /// Consumers cancelled at shutdown: their late deliveries are put back.
    stopped: bool,
}

struct Inner {
    opts: AmqpOptions,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    state: Mutex<State>,
    arrived: Notify,
}

/// A [`Broker`] on RabbitMQ, wire-compatible with Celery 5 (kombu's AMQP transport).
///
/// # Thread stacks
/// The AMQP client parses each message's headers recursively on a thread of its own,
/// ~1.5 KiB of stack per nesting level, and headers nested as deep as a 128 KiB frame
/// holds ([`MAX_FRAME`](crate::storage::amqp::MAX_FRAME)) need ~40 MiB. The `sprout`
/// binary gives its threads 64 MiB; a program embedding this broker must do the same
/// (`RUST_MIN_STACK=67108864` before its first thread starts), or one such message kills
/// it.
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.inner.opts.display())
            .finish_non_exhaustive()
    }
}

fn tag_of(generation: u64, delivery_tag: u64) -> String {
    format!("{generation}.{delivery_tag}")
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current connection, opening a new one if it is broken.
    /// The current connection if it is up; never connects.
    async fn link_if_up(&self) -> Option<Arc<Link>> {
        self.link
            .lock()
            .await
            .as_ref()
            .filter(|link| link.usable())
            .cloned()
    }

    async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref()
            && link.usable()
        {
            return Ok(link.clone());
        }
        if let Some(old) = slot.take() {
            tracing::warn!(
                "connection to {} lost; reconnecting (its unacked messages are redelivered)",
                self.opts.display()
            );
            old.close().await;
        }
        let generation = self.lock().generation + 1;
        let link = Arc::new(Link::open(&self.opts, generation).await?);
        {
            let mut state = self.lock();
            state.generation = generation;
            // The old connection's deliveries are back in their queues.
            state.ready.clear();
            state.held.clear();
            state.leased.clear();
            state.declared.clear();
            state.consuming.clear();
            state.qos_sent = None;
            state.dead_declared = false;
        }
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Declares `queues` not yet declared on this connection.
    async fn declare(&self, link: &Link, queues: &[&str]) -> Result<(), BrokerError> {
        for queue in queues {
            if self.lock().declared.contains(*queue) {
                continue;
            }
            link.declare(&self.opts, queue).await?;
            let mut state = self.lock();
            if state.generation == link.generation {
                state.declared.insert(queue.to_string());
            }
        }
        Ok(())
    }

    /// The prefetch to run with: what the caller asked, plus the held eta messages.
    fn wanted_prefetch(state: &State, max_held: usize) -> usize {
        let base = state.prefetch.unwrap_or(DEFAULT_PREFETCH).max(1);
        (base + state.held.len().min(max_held)).min(MAX_PREFETCH)
    }

    /// Sends `basic.qos` when the wanted prefetch changed.
    async fn sync_qos(&self, link: &Link) -> Result<(), BrokerError> {
        let want = {
            let state = self.lock();
            let want = Self::wanted_prefetch(&state, self.opts.max_held);
            if state.qos_sent == Some(want) {
                return Ok(());
            }
            want
        };
        link.consume
            .basic_qos(want as u16, BasicQosOptions { global: true })
            .await
            .map_err(|e| link.fail(e))?;
        let mut state = self.lock();
        if state.generation == link.generation {
            state.qos_sent = Some(want);
        }
        Ok(())
    }

    /// Declares and starts consuming `queues` (those not consumed yet); true when it
    /// started a consumer.
    async fn subscribe(
        self: &Arc<Self>,
        link: &Link,
        queues: &[String],
    ) -> Result<bool, BrokerError> {
        let fresh: Vec<String> = {
            let mut state = self.lock();
            state.stopped = false;
            state.wanted.extend(queues.iter().cloned());
            queues
                .iter()
                .filter(|q| !state.consuming.contains_key(*q))
                .cloned()
                .collect()
        };
        if fresh.is_empty() {
            self.sync_qos(link).await?;
            return Ok(false);
        }
        let names: Vec<&str> = fresh.iter().map(String::as_str).collect();
        self.declare(link, &names).await?;
        self.sync_qos(link).await?;
        for queue in fresh {
            {
                let mut state = self.lock();
                if state.consuming.contains_key(&queue) || state.generation != link.generation {
                    continue;
                }
                // Claimed before the await, so a concurrent fetch does not consume twice.
                state.consuming.insert(queue.clone(), String::new());
            }
            let tag = format!(
                "sprout-{}-{}",
                uuid::Uuid::new_v4().simple(),
                link.generation
            );
            let consumer = link
                .consume
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await;
            let consumer = match consumer {
                Ok(c) => c,
                Err(e) => {
                    self.lock().consuming.remove(&queue);
                    return Err(link.fail(e));
                }
            };
            let weak = Arc::downgrade(self);
            let (generation, broken) = (link.generation, link.broken.clone());
            let from = queue.clone();
            // Runs inside the client's I/O loop, before later frames are handled: after a
            // round trip on the channel, every earlier delivery is in the buffer.
            consumer.set_delegate(move |delivery: DeliveryResult| {
                match delivery {
                    Ok(Some(d)) => {
                        if let Some(inner) = weak.upgrade() {
                            inner.arrive(generation, &from, d);
                        }
                    }
                    Ok(None) | Err(_) => {
                        if let Some(inner) = weak.upgrade()
                            && !inner.lock().stopped
                        {
                            tracing::warn!(queue = %from, "consumer ended: {delivery:?}");
                            broken.store(true, Ordering::SeqCst);
                            inner.arrived.notify_waiters();
                        }
                    }
                }
                async {}
            });
            let mut state = self.lock();
            if state.generation == link.generation {
                state.consuming.insert(queue, tag);
            }
        }
        Ok(true)
    }

    /// A message pushed by RabbitMQ: decoded, then buffered or held for its eta.
    fn arrive(&self, generation: u64, queue: &str, d: lapin::message::Delivery) {
        let props = &d.properties;
        let text =
            |s: &Option<lapin::types::ShortString>| s.as_ref().map(|v| v.as_str().to_string());
        let (ctype, cenc, corr, reply) = (
            text(props.content_type()),
            text(props.content_encoding()),
            text(props.correlation_id()),
            text(props.reply_to()),
        );
        let headers = props.headers().as_ref();
        let quorum_count = headers
            .and_then(|h| h.inner().get("x-delivery-count"))
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
                AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
                _ => None,
            });
        let delivery_count = match quorum_count {
            Some(n) => n.saturating_add(1),
            None if d.redelivered => 2,
            None => 1,
        };
        let job = match headers
            .map(|h| map_of(h, ""))
            .unwrap_or_else(|| Ok(Default::default()))
        {
            Ok(map) => {
                let amqp_props = AmqpProperties {
                    content_type: ctype.as_deref(),
                    content_encoding: cenc.as_deref(),
                    correlation_id: corr.as_deref(),
                    reply_to: reply.as_deref(),
                    priority: *props.priority(),
                };
                wire::decode(map, &amqp_props, &d.data, queue, d.redelivered).map(|i| i.job)
            }
            Err(reason) => Err(DecodeError {
                reason,
                id: corr.clone(),
            }),
        };
        let tag = d.delivery_tag;
        let raw = Raw {
            generation,
            delivery_tag: tag,
            acker: d.acker,
            body: d.data,
            properties: d.properties,
        };
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        state.seq += 1;
        let buffered = Buffered {
            seq: state.seq,
            queue: queue.to_string(),
            job,
            delivery_count,
            raw,
        };
        match buffered
            .job
            .as_ref()
            .ok()
            .and_then(due_at)
            .filter(|at| *at > Utc::now())
        {
            Some(at) => {
                let seq = buffered.seq;
                state.held.insert((at, seq), buffered);
            }
            None => state.ready.push(buffered),
        }
        drop(state);
        self.arrived.notify_waiters();
    }

    /// Rejects (with requeue) handed-out deliveries whose lease ran out.
    async fn expire_leases(&self) {
        let now = Instant::now();
        let expired: Vec<(String, Leased)> = {
            let mut state = self.lock();
            if state.leased.values().all(|l| l.deadline > now) {
                return;
            }
            let tags: Vec<String> = state
                .leased
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(t, _)| t.clone())
                .collect();
            tags.into_iter()
                .filter_map(|t| state.leased.remove(&t).map(|l| (t, l)))
                .collect()
        };
        for (tag, leased) in expired {
            tracing::warn!(%tag, id = ?leased.id, "lease ran out without an ack; requeueing");
            let _ = leased
                .raw
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await;
        }
    }

    /// Takes due held messages and buffered ones of `queues`, up to `max`, and leases
    /// them.
    fn take(&self, queues: &[String], max: usize, lease: Duration) -> Vec<Delivery> {
        let now = Utc::now();
        let deadline = Instant::now() + lease;
        let mut state = self.lock();
        let mut picked: Vec<Buffered> = Vec::new();
        let due: Vec<(DateTime<Utc>, u64)> = state
            .held
            .range(..=(now, u64::MAX))
            .filter(|(_, b)| queues.contains(&b.queue))
            .map(|(k, _)| *k)
            .take(max)
            .collect();
        for key in due {
            if let Some(b) = state.held.remove(&key) {
                picked.push(b);
            }
        }
        let room = max - picked.len();
        if room > 0 && !state.ready.is_empty() {
            let max_priority = self.opts.max_priority;
            let mut order: Vec<usize> = (0..state.ready.len())
                .filter(|&i| queues.contains(&state.ready[i].queue))
                .collect();
            if let Some(top) = max_priority {
                let rank = |b: &Buffered| {
                    let p = b.job.as_ref().map(|j| j.priority).unwrap_or(0).min(top);
                    (std::cmp::Reverse(p), b.seq)
                };
                order.sort_by_key(|&i| rank(&state.ready[i]));
            }
            order.truncate(room);
            if !order.is_empty() {
                let chosen: HashSet<usize> = order.iter().copied().collect();
                let mut taken: HashMap<usize, Buffered> = HashMap::with_capacity(order.len());
                let mut keep = Vec::with_capacity(state.ready.len() - order.len());
                for (i, b) in std::mem::take(&mut state.ready).into_iter().enumerate() {
                    if chosen.contains(&i) {
                        taken.insert(i, b);
                    } else {
                        keep.push(b);
                    }
                }
                state.ready = keep;
                picked.extend(order.iter().filter_map(|i| taken.remove(i)));
            }
        }
        let mut out = Vec::with_capacity(picked.len());
        for b in picked {
            let tag = tag_of(b.raw.generation, b.raw.delivery_tag);
            let id = match &b.job {
                Ok(j) => Some(j.id.clone()),
                Err(e) => e.id.clone(),
            };
            state.leased.insert(
                tag.clone(),
                Leased {
                    queue: b.queue.clone(),
                    id,
                    deadline,
                    raw: b.raw,
                },
            );
            out.push(Delivery {
                tag: DeliveryTag(tag),
                queue: b.queue,
                job: b.job,
                delivery_count: b.delivery_count,
            });
        }
        out
    }

    /// The earliest time a fetch of `queues` must look again: a held message's due
    /// time or a lease's end.
    fn next_wake(&self, queues: &[String]) -> Option<Instant> {
        let state = self.lock();
        let due = state
            .held
            .iter()
            .find(|(_, b)| queues.contains(&b.queue))
            .map(|((at, _), _)| {
                let wait = (*at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                Instant::now() + wait
            });
        let lease = state.leased.values().map(|l| l.deadline).min();
        match (due, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A round trip on the consuming channel: afterwards every message RabbitMQ pushed
    /// before it is in the buffer.
    async fn sync(&self, link: &Link, queue: &str) -> Result<u32, BrokerError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = link
            .consume
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map_err(|e| link.fail(e))?;
        Ok(q.message_count())
    }

    /// Takes leased deliveries out of the books (each at most once).
    fn settle_tags(&self, tags: &[DeliveryTag]) -> Vec<Leased> {
        let mut state = self.lock();
        tags.iter()
            .filter_map(|t| state.leased.remove(&t.0))
            .collect()
    }

    /// Publishes `jobs` with publisher confirms.
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let link = self.link().await?;
        let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        self.declare(&link, &queues).await?;
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let msg = wire::encode(job);
            let props = BasicProperties::default()
                .with_content_type(wire::CONTENT_TYPE.into())
                .with_content_encoding(wire::CONTENT_ENCODING.into())
                .with_headers(table_of(&msg.headers))
                .with_delivery_mode(2)
                .with_priority(msg.priority)
                .with_correlation_id(msg.correlation_id.as_str().into())
                .with_reply_to(msg.reply_to.as_str().into());
            let confirm = link
                .publish
                .basic_publish(
                    msg.exchange.as_str().into(),
                    msg.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &msg.body,
                    props,
                )
                .await
                .map_err(|e| link.fail(e))?;
            confirms.push((job.id.as_str(), confirm));
        }
        confirm_all(&link, confirms).await
    }
}

/// Waits for the publisher confirms: a nack or a returned (unroutable) message is an
/// error naming the job.
async fn confirm_all(
    link: &Link,
    confirms: Vec<(&str, lapin::PublisherConfirm)>,
) -> Result<(), BrokerError> {
    for (id, confirm) in confirms {
        let confirmation = confirm.await.map_err(|e| link.fail(e))?;
        if confirmation.is_nack() {
            return Err(BrokerError::Other(format!(
                "RabbitMQ did not accept message {id} (publisher confirm nack)"
            )));
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(BrokerError::Other(format!(
                "message {id} was returned unroutable: {} {}",
                returned.reply_code, returned.reply_text
            )));
        }
    }
    Ok(())
}

impl AmqpBroker {
    /// A broker for the server in `opts`. Connects lazily: the first call that needs
    /// the server opens the connection (and reports if it cannot).
    pub fn new(opts: AmqpOptions) -> AmqpBroker {
        AmqpBroker {
            inner: Arc::new(Inner {
                opts,
                link: tokio::sync::Mutex::new(None),
                state: Mutex::new(State::default()),
                arrived: Notify::new(),
            }),
        }
    }

    /// Opens a broker and checks the server is there.
    ///
    /// # Errors
    /// [`BrokerError::Connection`] when RabbitMQ cannot be reached.
    pub async fn connect(opts: AmqpOptions) -> Result<AmqpBroker, BrokerError> {
        let broker = AmqpBroker::new(opts);
        broker.inner.link().await?;
        Ok(broker)
    }

    /// The options this broker runs with.
    pub fn options(&self) -> &AmqpOptions {
        &self.inner.opts
    }

    /// How many eta messages this broker holds.
    pub fn held(&self) -> usize {
        self.inner.lock().held.len()
    }

    /// Closes the current connection as if it had dropped (for tests of recovery):
    /// unacked messages go back to RabbitMQ, and the next call reconnects.
    pub async fn disconnect(&self) {
        let link = self.inner.link.lock().await.clone();
        if let Some(link) = link {
            link.close().await;
        }
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        self.inner.publish(jobs).await
    }

    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 || queues.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let deadline = Instant::now() + wait;
        let mut synced = false;
        loop {
            let link = inner.link().await?;
            let fresh = inner.subscribe(&link, queues).await?;
            let notified = inner.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if (fresh || wait.is_zero()) && !synced {
                // What RabbitMQ pushed to new consumers, or before a fetch that must
                // not wait, is in the buffer before anything is handed out (so a
                // fetch over several queues sees all of them, best priority first).
                synced = true;
                for queue in queues {
                    inner.sync(&link, queue).await?;
                }
            }
            inner.expire_leases().await;
            let got = inner.take(queues, max, lease);
            if !got.is_empty() {
                return Ok(got);
            }
            if !link.usable() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                if synced {
                    return Ok(Vec::new());
                }
                synced = true;
                let mut waiting = 0;
                for queue in queues {
                    waiting += inner.sync(&link, queue).await?;
                }
                if waiting > 0 && wait.is_zero() {
                    // Ready but not pushed yet (another consumer's turn, or our window
                    // full): give RabbitMQ a moment.
                    let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
                }
                continue;
            }
            let until = inner
                .next_wake(queues)
                .map_or(deadline, |w| w.min(deadline))
                .max(now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn extend(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        let deadline = Instant::now() + lease;
        {
            let mut state = self.inner.lock();
            for tag in tags {
                if let Some(l) = state.leased.get_mut(&tag.0) {
                    l.deadline = deadline;
                }
            }
        }
        self.inner.expire_leases().await;
        Ok(())
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let settled = self.inner.settle_tags(tags);
        let acks = settled
            .iter()
            .map(|l| l.raw.acker.ack(BasicAckOptions::default()));
        let mut lost = 0usize;
        for result in futures_util::future::join_all(acks).await {
            if !matches!(result, Ok(true)) {
                lost += 1;
            }
        }
        if lost > 0 {
            // Its channel is gone: RabbitMQ has put the messages back already.
            tracing::warn!("{lost} ack(s) lost with the connection; those jobs run again");
        }
        Ok(())
    }

    async fn release(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let settled = self.inner.settle_tags(tags);
        let rejects = settled
            .iter()
            .map(|l| l.raw.acker.reject(BasicRejectOptions { requeue: true }));
        futures_util::future::join_all(rejects).await;
        // RabbitMQ requeues a rejected message and may push it straight back to our
        // consumer, but that push can reach us after the reply to a later request on
        // the channel (the channel process answers a passive declare before it forwards
        // a delivery that came in meanwhile). Two round trips on the consuming channel
        // after the rejects put any such push in the buffer, so a fetch right after a
        // release sees the released jobs (message_count would not: they are ours again).
        if let Some(link) = self.inner.link_if_up().await {
            let mut queues: Vec<&str> = settled
                .iter()
                .filter(|l| l.raw.generation == link.generation)
                .map(|l| l.queue.as_str())
                .collect();
            queues.sort_unstable();
            queues.dedup();
            // A failed look changes nothing of the release (the rejects are sent).
            'queues: for queue in queues {
                for _ in 0..2 {
                    if self.inner.sync(&link, queue).await.is_err() {
                        break 'queues;
                    }
                }
            }
        }
        Ok(())
    }

    async fn retry(&self, tag: &DeliveryTag, job: &Job) -> Result<(), BrokerError> {
        if !self.inner.lock().leased.contains_key(&tag.0) {
            return Err(BrokerError::UnknownDelivery(tag.clone()));
        }
        let mut job = job.clone();
        // Celery's retry message names the task itself as parent (§5).
        if let Some(ctx) = job.celery.as_mut() {
            ctx.parent_id = Some(job.id.clone());
        }
        self.inner.publish(std::slice::from_ref(&job)).await?;
        self.ack(std::slice::from_ref(tag)).await
    }

    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        dead::bury(&self.inner, tag, reason).await
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let link = self.inner.link().await?;
        let channel = link.scratch().await?;
        let purged = channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await;
        let _ = channel.close(200, "purged".into()).await;
        let mut purged = match purged {
            Ok(n) => u64::from(n),
            Err(e) if link::is_not_found(&e) => 0,
            Err(e) => return Err(link.fail(e)),
        };
        // What this broker buffers or holds for the queue is waiting too.
        let local: Vec<Raw> = {
            let mut state = self.inner.lock();
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut state.ready)
                .into_iter()
                .partition(|b| b.queue == queue);
            state.ready = rest;
            let keys: Vec<_> = state
                .held
                .iter()
                .filter(|(_, b)| b.queue == queue)
                .map(|(k, _)| *k)
                .collect();
            let mut raws: Vec<Raw> = mine.into_iter().map(|b| b.raw).collect();
            raws.extend(
                keys.iter()
                    .filter_map(|k| state.held.remove(k))
                    .map(|b| b.raw),
            );
            raws
        };
        purged += local.len() as u64;
        let acks = local
            .iter()
            .map(|r| r.acker.ack(BasicAckOptions::default()));
        futures_util::future::join_all(acks).await;
        Ok(purged)
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, BrokerError> {
        dead::stats(&self.inner).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut all = dead::scan(&self.inner).await?;
        all.truncate(limit);
        Ok(all)
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        let link = self.inner.link.lock().await.clone();
        let (consumers, local) = {
            let mut state = self.inner.lock();
            state.stopped = true;
            state.wanted.clear();
            let consumers: Vec<String> = state.consuming.drain().map(|(_, t)| t).collect();
            let mut local: Vec<Raw> = std::mem::take(&mut state.ready)
                .into_iter()
                .map(|b| b.raw)
                .collect();
            local.extend(std::mem::take(&mut state.held).into_values().map(|b| b.raw));
            (consumers, local)
        };
        if let Some(link) = &link {
            for tag in consumers.iter().filter(|t| !t.is_empty()) {
                let _ = link
                    .consume
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
            }
        }
        if !local.is_empty() {
            tracing::info!(
                count = local.len(),
                "putting back prefetched and eta messages"
            );
        }
        let rejects = local
            .iter()
            .map(|r| r.acker.reject(BasicRejectOptions { requeue: true }));
        futures_util::future::join_all(rejects).await;
        // Deliveries that raced the cancel are put back as they arrive.
        let late: Vec<Raw> = {
            let mut state = self.inner.lock();
            let mut late: Vec<Raw> = std::mem::take(&mut state.ready)
                .into_iter()
                .map(|b| b.raw)
                .collect();
            late.extend(std::mem::take(&mut state.held).into_values().map(|b| b.raw));
            late
        };
        let rejects = late
            .iter()
            .map(|r| r.acker.reject(BasicRejectOptions { requeue: true }));
        futures_util::future::join_all(rejects).await;
        Ok(())
    }

    fn set_prefetch(&self, count: usize) {
        self.inner.lock().prefetch = Some(count.clamp(1, MAX_PREFETCH));
    }
}
