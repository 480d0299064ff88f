//! URL scheme → broker and result-backend constructors.
//!
//! The one place that knows which URL opens which implementation, so a broker never
//! builds a backend: each is opened from its own URL. `sqlite:PATH` opens the embedded
//! file; `redis://HOST:PORT/DB` (also `rediss://`, `redis+unix://`, `unix://`) the
//! Celery-compatible Redis broker or backend, with Sprout's query keys taken out first
//! (see [`RedisOptions`]); `amqp://USER:PASS@HOST:PORT/VHOST` (also `pyamqp://`) the
//! Celery-compatible RabbitMQ broker (see [`AmqpOptions`]); `rpc://` the result backend
//! that sends results as messages to each producer's `reply_to` queue over the AMQP
//! broker's server (Celery's RPC backend; it needs an `amqp://` broker). When no result
//! backend is named, results go where the broker keeps its own (Celery's usual layout):
//! the same SQLite file or Redis database, and `rpc://` for RabbitMQ, as Celery users
//! expect; a broker and a backend on the same SQLite file share one [`Database`].

use std::sync::Arc;
use std::time::Duration;

use crate::backend::redis::RedisBackend;
use crate::backend::rpc::RpcBackend;
use crate::backend::sqlite::SqliteBackend;
use crate::backend::{BackendError, ResultBackend};
use crate::broker::amqp::AmqpBroker;
use crate::broker::events::EventSink;
use crate::broker::redis::RedisBroker;
use crate::broker::redis::events::RedisEvents;
use crate::broker::sqlite::SqliteBroker;
use crate::broker::{Broker, BrokerError};
use crate::storage::amqp::AmqpOptions;
use crate::storage::redis::RedisOptions;
use crate::storage::sqlite::Database;

/// The broker URL used when none is given: an SQLite file in the current directory.
pub const DEFAULT_BROKER_URL: &str = "sqlite:sprout.db";

/// The result backend that sends results as messages (Celery's `rpc://`).
pub const RPC_BACKEND_URL: &str = "rpc://";

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
    /// Where results go (Celery's `result_backend`): `sqlite:PATH`, `redis://…`, or
    /// `rpc://` (with an `amqp://` broker). Default: none given, so the broker's own
    /// store (the same SQLite file, or the same Redis server and database), and
    /// `rpc://` for an AMQP broker.
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
    #[error(
        "unsupported {what} URL {url:?}: expected sqlite:PATH, redis://HOST:PORT/DB, \
         amqp://USER:PASS@HOST:PORT/VHOST (broker) or rpc:// (result backend)"
    )]
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
    Amqp(AmqpOptions),
    Rpc,
}

fn parse<'a>(url: &'a str, what: &'static str) -> Result<Target<'a>, ConnectError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        // A file in a directory that is not there is a typo in the URL: refused here,
        // before anything is opened (the file is created, never directories).
        let file = std::path::Path::new(path);
        // SQLite URLs have no options: `sqlite:x.db?mode=ro` would otherwise open a file
        // named `x.db?mode=ro`.
        if path.contains('?') {
            return Err(ConnectError::InvalidUrl {
                what,
                url: url.to_string(),
                reason: "sqlite:PATH takes no options (no `?`): give the database file alone"
                    .into(),
            });
        }
        if path.is_empty() || file.is_dir() {
            return Err(ConnectError::InvalidUrl {
                what,
                url: url.to_string(),
                reason: "expected sqlite:PATH to a database file".into(),
            });
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(ConnectError::InvalidUrl {
                what,
                url: url.to_string(),
                reason: format!(
                    "the directory {} does not exist (Sprout creates the database file, \
                     never directories)",
                    dir.display()
                ),
            });
        }
        return Ok(Target::Sqlite(path));
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
    if url.starts_with("amqp://") || url.starts_with("pyamqp://") {
        return AmqpOptions::from_url(url).map(Target::Amqp).map_err(|e| {
            ConnectError::InvalidUrl {
                what,
                url: url.to_string(),
                reason: e.to_string(),
            }
        });
    }
    if what == "result backend" && (url == "rpc://" || url == "rpc") {
        return Ok(Target::Rpc);
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
        Target::Amqp(opts) => Arc::new(AmqpBroker::connect(opts).await?),
        Target::Rpc => {
            return Err(ConnectError::UnsupportedUrl {
                what: "broker",
                url: url.to_string(),
            });
        }
    })
}

/// Opens where a worker's monitoring events (Celery's `-E`) go for the broker at
/// `url`: on Redis the `celeryev` pub/sub channels Flower listens on; `None` for the
/// embedded SQLite broker, which has no event subscribers (events are not kept), and
/// for now for AMQP (events on RabbitMQ's `celeryev` exchange are not written yet).
///
/// # Errors
/// [`ConnectError::UnsupportedUrl`] for an unknown scheme, or the broker's own error.
pub async fn events(url: &str) -> Result<Option<Arc<dyn EventSink>>, ConnectError> {
    Ok(match parse(url, "broker")? {
        Target::Redis(url) => {
            let opts = RedisOptions::from_url(url).map_err(BrokerError::from)?;
            Some(Arc::new(RedisEvents::connect(&opts).await?))
        }
        // SQLite: nobody can subscribe to a file. AMQP: the `celeryev` topic exchange
        // is not published to yet (known gap).
        Target::Sqlite(_) | Target::Amqp(_) | Target::Rpc => None,
    })
}

/// Opens the result backend at `url`; `result_expires` as in [`ConnectOptions`].
/// `rpc://` needs the broker's URL: use [`connect_with`].
///
/// # Errors
/// [`ConnectError::UnsupportedUrl`] for an unknown scheme, or the backend's own error.
pub async fn backend(
    url: &str,
    result_expires: Option<Duration>,
) -> Result<Arc<dyn ResultBackend>, ConnectError> {
    backend_for(url, None, result_expires).await
}

/// Opens the result backend at `url`, `broker` being the broker's AMQP settings when
/// it is one (what `rpc://` sends its results through).
async fn backend_for(
    url: &str,
    broker: Option<&AmqpOptions>,
    result_expires: Option<Duration>,
) -> Result<Arc<dyn ResultBackend>, ConnectError> {
    Ok(match parse(url, "result backend")? {
        Target::Rpc => {
            let Some(opts) = broker else {
                return Err(ConnectError::InvalidUrl {
                    what: "result backend",
                    url: url.to_string(),
                    reason: "rpc:// sends results over the broker's connection: it needs an \
                             amqp:// broker"
                        .into(),
                });
            };
            Arc::new(RpcBackend::connect(opts.clone(), result_expires).await?)
        }
        Target::Amqp(_) => {
            return Err(ConnectError::InvalidUrl {
                what: "result backend",
                url: url.to_string(),
                reason: "RabbitMQ keeps no results: use rpc:// (results as messages to the \
                         producer) or a storing backend (redis://…, sqlite:PATH)"
                    .into(),
            });
        }
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
    let broker_target = parse(broker_url, "broker")?;
    let amqp = match &broker_target {
        Target::Amqp(opts) => Some(opts.clone()),
        _ => None,
    };
    let default_backend = if amqp.is_some() {
        RPC_BACKEND_URL
    } else {
        broker_url
    };
    let backend_url = options.result_backend.as_deref().unwrap_or(default_backend);
    // One file, one set of connections: the embedded broker and backend share it.
    if let (Target::Sqlite(a), Target::Sqlite(b)) =
        (broker_target, parse(backend_url, "result backend")?)
        && a == b
    {
        let db = Database::open(a).await.map_err(BrokerError::from)?;
        return Ok(Connection {
            broker: Arc::new(SqliteBroker::new(db.clone())),
            backend: Arc::new(SqliteBackend::new(db)),
        });
    }
    Ok(Connection {
        broker: broker(broker_url).await?,
        backend: backend_for(backend_url, amqp.as_ref(), options.result_expires).await?,
    })
}

/// [`connect_with`] with default options: the broker at `url` and its own store.
///
/// # Errors
/// As [`connect_with`].
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    connect_with(url, &ConnectOptions::default()).await
}
