//! Redis connection settings shared by [`RedisBroker`](crate::broker::redis::RedisBroker)
//! and [`RedisBackend`](crate::backend::redis::RedisBackend): Celery's usual layout puts
//! both on one server and database, each opened on its own from the same URL.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::model::DEFAULT_RESULT_EXPIRES;
use crate::model::time;

/// Why Redis settings are unusable, or the server cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// Not a Redis URL.
    #[error("unsupported Redis URL {0}")]
    Url(String),
    /// One of Sprout's query keys has a bad value (`visibility_timeout=1e300`).
    #[error("Redis URL key {0}")]
    Key(String),
    /// Settings given beside the URL contradict it.
    #[error("invalid Redis settings: {0}")]
    Conflict(String),
    /// The server could not be reached.
    #[error("{0}")]
    Connection(String),
}

/// Settings for the Redis broker and result backend.
///
/// From a URL: `redis://HOST:PORT/DB?visibility_timeout=3600&global_keyprefix=app:`;
/// the query keys below are taken out before the URL reaches the Redis client.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisOptions {
    /// The server URL as the Redis client understands it (`redis://127.0.0.1:6379/0`).
    pub url: String,
    /// Prefix of every key and channel (kombu's `global_keyprefix`); separates
    /// deployments (or tests) sharing one database. Default: none.
    pub key_prefix: String,
    /// How long a reservation may go without an ack or an extend before any worker's
    /// sweep puts the message back (kombu's `visibility_timeout`). Every worker on the
    /// broker, Python or Sprout, must use the same value. Query key
    /// `visibility_timeout` (seconds). Default: 3600 s, kombu's.
    pub visibility_timeout: Duration,
    /// How often a fetching broker looks for expired reservations to restore. Query key
    /// `sweep_interval` (seconds). Default: 1 s (Celery: about 100 s).
    pub sweep_interval: Duration,
    /// The most eta/countdown messages one broker holds reserved while they wait; past
    /// it, fetch stops taking new messages until some are due. Default: 100 000.
    pub max_held: usize,
    /// The longest a waiting fetch sleeps between two polls of the queues. Default: 20 ms.
    pub poll_interval: Duration,
    /// How many dead letters `sprout.dead` keeps (oldest dropped). Default: 10 000.
    pub dead_letter_cap: usize,
    /// TTL of stored results (Celery's `result_expires`), rounded up to whole seconds;
    /// zero stores them without a TTL (kept forever, as in Celery). Query key
    /// `result_expires` (seconds), or given beside the URL (`sprout worker
    /// --result-expires`, see [`RedisOptions::from_url_with_result_expires`]).
    /// Default: 86 400 s.
    pub result_expires: Duration,
    /// How long one Redis command may take before it fails. Default: 30 s.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: String::new(),
            visibility_timeout: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(1),
            max_held: 100_000,
            poll_interval: Duration::from_millis(20),
            dead_letter_cap: 10_000,
            result_expires: DEFAULT_RESULT_EXPIRES,
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// A query key's value in seconds, checked through [`time::seconds`] (at most
/// [`time::MAX_SECONDS`]).
fn seconds(key: &str, value: &str) -> Result<Duration, OptionsError> {
    let bad = |why: String| OptionsError::Key(format!("`{key}={value}`: {why}"));
    let secs = value
        .parse::<f64>()
        .map_err(|_| bad("expected seconds".into()))?;
    time::seconds(secs).map_err(|e| bad(e.to_string()))
}

impl RedisOptions {
    /// Parses a `redis://` (or `rediss://`, `redis+unix://`, `unix://`) URL, taking out
    /// Sprout's own query keys (`visibility_timeout`, `global_keyprefix`,
    /// `sweep_interval`, `result_expires`).
    ///
    /// # Errors
    /// [`OptionsError::Url`] for another scheme or a URL the Redis client does not take,
    /// [`OptionsError::Key`] for a bad value.
    pub fn from_url(url: &str) -> Result<RedisOptions, OptionsError> {
        Self::parse(url).map(|(opts, _)| opts)
    }

    /// [`RedisOptions::from_url`], with the results' expiry given beside the URL (the
    /// worker's `--result-expires`) when `result_expires` is `Some`: it sets
    /// [`RedisOptions::result_expires`]. The URL's `result_expires` key may be given
    /// too, but only with the same value: two different expiries are an error rather
    /// than one silently winning.
    ///
    /// # Errors
    /// As [`RedisOptions::from_url`]; [`OptionsError::Conflict`] when the URL's
    /// `result_expires` differs from `result_expires`.
    pub fn from_url_with_result_expires(
        url: &str,
        result_expires: Option<Duration>,
    ) -> Result<RedisOptions, OptionsError> {
        let (mut opts, in_url) = Self::parse(url)?;
        match (in_url, result_expires) {
            (Some(a), Some(b)) if a != b => Err(OptionsError::Conflict(format!(
                "result_expires={} s in the Redis URL differs from the result expiry given \
                 beside it ({} s, `--result-expires`); give one of them, or the same value",
                a.as_secs_f64(),
                b.as_secs_f64()
            ))),
            (_, Some(expires)) => {
                opts.result_expires = expires;
                Ok(opts)
            }
            (_, None) => Ok(opts),
        }
    }

    /// [`RedisOptions::result_expires`] as a Redis TTL: whole seconds, rounded up; 0
    /// means no TTL (results are kept forever).
    pub fn result_ttl_secs(&self) -> u64 {
        let expires = self.result_expires;
        expires.as_secs() + u64::from(expires.subsec_nanos() > 0)
    }

    /// The options from `url`, and the `result_expires` it gave, if it gave one.
    fn parse(url: &str) -> Result<(RedisOptions, Option<Duration>), OptionsError> {
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            return Err(OptionsError::Url(url.to_string()));
        }
        let mut opts = RedisOptions::default();
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        let mut result_expires = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "visibility_timeout" => opts.visibility_timeout = seconds(key, value)?,
                "sweep_interval" => opts.sweep_interval = seconds(key, value)?,
                "result_expires" => result_expires = Some(seconds(key, value)?),
                "global_keyprefix" => opts.key_prefix = value.to_string(),
                _ => kept.push(pair),
            }
        }
        opts.url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        if let Some(expires) = result_expires {
            opts.result_expires = expires;
        }
        // The rest is the Redis client's: checked here too (it only parses), so a URL it
        // cannot take (`redis://[::1`, `rediss://` without TLS) is the URL's fault, found
        // before anything connects.
        opts.client()?;
        Ok((opts, result_expires))
    }

    /// `key` with the key prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// The Redis client for [`RedisOptions::url`].
    ///
    /// # Errors
    /// [`OptionsError::Url`] when the client rejects the URL.
    pub fn client(&self) -> Result<redis::Client, OptionsError> {
        redis::Client::open(self.url.as_str())
            .map_err(|e| OptionsError::Url(format!("{}: {e}", self.url)))
    }

    /// A multiplexed connection that reconnects by itself, with exponential backoff
    /// (100 ms doubling, at most 2 s apart, 8 tries per command).
    ///
    /// # Errors
    /// [`OptionsError::Connection`] when Redis cannot be reached now.
    pub async fn connect(&self) -> Result<ConnectionManager, OptionsError> {
        let client = self.client()?;
        // One plain attempt first, so an unreachable server is reported at once (the
        // manager below retries its first connection with backoff, ~13 s of silence),
        // saying where it tried and why.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.response_timeout));
        if let Err(e) = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
        {
            return Err(OptionsError::Connection(format!(
                "cannot connect to Redis at {}: {e}",
                client.get_connection_info().addr()
            )));
        }
        let config = ConnectionManagerConfig::new()
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(8)
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.response_timeout));
        ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| {
                OptionsError::Connection(format!(
                    "cannot connect to Redis at {}: {e}",
                    client.get_connection_info().addr()
                ))
            })
    }
}

/// Whether a Redis error means the connection, not the command, failed — or that the
/// server is up but not serving yet (`LOADING` its dataset after a restart): both pass,
/// so both are retried rather than treated as the command's failure.
pub fn is_connection(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options() {
        let o = RedisOptions::from_url(
            "redis://127.0.0.1:6379/9?visibility_timeout=30&global_keyprefix=t1:&protocol=resp3",
        )
        .unwrap();
        assert_eq!(o.url, "redis://127.0.0.1:6379/9?protocol=resp3");
        assert_eq!(o.visibility_timeout, Duration::from_secs(30));
        assert_eq!(o.key("unacked"), "t1:unacked");
        assert!(RedisOptions::from_url("amqp://x").is_err());
        assert!(RedisOptions::from_url("redis://x/0?visibility_timeout=soon").is_err());
    }

    /// Durations in the URL are checked (model::time); the error names the key.
    #[test]
    fn url_durations_out_of_range_name_the_key() {
        for (query, want) in [
            (
                "visibility_timeout=1e300",
                "`visibility_timeout=1e300`: 1e300 s is more than",
            ),
            (
                "sweep_interval=inf",
                "`sweep_interval=inf`: inf s is not a finite",
            ),
            (
                "result_expires=-1",
                "`result_expires=-1`: -1.0 s is negative",
            ),
            (
                "visibility_timeout=soon",
                "`visibility_timeout=soon`: expected seconds",
            ),
        ] {
            let e = RedisOptions::from_url(&format!("redis://x/0?{query}")).unwrap_err();
            assert!(matches!(e, OptionsError::Key(_)), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn result_expires_from_the_url_or_beside_it() {
        let url = "redis://127.0.0.1:6379/9";
        let ttl = |o: RedisOptions| (o.result_expires, o.result_ttl_secs());
        let day = Duration::from_secs(86_400);
        let opts = |url: &str, given| RedisOptions::from_url_with_result_expires(url, given);
        assert_eq!(ttl(opts(url, None).unwrap()), (day, 86_400));
        let minute = Some(Duration::from_secs(60));
        assert_eq!(ttl(opts(url, minute).unwrap()).1, 60);
        let with_key = format!("{url}?result_expires=60");
        assert_eq!(ttl(opts(&with_key, None).unwrap()).1, 60);
        assert_eq!(ttl(opts(&with_key, minute).unwrap()).1, 60);
        let e = opts(&with_key, Some(Duration::from_secs(120))).unwrap_err();
        assert!(matches!(e, OptionsError::Conflict(_)), "{e}");
        assert!(e.to_string().contains("--result-expires"), "{e}");
        // Zero is no TTL, and a fraction rounds up (never down to "no TTL").
        assert_eq!(ttl(opts(url, Some(Duration::ZERO)).unwrap()).1, 0);
        assert_eq!(
            ttl(opts(url, Some(Duration::from_millis(1500))).unwrap()).1,
            2
        );
        assert_eq!(ttl(opts(url, Some(Duration::from_millis(1))).unwrap()).1, 1);
    }
}
