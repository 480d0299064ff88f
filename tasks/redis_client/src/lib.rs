//! Redis from a task through the maintained `redis` crate in its blocking mode: the
//! crate's `std::net::TcpStream` is `wasi:sockets` on wasm32-wasip2, so this is ordinary
//! blocking client code, and the host waits for Redis asynchronously (no thread held).
//! The manifest grants `tcp://127.0.0.1:6379` and `tcp://localhost:6379`.

use redis::Commands;
use sprout_guest::{TaskError, task};

fn redis_error(url: &str, e: redis::RedisError) -> TaskError {
    let kind = if e.is_io_error() {
        "ConnectionError"
    } else {
        "RedisError"
    };
    TaskError::new(kind, format!("{url}: {e}"))
}

fn connection(url: &str) -> Result<redis::Connection, TaskError> {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| redis_error(url, e))
}

/// `PING`s the Redis server at `url` (`redis://host:port/db`); returns `PONG`.
#[task]
fn redis_ping(url: String) -> Result<String, TaskError> {
    let mut con = connection(&url)?;
    redis::cmd("PING")
        .query::<String>(&mut con)
        .map_err(|e| redis_error(&url, e))
}

/// `INCR`s `key` `times` times on one connection (one round trip each) and returns the
/// last value.
#[task]
fn redis_incr(url: String, key: String, times: u64) -> Result<i64, TaskError> {
    let mut con = connection(&url)?;
    let mut value = 0;
    for _ in 0..times.max(1) {
        value = con.incr(&key, 1).map_err(|e| redis_error(&url, e))?;
    }
    Ok(value)
}

sprout_guest::export_tasks!(redis_ping, redis_incr);
