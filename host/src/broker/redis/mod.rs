//! The Redis broker, speaking Celery's Redis transport (kombu's key layout, docs/PROTOCOL.md
//! §1–§5), so Sprout workers, Celery workers and Celery clients share one queue.
//!
//! # Keys
//! A queue is up to four lists, `<q>` and `<q>\x06\x16{3,6,9}` (priority buckets). A
//! consumer pops bucket-major, so on Redis priority 0 is served first and 9 last —
//! Celery's order on Redis, the opposite of RabbitMQ. The numbers in [`Job::priority`]
//! are Celery's numbers unchanged. Reserved messages live in the hash `unacked`
//! (tag → `[envelope, "", queue]`) and the sorted set `unacked_index` (tag → score), as
//! kombu keeps them, so Python workers can restore what a dead Sprout worker held and
//! the other way round.
//!
//! # Reservation, ack, redelivery
//! - **fetch** runs one Lua script (`scripts::RESERVE`) that pops up to `max`
//!   messages and writes them to `unacked`/`unacked_index` in the same atomic step —
//!   unlike kombu's BRPOP-then-MULTI, a crash between the two cannot lose a message.
//!   Because BRPOP would take a message out before it is recorded, an idle fetch polls
//!   (every 1 ms, doubling to [`RedisOptions::poll_interval`]) instead of blocking.
//! - **lost replies.** The script also writes the tags it reserved to a receipt key;
//!   when its reply never arrives (the connection dropped after Redis ran it), the
//!   next fetch puts those reservations back at the front of their queues instead of
//!   leaving them to their lease ([`receipts`]).
//! - **lease → score.** kombu's score is the reservation time, and a sweep restores
//!   entries older than `visibility_timeout`. A lease of `L` is written as the score
//!   `now + L - visibility_timeout`, which every sweeper (Python or Sprout) sees expire
//!   exactly `L` from now; **extend** rewrites it (`ZADD XX`). All workers on a broker
//!   must therefore share one `visibility_timeout`, as with kombu.
//! - **ack** is `ZREM` + `HDEL` of many tags in one MULTI; acking twice is harmless.
//! - **sweep.** While fetching, a broker looks for expired scores every
//!   [`RedisOptions::sweep_interval`], under `unacked_mutex` like kombu, and puts those
//!   messages back at the consuming end (RPUSH) with `redelivered: true`. The put-back
//!   re-checks each score in a script, so an entry extended or acked meanwhile stays.
//! - **release** puts messages back the same way at once (warm shutdown).
//!
//! # Liveness (fast recovery of a dead worker's jobs)
//! See the [broker docs](super#liveness-fast-recovery-of-a-dead-workers-jobs). A live
//! broker's record is the key `sprout.worker.<identity>` (`SET … PX <dead_after>`,
//! refreshed by every heartbeat, deleted at sign-off), and `scripts::RESERVE` tags
//! each reservation it makes in the hash `sprout.reserved_by` (tag → identity) in the
//! same atomic step. Every path that ends a reservation (ack, retry, dead-letter,
//! release, the sweeps) removes the tag. The sweep (from fetch and from heartbeat, every
//! `sweep_interval`) also reads `sprout.reserved_by`, checks which owners' keys are
//! gone, and restores their reservations with `scripts::RESTORE_DEAD`, which
//! re-checks atomically that the tag is still reserved, still that owner's, and the
//! owner's key still absent. kombu's `unacked`/`unacked_index` are untouched in format:
//! Celery workers sharing the queue ignore the extra keys and still restore anything
//! after the visibility timeout, which stays the last resort for reservations without
//! a tag (Celery workers', non-live Sprout processes'). Known limit: if a dead Sprout
//! worker's reservation is restored by a Celery worker's sweep (no Sprout worker swept
//! for a whole visibility timeout) and reserved again by a Celery worker, the stale tag
//! can make a Sprout sweep restore it once more (it runs twice).
//!
//! # eta and countdown
//! A message with a future eta is reserved like any other (it stays in `unacked`, as a
//! Celery worker keeps it) but is not returned: the broker holds it in memory under a
//! 60 s lease that it renews every 20 s while the message waits (so no sweep restores
//! it — kombu never renews, so a Celery worker duplicates etas longer than its
//! visibility timeout), and returns it from the first fetch at or after its eta (or its
//! `expires`, if sooner, so it is revoked on time). [`Broker::shutdown`] puts held
//! messages back at once; a crashed worker's held messages come back through any
//! worker's sweep about a minute later.
//!
//! # Retry, dead letters
//! **retry** pushes the new message and drops the reservation in one script. Celery has
//! no dead-letter queue on Redis: **dead_letter** moves the message into the list
//! `sprout.dead` (newest first, capped at [`RedisOptions::dead_letter_cap`]; each entry
//! `{"id", "queue", "reason", "at", "message"}`) and, when the job id is known and no
//! result is stored yet, stores a FAILURE `DeadLettered(reason)` so waiting clients
//! stop waiting.
//!
//! # Known limits
//! Delivery tags are the publisher's, and a redelivered message keeps its tag (as with
//! kombu), so the stale holder of an expired lease can still settle the new delivery.
//! `delivery_count` is 1, or 2 for a message marked redelivered: Redis keeps no count.

pub mod events;
mod mailbox;
mod receipts;
pub(crate) mod scripts;

pub use mailbox::RedisMailbox;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use crate::storage::redis::{OptionsError, RedisOptions, is_connection};

/// Maps a Redis error to a broker error: I/O, timeouts and dropped connections are
/// [`BrokerError::Connection`] (retrying may help), the rest [`BrokerError::Other`].
pub(crate) fn broker_error(e: redis::RedisError) -> BrokerError {
    if is_connection(&e) {
        BrokerError::Connection(e.to_string())
    } else {
        BrokerError::Other(e.to_string())
    }
}

impl From<OptionsError> for BrokerError {
    fn from(e: OptionsError) -> Self {
        match e {
            OptionsError::Url(url) => BrokerError::UnsupportedUrl(url),
            OptionsError::Key(m) => BrokerError::InvalidSettings(m),
            OptionsError::Conflict(m) => BrokerError::InvalidSettings(m),
            OptionsError::Connection(m) => BrokerError::Connection(m),
        }
    }
}

use super::{
    Broker, BrokerError, BrokerIdentity, DeadLetter, Delivery, DeliveryTag, LivenessUsers,
    QueueStats, due_at,
};
use crate::celery::{isotime, keys, message, pyjson, result};
use crate::model::DecodeError;
use crate::model::{Job, WorkerRoutes};

/// The hash of live-tagged reservations: tag → owner identity.
const RESERVED_BY: &str = "sprout.reserved_by";
/// The prefix of liveness keys: `sprout.worker.<identity>`.
const WORKER_PREFIX: &str = "sprout.worker.";

/// How many stale reservations one sweep round restores at most.
const SWEEP_BATCH: usize = 1000;
/// The lease under which held eta messages wait (renewed while they do).
const HELD_LEASE: Duration = Duration::from_secs(60);
/// Queues longer than this are not scanned for eta messages by `stats`.
const STATS_SCAN_LIMIT: i64 = 10_000;

/// A message reserved for its eta, held by this broker until it is due.
#[derive(Debug)]
struct Held {
    tag: String,
    queue: String,
    job: Job,
    redelivered: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Held eta messages by (due, sequence).
    held: BTreeMap<(DateTime<Utc>, u64), Held>,
    seq: u64,
    last_sweep: Option<Instant>,
    /// Queues whose kombu bindings this process has written.
    bound: HashSet<String>,
    /// Rotates the queue order between fetches, like kombu, for fairness.
    rotation: usize,
    /// Workers of this process that are live on the broker.
    liveness: LivenessUsers,
    /// The receipt lanes of RESERVE calls, and the lost ones.
    lanes: receipts::Lanes,
}

/// A [`Broker`] on Redis, wire-compatible with Celery 5 (kombu's Redis transport).
pub struct RedisBroker {
    conn: ConnectionManager,
    opts: RedisOptions,
    state: Arc<Mutex<State>>,
    identity: BrokerIdentity,
    mailbox: Arc<RedisMailbox>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("opts", &self.opts)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The lease of held eta messages: [`HELD_LEASE`], or the visibility timeout if shorter.
fn held_lease(opts: &RedisOptions) -> Duration {
    HELD_LEASE.min(opts.visibility_timeout)
}

/// Renews the reservations of held eta messages every third of their lease, for as long
/// as the broker lives (even while its worker is too busy to fetch).
async fn renew_held(
    state: std::sync::Weak<Mutex<State>>,
    mut conn: ConnectionManager,
    index_key: String,
    lease: Duration,
    vt: Duration,
) {
    loop {
        tokio::time::sleep(lease / 3).await;
        let Some(state) = state.upgrade() else { return };
        let tags: Vec<String> = {
            let state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.held.values().map(|h| h.tag.clone()).collect()
        };
        drop(state);
        let score = lease_score(Utc::now(), lease, vt);
        for chunk in tags.chunks(10_000) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(&index_key).arg("XX");
            for tag in chunk {
                cmd.arg(score).arg(tag);
            }
            if let Err(e) = cmd.query_async::<()>(&mut conn).await {
                tracing::warn!("could not renew held eta messages: {e}");
            }
        }
    }
}

fn unix_seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

fn lease_score(now: DateTime<Utc>, lease: Duration, vt: Duration) -> f64 {
    unix_seconds(now) + lease.as_secs_f64() - vt.as_secs_f64()
}

/// The dead-letter FAILURE, as `celery-task-meta-<id>` JSON.
fn dead_letter_meta(id: &str, reason: &str) -> String {
    let mut record = crate::model::ResultRecord::new(id, "", crate::model::State::Failure);
    record.error = Some(crate::model::ErrorInfo {
        kind: "DeadLettered".into(),
        message: reason.to_string(),
        traceback: None,
    });
    result::encode_meta(&record)
}

/// Stored bytes as text: UTF-8 as it is, anything else as `base64:` and its base64, so
/// the bytes survive (into a dead letter) and never fail a read.
fn entry_text(bytes: Vec<u8>) -> String {
    use base64::Engine as _;
    String::from_utf8(bytes).unwrap_or_else(|e| {
        format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes())
        )
    })
}

/// Reads an `unacked` entry `[envelope, exchange, routing_key]`.
fn parse_entry(entry: &str) -> Option<(Value, String)> {
    let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(entry) else {
        return None;
    };
    let rk = parts
        .get(2)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let env = parts.drain(..).next()?;
    Some((env, rk))
}

impl RedisBroker {
    /// Connects to the server in `opts`.
    ///
    /// # Errors
    /// [`BrokerError::Connection`] when Redis cannot be reached.
    pub async fn connect(opts: RedisOptions) -> Result<RedisBroker, BrokerError> {
        let conn = opts.connect().await?;
        let state = Arc::new(Mutex::new(State::default()));
        tokio::spawn(renew_held(
            Arc::downgrade(&state),
            conn.clone(),
            opts.key(keys::UNACKED_INDEX),
            held_lease(&opts),
            opts.visibility_timeout,
        ));
        let mailbox = RedisMailbox::new(opts.clone())?;
        Ok(RedisBroker {
            conn,
            mailbox,
            opts,
            state,
            identity: BrokerIdentity::new(),
        })
    }

    /// The options this broker runs with.
    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    fn key(&self, key: &str) -> String {
        self.opts.key(key)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn held_lease(&self) -> Duration {
        held_lease(&self.opts)
    }

    /// How many eta messages this broker holds.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Writes kombu's binding sets for queues this process has not bound yet (what
    /// Celery producers and workers do; lets `stats` and Celery tools find the queues).
    async fn bind(&self, queues: impl IntoIterator<Item = &str>) -> Result<(), BrokerError> {
        let fresh: Vec<String> = {
            let state = self.lock();
            queues
                .into_iter()
                .filter(|q| !state.bound.contains(*q))
                .map(str::to_string)
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for q in &fresh {
            let (set, permanent, member) = keys::binding(q);
            pipe.sadd(self.key(&set), &member).ignore();
            pipe.sadd(self.key(&permanent), &member).ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)?;
        self.lock().bound.extend(fresh);
        Ok(())
    }

    /// Runs `scripts::RESERVE` once over `queues`, with a receipt on a lane of its own
    /// that is kept as lost when no reply comes ([`receipts`]).
    async fn reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        score: f64,
    ) -> Result<Vec<(String, Vec<u8>, String)>, BrokerError> {
        let list_keys = keys::consume_order(queues);
        let (owner, lane) = {
            let mut state = self.lock();
            let owner = if state.liveness.current().is_some() {
                self.identity.0.as_str()
            } else {
                ""
            };
            (owner, state.lanes.take())
        };
        let mut call = scripts::RESERVE.prepare_invoke();
        call.key(self.key(keys::UNACKED))
            .key(self.key(keys::UNACKED_INDEX))
            .key(self.key("sprout.tag_seq"))
            .key(self.key(RESERVED_BY))
            .key(self.receipt_key(lane));
        for k in &list_keys {
            call.key(self.key(k));
        }
        call.arg(max)
            .arg(score)
            .arg(owner)
            .arg(receipts::receipt_ttl_ms(lease));
        for k in &list_keys {
            call.arg(keys::queue_of_key(k));
        }
        let answer: Result<Vec<redis::Value>, _> = call.invoke_async(&mut self.conn()).await;
        let flat = match answer {
            Ok(flat) => {
                self.lock().lanes.answered(lane);
                flat
            }
            Err(e) => {
                // It may have run: what it reserved is put back by the next fetch.
                self.lock().lanes.lose(lane, score);
                return Err(broker_error(e));
            }
        };
        let mut out = Vec::with_capacity(flat.len() / 3);
        let mut it = flat.into_iter();
        while let (Some(idx), Some(raw), Some(tag)) = (it.next(), it.next(), it.next()) {
            let idx: usize =
                redis::from_redis_value(idx).map_err(|e| BrokerError::Other(e.to_string()))?;
            // Bytes stay bytes until decoded: a message that is not UTF-8 is a decode
            // error of its own (dead-lettered), never a failed fetch.
            let raw: Vec<u8> =
                redis::from_redis_value(raw).map_err(|e| BrokerError::Other(e.to_string()))?;
            let tag: String =
                redis::from_redis_value(tag).map_err(|e| BrokerError::Other(e.to_string()))?;
            let queue = keys::queue_of_key(&list_keys[idx - 1]).to_string();
            out.push((queue, raw, tag));
        }
        Ok(out)
    }

    /// Sets the score of `tags` (still reserved) so they expire `lease` from now.
    async fn rescore(&self, tags: &[&str], lease: Duration) -> Result<(), BrokerError> {
        if tags.is_empty() {
            return Ok(());
        }
        let score = lease_score(Utc::now(), lease, self.opts.visibility_timeout);
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.key(keys::UNACKED_INDEX)).arg("XX");
        for tag in tags {
            cmd.arg(score).arg(*tag);
        }
        cmd.query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)
    }

    /// Housekeeping done from fetch: the sweep, when it is due.
    async fn maintain(&self) -> Result<(), BrokerError> {
        let now = Instant::now();
        let sweep = {
            let mut state = self.lock();
            let due = state
                .last_sweep
                .is_none_or(|t| now >= t + self.opts.sweep_interval);
            if due {
                state.last_sweep = Some(now);
            }
            due
        };
        if sweep {
            self.sweep().await?;
            self.sweep_dead().await?;
        }
        Ok(())
    }

    /// The liveness key of `owner`.
    fn worker_key(&self, owner: &str) -> String {
        self.key(&format!("{WORKER_PREFIX}{owner}"))
    }

    /// Restores every live-tagged reservation whose owner's liveness key is gone (see
    /// the module docs). Returns how many messages went back to their queues.
    ///
    /// # Errors
    /// [`BrokerError`] from Redis.
    pub async fn sweep_dead(&self) -> Result<usize, BrokerError> {
        let tagged: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key(RESERVED_BY))
            .query_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        if tagged.is_empty() {
            return Ok(0);
        }
        let owners: Vec<&str> = tagged
            .iter()
            .map(|(_, o)| o.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut pipe = redis::pipe();
        for owner in &owners {
            pipe.exists(self.worker_key(owner));
        }
        let alive: Vec<bool> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        let dead: HashSet<&str> = owners
            .iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(o, _)| *o)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let orphaned: Vec<(&str, &str)> = tagged
            .iter()
            .filter(|(_, o)| dead.contains(o.as_str()))
            .map(|(t, o)| (t.as_str(), o.as_str()))
            .collect();
        let mut total = 0;
        for batch in orphaned.chunks(SWEEP_BATCH) {
            let tags: Vec<&str> = batch.iter().map(|(t, _)| *t).collect();
            let entries = self.entries(&tags).await?;
            let mut call = scripts::RESTORE_DEAD.prepare_invoke();
            call.key(self.key(keys::UNACKED))
                .key(self.key(keys::UNACKED_INDEX))
                .key(self.key(RESERVED_BY));
            for ((tag, owner), entry) in batch.iter().zip(entries) {
                let (list, env) = entry
                    .as_deref()
                    .and_then(|e| self.restore_target(e))
                    .unwrap_or_default();
                call.key(self.worker_key(owner)).key(if list.is_empty() {
                    self.key(RESERVED_BY)
                } else {
                    list
                });
                call.arg(*tag).arg(*owner).arg(env);
            }
            let restored: usize = call
                .invoke_async(&mut self.conn())
                .await
                .map_err(broker_error)?;
            total += restored;
        }
        if total > 0 {
            tracing::warn!(
                restored = total,
                workers = dead.len(),
                "restored the reservations of dead workers"
            );
        }
        Ok(total)
    }

    /// Where an `unacked` entry goes back to, and the envelope marked redelivered; `None`
    /// when the entry is unreadable.
    fn restore_target(&self, entry: &str) -> Option<(String, String)> {
        let (mut env, rk) = parse_entry(entry).filter(|(env, _)| env.is_object())?;
        let (route, priority) = message::route_of(&env);
        let queue = if rk.is_empty() {
            route.unwrap_or(crate::model::DEFAULT_QUEUE).to_string()
        } else {
            rk
        };
        message::mark_redelivered(&mut env);
        Some((
            self.key(&keys::queue_key(&queue, priority)),
            pyjson::to_string(&env),
        ))
    }

    /// Restores every reservation whose lease has expired (any worker's). Returns how
    /// many messages went back to their queues.
    ///
    /// # Errors
    /// [`BrokerError`] from Redis.
    pub async fn sweep(&self) -> Result<usize, BrokerError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mutex = self.key(keys::UNACKED_MUTEX);
        let cutoff = unix_seconds(Utc::now()) - self.opts.visibility_timeout.as_secs_f64();
        let mut total = 0;
        loop {
            let found: Option<Vec<Vec<u8>>> = scripts::SWEEP_SCAN
                .key(&mutex)
                .key(self.key(keys::UNACKED_INDEX))
                .key(self.key(keys::UNACKED))
                .arg(&token)
                .arg(cutoff)
                .arg(SWEEP_BATCH)
                .invoke_async(&mut self.conn())
                .await
                .map_err(broker_error)?;
            let Some(found) = found else { return Ok(total) };
            if found.is_empty() {
                return Ok(total);
            }
            let entries: Vec<(String, String)> = found
                .chunks(2)
                .filter(|p| p.len() == 2)
                .map(|p| {
                    let tag = String::from_utf8_lossy(&p[0]).into_owned();
                    (tag, entry_text(p[1].clone()))
                })
                .collect();
            let restored = self.restore(&entries, Some(cutoff)).await;
            let _: Result<i64, _> = scripts::UNLOCK
                .key(&mutex)
                .arg(&token)
                .invoke_async(&mut self.conn())
                .await;
            let restored = restored?;
            total += restored;
            tracing::info!(restored, "restored expired reservations");
            if entries.len() < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Puts reserved messages (tag, `unacked` entry) back at the front of their queues,
    /// marked redelivered. With a cutoff, only those whose score is still at or below it.
    async fn restore(
        &self,
        entries: &[(String, String)],
        cutoff: Option<f64>,
    ) -> Result<usize, BrokerError> {
        let mut call = scripts::RESTORE.prepare_invoke();
        call.key(self.key(keys::UNACKED))
            .key(self.key(keys::UNACKED_INDEX))
            .key(self.key(RESERVED_BY));
        call.arg(cutoff.map(|c| c.to_string()).unwrap_or_default());
        let mut broken = Vec::new();
        let mut count = 0;
        for (tag, entry) in entries {
            let Some((list, env)) = self.restore_target(entry) else {
                broken.push((tag.clone(), entry.clone()));
                continue;
            };
            call.key(list);
            call.arg(tag).arg(env);
            count += 1;
        }
        let restored = if count > 0 {
            call.invoke_async::<usize>(&mut self.conn())
                .await
                .map_err(broker_error)?
        } else {
            0
        };
        let (orphans, unreadable): (Vec<_>, Vec<_>) =
            broken.into_iter().partition(|(_, entry)| entry.is_empty());
        if !orphans.is_empty() {
            // An index entry without a message (as kombu does: drop it).
            let mut call = scripts::DROP_ORPHANS.prepare_invoke();
            call.key(self.key(keys::UNACKED))
                .key(self.key(keys::UNACKED_INDEX))
                .key(self.key(RESERVED_BY));
            for (tag, _) in &orphans {
                call.arg(tag);
            }
            call.invoke_async::<i64>(&mut self.conn())
                .await
                .map_err(broker_error)?;
        }
        for (tag, entry) in unreadable {
            // Nothing can route it: keep it for a person rather than retry forever.
            self.bury(&tag, None, "", "unreadable unacked entry", &entry)
                .await?;
        }
        Ok(restored)
    }

    /// Moves reservation `tag` to the dead-letter list. Returns false when it was not
    /// reserved (any more).
    async fn bury(
        &self,
        tag: &str,
        id: Option<&str>,
        queue: &str,
        reason: &str,
        message: &str,
    ) -> Result<bool, BrokerError> {
        let message: Value = serde_json::from_str(message).unwrap_or_else(|_| json!(message));
        let record = json!({
            "id": id,
            "queue": queue,
            "reason": reason,
            "at": isotime::format(Utc::now()),
            "message": message,
        });
        let (result_key, meta) = match id {
            Some(id) => (
                self.key(&keys::result_key(id)),
                dead_letter_meta(id, reason),
            ),
            None => (self.key("sprout.none"), String::new()),
        };
        let done: i64 = scripts::DEAD_LETTER
            .key(self.key(keys::UNACKED))
            .key(self.key(keys::UNACKED_INDEX))
            .key(self.key(keys::DEAD))
            .key(result_key)
            .arg(tag)
            .arg(pyjson::to_string(&record))
            .arg(self.opts.dead_letter_cap.max(1))
            .arg(meta)
            .key(self.key(RESERVED_BY))
            .arg(self.opts.result_ttl_secs())
            .invoke_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        Ok(done == 1)
    }

    /// Takes held eta messages of `queues` that are due, up to `max`.
    fn take_due(&self, queues: &[String], max: usize, now: DateTime<Utc>) -> Vec<Held> {
        let mut state = self.lock();
        let due: Vec<(DateTime<Utc>, u64)> = state
            .held
            .range(..=(now, u64::MAX))
            .filter(|(_, h)| queues.contains(&h.queue))
            .map(|(k, _)| *k)
            .take(max)
            .collect();
        due.into_iter()
            .filter_map(|k| state.held.remove(&k))
            .collect()
    }

    /// The earliest due time of a held message of `queues`.
    fn next_due(&self, queues: &[String]) -> Option<DateTime<Utc>> {
        let state = self.lock();
        state
            .held
            .iter()
            .find(|(_, h)| queues.contains(&h.queue))
            .map(|((at, _), _)| *at)
    }

    fn delivery(
        tag: String,
        queue: String,
        job: Result<Job, DecodeError>,
        redelivered: bool,
    ) -> Delivery {
        Delivery {
            tag: DeliveryTag(tag),
            queue,
            job,
            delivery_count: if redelivered { 2 } else { 1 },
        }
    }

    /// One pass of fetch: due held messages, then fresh reservations.
    async fn fetch_once(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let now = Utc::now();
        let mut out = Vec::new();
        let due = self.take_due(queues, max, now);
        if !due.is_empty() {
            let tags: Vec<&str> = due.iter().map(|h| h.tag.as_str()).collect();
            let score = lease_score(now, lease, self.opts.visibility_timeout);
            let mut call = scripts::TOUCH.prepare_invoke();
            call.key(self.key(keys::UNACKED_INDEX))
                .arg(score)
                .arg(&tags);
            let touched: Result<Vec<i64>, _> = call
                .invoke_async(&mut self.conn())
                .await
                .map_err(broker_error);
            if let Err(e) = touched {
                // Keep them held; they are still reserved in Redis.
                let mut state = self.lock();
                for h in due {
                    let at = due_at(&h.job).unwrap_or(now);
                    state.seq += 1;
                    let seq = state.seq;
                    state.held.insert((at, seq), h);
                }
                return Err(e);
            }
            let touched = touched.unwrap_or_default();
            for (h, still_ours) in due.into_iter().zip(touched) {
                if still_ours == 1 {
                    out.push(Self::delivery(h.tag, h.queue, Ok(h.job), h.redelivered));
                } else {
                    // Its reservation lapsed and some sweep put it back: whoever takes
                    // it from the queue runs it, not us.
                    tracing::warn!(id = %h.job.id, "held eta message was restored elsewhere");
                }
            }
        }
        let room = max - out.len();
        if room == 0 || self.held() >= self.opts.max_held {
            return Ok(out);
        }
        let order = {
            let mut state = self.lock();
            state.rotation = state.rotation.wrapping_add(1);
            let mut order = queues.to_vec();
            let len = order.len();
            order.rotate_left(state.rotation % len);
            order
        };
        let score = lease_score(now, lease, self.opts.visibility_timeout);
        let reserved = self.reserve(&order, room, lease, score).await?;
        let mut newly_held = Vec::new();
        for (queue, raw, tag) in reserved {
            match message::decode(&raw, Some(&queue)) {
                Ok(incoming) => match due_at(&incoming.job).filter(|at| *at > now) {
                    Some(at) => {
                        newly_held.push(tag.clone());
                        let mut state = self.lock();
                        state.seq += 1;
                        let seq = state.seq;
                        let held = Held {
                            tag,
                            queue,
                            job: incoming.job,
                            redelivered: incoming.redelivered,
                        };
                        state.held.insert((at, seq), held);
                    }
                    None => out.push(Self::delivery(
                        tag,
                        queue,
                        Ok(incoming.job),
                        incoming.redelivered,
                    )),
                },
                Err(e) => out.push(Self::delivery(tag, queue, Err(e), false)),
            }
        }
        // Held messages wait under a short lease that `maintain` keeps renewing, so a
        // crashed worker's eta messages come back within about a minute.
        let tags: Vec<&str> = newly_held.iter().map(String::as_str).collect();
        self.rescore(&tags, self.held_lease()).await?;
        Ok(out)
    }

    /// Writes this broker's liveness key, valid for `ttl`.
    async fn write_liveness(&self, ttl: Duration) -> Result<(), BrokerError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(self.worker_key(&self.identity.0))
            .arg(std::process::id())
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)
    }

    /// Looks up the `unacked` entries of `tags`.
    async fn entries(&self, tags: &[&str]) -> Result<Vec<Option<String>>, BrokerError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.key(keys::UNACKED))
            .arg(tags)
            .query_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        Ok(found.into_iter().map(|e| e.map(entry_text)).collect())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.bind(jobs.iter().map(|j| j.queue.as_str())).await?;
        // One LPUSH per list, in publish order (LPUSH a b c + RPOP keeps FIFO).
        let mut by_key: Vec<(String, Vec<String>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for job in jobs {
            let out = message::encode(job);
            let slot = *index.entry(out.key.clone()).or_insert_with(|| {
                by_key.push((out.key.clone(), Vec::new()));
                by_key.len() - 1
            });
            by_key[slot].1.push(out.envelope);
        }
        let mut pipe = redis::pipe();
        for (key, envelopes) in &by_key {
            pipe.lpush(self.key(key), envelopes).ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)
    }

    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = Instant::now() + wait;
        if max == 0 || queues.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        self.bind(queues.iter().map(String::as_str)).await?;
        self.reclaim_lost().await?;
        let mut pause = Duration::from_millis(1);
        loop {
            self.maintain().await?;
            let got = self.fetch_once(queues, max, lease).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let mut sleep = pause.min(deadline - now);
            if let Some(due) = self.next_due(queues) {
                let until = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                sleep = sleep.min(until);
            }
            tokio::time::sleep(sleep).await;
            pause = (pause * 2).min(self.opts.poll_interval);
        }
    }

    async fn extend(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        let tags: Vec<&str> = tags.iter().map(|t| t.0.as_str()).collect();
        for chunk in tags.chunks(10_000) {
            self.rescore(chunk, lease).await?;
        }
        Ok(())
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        if tags.is_empty() {
            return Ok(());
        }
        let tags: Vec<&str> = tags.iter().map(|t| t.0.as_str()).collect();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.zrem(self.key(keys::UNACKED_INDEX), &tags).ignore();
        pipe.hdel(self.key(keys::UNACKED), &tags).ignore();
        pipe.hdel(self.key(RESERVED_BY), &tags).ignore();
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)
    }

    async fn release(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let tags: Vec<&str> = tags.iter().map(|t| t.0.as_str()).collect();
        let found = self.entries(&tags).await?;
        let entries: Vec<(String, String)> = tags
            .iter()
            .zip(found)
            .filter_map(|(tag, entry)| Some((tag.to_string(), entry?)))
            .collect();
        self.restore(&entries, None).await.map(|_| ())
    }

    async fn retry(&self, tag: &DeliveryTag, job: &Job) -> Result<(), BrokerError> {
        let mut job = job.clone();
        // Celery's retry message names the task itself as parent (§5).
        if let Some(ctx) = job.celery.as_mut() {
            ctx.parent_id = Some(job.id.clone());
        }
        self.bind([job.queue.as_str()]).await?;
        let out = message::encode(&job);
        let replaced: i64 = scripts::REPLACE
            .key(self.key(keys::UNACKED))
            .key(self.key(keys::UNACKED_INDEX))
            .key(self.key(&out.key))
            .key(self.key(RESERVED_BY))
            .arg(&tag.0)
            .arg(&out.envelope)
            .invoke_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        if replaced == 1 {
            Ok(())
        } else {
            Err(BrokerError::UnknownDelivery(tag.clone()))
        }
    }

    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        let Some(Some(entry)) = self.entries(&[tag.0.as_str()]).await?.pop() else {
            return Err(BrokerError::UnknownDelivery(tag.clone()));
        };
        let (id, queue) = match parse_entry(&entry) {
            Some((env, rk)) => {
                let headers = env.get("headers");
                let id = headers
                    .and_then(|h| h.get("id"))
                    .or_else(|| env.get("properties").and_then(|p| p.get("correlation_id")))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                (id, rk)
            }
            None => (None, String::new()),
        };
        let message = parse_entry(&entry)
            .map(|(env, _)| env.to_string())
            .unwrap_or(entry);
        if self
            .bury(&tag.0, id.as_deref(), &queue, reason, &message)
            .await?
        {
            Ok(())
        } else {
            Err(BrokerError::UnknownDelivery(tag.clone()))
        }
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut call = scripts::PURGE.prepare_invoke();
        for step in keys::PRIORITY_STEPS {
            call.key(self.key(&keys::queue_key(queue, step)));
        }
        let mut purged: u64 = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        // eta messages this broker holds for the queue are waiting jobs too.
        let held: Vec<DeliveryTag> = {
            let mut state = self.lock();
            let keys: Vec<_> = state
                .held
                .iter()
                .filter(|(_, h)| h.queue == queue)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| state.held.remove(&k))
                .map(|h| DeliveryTag(h.tag))
                .collect()
        };
        purged += held.len() as u64;
        self.ack(&held).await?;
        Ok(purged)
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, BrokerError> {
        stats::collect(self).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(self.key(keys::DEAD))
            .arg(0)
            .arg(limit as i64 - 1)
            .query_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        Ok(raw
            .iter()
            .filter_map(|r| stats::dead_letter(&String::from_utf8_lossy(r)))
            .collect())
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        self.reclaim_lost().await?;
        self.drop_receipts().await?;
        let held: Vec<DeliveryTag> = {
            let mut state = self.lock();
            std::mem::take(&mut state.held)
                .into_values()
                .map(|h| DeliveryTag(h.tag))
                .collect()
        };
        if held.is_empty() {
            return Ok(());
        }
        tracing::info!(count = held.len(), "putting back held eta messages");
        self.release(&held).await
    }

    fn identity(&self) -> Option<&BrokerIdentity> {
        Some(&self.identity)
    }

    async fn go_live(&self, dead_after: Duration) -> Result<(), BrokerError> {
        let ttl = self.lock().liveness.join(dead_after);
        if let Err(e) = self.write_liveness(ttl).await {
            self.lock().liveness.leave();
            return Err(e);
        }
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let Some(ttl) = self.lock().liveness.current() else {
            return Ok(());
        };
        self.write_liveness(ttl).await?;
        self.maintain().await
    }

    async fn sign_off(&self) -> Result<(), BrokerError> {
        if !self.lock().liveness.leave() {
            return Ok(());
        }
        redis::cmd("DEL")
            .arg(self.worker_key(&self.identity.0))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)
    }

    fn mailbox(&self) -> Option<Arc<dyn crate::broker::mailbox::Mailbox>> {
        Some(self.mailbox.clone())
    }

    /// One field per worker in the hash `sprout.routes` (under the key prefix), the
    /// entry as JSON. Celery ignores the key.
    async fn publish_routes(&self, routes: &WorkerRoutes) -> Result<(), BrokerError> {
        let entry = serde_json::to_string(routes)
            .map_err(|e| BrokerError::Other(format!("cannot encode routes: {e}")))?;
        redis::cmd("HSET")
            .arg(self.key(ROUTES_KEY))
            .arg(&routes.worker)
            .arg(entry)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)
    }

    async fn withdraw_routes(&self, worker: &str) -> Result<(), BrokerError> {
        redis::cmd("HDEL")
            .arg(self.key(ROUTES_KEY))
            .arg(worker)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)
    }

    async fn routes(&self) -> Result<Vec<WorkerRoutes>, BrokerError> {
        let entries: Vec<String> = redis::cmd("HVALS")
            .arg(self.key(ROUTES_KEY))
            .query_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        // An entry this version cannot read is skipped, not fatal.
        Ok(entries
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect())
    }
}

/// The hash of published task → queue maps, one field per worker.
const ROUTES_KEY: &str = "sprout.routes";

mod stats;
