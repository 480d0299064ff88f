//! The feed server: `GET /feed/<i>.xml` answers an RSS document after a fixed delay,
//! standing in for a slow remote site. It binds loopback only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// What the server serves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Feeds `0..feeds` exist; others are 404.
    pub feeds: u64,
    /// Wait before each answer (the "remote site" latency).
    pub delay: Duration,
    /// Items per feed.
    pub items: u32,
}

/// Request counters, shared with the load generator.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
    first: OnceLock<(Instant, chrono::DateTime<chrono::Utc>)>,
    last: Mutex<Option<Instant>>,
}

impl Stats {
    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// When the latest request arrived.
    pub fn last_request(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the first request arrived (monotonic and wall clock).
    pub fn first_request(&self) -> Option<(Instant, chrono::DateTime<chrono::Utc>)> {
        self.first.get().copied()
    }
}

/// A running feed server.
pub struct FeedServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<Stats>,
}

impl FeedServer {
    /// The URL of feed `i`.
    pub fn feed_url(&self, i: u64) -> String {
        format!("http://{}/feed/{i}.xml", self.addr)
    }
}

/// Binds `addr` (must be a loopback address) and serves in the background on the current
/// tokio runtime.
///
/// # Errors
/// The address is not loopback, or cannot be bound.
pub async fn start(addr: SocketAddr, options: ServerOptions) -> anyhow::Result<FeedServer> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the feed server only listens on loopback addresses, not {addr}"
    );
    // A deep accept queue: `TcpListener::bind` listens with a backlog of 128, and 1000
    // guests connecting at once would overflow it (the kernel then drops SYNs and the
    // client retries after a second, which shows up as a 1 s latency tail).
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let options = Arc::new(options);
    let served = stats.clone();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    eprintln!("feed server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            served.connections.fetch_add(1, Ordering::Relaxed);
            let stats = served.clone();
            let options = options.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, stats.clone(), options.clone()));
                // Keep-alive (HTTP/1.1's default): the worker pools its connections, so
                // a connection serves many feeds until the worker closes it.
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(FeedServer { addr, stats })
}

async fn answer(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    options: Arc<ServerOptions>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    stats
        .first
        .get_or_init(|| (Instant::now(), chrono::Utc::now()));
    stats.requests.fetch_add(1, Ordering::Relaxed);
    *stats.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    let feed = req
        .uri()
        .path()
        .strip_prefix("/feed/")
        .and_then(|p| p.strip_suffix(".xml"))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n < options.feeds);
    let Some(feed) = feed else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"no such feed\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    };
    tokio::time::sleep(options.delay).await;
    let mut response = Response::new(Full::new(Bytes::from(rss(feed, options.items))));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/rss+xml"),
    );
    Ok(response)
}

/// An RSS 2.0 document for feed `feed` with `items` items.
pub fn rss(feed: u64, items: u32) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<rss version=\"2.0\"><channel>\
         <title>Feed {feed}</title><link>http://feeds.invalid/{feed}</link>\
         <description>Sprout feed hub demo feed</description>\n"
    );
    for item in 1..=items {
        xml.push_str(&format!(
            "<item><title>Feed {feed}: item {item}</title>\
             <link>http://feeds.invalid/{feed}/{item}</link>\
             <description>Item {item} of feed {feed}.</description></item>\n"
        ));
    }
    xml.push_str("</channel></rss>\n");
    xml
}
