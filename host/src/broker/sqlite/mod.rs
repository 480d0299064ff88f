//! The embedded broker: queues, leases and dead letters in the SQLite file
//! ([`Database`]). [`SqliteBroker`] is the async face of `queue`: each method runs one
//! `queue` function on the blocking pool with the writer (or a reader) connection.
//!
//! # Liveness
//! See the [broker docs](super#liveness-fast-recovery-of-a-dead-workers-jobs). A live
//! broker upserts its row in `workers` (`expires_at` = now + dead-after) at
//! [`Broker::go_live`] and every [`Broker::heartbeat`], deletes it at the last
//! [`Broker::sign_off`], and writes its identity into `jobs.owner` of every row it
//! leases. Every [`SWEEP_INTERVAL`], from `fetch` and from `heartbeat`, a broker looks
//! for expired `workers` rows; if there are any it makes their leased rows ready at once
//! and deletes the expired `workers` rows, in one transaction. Rows leased without
//! liveness (`owner` NULL) come back when their lease runs out, as before.

mod mailbox;
mod queue;

pub use mailbox::SqliteMailbox;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::broker::{
    Broker, BrokerError, BrokerIdentity, DeadLetter, Delivery, DeliveryTag, LivenessUsers,
    QueueStats,
};
use crate::model::{Job, WorkerRoutes};
use crate::storage::sqlite::{Database, Failure, OpenError, duration_ms, now_ms};
use queue::{LeasedRow, NewRow, parse_tag};

/// How soon an empty `fetch` looks again for jobs from other processes and for etas
/// and leases that came due; each empty look doubles the nap, up to [`IDLE_POLL`] (or
/// [`IDLE_POLL_UNWATCHED`]). Jobs published in this process wake it at once, and so do
/// writes of other processes to the file when inotify can watch it. Default: 5 ms.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Longest nap of an idle `fetch` while inotify watches the database's WAL file: any
/// other process's write (a `sprout send`) wakes it at once, and a nap never runs past
/// the time the next eta comes due or lease runs out (the empty look reads it), so this
/// only bounds a missed wake-up. An idle worker then looks about once a second
/// (BENCHMARKS.md). Default: 1 s.
pub const IDLE_POLL: Duration = Duration::from_secs(1);

/// Longest nap of an idle `fetch` when the file cannot be watched (no inotify): the
/// most a job sent by another process waits before an idle worker sees it. Default:
/// 40 ms.
pub const IDLE_POLL_UNWATCHED: Duration = Duration::from_millis(40);

/// Most often the file watch wakes this process's fetchers: a commit writes the WAL
/// several times, and a busy worker's own commits alone would wake the watch thread
/// (and its fetchers) thousands of times a second. The first write after a quiet spell
/// wakes at once; later ones within this span are merged by the kernel (unread
/// identical inotify events coalesce) and wake once, at most this much later.
/// Default: 1 ms.
pub const WATCH_WAKE_EVERY: Duration = Duration::from_millis(1);

/// How often a broker looks for dead workers' leased rows.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Liveness state of one broker.
#[derive(Debug, Default)]
struct Live {
    users: LivenessUsers,
    last_sweep: Option<Instant>,
}

/// The embedded broker on one SQLite [`Database`]. Cheap to clone (clones share their
/// identity and liveness).
#[derive(Debug, Clone)]
pub struct SqliteBroker {
    db: Database,
    identity: Arc<BrokerIdentity>,
    live: Arc<Mutex<Live>>,
    mailbox: Arc<SqliteMailbox>,
    /// Watches the file for other processes' writes; started by the first `fetch`
    /// (senders never fetch, so they start no watcher thread).
    external: Arc<std::sync::OnceLock<ExternalWake>>,
    /// The current nap of an empty fetch, in µs: kept across `fetch` calls (a worker
    /// calls it every 200 ms), reset when jobs come or something wakes it.
    nap_us: Arc<std::sync::atomic::AtomicU64>,
}

/// Wakes this process's fetchers when another process writes the database: inotify on
/// the WAL file (every commit appends to it). `None` inside when it cannot be watched.
struct ExternalWake(Option<notify::RecommendedWatcher>);

impl std::fmt::Debug for ExternalWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "watching"
        } else {
            "polling"
        })
    }
}

impl ExternalWake {
    fn start(db: &Database) -> ExternalWake {
        use notify::{EventKind, RecursiveMode, Watcher as _};
        let mut wal = db.path().as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        let waker = db.clone();
        let mut pacer = WakePacer::new(WATCH_WAKE_EVERY);
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                Ok(event) => !matches!(event.kind, EventKind::Access(_)),
                Err(_) => true,
            };
            if relevant {
                // Sleeping here (on the watch's own thread) lets the kernel merge the
                // writes that come meanwhile: see WATCH_WAKE_EVERY.
                pacer.pace();
                waker.inner().wake.notify_waiters();
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&wal, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match watched {
            Ok(watcher) => {
                db.inner().watched.store(true, Ordering::Relaxed);
                ExternalWake(Some(watcher))
            }
            Err(e) => {
                tracing::debug!(
                    "cannot watch {} ({e}); polling every {IDLE_POLL_UNWATCHED:?} when idle",
                    wal.display()
                );
                ExternalWake(None)
            }
        }
    }
}

/// Spaces wake-ups at least `every` apart: [`pace`](WakePacer::pace) returns at once
/// after a quiet spell of `every` or more, and otherwise sleeps out the rest of it.
#[derive(Debug)]
struct WakePacer {
    every: Duration,
    last: Option<Instant>,
}

impl WakePacer {
    fn new(every: Duration) -> WakePacer {
        WakePacer { every, last: None }
    }

    /// Blocks this thread until `every` has passed since the previous call returned.
    fn pace(&mut self) {
        if let Some(since) = self.last.map(|at| at.elapsed())
            && since < self.every
        {
            std::thread::sleep(self.every - since);
        }
        self.last = Some(Instant::now());
    }
}

impl From<Failure> for BrokerError {
    fn from(e: Failure) -> Self {
        if e.is_transient() {
            BrokerError::Connection(e.to_string())
        } else {
            BrokerError::Other(e.to_string())
        }
    }
}

impl From<OpenError> for BrokerError {
    fn from(e: OpenError) -> Self {
        if e.transient {
            BrokerError::Connection(e.message)
        } else {
            BrokerError::Other(e.message)
        }
    }
}

impl SqliteBroker {
    /// The broker on an open database (shared with its result backend, if any).
    pub fn new(db: Database) -> SqliteBroker {
        SqliteBroker {
            mailbox: SqliteMailbox::new(db.clone()),
            db,
            identity: Arc::new(BrokerIdentity::new()),
            live: Arc::default(),
            external: Arc::default(),
            nap_us: Arc::default(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Restores the leased rows of dead workers if a sweep is due (every
    /// [`SWEEP_INTERVAL`]).
    async fn maintain(&self) -> Result<(), BrokerError> {
        let now = Instant::now();
        {
            let mut live = self.live();
            if live.last_sweep.is_some_and(|t| now < t + SWEEP_INTERVAL) {
                return Ok(());
            }
            live.last_sweep = Some(now);
        }
        self.sweep_dead().await.map(|_| ())
    }

    /// Makes the leased rows of workers whose liveness lapsed ready again at once;
    /// returns how many.
    ///
    /// # Errors
    /// [`BrokerError`] from the database.
    pub async fn sweep_dead(&self) -> Result<usize, BrokerError> {
        let (restored, workers) = self
            .db
            .run(|inner| Ok(queue::restore_dead(&mut inner.writer())?))
            .await?;
        if restored > 0 {
            tracing::warn!(
                restored,
                workers,
                "restored the leased jobs of dead workers"
            );
            self.db.inner().wake.notify_waiters();
        }
        Ok(restored)
    }

    /// Upserts this broker's `workers` row, valid for `ttl`.
    async fn write_liveness(&self, ttl: Duration) -> Result<(), BrokerError> {
        let id = self.identity.0.clone();
        self.db
            .run(move |inner| {
                let expires = now_ms().saturating_add(duration_ms(ttl));
                Ok(queue::heartbeat(&inner.writer(), &id, expires)?)
            })
            .await
            .map_err(BrokerError::from)
    }

    /// Opens (creating if needed) the database file at `path`; see [`Database::open`].
    ///
    /// # Errors
    /// [`BrokerError::Connection`] if the file cannot be opened now,
    /// [`BrokerError::Other`] if it is not a Sprout database.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<SqliteBroker, BrokerError> {
        Ok(SqliteBroker::new(Database::open(path).await?))
    }

    /// The database this broker uses.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs `sql` (see `queue::for_each_tag`) for every tag on the blocking pool, with
    /// `?3` = now + `offset_ms`.
    async fn settle(
        &self,
        sql: &'static str,
        tags: &[DeliveryTag],
        offset_ms: i64,
    ) -> Result<(), BrokerError> {
        if tags.is_empty() {
            return Ok(());
        }
        let tags = tags.to_vec();
        self.db
            .run(move |inner| {
                let at = now_ms().saturating_add(offset_ms);
                Ok(queue::for_each_tag(&mut inner.writer(), sql, &tags, at)?)
            })
            .await
            .map_err(BrokerError::from)
    }

    /// One fetch attempt on the blocking pool, and when it found nothing ready, when the
    /// next eta or lease comes due ([`queue::Attempt::next_due`]). Bodies are decoded
    /// after the writer lock is released.
    async fn try_fetch(
        &self,
        queues: &[String],
        max: usize,
        lease_ms: i64,
    ) -> Result<(Vec<Delivery>, Option<i64>), BrokerError> {
        let queues = queues.to_vec();
        let owner = self.live().users.current().map(|_| self.identity.0.clone());
        self.db
            .run(move |inner| {
                let attempt = queue::lease_rows(
                    &mut inner.writer(),
                    &queues,
                    max,
                    lease_ms,
                    owner.as_deref(),
                )?;
                let deliveries = attempt.rows.into_iter().map(LeasedRow::into_delivery);
                Ok((deliveries.collect(), attempt.next_due))
            })
            .await
            .map_err(BrokerError::from)
    }
}

#[async_trait]
impl Broker for SqliteBroker {
    /// Inserts all `jobs` in one transaction (all or none).
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let rows: Vec<NewRow> = jobs.iter().map(NewRow::new).collect();
        let wake = rows.iter().any(NewRow::is_ready);
        self.db
            .run(move |inner| Ok(queue::publish(&mut inner.writer(), &rows)?))
            .await?;
        if wake {
            self.db.inner().wake.notify_waiters();
        }
        Ok(())
    }

    /// Leases up to `max` jobs in one `BEGIN IMMEDIATE` transaction, best priority
    /// first, then oldest first, merging `queues` by that order. An undecodable body comes
    /// back as a [`Delivery`] whose `job` is the
    /// [`DecodeError`](crate::model::DecodeError). When nothing is ready it polls every
    /// [`POLL_INTERVAL`] (jobs published by this process wake it at once) until `wait`
    /// runs out; a zero `wait` makes a single attempt.
    ///
    /// # Cancel safety
    /// Not cancel safe: the SQLite work runs on the blocking pool and finishes even if
    /// this future is dropped, so jobs leased by that last attempt are delivered again
    /// only when their lease expires. Between attempts (while it sleeps) dropping it is
    /// harmless.
    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        let lease_ms = duration_ms(lease);
        let longest = match self
            .external
            .get_or_init(|| ExternalWake::start(&self.db))
            .0
        {
            Some(_) => IDLE_POLL,
            None => IDLE_POLL_UNWATCHED,
        };
        let nap_us = &self.nap_us;
        let load = || Duration::from_micros(nap_us.load(Ordering::Relaxed)).max(POLL_INTERVAL);
        let store = |nap: Duration| nap_us.store(nap.as_micros() as u64, Ordering::Relaxed);
        loop {
            // Registered before the attempt, so a publish during it is not missed.
            let woken = self.db.inner().wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.maintain().await?;
            let (got, next_due) = if max == 0 || queues.is_empty() {
                (Vec::new(), None)
            } else {
                self.try_fetch(queues, max, lease_ms).await?
            };
            let now = tokio::time::Instant::now();
            if !got.is_empty() {
                store(POLL_INTERVAL);
                return Ok(got);
            }
            if now >= deadline {
                return Ok(got);
            }
            let nap = load();
            // Not past the next eta or lease expiry (1 ms at least: the clock may have
            // just passed it, and the next look finds the row ready).
            let until_due = next_due.map_or(Duration::MAX, |due| {
                Duration::from_millis(
                    u64::try_from(due.saturating_sub(now_ms()))
                        .unwrap_or(0)
                        .max(1),
                )
            });
            tokio::select! {
                () = tokio::time::sleep(nap.min(until_due).min(deadline - now)) => {
                    store((nap * 2).min(longest));
                }
                // Something was written: look again soon after, in case it was not a job.
                () = &mut woken => store(POLL_INTERVAL),
            }
        }
    }

    /// Sets the lease of each still-owned delivery to now + `lease`.
    async fn extend(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        const SQL: &str =
            "UPDATE jobs SET state = 2, visible_at = ?3 WHERE id = ?1 AND lease_token = ?2";
        self.settle(SQL, tags, duration_ms(lease)).await
    }

    /// Deletes each still-owned delivery, in one transaction. A tag whose job was
    /// fetched again by someone else after its lease expired deletes nothing.
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        const SQL: &str = "DELETE FROM jobs WHERE id = ?1 AND lease_token = ?2";
        self.settle(SQL, tags, 0).await
    }

    /// Makes each still-owned delivery ready at once. The delivery is not counted: the
    /// next fetch reports the same `delivery_count` as this one.
    async fn release(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        const SQL: &str = "UPDATE jobs SET state = 0, visible_at = ?3, lease_token = NULL,
                                  delivery_count = max(delivery_count - 1, 0)
                           WHERE id = ?1 AND lease_token = ?2";
        self.settle(SQL, tags, 0).await?;
        self.db.inner().wake.notify_waiters();
        Ok(())
    }

    /// Deletes the delivery and inserts `job` in one transaction.
    ///
    /// # Errors
    /// [`BrokerError::UnknownDelivery`] (and nothing is enqueued) if the lease was lost.
    async fn retry(&self, tag: &DeliveryTag, job: &Job) -> Result<(), BrokerError> {
        let unknown = || BrokerError::UnknownDelivery(tag.clone());
        let delivery = parse_tag(tag).ok_or_else(unknown)?;
        let row = NewRow::new(job);
        let wake = row.is_ready();
        let owned = self
            .db
            .run(move |inner| Ok(queue::retry(&mut inner.writer(), delivery, &row)?))
            .await?;
        if !owned {
            return Err(unknown());
        }
        if wake {
            self.db.inner().wake.notify_waiters();
        }
        Ok(())
    }

    /// Moves the delivery, body included, to `dead_letters` in one transaction.
    ///
    /// # Errors
    /// [`BrokerError::UnknownDelivery`] if the lease was lost.
    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        let unknown = || BrokerError::UnknownDelivery(tag.clone());
        let delivery = parse_tag(tag).ok_or_else(unknown)?;
        let reason = reason.to_owned();
        let owned = self
            .db
            .run(move |inner| Ok(queue::dead_letter(&mut inner.writer(), delivery, &reason)?))
            .await?;
        if owned { Ok(()) } else { Err(unknown()) }
    }

    /// Deletes the ready and scheduled jobs of `queue`. Leased jobs stay: their workers
    /// still settle them.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let name = queue.to_owned();
        self.db
            .run(move |inner| Ok(queue::purge(&inner.writer(), &name)?))
            .await
            .map_err(BrokerError::from)
    }

    /// Counts by queue, sorted by name. A scheduled job whose eta passed, or a leased one
    /// whose lease expired, counts as ready.
    async fn stats(&self) -> Result<Vec<QueueStats>, BrokerError> {
        self.db
            .run(|inner| inner.read(|conn| Ok(queue::stats(conn)?)))
            .await
            .map_err(BrokerError::from)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.db
            .run(move |inner| inner.read(|conn| Ok(queue::dead_letters(conn, limit)?)))
            .await
            .map_err(BrokerError::from)
    }

    fn identity(&self) -> Option<&BrokerIdentity> {
        Some(&self.identity)
    }

    async fn go_live(&self, dead_after: Duration) -> Result<(), BrokerError> {
        let ttl = self.live().users.join(dead_after);
        if let Err(e) = self.write_liveness(ttl).await {
            self.live().users.leave();
            return Err(e);
        }
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let Some(ttl) = self.live().users.current() else {
            return Ok(());
        };
        self.write_liveness(ttl).await?;
        self.maintain().await
    }

    async fn sign_off(&self) -> Result<(), BrokerError> {
        if !self.live().users.leave() {
            return Ok(());
        }
        let id = self.identity.0.clone();
        self.db
            .run(move |inner| Ok(queue::sign_off(&inner.writer(), &id)?))
            .await
            .map_err(BrokerError::from)
    }

    fn mailbox(&self) -> Option<Arc<dyn crate::broker::mailbox::Mailbox>> {
        Some(self.mailbox.clone())
    }

    /// One row per worker in `routes` (created when first used: older files and
    /// readers of them are unaffected), the entry as JSON.
    async fn publish_routes(&self, routes: &WorkerRoutes) -> Result<(), BrokerError> {
        let worker = routes.worker.clone();
        let entry = serde_json::to_string(routes)
            .map_err(|e| BrokerError::Other(format!("cannot encode routes: {e}")))?;
        self.db
            .run(move |inner| {
                let conn = inner.writer();
                conn.execute_batch(ROUTES_TABLE)?;
                conn.execute(
                    "INSERT INTO routes (worker, entry) VALUES (?1, ?2)
                     ON CONFLICT (worker) DO UPDATE SET entry = excluded.entry",
                    rusqlite::params![worker, entry],
                )?;
                Ok(())
            })
            .await
            .map_err(BrokerError::from)
    }

    async fn withdraw_routes(&self, worker: &str) -> Result<(), BrokerError> {
        let worker = worker.to_string();
        self.db
            .run(move |inner| {
                let conn = inner.writer();
                conn.execute_batch(ROUTES_TABLE)?;
                conn.execute("DELETE FROM routes WHERE worker = ?1", [worker])?;
                Ok(())
            })
            .await
            .map_err(BrokerError::from)
    }

    async fn routes(&self) -> Result<Vec<WorkerRoutes>, BrokerError> {
        self.db
            .run(move |inner| {
                let conn = inner.writer();
                conn.execute_batch(ROUTES_TABLE)?;
                let mut statement = conn.prepare("SELECT entry FROM routes ORDER BY worker")?;
                let entries = statement
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                // An entry this version cannot read is skipped, not fatal.
                Ok(entries
                    .iter()
                    .filter_map(|e| serde_json::from_str(e).ok())
                    .collect())
            })
            .await
            .map_err(BrokerError::from)
    }
}

/// The published task → queue maps (see [`Broker::publish_routes`]). Not part of the
/// versioned schema: created on first use, so files of older versions keep working.
const ROUTES_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS routes (worker TEXT PRIMARY KEY, entry TEXT NOT NULL);";

#[cfg(test)]
mod tests {
    use super::*;

    /// The file watch's rate limit holds: in a burst of events the first wakes at
    /// once, the rest at most once per span; after a quiet spell the next event wakes at
    /// once again. (Measured with a 40 ms span, so a loaded machine's scheduling delays
    /// cannot pass for the pacer's sleeps; the watch uses `WATCH_WAKE_EVERY`.)
    #[test]
    fn wake_ups_are_spaced_by_the_pacers_span() {
        let every = Duration::from_millis(40);
        let mut pacer = WakePacer::new(every);
        let burst = 5u32;
        let start = Instant::now();
        pacer.pace();
        assert!(
            start.elapsed() < every,
            "the first event after a quiet spell waits {:?}",
            start.elapsed()
        );
        let mut previous = Instant::now();
        for _ in 1..burst {
            pacer.pace();
            let now = Instant::now();
            assert!(
                now - previous >= every,
                "two wake-ups {:?} apart (span {every:?})",
                now - previous
            );
            previous = now;
        }
        assert!(start.elapsed() >= every * (burst - 1));

        std::thread::sleep(every * 2);
        let quiet = Instant::now();
        pacer.pace();
        assert!(
            quiet.elapsed() < every,
            "after a quiet spell the next event waits {:?}",
            quiet.elapsed()
        );
    }

    /// End to end on a real file: another connection commits as fast as it can, and the
    /// watch wakes this process's fetchers at most once per `WATCH_WAKE_EVERY` (plus
    /// the first), yet does wake them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_watch_wakes_fetchers_at_most_once_per_watch_wake_every() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("watch.db");
        let db = Database::open(&path).await.expect("open");
        let watch = ExternalWake::start(&db);
        assert!(watch.0.is_some(), "inotify is needed for this test");

        let wake_ups = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = {
            let db = db.clone();
            let wake_ups = wake_ups.clone();
            tokio::spawn(async move {
                loop {
                    db.inner().wake.notified().await;
                    wake_ups.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Another writer: a connection of its own, as another process would have.
        let writer = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let conn =
                    crate::storage::sqlite::schema::open_connection(&path).expect("connection");
                conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                    .expect("create");
                let start = Instant::now();
                let mut commits = 0u64;
                while start.elapsed() < Duration::from_millis(300) {
                    conn.execute("INSERT INTO t VALUES (1)", [])
                        .expect("insert");
                    commits += 1;
                }
                (commits, start.elapsed())
            })
        };
        let (commits, took) = writer.await.expect("writer");
        // Let the last merged wake-up come through.
        tokio::time::sleep(WATCH_WAKE_EVERY * 20).await;
        counter.abort();
        let woken = wake_ups.load(Ordering::Relaxed);
        let most = (took + WATCH_WAKE_EVERY * 20).as_micros() / WATCH_WAKE_EVERY.as_micros() + 1;
        assert!(woken >= 1, "{commits} commits never woke the fetchers");
        assert!(
            u128::from(woken) <= most,
            "{woken} wake-ups for {commits} commits in {took:?}: more than one per {WATCH_WAKE_EVERY:?}"
        );
        assert!(
            commits > woken * 2,
            "{commits} commits, {woken} wake-ups: the writes were not merged"
        );
    }
}
