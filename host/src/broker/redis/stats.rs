//! `stats` and `dead_letters` for the Redis broker: reading, never writing.
//!
//! Redis keeps no list of queues, so the queues are those with kombu bindings
//! (`_kombu.binding.*`, written by every Celery producer and worker), those this
//! process used, and those named in `unacked` or the dead letters. Scheduled (eta)
//! messages are told apart by reading them: in `unacked` always, in a ready list only
//! when it is at most `STATS_SCAN_LIMIT` long (longer lists count as ready).

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::Value;

use super::{RedisBroker, STATS_SCAN_LIMIT, broker_error, parse_entry};
use crate::broker::{BrokerError, DeadLetter, QueueStats};
use crate::celery::{isotime, keys};

/// Whether an envelope's eta is still in the future.
fn scheduled(envelope: &Value) -> bool {
    envelope
        .get("headers")
        .and_then(|h| h.get("eta"))
        .and_then(Value::as_str)
        .and_then(|s| isotime::parse(s).ok())
        .is_some_and(|eta| eta > Utc::now())
}

/// Celery's remote-control and event queues are not task queues.
fn is_task_queue(queue: &str) -> bool {
    !queue.is_empty() && !queue.ends_with(".pidbox") && !queue.starts_with("celeryev.")
}

/// Reads one dead-letter record.
pub(super) fn dead_letter(raw: &str) -> Option<DeadLetter> {
    let v: Value = serde_json::from_str(raw).ok()?;
    Some(DeadLetter {
        id: v.get("id").and_then(Value::as_str).map(str::to_string),
        queue: v
            .get("queue")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        reason: v
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        at: v
            .get("at")
            .and_then(Value::as_str)
            .and_then(|s| isotime::parse(s).ok())
            .unwrap_or_else(Utc::now),
    })
}

async fn scan_keys(b: &RedisBroker, pattern: &str) -> Result<Vec<String>, BrokerError> {
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut b.conn())
            .await
            .map_err(broker_error)?;
        found.extend(batch);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// Depths of every queue Redis knows of.
pub(super) async fn collect(b: &RedisBroker) -> Result<Vec<QueueStats>, BrokerError> {
    let mut stats: BTreeMap<String, QueueStats> = BTreeMap::new();
    let mut names: Vec<String> = b.lock().bound.iter().cloned().collect();

    // Queues with kombu bindings.
    let glob_safe: String = b
        .opts
        .key_prefix
        .chars()
        .flat_map(|c| {
            if "*?[]\\".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect();
    for set in scan_keys(b, &format!("{glob_safe}_kombu.binding.*")).await? {
        let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut b.conn())
            .await
            .map_err(broker_error)?;
        names.extend(members.iter().filter_map(|m| {
            String::from_utf8_lossy(m)
                .rsplit(keys::SEP)
                .next()
                .map(str::to_string)
        }));
    }

    // Reservations: leased or (eta) scheduled.
    let unacked = b.key(keys::UNACKED);
    let mut cursor: u64 = 0;
    loop {
        let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg(&unacked)
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut b.conn())
            .await
            .map_err(broker_error)?;
        for pair in flat.chunks(2) {
            let Some((env, rk)) = pair.get(1).and_then(|e| parse_entry(e)) else {
                continue;
            };
            let s = stats.entry(rk.clone()).or_insert_with(|| QueueStats {
                queue: rk,
                ..Default::default()
            });
            if scheduled(&env) {
                s.scheduled += 1;
            } else {
                s.leased += 1;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }

    // Dead letters.
    let dead: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(b.key(keys::DEAD))
        .arg(0)
        .arg(-1)
        .query_async(&mut b.conn())
        .await
        .map_err(broker_error)?;
    for d in dead
        .iter()
        .filter_map(|r| dead_letter(&String::from_utf8_lossy(r)))
    {
        let q = d.queue;
        stats
            .entry(q.clone())
            .or_insert_with(|| QueueStats {
                queue: q,
                ..Default::default()
            })
            .dead += 1;
    }

    // Ready lists.
    names.extend(stats.keys().cloned());
    names.sort();
    names.dedup();
    names.retain(|q| is_task_queue(q));
    let mut pipe = redis::pipe();
    for q in &names {
        for step in keys::PRIORITY_STEPS {
            pipe.llen(b.key(&keys::queue_key(q, step)));
        }
    }
    // (Redis refuses an empty pipeline: no queue known yet is no lengths to read.)
    let lens: Vec<i64> = if names.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut b.conn())
            .await
            .map_err(broker_error)?
    };
    for (i, q) in names.iter().enumerate() {
        let s = stats.entry(q.clone()).or_insert_with(|| QueueStats {
            queue: q.clone(),
            ..Default::default()
        });
        for (j, step) in keys::PRIORITY_STEPS.iter().enumerate() {
            let len = lens
                .get(i * keys::PRIORITY_STEPS.len() + j)
                .copied()
                .unwrap_or(0);
            if len <= 0 {
                continue;
            }
            let mut eta = 0;
            if len <= STATS_SCAN_LIMIT {
                // Raw bytes: a message that is not UTF-8 is just not scheduled.
                let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(b.key(&keys::queue_key(q, *step)))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut b.conn())
                    .await
                    .map_err(broker_error)?;
                eta = items
                    .iter()
                    .filter(|raw| {
                        serde_json::from_slice::<Value>(raw).is_ok_and(|env| scheduled(&env))
                    })
                    .count() as u64;
            }
            s.scheduled += eta;
            s.ready += len as u64 - eta;
        }
    }
    Ok(stats
        .into_values()
        .filter(|s| is_task_queue(&s.queue) && (s.ready + s.scheduled + s.leased + s.dead) > 0)
        .collect())
}
