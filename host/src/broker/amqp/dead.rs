//! Dead letters (the `sprout.dead` exchange and queue) and queue statistics.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::link::{DEAD, is_not_found};
use super::{Inner, confirm_all};
use crate::broker::{BrokerError, DeadLetter, DeliveryTag, QueueStats};
use crate::celery::isotime;
use crate::model::DEFAULT_QUEUE;
use crate::storage::amqp::long_string;

/// How many dead letters a listing reads at most (the newest are listed first).
const SCAN_LIMIT: usize = 10_000;

/// Header names on a dead letter.
const REASON: &str = "x-sprout-reason";
const QUEUE: &str = "x-sprout-queue";
const ID: &str = "x-sprout-id";
const AT: &str = "x-sprout-at";

/// Publishes the delivery's own bytes and properties, with the reason in its headers,
/// to the dead-letter exchange (confirmed), then acks the delivery.
pub(super) async fn bury(
    inner: &Inner,
    tag: &DeliveryTag,
    reason: &str,
) -> Result<(), BrokerError> {
    let link = inner.link().await?;
    let (body, properties, queue, id) = {
        let state = inner.lock();
        match state.leased.get(&tag.0) {
            Some(l) if l.raw.generation == link.generation => (
                l.raw.body.clone(),
                l.raw.properties.clone(),
                l.queue.clone(),
                l.id.clone(),
            ),
            _ => return Err(BrokerError::UnknownDelivery(tag.clone())),
        }
    };
    let declared = inner.lock().dead_declared;
    if !declared {
        link.declare_dead().await?;
        inner.lock().dead_declared = true;
    }
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(REASON.into(), long_string(reason));
    headers.insert(QUEUE.into(), long_string(&queue));
    headers.insert(
        ID.into(),
        id.as_deref().map_or(AMQPValue::Void, long_string),
    );
    headers.insert(AT.into(), long_string(&isotime::format(Utc::now())));
    let confirm = link
        .publish
        .basic_publish(
            DEAD.into(),
            DEAD.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties.with_headers(headers),
        )
        .await
        .map_err(|e| link.fail(e))?;
    let label = id.clone().unwrap_or_default();
    confirm_all(&link, vec![(label.as_str(), confirm)]).await?;
    for leased in inner.settle_tags(std::slice::from_ref(tag)) {
        let _ = leased.raw.acker.ack(BasicAckOptions::default()).await;
    }
    Ok(())
}

/// Every dead letter (up to [`SCAN_LIMIT`]), newest first. Reads the queue without
/// taking anything: the messages go back when the reading channel closes.
pub(super) async fn scan(inner: &Inner) -> Result<Vec<DeadLetter>, BrokerError> {
    let link = inner.link().await?;
    let declared = inner.lock().dead_declared;
    if !declared {
        link.declare_dead().await?;
        inner.lock().dead_declared = true;
    }
    let channel = link.scratch().await?;
    let mut out = Vec::new();
    let mut failure = None;
    while out.len() < SCAN_LIMIT {
        match channel
            .basic_get(DEAD.into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(message)) => out.push(entry(message.delivery.properties.headers())),
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let _ = channel.close(200, "listed".into()).await;
    if let Some(e) = failure {
        return Err(link.fail(e));
    }
    out.reverse();
    Ok(out)
}

fn entry(headers: &Option<FieldTable>) -> DeadLetter {
    let text = |key: &str| -> Option<String> {
        match headers.as_ref()?.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    };
    DeadLetter {
        id: text(ID),
        queue: text(QUEUE).unwrap_or_default(),
        reason: text(REASON).unwrap_or_default(),
        at: text(AT)
            .and_then(|at| isotime::parse(&at).ok())
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    }
}

/// Depths of the queues this broker knows (and Celery's default queue): ready
/// (RabbitMQ's ready count plus what this broker buffers), scheduled (held eta
/// messages), leased (handed out) and dead.
pub(super) async fn stats(inner: &Inner) -> Result<Vec<QueueStats>, BrokerError> {
    let link = inner.link().await?;
    let queues: BTreeSet<String> = {
        let state = inner.lock();
        let mut q: BTreeSet<String> = state.wanted.iter().cloned().collect();
        q.extend(state.declared.iter().cloned());
        q.insert(DEFAULT_QUEUE.to_string());
        q
    };
    let mut dead: HashMap<String, u64> = HashMap::new();
    for letter in scan(inner).await? {
        *dead.entry(letter.queue).or_default() += 1;
    }
    let mut out = Vec::new();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    for queue in queues {
        // A passive declare of a missing queue closes its channel: one channel each.
        let channel = link.scratch().await?;
        let declared = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await;
        let _ = channel.close(200, "counted".into()).await;
        let server_ready = match declared {
            Ok(q) => u64::from(q.message_count()),
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(link.fail(e)),
        };
        let state = inner.lock();
        let count = |n: usize| n as u64;
        out.push(QueueStats {
            ready: server_ready + count(state.ready.iter().filter(|b| b.queue == queue).count()),
            scheduled: count(state.held.values().filter(|b| b.queue == queue).count()),
            leased: count(state.leased.values().filter(|l| l.queue == queue).count()),
            dead: dead.get(&queue).copied().unwrap_or(0),
            queue,
        });
    }
    Ok(out)
}
