//! The embedded result backend: results in the SQLite file ([`Database`]) beside the
//! embedded broker's queues, and the queries behind `sprout status`.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::backend::{BackendError, Lookup, ResultBackend};
use crate::model::{ResultRecord, State};
use crate::storage::sqlite::{Database, Failure, OpenError, duration_ms, now_ms};

/// Upserts one record. The `WHERE` keeps a terminal state: a late or duplicate
/// non-terminal record (STARTED after SUCCESS) changes nothing, while a terminal record
/// replaces anything (the latest attempt of an at-least-once job wins).
const UPSERT: &str = "
INSERT INTO results (id, task, state, terminal, updated_at, record)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (id) DO UPDATE SET
    task = excluded.task,
    state = excluded.state,
    terminal = excluded.terminal,
    updated_at = excluded.updated_at,
    record = excluded.record
WHERE excluded.terminal OR NOT results.terminal";

/// Results deleted per transaction when expiring old ones.
const EXPIRE_BATCH: i64 = 5_000;

/// A record serialised for storage (done before taking the writer lock).
struct Row {
    id: String,
    task: String,
    state: &'static str,
    terminal: bool,
    updated_at: i64,
    record: Vec<u8>,
}

fn decode(id: &str, bytes: &[u8]) -> Result<ResultRecord, Failure> {
    serde_json::from_slice(bytes).map_err(|e| Failure::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn insert_results(conn: &mut Connection, rows: &[Row]) -> Result<(), Failure> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = tx.prepare_cached(UPSERT)?;
        for r in rows {
            upsert.execute(params![
                r.id,
                r.task,
                r.state,
                r.terminal,
                r.updated_at,
                r.record
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The embedded result backend on one SQLite [`Database`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    db: Database,
}

impl From<Failure> for BackendError {
    fn from(e: Failure) -> Self {
        match e {
            Failure::Corrupt { id, reason } => BackendError::Corrupt { id, reason },
            e if e.is_transient() => BackendError::Connection(e.to_string()),
            e => BackendError::Other(e.to_string()),
        }
    }
}

impl From<OpenError> for BackendError {
    fn from(e: OpenError) -> Self {
        if e.transient {
            BackendError::Connection(e.message)
        } else {
            BackendError::Other(e.message)
        }
    }
}

/// The stored record of `id`, decoded (`None`: no row).
fn read_record(conn: &Connection, id: &str) -> Result<Option<ResultRecord>, Failure> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT record FROM results WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    bytes.map(|b| decode(id, &b)).transpose()
}

impl SqliteBackend {
    /// The backend on an open database (shared with its broker, if any).
    pub fn new(db: Database) -> SqliteBackend {
        SqliteBackend { db }
    }

    /// Opens (creating if needed) the database file at `path`; see [`Database::open`].
    ///
    /// # Errors
    /// [`BackendError::Connection`] if the file cannot be opened now,
    /// [`BackendError::Other`] if it is not a Sprout database.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<SqliteBackend, BackendError> {
        Ok(SqliteBackend::new(Database::open(path).await?))
    }
}

#[async_trait]
impl ResultBackend for SqliteBackend {
    /// Upserts the whole batch in one transaction.
    async fn store(&self, records: &[ResultRecord]) -> Result<(), BackendError> {
        if records.is_empty() {
            return Ok(());
        }
        let rows = records
            .iter()
            .map(|r| {
                let record = serde_json::to_vec(r).map_err(|e| Failure::Corrupt {
                    id: r.id.clone(),
                    reason: format!("cannot serialise: {e}"),
                })?;
                Ok(Row {
                    id: r.id.clone(),
                    task: r.task.clone(),
                    state: r.state.as_str(),
                    terminal: r.state.is_terminal(),
                    updated_at: r.updated_at.timestamp_millis(),
                    record,
                })
            })
            .collect::<Result<Vec<Row>, Failure>>()?;
        self.db
            .run(move |inner| insert_results(&mut inner.writer(), &rows))
            .await
            .map_err(BackendError::from)
    }

    async fn recent(&self, limit: usize) -> Result<Vec<ResultRecord>, BackendError> {
        self.recent_results(limit).await
    }

    async fn counts(&self) -> Result<Vec<(State, u64)>, BackendError> {
        self.result_counts().await
    }

    /// Deletes in batches of `EXPIRE_BATCH` rows, one transaction each, taking the
    /// writer lock per batch: a sweep of a million old results never holds up the
    /// workers' result writes for long. Uses the `updated_at` index.
    async fn expire_results(&self, older_than: Duration) -> Result<u64, BackendError> {
        let cutoff = now_ms().saturating_sub(duration_ms(older_than));
        self.db
            .run(move |inner| {
                let mut total = 0u64;
                loop {
                    let deleted = inner
                        .writer()
                        .prepare_cached(
                            "DELETE FROM results WHERE seq IN \
                         (SELECT seq FROM results WHERE updated_at < ?1 LIMIT ?2)",
                        )?
                        .execute(params![cutoff, EXPIRE_BATCH])?;
                    total += deleted as u64;
                    if (deleted as i64) < EXPIRE_BATCH {
                        return Ok(total);
                    }
                }
            })
            .await
            .map_err(BackendError::from)
    }

    async fn get(&self, id: &str) -> Result<Option<ResultRecord>, BackendError> {
        let id = id.to_owned();
        self.db
            .run(move |inner| inner.read(|conn| read_record(conn, &id)))
            .await
            .map_err(BackendError::from)
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Lookup>, BackendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.db
            .run(move |inner| {
                inner.read(|conn| {
                    // One read transaction for the whole list: one snapshot, and one
                    // round of WAL locks and page-cache checks instead of one per id
                    // (an autocommit SELECT is a transaction of its own).
                    let snapshot = conn.unchecked_transaction()?;
                    let mut records = Vec::with_capacity(ids.len());
                    for id in &ids {
                        match read_record(&snapshot, id) {
                            Err(e @ Failure::Corrupt { .. }) => {
                                records.push(Err(BackendError::from(e)))
                            }
                            other => records.push(Ok(other?)),
                        }
                    }
                    snapshot.finish()?;
                    Ok(records)
                })
            })
            .await
            .map_err(BackendError::from)
    }
}

impl SqliteBackend {
    /// The `limit` most recently updated results, newest first (`sprout status`).
    /// Records that cannot be decoded are skipped with a warning, so one bad row does
    /// not hide the others.
    ///
    /// # Errors
    /// [`BackendError`] if the database cannot be read.
    pub async fn recent_results(&self, limit: usize) -> Result<Vec<ResultRecord>, BackendError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .run(move |inner| {
                inner.read(|conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT id, record FROM results ORDER BY updated_at DESC LIMIT ?1",
                    )?;
                    let mut rows = stmt.query([limit])?;
                    let mut out = Vec::new();
                    while let Some(row) = rows.next()? {
                        let id: String = row.get(0)?;
                        match decode(&id, &row.get::<_, Vec<u8>>(1)?) {
                            Ok(record) => out.push(record),
                            Err(e) => tracing::warn!(%e, "skipping unreadable result"),
                        }
                    }
                    Ok(out)
                })
            })
            .await
            .map_err(BackendError::from)
    }

    /// How many results are in each state, in [`State`] order; states with no results
    /// are left out.
    ///
    /// # Errors
    /// [`BackendError`] if the database cannot be read.
    pub async fn result_counts(&self) -> Result<Vec<(State, u64)>, BackendError> {
        let mut counts = self
            .db
            .run(|inner| {
                inner.read(|conn| {
                    let mut stmt =
                        conn.prepare_cached("SELECT state, count(*) FROM results GROUP BY state")?;
                    let rows =
                        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                    let mut out = Vec::new();
                    for row in rows {
                        let (state, n) = row?;
                        if let Some(state) = State::parse(&state) {
                            out.push((state, u64::try_from(n).unwrap_or(0)));
                        }
                    }
                    Ok(out)
                })
            })
            .await?;
        counts.sort_by_key(|(state, _)| *state as u8);
        Ok(counts)
    }
}
