//! The queue tables in SQL: blocking functions on one connection, each one transaction.
//! `broker` calls them on the blocking pool.

use std::collections::BTreeMap;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior, params};

use crate::broker::{DeadLetter, Delivery, DeliveryTag, QueueStats};
use crate::celery::workflow;
use crate::model::DecodeError;
use crate::model::Job;
use crate::storage::sqlite::schema::{READY, SCHEDULED};
use crate::storage::sqlite::{from_ms, now_ms};

/// The highest priority; larger values are clamped to it.
const MAX_PRIORITY: u8 = 9;

/// A job serialised for insertion (done before taking the writer lock).
pub(super) struct NewRow {
    queue: String,
    job_id: String,
    priority: i64,
    eta_ms: Option<i64>,
    body: Vec<u8>,
}

impl NewRow {
    pub(super) fn new(job: &Job) -> NewRow {
        NewRow {
            queue: job.queue.clone(),
            job_id: job.id.clone(),
            priority: i64::from(job.priority.min(MAX_PRIORITY)),
            // Rounded up, so a job is never visible before its eta.
            eta_ms: job.eta.map(|eta| {
                let ms = eta.timestamp_millis();
                if eta.timestamp_subsec_nanos() % 1_000_000 == 0 {
                    ms
                } else {
                    ms + 1
                }
            }),
            body: job.to_json(),
        }
    }

    /// Whether a local fetcher could take it right now.
    pub(super) fn is_ready(&self) -> bool {
        self.eta_ms.is_none_or(|eta| eta <= now_ms())
    }
}

/// A leased row, before its body is decoded (decoding runs after the lock is released).
pub(super) struct LeasedRow {
    id: i64,
    token: i64,
    queue: String,
    job_id: Option<String>,
    delivery_count: i64,
    body: Vec<u8>,
}

impl LeasedRow {
    pub(super) fn into_delivery(self) -> Delivery {
        // The job, with its time values and its signatures' checked (model::time): out of
        // range is a dead letter here, not a panic once it runs.
        let job = Job::from_json(&self.body)
            .map_err(|e| e.to_string())
            .and_then(|job| match &job.celery {
                Some(ctx) => workflow::check_embed_times(&ctx.embed).map(|()| job),
                None => Ok(job),
            })
            .map_err(|reason| DecodeError {
                reason,
                id: self.job_id.or_else(|| id_from_body(&self.body)),
            });
        Delivery {
            tag: make_tag(self.id, self.token),
            queue: self.queue,
            job,
            delivery_count: u32::try_from(self.delivery_count.max(1)).unwrap_or(u32::MAX),
        }
    }
}

/// A delivery tag is `ROWID:TOKEN` (token in hex); the token changes at every fetch.
fn make_tag(id: i64, token: i64) -> DeliveryTag {
    DeliveryTag(format!("{id}:{:016x}", token as u64))
}

/// The row id and lease token of a tag, or `None` for a tag this broker never made.
pub(super) fn parse_tag(tag: &DeliveryTag) -> Option<(i64, i64)> {
    let (id, token) = tag.0.split_once(':')?;
    Some((
        id.parse().ok()?,
        u64::from_str_radix(token, 16).ok()? as i64,
    ))
}

/// Best effort to name an undecodable job: its `"id"` if the body is at least JSON.
fn id_from_body(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// Reads a column as text whatever its storage class, so one odd row cannot stop fetch.
fn lossy_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

/// Reads a body whatever its storage class (a hand-inserted TEXT body is fine).
fn lossy_bytes(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
        other => lossy_text(other).unwrap_or_default().into_bytes(),
    }
}

/// Inserts `rows` (in the caller's transaction).
fn insert_rows(conn: &Connection, rows: &[NewRow], now: i64) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (queue, job_id, priority, state, visible_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for row in rows {
        let (state, visible_at) = match row.eta_ms {
            Some(eta) if eta > now => (SCHEDULED, eta),
            _ => (READY, now),
        };
        insert.execute(params![
            row.queue,
            row.job_id,
            row.priority,
            state,
            visible_at,
            row.body
        ])?;
    }
    Ok(())
}

/// The earliest `visible_at` of a scheduled or leased row (of any queue): when an eta
/// comes due or a lease runs out next. Served by the `jobs_waiting` index.
fn next_due(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT min(visible_at) FROM jobs WHERE state <> 0")?
        .query_row([], |row| row.get(0))
}

/// Whether a fetch on `queues` could find anything: a read-only probe, so idle pollers
/// (of any process) never take the write lock.
fn has_work(conn: &Connection, queues: &[String], now: i64) -> rusqlite::Result<bool> {
    let mut due = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state <> 0 AND visible_at <= ?1)",
    )?;
    if due.query_row([now], |row| row.get(0))? {
        return Ok(true);
    }
    let mut ready =
        conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 0 AND queue = ?1)")?;
    for queue in queues {
        if ready.query_row([queue], |row| row.get(0))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What one fetch attempt found.
pub(super) struct Attempt {
    /// The rows it leased.
    pub rows: Vec<LeasedRow>,
    /// When nothing could be leased because nothing was ready: the earliest time (ms
    /// since the epoch) a scheduled or leased row of any queue becomes ready again, if
    /// there is one.
    pub next_due: Option<i64>,
}

/// One fetch attempt: leases up to `max` ready jobs, best priority first, then oldest,
/// across `queues`.
pub(super) fn lease_rows(
    conn: &mut Connection,
    queues: &[String],
    max: usize,
    lease_ms: i64,
    owner: Option<&str>,
) -> rusqlite::Result<Attempt> {
    if !has_work(conn, queues, now_ms())? {
        return Ok(Attempt {
            rows: Vec::new(),
            next_due: next_due(conn)?,
        });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read the clock after the lock: waiting for it may have taken a while.
    let now = now_ms();
    tx.prepare_cached("UPDATE jobs SET state = 0 WHERE state <> 0 AND visible_at <= ?1")?
        .execute([now])?;

    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut picked: Vec<(i64, i64)> = Vec::new();
    {
        let mut head = tx.prepare_cached(
            "SELECT priority, id FROM jobs WHERE state = 0 AND queue = ?1
             ORDER BY priority DESC, id LIMIT ?2",
        )?;
        for queue in queues {
            let rows = head.query_map(params![queue, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for row in rows {
                picked.push(row?);
            }
        }
    }
    if queues.len() > 1 {
        // Merge the queues' heads: priority first, then age (row ids grow).
        picked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        picked.dedup_by_key(|(_, id)| *id);
        picked.truncate(max);
    }

    let lease_until = now.saturating_add(lease_ms);
    let mut leased = Vec::with_capacity(picked.len());
    {
        let mut take = tx.prepare_cached(
            "UPDATE jobs SET state = 2, visible_at = ?2, lease_token = ?3, owner = ?4,
                             delivery_count = delivery_count + 1
             WHERE id = ?1
             RETURNING queue, job_id, delivery_count, body",
        )?;
        for (_, id) in picked {
            let token: i64 = rand::random();
            let row = take.query_row(params![id, lease_until, token, owner], |r| {
                Ok(LeasedRow {
                    id,
                    token,
                    queue: lossy_text(r.get_ref(0)?).unwrap_or_default(),
                    job_id: lossy_text(r.get_ref(1)?),
                    delivery_count: r.get(2)?,
                    body: lossy_bytes(r.get_ref(3)?),
                })
            })?;
            leased.push(row);
        }
    }
    tx.commit()?;
    Ok(Attempt {
        rows: leased,
        next_due: None,
    })
}

/// Writes (or refreshes) the liveness row of worker `id`, valid until `expires_at`.
pub(super) fn heartbeat(conn: &Connection, id: &str, expires_at: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO workers (id, expires_at) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
    )?
    .execute(params![id, expires_at])?;
    Ok(())
}

/// Deletes the liveness row of worker `id` (clean shutdown).
pub(super) fn sign_off(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM workers WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Makes the rows leased by workers whose liveness row has expired ready again at
/// once, and deletes those workers' rows, in one transaction. Returns (rows restored,
/// workers buried). A read-only probe first, so the common case (nobody died) takes no
/// write lock.
pub(super) fn restore_dead(conn: &mut Connection) -> rusqlite::Result<(usize, usize)> {
    let any: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM workers WHERE expires_at <= ?1)")?
        .query_row([now_ms()], |r| r.get(0))?;
    if !any {
        return Ok((0, 0));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Re-read the clock under the lock: a worker may have heartbeaten meanwhile.
    let now = now_ms();
    let restored = tx
        .prepare_cached(
            "UPDATE jobs SET state = 0, visible_at = ?1, lease_token = NULL, owner = NULL
             WHERE state = 2 AND owner IN (SELECT id FROM workers WHERE expires_at <= ?1)",
        )?
        .execute([now])?;
    let buried = tx
        .prepare_cached("DELETE FROM workers WHERE expires_at <= ?1")?
        .execute([now])?;
    tx.commit()?;
    Ok((restored, buried))
}

/// Runs `sql` once per parsable tag (`?1` = row id, `?2` = lease token and, if the
/// statement has it, `?3` = `at`), in one transaction. Tags that match nothing are
/// skipped: their lease was lost.
pub(super) fn for_each_tag(
    conn: &mut Connection,
    sql: &str,
    tags: &[DeliveryTag],
    at: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(sql)?;
        let with_at = stmt.parameter_count() == 3;
        for (id, token) in tags.iter().filter_map(parse_tag) {
            if with_at {
                stmt.execute(params![id, token, at])?;
            } else {
                stmt.execute(params![id, token])?;
            }
        }
    }
    tx.commit()
}

/// Enqueues `rows` in one transaction.
pub(super) fn publish(conn: &mut Connection, rows: &[NewRow]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    insert_rows(&tx, rows, now_ms())?;
    tx.commit()
}

/// Replaces delivery `(id, token)` by `row` in one transaction; `false` (and nothing
/// changed) if the delivery is no longer owned.
pub(super) fn retry(
    conn: &mut Connection,
    (id, token): (i64, i64),
    row: &NewRow,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let deleted = tx
        .prepare_cached("DELETE FROM jobs WHERE id = ?1 AND lease_token = ?2")?
        .execute(params![id, token])?;
    if deleted == 0 {
        return Ok(false);
    }
    insert_rows(&tx, std::slice::from_ref(row), now_ms())?;
    tx.commit()?;
    Ok(true)
}

/// Moves delivery `(id, token)` to `dead_letters` in one transaction; `false` (and
/// nothing changed) if the delivery is no longer owned.
pub(super) fn dead_letter(
    conn: &mut Connection,
    (id, token): (i64, i64),
    reason: &str,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let moved = tx
        .prepare_cached(
            "INSERT INTO dead_letters (queue, job_id, reason, at, delivery_count, body)
             SELECT queue, job_id, ?3, ?4, delivery_count, body FROM jobs
             WHERE id = ?1 AND lease_token = ?2",
        )?
        .execute(params![id, token, reason, now_ms()])?;
    if moved == 0 {
        return Ok(false);
    }
    tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
        .execute([id])?;
    tx.commit()?;
    Ok(true)
}

/// Deletes the ready and scheduled jobs of `queue`; returns how many.
pub(super) fn purge(conn: &Connection, queue: &str) -> rusqlite::Result<u64> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE queue = ?1 AND NOT (state = 2 AND visible_at > ?2)",
        )?
        .execute(params![queue, now_ms()])?;
    Ok(deleted as u64)
}

/// Counts per queue, sorted by name. A scheduled job whose eta passed, or a leased one
/// whose lease expired, counts as ready.
pub(super) fn stats(conn: &Connection) -> rusqlite::Result<Vec<QueueStats>> {
    fn entry(map: &mut BTreeMap<String, QueueStats>, queue: String) -> &mut QueueStats {
        map.entry(queue.clone()).or_insert_with(|| QueueStats {
            queue,
            ..QueueStats::default()
        })
    }
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let mut by_queue = BTreeMap::new();
    let mut jobs = conn.prepare_cached(
        "SELECT queue,
                sum(state = 0 OR visible_at <= ?1),
                sum(state = 1 AND visible_at > ?1),
                sum(state = 2 AND visible_at > ?1)
         FROM jobs GROUP BY queue",
    )?;
    let mut rows = jobs.query([now_ms()])?;
    while let Some(row) = rows.next()? {
        let stats = entry(
            &mut by_queue,
            lossy_text(row.get_ref(0)?).unwrap_or_default(),
        );
        stats.ready += count(row.get(1)?);
        stats.scheduled += count(row.get(2)?);
        stats.leased += count(row.get(3)?);
    }
    let mut dead =
        conn.prepare_cached("SELECT queue, count(*) FROM dead_letters GROUP BY queue")?;
    let mut rows = dead.query([])?;
    while let Some(row) = rows.next()? {
        entry(
            &mut by_queue,
            lossy_text(row.get_ref(0)?).unwrap_or_default(),
        )
        .dead += count(row.get(1)?);
    }
    Ok(by_queue.into_values().collect())
}

/// The `limit` newest dead letters.
pub(super) fn dead_letters(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT job_id, queue, reason, at FROM dead_letters ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(DeadLetter {
            id: lossy_text(r.get_ref(0)?),
            queue: lossy_text(r.get_ref(1)?).unwrap_or_default(),
            reason: lossy_text(r.get_ref(2)?).unwrap_or_default(),
            at: from_ms(r.get(3)?),
        })
    })?;
    rows.collect()
}
