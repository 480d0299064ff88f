//! A process-wide keep-alive pool for guests' plain `http://` requests.
//!
//! wasmtime's default sender opens a TCP connection for every request and drops it after
//! the response. At thousands of fetches a second that set-up and tear-down (connect,
//! the server's accept, FIN/ACK, `TIME_WAIT`) was about a fifth of the worker's CPU. This
//! pool keeps an HTTP/1.1 connection open once a response has been read to its end and
//! hands it to the next request for the same `host:port`, whichever job sends it.
//!
//! It is only a transport: [`HttpPolicy`](super::http::HttpPolicy) checks every request
//! (and every redirect hop, which the guest re-issues) against the job's `allowed_hosts`
//! *before* it reaches [`send`], so a pooled connection never carries a request its job
//! may not send. It keeps the default sender's behaviour otherwise:
//!
//! - the per-phase timeouts: connect (TCP connect + HTTP/1 handshake of a new connection),
//!   first byte (until the response head) and between bytes (each body frame);
//! - the request on the wire: origin-form target (`/path?query`) and the `Host` header
//!   wasmtime sets; the guest cannot set `Connection` (a forbidden header);
//! - errors: the same `wasmtime_wasi_http::Error` variants for the same failures.
//!
//! A connection goes back to the pool only when its response body ended and the server
//! did not ask to close it. A response dropped early (a timeout, the size cap, a guest that
//! stops reading, a job that ends) drops the connection, and hyper closes it, since the
//! rest of that response is still on the wire. A request that meets a pooled connection
//! already closed by the server before anything was written is retried on another one;
//! once written it is never re-sent (it may not be idempotent).
//!
//! Bounds ([`PoolLimits`]): at most [`MAX_IDLE_PER_HOST`] idle connections per `host:port`
//! and [`MAX_IDLE`] in all; an idle connection older than [`IDLE_TIMEOUT`] is closed instead
//! of reused (servers commonly close idle connections after 5–75 s). When a returned
//! connection finds its host's list (or the whole pool) full, the expired and closed
//! connections there are dropped first; if it is still full, the returned connection is
//! closed and the idle ones stay (no eviction: they are as good, and younger ones are
//! taken first anyway, most recently used first).
//!
//! `https://` is not pooled: those requests still go to wasmtime's default sender (a new
//! TCP + TLS connection each).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Default of [`PoolLimits::idle_timeout`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`PoolLimits::max_idle_per_host`] (enough for `-c 1000` against one site).
pub const MAX_IDLE_PER_HOST: usize = 1024;
/// Default of [`PoolLimits::max_idle`].
pub const MAX_IDLE: usize = 2048;
/// How long a finished response's connection may take to become ready for the next
/// request before it is given up (normally it already is when the body ends).
const READY_GRACE: Duration = Duration::from_secs(1);

/// The bounds of the idle-connection pool (see the module docs for the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// An idle connection older than this is closed rather than reused. Default:
    /// [`IDLE_TIMEOUT`] (30 s).
    pub idle_timeout: Duration,
    /// Idle connections kept per `host:port`. Default: [`MAX_IDLE_PER_HOST`] (1024).
    pub max_idle_per_host: usize,
    /// Idle connections kept in all. Default: [`MAX_IDLE`] (2048).
    pub max_idle: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            idle_timeout: IDLE_TIMEOUT,
            max_idle_per_host: MAX_IDLE_PER_HOST,
            max_idle: MAX_IDLE,
        }
    }
}

/// The per-phase timeouts of one request (already capped by the job's policy).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect plus HTTP/1 handshake of a new connection.
    pub connect: Duration,
    /// From sending the request to the response head.
    pub first_byte: Duration,
    /// Between two frames of the response body.
    pub between_bytes: Duration,
}

/// One idle connection.
struct Idle {
    sender: SendRequest<WasiBody>,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant, limits: &PoolLimits) -> bool {
        now.saturating_duration_since(self.since) < limits.idle_timeout
            && !self.sender.is_closed()
            && self.sender.is_ready()
    }
}

/// The idle connections, by `host:port`, within [`PoolLimits`]. Time is passed in, so
/// the bounds can be tested without waiting.
struct Hosts {
    limits: PoolLimits,
    /// Per `host:port`, most recently used last; no empty vectors.
    idle: HashMap<String, Vec<Idle>>,
}

impl Hosts {
    fn new(limits: PoolLimits) -> Self {
        Hosts {
            limits,
            idle: HashMap::new(),
        }
    }

    /// Idle connections in all. Computed, not kept: one addition per host, next to
    /// a request's own cost, and it cannot drift from the vectors.
    fn total(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// Drops every idle connection that is closed or too old.
    fn prune(&mut self, now: Instant) {
        let limits = self.limits;
        self.idle.retain(|_, conns| {
            conns.retain(|c| c.usable(now, &limits));
            !conns.is_empty()
        });
    }

    /// Takes the most recently used usable connection to `key`. Also returns the
    /// unusable ones it met (taken out), for the caller to drop outside its lock.
    fn take(&mut self, key: &str, now: Instant) -> (Option<SendRequest<WasiBody>>, Vec<Idle>) {
        let mut stale = Vec::new();
        let mut found = None;
        if let Some(conns) = self.idle.get_mut(key) {
            while let Some(idle) = conns.pop() {
                if idle.usable(now, &self.limits) {
                    found = Some(idle.sender);
                    break;
                }
                stale.push(idle);
            }
            if conns.is_empty() {
                self.idle.remove(key);
            }
        }
        (found, stale)
    }

    /// Keeps `sender` as idle since `now` if it is usable and there is room (see the
    /// module docs); returns whether it was kept.
    fn put(&mut self, key: String, sender: SendRequest<WasiBody>, now: Instant) -> bool {
        let limits = self.limits;
        let idle = Idle { sender, since: now };
        if limits.max_idle_per_host == 0 || !idle.usable(now, &limits) {
            return false;
        }
        if self.total() >= limits.max_idle {
            self.prune(now);
            if self.total() >= limits.max_idle {
                return false;
            }
        }
        let conns = self.idle.entry(key).or_default();
        // The oldest sit at the front: drop them when they have expired.
        if conns.first().is_some_and(|c| !c.usable(now, &limits)) {
            conns.retain(|c| c.usable(now, &limits));
        }
        let kept = conns.len() < limits.max_idle_per_host;
        if kept {
            conns.push(idle);
        }
        kept
    }
}

/// The process-wide pool (see the module docs).
static POOL: LazyLock<Mutex<Hosts>> =
    LazyLock::new(|| Mutex::new(Hosts::new(PoolLimits::default())));

fn pool() -> std::sync::MutexGuard<'static, Hosts> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a usable idle connection to `key`, if there is one.
fn checkout(key: &str) -> Option<SendRequest<WasiBody>> {
    let (found, stale) = pool().take(key, Instant::now());
    drop(stale); // closes them, outside the lock
    found
}

/// Puts a connection whose last response ended back, if it is ready and there is room.
fn put(key: String, sender: SendRequest<WasiBody>) {
    pool().put(key, sender, Instant::now());
}

/// Hands a connection that served a complete response back to the pool. If hyper has
/// not yet seen the end of that response (it normally has by the time the body ended),
/// waits for the connection to become ready, briefly, on the current runtime.
fn checkin(key: String, mut sender: SendRequest<WasiBody>) {
    if sender.is_closed() {
        return;
    }
    if sender.is_ready() {
        put(key, sender);
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(READY_GRACE, sender.ready()).await {
                put(key, sender);
            }
        });
    }
}

/// Sends an `http://` request on a pooled connection to its `host:port`, or on a new one.
///
/// The request must carry an absolute URI (scheme and authority, as wasmtime builds it)
/// and a `Host` header; it goes on the wire in origin form.
///
/// # Errors
/// The `wasmtime_wasi_http` error the default sender gives for the same failure:
/// `ConnectionTimeout`, `Connect`, `ConnectionReadTimeout`, `Hyper`, or
/// `HttpRequestUriInvalid` for a URI without an authority.
pub async fn send(
    mut request: http::Request<WasiBody>,
    timeouts: Timeouts,
) -> Result<http::Response<WasiBody>, HttpError> {
    let key = authority_key(request.uri())?;
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<http::Uri>()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    *request.uri_mut() = target;
    loop {
        let (mut sender, reused) = match checkout(&key) {
            Some(sender) => (sender, true),
            None => (connect(&key, timeouts.connect).await?, false),
        };
        let sent =
            tokio::time::timeout(timeouts.first_byte, sender.try_send_request(request)).await;
        match sent {
            Err(_elapsed) => return Err(HttpError::ConnectionReadTimeout),
            Ok(Ok(response)) => {
                let between_bytes = timeouts.between_bytes.max(Duration::from_nanos(1));
                return Ok(response.map(|incoming| {
                    http_body_util::BodyExt::boxed_unsync(PooledBody {
                        incoming,
                        between_bytes,
                        idle_deadline: Box::pin(tokio::time::sleep(between_bytes)),
                        connection: Some((key, sender)),
                        ended: false,
                    })
                }));
            }
            Ok(Err(mut error)) => match error.take_message() {
                // The pooled connection was closed before the request went out: nothing
                // was sent, so another connection may carry it.
                Some(unsent) if reused => request = unsent,
                _ => return Err(HttpError::from(error.into_error())),
            },
        }
    }
}

/// `host:port` of an absolute `http://` URI (port 80 when none is given).
fn authority_key(uri: &http::Uri) -> Result<String, HttpError> {
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    Ok(match authority.port() {
        Some(_) => authority.as_str().to_ascii_lowercase(),
        None => format!("{}:80", authority.as_str().to_ascii_lowercase()),
    })
}

/// Opens a new connection to `host:port` and drives it on the current runtime.
async fn connect(key: &str, timeout: Duration) -> Result<SendRequest<WasiBody>, HttpError> {
    let connecting = async {
        let stream = TcpStream::connect(key).await.map_err(HttpError::Connect)?;
        // A request is written in one piece; do not let Nagle hold it behind an ACK.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake::<_, WasiBody>(TokioIo::new(stream))
            .await?;
        Ok::<_, HttpError>((sender, connection))
    };
    let (sender, connection) = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    // Ends when the server closes the connection, or when the sender is dropped and no
    // response is in flight; errors reach the request or its body.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A response body that hands its connection back to the pool when it has been read to
/// the end, and applies the between-bytes timeout.
struct PooledBody {
    incoming: hyper::body::Incoming,
    between_bytes: Duration,
    idle_deadline: Pin<Box<tokio::time::Sleep>>,
    /// `host:port` and the connection; taken on drop.
    connection: Option<(String, SendRequest<WasiBody>)>,
    ended: bool,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.between_bytes;
                this.idle_deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.idle_deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some((key, sender)) = self.connection.take()
            && (self.ended || self.incoming.is_end_stream())
        {
            checkin(key, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ready client connection over an in-memory stream; the server end is returned
    /// to be kept alive (the connection closes when it is dropped).
    async fn connection() -> (SendRequest<WasiBody>, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        let (mut sender, connection) = http1::Builder::new()
            .handshake::<_, WasiBody>(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.ready().await.unwrap();
        (sender, server)
    }

    fn limits(idle_timeout_secs: u64, max_idle_per_host: usize, max_idle: usize) -> PoolLimits {
        PoolLimits {
            idle_timeout: Duration::from_secs(idle_timeout_secs),
            max_idle_per_host,
            max_idle,
        }
    }

    #[test]
    fn defaults_are_the_documented_constants() {
        assert_eq!(limits(30, 1024, 2048), PoolLimits::default());
    }

    #[tokio::test]
    async fn an_idle_connection_past_the_timeout_is_not_reused() {
        let mut hosts = Hosts::new(limits(5, 8, 8));
        let t0 = Instant::now();
        let (a, _server_a) = connection().await;
        let (b, _server_b) = connection().await;
        assert!(hosts.put("h:80".into(), a, t0));
        // At the timeout: not reused, and taken out of the pool.
        let (found, stale) = hosts.take("h:80", t0 + Duration::from_secs(5));
        assert!(found.is_none());
        assert_eq!(stale.len(), 1);
        assert_eq!(hosts.total(), 0);
        // Just before it: reused.
        assert!(hosts.put("h:80".into(), b, t0));
        let just_before = t0 + Duration::from_secs(5) - Duration::from_millis(1);
        let (found, stale) = hosts.take("h:80", just_before);
        assert!(found.is_some());
        assert!(stale.is_empty());
        assert_eq!(hosts.total(), 0);
    }

    #[tokio::test]
    async fn each_host_keeps_at_most_its_cap() {
        let mut hosts = Hosts::new(limits(5, 2, 100));
        let t0 = Instant::now();
        let mut servers = Vec::new();
        let mut kept = Vec::new();
        for _ in 0..3 {
            let (sender, server) = connection().await;
            servers.push(server);
            kept.push(hosts.put("a:80".into(), sender, t0));
        }
        // The third is refused; the first two stay.
        assert_eq!(kept, [true, true, false]);
        // Another host has its own cap.
        let (sender, server) = connection().await;
        servers.push(server);
        assert!(hosts.put("b:80".into(), sender, t0));
        assert_eq!(hosts.total(), 3);
        // An expired connection at the front of a full host makes room.
        let later = t0 + Duration::from_secs(5);
        let (sender, server) = connection().await;
        servers.push(server);
        assert!(hosts.put("a:80".into(), sender, later));
        assert_eq!(
            hosts.idle["a:80"].len(),
            1,
            "both expired ones were dropped"
        );
        let (found, stale) = hosts.take("a:80", later);
        assert!(found.is_some() && stale.is_empty());
        assert!(hosts.take("a:80", later).0.is_none());
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_global_cap() {
        let mut hosts = Hosts::new(limits(5, 100, 2));
        let t0 = Instant::now();
        let mut servers = Vec::new();
        let mut kept = Vec::new();
        for host in ["a:80", "b:80", "c:80"] {
            let (sender, server) = connection().await;
            servers.push(server);
            kept.push(hosts.put(host.into(), sender, t0));
        }
        // The pool is full: the returned connection is closed, the idle ones stay.
        assert_eq!(kept, [true, true, false]);
        assert_eq!(hosts.total(), 2);
        assert!(hosts.take("c:80", t0).0.is_none());
        assert!(hosts.take("a:80", t0).0.is_some());
        assert_eq!(hosts.total(), 1);
        // Expired connections are pruned to make room.
        let later = t0 + Duration::from_secs(5);
        let (sender, server) = connection().await;
        servers.push(server);
        let (again, server) = connection().await;
        servers.push(server);
        assert!(hosts.put("c:80".into(), sender, t0));
        assert_eq!(hosts.total(), 2);
        assert!(hosts.put("d:80".into(), again, later));
        assert_eq!(hosts.total(), 1, "b and c expired and were pruned");
        assert!(hosts.take("d:80", later).0.is_some());
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_kept_or_reused() {
        let mut hosts = Hosts::new(limits(5, 8, 8));
        let t0 = Instant::now();
        let (a, server_a) = connection().await;
        let (b, server_b) = connection().await;
        assert!(hosts.put("h:80".into(), a, t0));
        // The server goes away while the connection is idle.
        drop(server_a);
        let closed = &hosts.idle["h:80"][0].sender;
        wait_closed(closed).await;
        assert!(hosts.take("h:80", t0).0.is_none());
        drop(server_b);
        wait_closed(&b).await;
        assert!(!hosts.put("h:80".into(), b, t0));
        assert_eq!(hosts.total(), 0);
    }

    /// Waits (polling) until hyper has seen the connection close.
    async fn wait_closed(sender: &SendRequest<WasiBody>) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the connection closes when its server end is dropped");
    }
}
