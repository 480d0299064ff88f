//! The embedded SQLite database: one file that holds the embedded broker's queues and
//! the embedded result backend's results, so `sqlite:PATH` needs no server: `sprout
//! send` in one shell and one or more workers in others share the file.
//!
//! [`Database`] owns the connections; [`SqliteBroker`](crate::broker::sqlite::SqliteBroker)
//! and [`SqliteBackend`](crate::backend::sqlite::SqliteBackend) are two faces of one
//! `Database` and may share it (clones share connections).
//!
//! - `schema`: connection pragmas (WAL, `synchronous=NORMAL`, busy timeout) and the
//!   versioned tables (`PRAGMA user_version`).
//! - `checkpoint`: WAL checkpoints on a background thread, off the writer's path.
//!
//! # Concurrency
//! SQLite calls block, so every call runs on tokio's blocking pool (`spawn_blocking`),
//! never on a runtime worker thread. Each database has one writer connection behind a
//! mutex, so writers in one process queue on the mutex instead of sleeping in SQLite's
//! busy handler, and a few reader connections for `get`, `stats` and listings (WAL
//! readers never wait for the writer). Between processes, SQLite's file lock serialises
//! writers (waiting up to [`BUSY_TIMEOUT`]); every state change is one `BEGIN IMMEDIATE`
//! transaction, so two workers never lease the same job.
//!
//! # Durability
//! `synchronous=NORMAL` in WAL mode: a committed job survives a crash of the process;
//! the last transactions before a power loss may be lost. That is the usual trade for a
//! local queue and keeps commits free of fsync.

mod checkpoint;
pub(crate) mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode};
use tokio::sync::Notify;

/// How long a statement waits for another process's write lock before failing with a
/// connection error. Default: 5 s.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader connections kept open per store for reads (more are opened under load and
/// closed after use).
const MAX_IDLE_READERS: usize = 4;

/// An open embedded database file. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// What the blocking closures see.
pub(crate) struct Inner {
    path: PathBuf,
    /// The one connection that writes (and leases) in this process.
    writer: Mutex<Connection>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
    /// Wakes local fetchers when a job is published or released in this process (other
    /// processes are noticed by polling).
    pub(crate) wake: Notify,
    /// Set once an inotify watch of the WAL file (the broker's) also wakes [`Inner::wake`]
    /// on other processes' writes; until then they are noticed by polling only.
    pub(crate) watched: std::sync::atomic::AtomicBool,
    /// Dropping it stops the background checkpoint thread.
    _checkpointer: Sender<()>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Database {
    /// Opens (creating if needed) the database at `path` (in a directory that must exist) and its
    /// tables, and upgrades an older schema.
    ///
    /// `:memory:` is not supported: every connection would see its own empty database.
    /// Use a file in a temporary directory instead.
    ///
    /// # Errors
    /// [`OpenError`]: the file cannot be created or opened (or stays locked longer than
    /// [`BUSY_TIMEOUT`]), or it is not a Sprout database or was written by a newer
    /// Sprout.
    pub async fn open(path: impl AsRef<Path>) -> Result<Database, OpenError> {
        let path = path.as_ref().to_path_buf();
        let open = move || -> Result<Database, Failure> {
            // The file is created, never its directories: a mistyped path is an error,
            // not a new empty database that jobs vanish into.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
                && !parent.is_dir()
            {
                return Err(Failure::Open(format!(
                    "{}: the directory {} does not exist (Sprout creates the database \
                     file, not directories)",
                    path.display(),
                    parent.display()
                )));
            }
            let mut writer = schema::open_connection(&path)?;
            schema::migrate(&mut writer)?;
            writer.pragma_update(
                None,
                "wal_autocheckpoint",
                checkpoint::WRITER_AUTOCHECKPOINT_PAGES,
            )?;
            let checkpointer = checkpoint::spawn(&path)?;
            Ok(Database {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(writer),
                    readers: Mutex::new(Vec::new()),
                    wake: Notify::new(),
                    watched: std::sync::atomic::AtomicBool::new(false),
                    _checkpointer: checkpointer,
                }),
            })
        };
        match tokio::task::spawn_blocking(open).await {
            Ok(result) => result.map_err(|e| OpenError {
                transient: e.is_transient(),
                message: e.to_string(),
            }),
            Err(e) => Err(OpenError {
                transient: false,
                message: format!("sqlite open panicked: {e}"),
            }),
        }
    }

    /// The shared state the broker and backend modules work on.
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool with access to the connections.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, Failure> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(e) => Err(Failure::Panicked(e.to_string())),
        }
    }
}

impl Inner {
    /// The writer connection. A panic while it was held cannot leave a transaction
    /// open (rusqlite rolls back on drop), so a poisoned lock is safe to reuse.
    pub(crate) fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on an idle reader connection, opening one if none is idle.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => schema::open_connection(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}

/// Why [`Database::open`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OpenError {
    /// What went wrong, with the path.
    pub message: String,
    /// Trying again later may work (busy, locked, I/O).
    pub transient: bool,
}

/// Why a blocking store call failed; converted to the caller's error type at the edge.
#[derive(Debug)]
pub(crate) enum Failure {
    /// SQLite said no.
    Sql(rusqlite::Error),
    /// The file could not be opened or created.
    Open(String),
    /// The file is not (or no longer) a schema this version understands.
    Schema(String),
    /// A stored row could not be decoded.
    Corrupt { id: String, reason: String },
    /// The blocking task panicked.
    Panicked(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl Failure {
    /// Busy, locked, unopenable or I/O failures: trying again later may work.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Failure::Open(_) => true,
            Failure::Sql(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::CannotOpen
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::DiskFull
                )
            ),
            _ => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Sql(e) => write!(f, "sqlite: {e}"),
            Failure::Open(m) | Failure::Schema(m) => f.write_str(m),
            Failure::Corrupt { id, reason } => write!(f, "corrupt row {id}: {reason}"),
            Failure::Panicked(m) => write!(f, "sqlite task panicked: {m}"),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch: every process on the host shares it,
/// which is what leases and etas in a shared file need.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The inverse of [`now_ms`]; out-of-range values clamp to the epoch.
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
