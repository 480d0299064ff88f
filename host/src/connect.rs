//! URL scheme → broker and result-backend constructors.
//!
//! The one place that knows which URL opens which implementation, so a broker never
//! builds a backend: each is opened from its own URL. `sqlite:PATH` opens the embedded
//! file; `redis://HOST:PORT/DB` (also `rediss://`, `redis+unix://`, `unix://`) the
//! Celery-compatible Redis broker or backend, with Sprout's query keys taken out first
//! (see [`RedisOptions`]). When no result backend is named, results go where the broker
//! keeps its own (Celery's usual layout); a broker and a backend on the same SQLite file
//! share one [`Database`].

use std::sync::Arc;
use std::time::Duration;

use crate::backend::redis::RedisBackend;
use crate::backend::sqlite::SqliteBackend;
use crate::backend::{BackendError, ResultBackend};
use crate::broker::redis::RedisBroker;
use crate::broker::sqlite::SqliteBroker;
use crate::broker::{Broker, BrokerError};
use crate::storage::redis::RedisOptions;
use crate::storage::sqlite::Database;

/// The broker URL used when none is given: an SQLite file in the current directory.
pub const DEFAULT_BROKER_URL: &str = "sqlite:sprout.db";

/// A broker and a result backend, each opened from its own URL.
pub struct Connection {
    /// Where jobs go.
    pub broker: Arc<dyn Broker>,
    /// Where results go.
    pub backend: Arc<dyn ResultBackend>,
}

/// Settings given beside the broker URL.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Where results go (Celery's `result_backend`): `sqlite:PATH` or `redis://…`.
    /// Default: none given, so the broker's own store (the same SQLite file, or the
    /// same Redis server and database).
    pub result_backend: Option<String>,
    /// How long results are kept after their last update (Celery's `result_expires`;
    /// zero = forever), when the command was given it (`sprout worker
    /// --result-expires`). On Redis it is the results' TTL, and the URL's own
    /// `result_expires` key, if given too, must say the same. The embedded SQLite
    /// backend keeps records until a sweep deletes them
    /// ([`expiry::sweep`](crate::backend::expiry::sweep)), so it is not used there.
    /// Default: none (the URL's key, else one day).
    pub result_expires: Option<Duration>,
}

/// Why a broker or backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL names no supported broker or backend.
    #[error("unsupported {what} URL {url:?}: expected sqlite:PATH or redis://HOST:PORT/DB")]
    UnsupportedUrl {
        /// `broker` or `result backend`.
        what: &'static str,
        /// The URL as given.
        url: String,
    },
    /// The URL has a bad value for one of its keys (`visibility_timeout=1e300`).
    #[error("invalid {what} URL {url:?}: {reason}")]
    InvalidUrl {
        /// `broker` or `result backend`.
        what: &'static str,
        /// The URL as given.
        url: String,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// The broker could not be opened.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The result backend could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl ConnectError {
    /// True when the server could not be reached and trying again later may work.
    pub fn is_connection_error(&self) -> bool {
        match self {
            ConnectError::UnsupportedUrl { .. } | ConnectError::InvalidUrl { .. } => false,
            ConnectError::Broker(e) => e.is_connection_error(),
            ConnectError::Backend(e) => e.is_connection_error(),
        }
    }

    /// True when the URL itself is wrong (an unknown scheme, a bad value for a key):
    /// the caller gave it, so it is a usage error (the CLI exits 2).
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            ConnectError::UnsupportedUrl { .. } | ConnectError::InvalidUrl { .. }
        )
    }
}

/// What a URL names.
enum Target<'a> {
    Sqlite(&'a str),
    Redis(&'a str),
}

fn parse<'a>(url: &'a str, what: &'static str) -> Result<Target<'a>, ConnectError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        return Ok(Target::Sqlite(path.strip_prefix("//").unwrap_or(path)));
    }
    let redis = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if redis.iter().any(|scheme| url.starts_with(scheme)) {
        // Its keys are checked before anything connects, so a bad value is reported as
        // the URL's fault.
        RedisOptions::from_url(url).map_err(|e| ConnectError::InvalidUrl {
            what,
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        return Ok(Target::Redis(url));
    }
    Err(ConnectError::UnsupportedUrl {
        what,
        url: url.to_string(),
    })
}

/// Opens the broker at `url`.
///
/// # Errors
/// [`ConnectError::UnsupportedUrl`] for an unknown scheme, or the broker's own error.
pub async fn broker(url: &str) -> Result<Arc<dyn Broker>, ConnectError> {
    Ok(match parse(url, "broker")? {
        Target::Sqlite(path) => Arc::new(SqliteBroker::open(path).await?),
        Target::Redis(url) => Arc::new(
            RedisBroker::connect(RedisOptions::from_url(url).map_err(BrokerError::from)?).await?,
        ),
    })
}

/// Opens the result backend at `url`; `result_expires` as in [`ConnectOptions`].
///
/// # Errors
/// [`ConnectError::UnsupportedUrl`] for an unknown scheme, or the backend's own error.
pub async fn backend(
    url: &str,
    result_expires: Option<Duration>,
) -> Result<Arc<dyn ResultBackend>, ConnectError> {
    Ok(match parse(url, "result backend")? {
        Target::Sqlite(path) => Arc::new(SqliteBackend::open(path).await?),
        Target::Redis(url) => {
            let opts = RedisOptions::from_url_with_result_expires(url, result_expires)
                .map_err(BackendError::from)?;
            Arc::new(RedisBackend::connect(opts).await?)
        }
    })
}

/// Opens the broker at `broker_url` and the result backend `options` name (by
/// default the broker's own store).
///
/// # Errors
/// As [`broker`] and [`backend`].
pub async fn connect_with(
    broker_url: &str,
    options: &ConnectOptions,
) -> Result<Connection, ConnectError> {
    let backend_url = options.result_backend.as_deref().unwrap_or(broker_url);
    // One file, one set of connections: the embedded broker and backend share it.
    if let (Target::Sqlite(a), Target::Sqlite(b)) = (
        parse(broker_url, "broker")?,
        parse(backend_url, "result backend")?,
    ) && a == b
    {
        let db = Database::open(a).await.map_err(BrokerError::from)?;
        return Ok(Connection {
            broker: Arc::new(SqliteBroker::new(db.clone())),
            backend: Arc::new(SqliteBackend::new(db)),
        });
    }
    Ok(Connection {
        broker: broker(broker_url).await?,
        backend: backend(backend_url, options.result_expires).await?,
    })
}

/// [`connect_with`] with default options: the broker at `url` and its own store.
///
/// # Errors
/// As [`connect_with`].
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    connect_with(url, &ConnectOptions::default()).await
}
