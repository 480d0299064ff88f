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
//! Bounds: at most [`MAX_IDLE_PER_HOST`] idle connections per `host:port` and
//! [`MAX_IDLE`] in all; an idle connection older than [`IDLE_TIMEOUT`] is closed instead of
//! reused (servers commonly close idle connections after 5–75 s).
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

/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per `host:port` (enough for `-c 1000` against one site).
pub const MAX_IDLE_PER_HOST: usize = 1024;
/// Idle connections kept in all.
pub const MAX_IDLE: usize = 2048;
/// How long a finished response's connection may take to become ready for the next
/// request before it is given up (normally it already is when the body ends).
const READY_GRACE: Duration = Duration::from_secs(1);

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
    fn usable(&self, now: Instant) -> bool {
        now.duration_since(self.since) < IDLE_TIMEOUT
            && !self.sender.is_closed()
            && self.sender.is_ready()
    }
}

#[derive(Default)]
struct Hosts {
    /// Per `host:port`, most recently used last.
    idle: HashMap<String, Vec<Idle>>,
    /// Sum of the vectors' lengths.
    total: usize,
}

impl Hosts {
    /// Drops every idle connection that is closed or too old.
    fn prune(&mut self, now: Instant) {
        self.idle.retain(|_, conns| {
            conns.retain(|c| c.usable(now));
            !conns.is_empty()
        });
        self.total = self.idle.values().map(Vec::len).sum();
    }
}

/// The process-wide pool (see the module docs).
static POOL: LazyLock<Mutex<Hosts>> = LazyLock::new(Mutex::default);

/// Takes a usable idle connection to `key`, if there is one.
fn checkout(key: &str) -> Option<SendRequest<WasiBody>> {
    let now = Instant::now();
    let mut stale = Vec::new();
    let found = {
        let mut hosts = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        if let Some(conns) = hosts.idle.get_mut(key) {
            while let Some(idle) = conns.pop() {
                if idle.usable(now) {
                    found = Some(idle.sender);
                    break;
                }
                stale.push(idle);
            }
            let taken = stale.len() + usize::from(found.is_some());
            hosts.total -= taken;
        }
        found
    };
    drop(stale); // closes them, outside the lock
    found
}

/// Puts a connection whose last response ended back, if it is ready and there is room.
fn put(key: String, sender: SendRequest<WasiBody>) {
    let now = Instant::now();
    let idle = Idle { sender, since: now };
    if !idle.usable(now) {
        return;
    }
    let mut hosts = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if hosts.total >= MAX_IDLE {
        hosts.prune(now);
        if hosts.total >= MAX_IDLE {
            return;
        }
    }
    let conns = hosts.idle.entry(key).or_default();
    // The oldest sit at the front: drop them when they have expired.
    let before = conns.len();
    if conns.first().is_some_and(|c| !c.usable(now)) {
        conns.retain(|c| c.usable(now));
    }
    let removed = before - conns.len();
    let added = if conns.len() < MAX_IDLE_PER_HOST {
        conns.push(idle);
        1
    } else {
        0
    };
    hosts.total = hosts.total - removed + added;
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
