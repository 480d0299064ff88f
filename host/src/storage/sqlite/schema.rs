//! Connection settings and the versioned schema.
//!
//! The schema version lives in `PRAGMA user_version`. [`migrate`] runs in one
//! `BEGIN IMMEDIATE` transaction, so processes opening a new file at the same time
//! create the tables exactly once.
//!
//! # Tables
//! `jobs` holds every job that is not acked yet. `state` says which index a row is in:
//!
//! | state | meaning   | `visible_at` means               |
//! |-------|-----------|----------------------------------|
//! | 0     | ready     | when it became ready (unused)    |
//! | 1     | scheduled | its eta                          |
//! | 2     | leased    | when the lease runs out          |
//!
//! A scheduled or leased row whose `visible_at` has passed is ready again; `fetch`
//! moves such rows back to state 0 first. Keeping "ready" a plain state (instead of a
//! time comparison) lets one partial index, `jobs_ready`, serve fetch in priority + FIFO
//! order no matter how many jobs wait for an eta or are leased. `lease_token` is a random
//! number drawn at every fetch and is part of the delivery tag, so a worker whose lease
//! expired cannot ack, extend or dead-letter the job after someone else fetched it.
//!
//! `jobs.owner` (version 2) is the identity of the live worker that leased the row, or
//! NULL; `workers` (version 2) holds one row per live worker (`id` = its
//! [`BrokerIdentity`](crate::broker::BrokerIdentity), `expires_at` = last heartbeat +
//! its dead-after, in ms). A leased row whose owner's `workers` row has expired is
//! restored by any live worker's sweep (see `broker::sqlite`).
//!
//! `dead_letters` keeps the body, the reason and the time. `results` holds one JSON
//! [`ResultRecord`](crate::model::ResultRecord) per job id, plus the columns the
//! upsert rule and `sprout status` need. It is a rowid table with a unique index on the
//! job id rather than `WITHOUT ROWID` keyed by it: job ids are random UUIDs, and random
//! inserts into the small index dirty far fewer pages than into a table of whole
//! records (measured 3x more results per second).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{BUSY_TIMEOUT, Failure};

/// The schema this code writes. Bump it and add a step to [`migrate`] for every change.
pub(crate) const VERSION: i64 = 2;

/// `jobs.state` of a job that can be fetched now.
pub(crate) const READY: i64 = 0;
/// `jobs.state` of a job waiting for its eta. (State 2, leased, is only ever written by
/// SQL literals, next to the partial-index conditions.)
pub(crate) const SCHEDULED: i64 = 1;

/// Version 1: everything. The partial-index conditions (`state = 0`, `state <> 0`) are
/// repeated literally in the queries so SQLite's planner can use the indexes.
const V1: &str = "
CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY,
    queue          TEXT    NOT NULL,
    job_id         TEXT,
    priority       INTEGER NOT NULL DEFAULT 0,
    state          INTEGER NOT NULL DEFAULT 0,
    visible_at     INTEGER NOT NULL DEFAULT 0,
    lease_token    INTEGER,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    body           BLOB    NOT NULL
);
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id) WHERE state = 0;
CREATE INDEX jobs_waiting ON jobs (visible_at) WHERE state <> 0;

CREATE TABLE dead_letters (
    id             INTEGER PRIMARY KEY,
    queue          TEXT    NOT NULL,
    job_id         TEXT,
    reason         TEXT    NOT NULL,
    at             INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    body           BLOB    NOT NULL
);

CREATE TABLE results (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    task       TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    terminal   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    record     BLOB    NOT NULL
);
CREATE INDEX results_updated ON results (updated_at);
";

/// Version 2: liveness (who leased a row; live workers).
const V2: &str = "
ALTER TABLE jobs ADD COLUMN owner TEXT;
CREATE TABLE workers (
    id         TEXT    PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
";

/// Opens one connection with Sprout's settings: WAL (readers never block the writer and
/// several processes can share the file), `synchronous=NORMAL` (no fsync per commit),
/// [`BUSY_TIMEOUT`] for other processes' locks, and a statement cache big enough for
/// every query in this module.
pub(crate) fn open_connection(path: &Path) -> Result<Connection, Failure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Failure::Open(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Failure::Open(format!(
            "{} cannot use WAL mode (got {mode}); is it on a network file system?",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // After a checkpoint resets the WAL, truncate a file that grew past 64 MiB.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates or upgrades the schema to [`VERSION`].
///
/// # Errors
/// [`Failure::Schema`] if the file has a newer schema, or tables but no version (not a
/// Sprout database).
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Failure> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    match version {
        0 => {
            let tables: i64 =
                tx.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
            if tables > 0 {
                return Err(Failure::Schema(
                    "the file has tables but no Sprout schema version: not a Sprout database"
                        .into(),
                ));
            }
            tx.execute_batch(V1)?;
            tx.execute_batch(V2)?;
        }
        1 => tx.execute_batch(V2)?,
        VERSION => return Ok(()),
        newer => {
            return Err(Failure::Schema(format!(
                "schema version {newer} is newer than this Sprout understands ({VERSION})"
            )));
        }
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}
