//! Remote control through the embedded database file: `sprout inspect` / `sprout
//! control` in one shell, workers in others, no server.
//!
//! Two tables in the broker's file, created on first use (they are not part of the
//! queue schema's versions: a file without them simply has had no control traffic):
//! - `control_requests` — one row per broadcast (`seq` only grows: `AUTOINCREMENT`),
//!   the kombu envelope Redis would carry, and when it expires. A worker reads the rows
//!   after the last `seq` it saw whenever the file is written, and at least every
//!   [`IDLE_LISTEN_POLL`] ([`IDLE_LISTEN_POLL_UNWATCHED`] without inotify); rows before
//!   it started listening are not for it.
//! - `control_replies` — one row per reply, by the client's oid; the client polls and
//!   deletes them.
//!
//! Expired rows of both are deleted by every client call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::params;
use serde_json::Value;
use tokio::sync::{OnceCell, mpsc};

use crate::broker::BrokerError;
use crate::broker::mailbox::{LISTEN_BUFFER, Mailbox, collect_reply, forward};
use crate::celery::control::{self, ControlRequest, Reply, ReplyTo};
use crate::storage::sqlite::{Database, Failure, duration_ms, now_ms};

/// How often a listening worker and a waiting client look at the file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long replies and requests are kept past their expiry before anyone deletes them.
const KEEP_MS: i64 = 60_000;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS control_requests (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    expires_at INTEGER NOT NULL,
    body       BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS control_replies (
    id         INTEGER PRIMARY KEY,
    oid        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    body       BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS control_replies_oid ON control_replies (oid);
";

/// The control mailbox in an embedded database file.
#[derive(Debug)]
pub struct SqliteMailbox {
    db: Database,
    ready: OnceCell<()>,
}

impl SqliteMailbox {
    /// The mailbox in `db`'s file.
    pub fn new(db: Database) -> Arc<SqliteMailbox> {
        Arc::new(SqliteMailbox {
            db,
            ready: OnceCell::new(),
        })
    }

    /// Creates the tables once per mailbox.
    async fn ready(&self) -> Result<(), BrokerError> {
        self.ready
            .get_or_try_init(|| async {
                self.db
                    .run(|inner| Ok(inner.writer().execute_batch(TABLES)?))
                    .await
                    .map_err(BrokerError::from)
            })
            .await
            .map(|_| ())
    }
}

/// Reads the requests after `after`, in order.
fn requests_after(
    db: &Database,
    after: i64,
) -> impl Future<Output = Result<Vec<(i64, Vec<u8>)>, Failure>> {
    db.run(move |inner| {
        inner.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, body FROM control_requests WHERE seq > ?1 ORDER BY seq LIMIT 256",
            )?;
            let rows = stmt
                .query_map([after], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    })
}

/// Longest nap of an idle listener while the file is watched (the broker's inotify
/// watch of the WAL file wakes it at once on any other process's write, such as a
/// `sprout inspect`; publishes in this process notify it too): then the nap only
/// bounds a missed wake-up. Each empty look doubles the nap from [`POLL_INTERVAL`]; an
/// idle worker reads the table about once a second instead of 200 times (which alone
/// cost ~1% of a core).
pub const IDLE_LISTEN_POLL: Duration = Duration::from_secs(1);

/// Longest nap of an idle listener when the file cannot be watched: the most a control
/// request waits before an idle worker sees it (well inside the 1 s a `celery inspect`
/// or `sprout inspect` waits for replies by default).
pub const IDLE_LISTEN_POLL_UNWATCHED: Duration = Duration::from_millis(100);

/// Forwards new requests to `tx` until it closes.
async fn listen_loop(db: Database, mut after: i64, tx: mpsc::Sender<ControlRequest>) {
    let mut failing = false;
    let mut nap = POLL_INTERVAL;
    loop {
        // Registered before the look, so a write during it is not missed.
        let woken = db.inner().wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let looked = tokio::time::Instant::now();
        match requests_after(&db, after).await {
            Ok(rows) => {
                failing = false;
                if !rows.is_empty() {
                    nap = POLL_INTERVAL;
                }
                for (seq, body) in rows {
                    after = after.max(seq);
                    forward(&body, &tx);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("remote control: cannot read requests: {e}");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(nap) => {
                let longest = if db.inner().watched.load(Ordering::Relaxed) {
                    IDLE_LISTEN_POLL
                } else {
                    IDLE_LISTEN_POLL_UNWATCHED
                };
                nap = (nap * 2).min(longest);
            }
            _ = &mut woken => {
                // A busy worker writes the file thousands of times a second: look at
                // most every POLL_INTERVAL, as before.
                nap = POLL_INTERVAL;
                tokio::time::sleep_until(looked + POLL_INTERVAL).await;
            }
            _ = tx.closed() => return,
        }
    }
}

#[async_trait]
impl Mailbox for SqliteMailbox {
    async fn listen(&self) -> Result<mpsc::Receiver<ControlRequest>, BrokerError> {
        self.ready().await?;
        let last: i64 = self
            .db
            .run(|inner| {
                inner.read(|conn| {
                    Ok(conn.query_row(
                        "SELECT coalesce(max(seq), 0) FROM control_requests",
                        [],
                        |row| row.get(0),
                    )?)
                })
            })
            .await?;
        let (tx, rx) = mpsc::channel(LISTEN_BUFFER);
        tokio::spawn(listen_loop(self.db.clone(), last, tx));
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
        self.ready().await?;
        let body = control::encode_reply(
            hostname,
            request.ticket.as_deref(),
            &reply_to.routing_key,
            reply,
            1,
        );
        let oid = reply_to.routing_key.clone();
        let expires = now_ms().saturating_add(KEEP_MS);
        self.db
            .run(move |inner| {
                inner.writer().execute(
                    "INSERT INTO control_replies (oid, expires_at, body) VALUES (?1, ?2, ?3)",
                    params![oid, expires, body],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn call(
        &self,
        mut request: ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Reply>, BrokerError> {
        self.ready().await?;
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        request.ticket = Some(ticket.clone());
        request.reply_to = Some(ReplyTo {
            exchange: control::REPLY_EXCHANGE.into(),
            routing_key: oid.clone(),
        });
        let now = now_ms();
        let expires = now.saturating_add(duration_ms(timeout));
        let body = control::encode_request(&request, expires as f64 / 1e3, 1);
        self.db
            .run(move |inner| {
                let conn = inner.writer();
                conn.execute(
                    "DELETE FROM control_requests WHERE expires_at < ?1",
                    [now - KEEP_MS],
                )?;
                conn.execute(
                    "DELETE FROM control_replies WHERE expires_at < ?1",
                    [now - KEEP_MS],
                )?;
                conn.execute(
                    "INSERT INTO control_requests (expires_at, body) VALUES (?1, ?2)",
                    params![expires, body],
                )?;
                Ok(())
            })
            .await?;
        let deadline = Instant::now() + timeout;
        let mut replies = Vec::new();
        let mut seen = 0i64;
        loop {
            let id = oid.clone();
            let rows: Vec<(i64, Vec<u8>)> = self
                .db
                .run(move |inner| {
                    inner.read(|conn| {
                        let mut stmt = conn.prepare_cached(
                            "SELECT id, body FROM control_replies WHERE oid = ?1 AND id > ?2 \
                             ORDER BY id",
                        )?;
                        let rows = stmt
                            .query_map(params![id, seen], |row| Ok((row.get(0)?, row.get(1)?)))?
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(rows)
                    })
                })
                .await?;
            for (id, raw) in rows {
                seen = seen.max(id);
                collect_reply(&raw, &ticket, &mut replies);
            }
            if limit.is_some_and(|l| replies.len() >= l) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL.min(left)).await;
        }
        let _ = self
            .db
            .run(move |inner| {
                inner
                    .writer()
                    .execute("DELETE FROM control_replies WHERE oid = ?1", [oid])?;
                Ok(())
            })
            .await;
        Ok(replies)
    }
}
