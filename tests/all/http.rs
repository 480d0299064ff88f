//! Outgoing HTTP (wasi:http) for tasks: the allow-list, redirects, timeouts and the
//! response cap through the real `sprout worker`; host waits that do not hold threads;
//! and the feed hub's throughput at `-c 1000`.
//!
//! Every server here is a small HTTP/1.1 responder on 127.0.0.1 inside this test process.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sprout::client::Client;
use sprout::model::Capabilities;
use sprout::model::Job;
use sprout::model::Outcome;
use sprout::model::{ResultRecord, State};
use sprout::sandbox::{RunRequest, Sandbox, TaskModule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{self, job, wait_result as wait};

// ---------------------------------------------------------------------------------------
// A tiny HTTP server.

/// A loopback HTTP/1.1 server that counts requests and connections, and keeps
/// connections alive (HTTP/1.1's default) unless a route closes them. Routes:
/// `/feed/<n>` (RSS after the delay), `/redirect?to=<url>` (302), `/slow` (no answer
/// for a minute), `/trickle` (headers and a few bytes, then a minute of silence),
/// `/big/<kib>` (a body of that size with `content-length`), `/chunked/<kib>` (the
/// same, chunked, with no length announced, then the connection is closed).
pub(crate) struct TestServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Hit>>>,
    connections: Arc<AtomicUsize>,
    first_hit: Arc<OnceLock<Instant>>,
}

/// One request a [`TestServer`] answered: who asked for what, and when it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    /// The client's address.
    pub(crate) peer: IpAddr,
    /// The request's path.
    pub(crate) path: String,
    /// When its head was read.
    pub(crate) at: Instant,
}

/// How a [`TestServer`] treats its connections.
#[derive(Debug, Clone, Copy)]
struct ServerOptions {
    /// The address to listen on (any port).
    bind: IpAddr,
    /// Wait before answering a feed.
    delay: Duration,
    /// Close a connection that has been idle this long between requests (servers do;
    /// Apache's default is 5 s). `None`: wait for the client to close it.
    idle_close: Option<Duration>,
}

impl TestServer {
    pub(crate) async fn start(delay: Duration) -> TestServer {
        TestServer::start_on(Ipv4Addr::LOCALHOST.into(), delay).await
    }

    /// [`TestServer::start`] listening on `bind` (an address of a test network).
    pub(crate) async fn start_on(bind: IpAddr, delay: Duration) -> TestServer {
        TestServer::with(ServerOptions {
            bind,
            delay,
            idle_close: None,
        })
        .await
    }

    async fn with(options: ServerOptions) -> TestServer {
        // `TcpListener::bind` listens with a backlog of 128: a thousand guests connecting
        // at once would overflow it, and dropped SYNs are retried only after a second.
        let socket = TcpSocket::new_v4().expect("socket");
        let socket = match options.bind {
            IpAddr::V4(_) => socket,
            IpAddr::V6(_) => TcpSocket::new_v6().expect("socket"),
        };
        socket.bind(SocketAddr::new(options.bind, 0)).expect("bind");
        let listener = socket.listen(4096).expect("listen");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let first_hit = Arc::new(OnceLock::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (h, c, f, l) = (
            hits.clone(),
            connections.clone(),
            first_hit.clone(),
            log.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (h, f, l) = (h.clone(), f.clone(), l.clone());
                tokio::spawn(async move {
                    let seen = Seen {
                        hits: &h,
                        first_hit: &f,
                        log: &l,
                    };
                    let _ = serve(stream, peer.ip(), options, seen).await;
                });
            }
        });
        TestServer {
            addr,
            hits,
            log,
            connections,
            first_hit,
        }
    }

    /// Every request answered so far, in arrival order.
    pub(crate) fn log(&self) -> Vec<Hit> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// When the newest request from `peer` arrived, if one did.
    pub(crate) fn last_hit_from(&self, peer: IpAddr) -> Option<Instant> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().rev().find(|h| h.peer == peer).map(|h| h.at)
    }

    /// When the first request arrived, if one did.
    pub(crate) fn first_hit(&self) -> Option<Instant> {
        self.first_hit.get().copied()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Where a connection records the requests it reads.
struct Seen<'a> {
    hits: &'a AtomicUsize,
    first_hit: &'a OnceLock<Instant>,
    log: &'a Mutex<Vec<Hit>>,
}

/// Serves requests on one connection until the client closes it, a route closes it, or
/// it has been idle for `options.idle_close`.
async fn serve(
    mut stream: TcpStream,
    peer: IpAddr,
    options: ServerOptions,
    seen: Seen<'_>,
) -> std::io::Result<()> {
    let mut pending = Vec::new();
    loop {
        let Some(head) = read_head(&mut stream, &mut pending, options.idle_close).await? else {
            return Ok(());
        };
        let at = Instant::now();
        seen.first_hit.get_or_init(|| at);
        seen.hits.fetch_add(1, Ordering::SeqCst);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        seen.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Hit { peer, path, at });
        if !answer(&mut stream, &head, options.delay).await? {
            return stream.shutdown().await;
        }
    }
}

/// Reads one request head (the test clients send no request bodies). `None`: the client
/// closed the connection, or it stayed idle for `idle_close`.
async fn read_head(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    idle_close: Option<Duration>,
) -> std::io::Result<Option<String>> {
    let mut buf = [0u8; 2048];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            return Ok(Some(head));
        }
        if pending.len() > 16 << 10 {
            return Ok(None);
        }
        let read = stream.read(&mut buf);
        let n = match idle_close {
            Some(idle) if pending.is_empty() => match tokio::time::timeout(idle, read).await {
                Ok(n) => n?,
                Err(_) => return Ok(None),
            },
            _ => read.await?,
        };
        if n == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Answers one request. `false`: the connection is to be closed.
async fn answer(stream: &mut TcpStream, head: &str, delay: Duration) -> std::io::Result<bool> {
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let respond = |status: &str, headers: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{headers}\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split(['/', '?']).collect();
    let out = match segments.as_slice() {
        ["feed", n, ..] => {
            tokio::time::sleep(delay).await;
            respond(
                "200 OK",
                "content-type: application/rss+xml\r\n",
                rss(n).as_bytes(),
            )
        }
        ["redirect", ..] => {
            let to = path.split_once("?to=").map_or("/", |(_, to)| to);
            respond("302 Found", &format!("location: {to}\r\n"), b"")
        }
        ["slow", ..] => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            respond("200 OK", "", b"too late")
        }
        ["trickle", ..] => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n<rss>")
                .await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok(false);
        }
        ["big", kib, ..] => {
            let body = vec![b'x'; kib.parse::<usize>().unwrap_or(1) << 10];
            respond("200 OK", "", &body)
        }
        ["chunked", kib, ..] => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            let chunk = vec![b'x'; 8 << 10];
            for _ in 0..(kib.parse::<usize>().unwrap_or(1) / 8).max(1) {
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.write_all(&chunk).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
            return Ok(false);
        }
        _ => respond("404 Not Found", "", b"no such page"),
    };
    stream.write_all(&out).await?;
    Ok(true)
}

fn rss(feed: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>Feed {feed}</title>\
         <item><title>Feed {feed}: first</title></item><item><title>second</title></item>\
         <item><title>third</title></item></channel></rss>"
    )
}

// ---------------------------------------------------------------------------------------
// A task directory with our own manifests, and a worker on it.

/// A temp dir holding copies of built task files with manifests written by the test.
pub(crate) struct TaskDir {
    dir: tempfile::TempDir,
}

impl TaskDir {
    /// `files`: (task file name, manifest text or "" for none).
    pub(crate) fn new(files: &[(&str, &str)]) -> TaskDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, manifest) in files {
            std::fs::copy(support::task(name), dir.path().join(format!("{name}.wasm")))
                .expect("copy task file");
            if !manifest.is_empty() {
                std::fs::write(dir.path().join(format!("{name}.toml")), manifest)
                    .expect("write manifest");
            }
        }
        TaskDir { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    fn broker(&self) -> String {
        format!("sqlite:{}", self.dir.path().join("broker.db").display())
    }
}

/// `sprout worker` on a task dir; its stderr goes to a file (a pipe could fill up and
/// block it). Killed on drop.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(tasks: &TaskDir, concurrency: usize) -> Worker {
        let log = tasks.path().join("worker.log");
        let child = Command::new(support::sprout_bin())
            .args(["worker", "-P", "async", "-c", &concurrency.to_string()])
            .arg("--tasks")
            .arg(tasks.path())
            .args(["--broker", &tasks.broker()])
            .env("SPROUT_CACHE_DIR", support::cache_dir())
            .env("SPROUT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start sprout worker");
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the worker exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_of(record: &ResultRecord) -> (String, String) {
    assert_eq!(record.state, State::Failure, "{record:?}");
    let e = record.error.clone().expect("a failure has an error");
    (e.kind, e.message)
}

// ---------------------------------------------------------------------------------------
// The allow-list and limits through the real worker.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allow_list_entry_the_job_fails_naming_the_host() {
    let server = TestServer::start(Duration::ZERO).await;
    let tasks = TaskDir::new(&[
        ("fetch_feed", "[limits]\ntime_limit = 30.0\n"),
        ("echo", ""),
    ]);
    let mut worker = Worker::start(&tasks, 8);
    let client = Client::connect(&tasks.broker()).await.unwrap();

    let denied = job("fetch_feed", json!([server.url("/feed/1")]));
    let unreachable = job("fetch_feed", json!(["http://127.0.0.1:9/feed.xml"]));
    let echo = job("echo", json!(["still serving"]));
    client
        .send_many(&[denied.clone(), unreachable.clone(), echo.clone()])
        .await
        .unwrap();

    let (kind, message) = error_of(&wait(&client, &denied.id).await);
    assert_eq!(kind, "PermissionError");
    assert_eq!(
        message,
        format!("http: host {} is not in allowed_hosts", server.addr)
    );
    let (kind, message) = error_of(&wait(&client, &unreachable.id).await);
    assert_eq!(kind, "PermissionError");
    assert_eq!(message, "http: host 127.0.0.1:9 is not in allowed_hosts");
    // The check comes before any connection: the server never saw a request.
    assert_eq!(server.hits(), 0);

    let record = wait(&client, &echo.id).await;
    assert_eq!(record.state, State::Success, "{record:?}");
    worker.assert_running();
    // Each denial is logged with the task and the job id.
    let log = worker.log();
    for id in [&denied.id, &unreachable.id] {
        assert!(
            log.lines().any(|l| l.contains("not in allowed_hosts")
                && l.contains(id.as_str())
                && l.contains("fetch_feed")),
            "no denial line for {id} in the worker log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_timeouts_and_the_size_cap_are_enforced() {
    let server = TestServer::start(Duration::ZERO).await;
    let elsewhere = TestServer::start(Duration::ZERO).await;
    let manifest = format!(
        "[capabilities]\nallowed_hosts = [\"http://127.0.0.1:{}\"]\nhttp_timeout = 1.0\n\
         http_max_response_kib = 64\n[limits]\ntime_limit = 30.0\n",
        server.addr.port()
    );
    let tasks = TaskDir::new(&[("fetch_feed", &manifest)]);
    let mut worker = Worker::start(&tasks, 16);
    let client = Client::connect(&tasks.broker()).await.unwrap();

    let cases: Vec<(&str, String)> = vec![
        ("feed", server.url("/feed/7")),
        (
            "redirect inside",
            server.url(&format!("/redirect?to={}", server.url("/feed/8"))),
        ),
        (
            "redirect outside",
            server.url(&format!("/redirect?to={}", elsewhere.url("/feed/9"))),
        ),
        ("slow", server.url("/slow")),
        ("trickle", server.url("/trickle")),
        ("big", server.url("/big/1024")),
        ("chunked", server.url("/chunked/1024")),
    ];
    let jobs: HashMap<&str, Job> = cases
        .iter()
        .map(|(name, url)| (*name, job("fetch_feed", json!([url]))))
        .collect();
    let started = Instant::now();
    client
        .send_many(&jobs.values().cloned().collect::<Vec<_>>())
        .await
        .unwrap();
    let mut records = HashMap::new();
    for (name, job) in &jobs {
        records.insert(*name, wait(&client, &job.id).await);
    }
    let all_done = started.elapsed();

    for ok in ["feed", "redirect inside"] {
        assert_eq!(records[ok].state, State::Success, "{ok}: {:?}", records[ok]);
    }
    assert_eq!(
        records["redirect inside"].result,
        Some(json!({"items": 3, "title": "Feed 8: first"}))
    );

    let (kind, message) = error_of(&records["redirect outside"]);
    assert_eq!(kind, "PermissionError");
    assert!(
        message.starts_with(&format!(
            "http: host {} is not in allowed_hosts (redirected from http://{}/redirect",
            elsewhere.addr, server.addr
        )),
        "{message}"
    );
    assert_eq!(elsewhere.hits(), 0, "the refused hop was never contacted");

    for slow in ["slow", "trickle"] {
        let (kind, message) = error_of(&records[slow]);
        assert_eq!(kind, "TimeoutError", "{slow}: {message}");
        let ms = records[slow].duration_ms.unwrap_or_default();
        assert!(
            (900.0..10_000.0).contains(&ms),
            "{slow} took {ms} ms with a 1 s timeout"
        );
    }
    for big in ["big", "chunked"] {
        let (kind, message) = error_of(&records[big]);
        assert_eq!(kind, "ResponseTooLarge", "{big}: {message}");
        assert!(message.contains("65536 bytes"), "{big}: {message}");
    }
    assert!(all_done < Duration::from_secs(30), "took {all_done:?}");

    // And the worker keeps serving.
    let again = job("fetch_feed", json!([server.url("/feed/10")]));
    client.send(again.clone()).await.unwrap();
    assert_eq!(wait(&client, &again.id).await.state, State::Success);
    worker.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sprout_run_reports_a_denied_host() {
    let tasks = TaskDir::new(&[("fetch_feed", "")]);
    let output = Command::new(support::sprout_bin())
        .arg("run")
        .arg(tasks.path().join("fetch_feed.wasm"))
        .args(["fetch_feed", r#"["http://127.0.0.1:9/feed.xml"]"#])
        .env("SPROUT_CACHE_DIR", support::cache_dir())
        .env("SPROUT_LOG", "warn")
        .output()
        .expect("sprout run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PermissionError: http: host 127.0.0.1:9 is not in allowed_hosts"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Keep-alive: plain-HTTP requests of successive jobs share pooled connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_jobs_reuse_pooled_connections() {
    const FETCHES: usize = 200;
    let server = TestServer::start(Duration::ZERO).await;
    // Closes a connection idle for 100 ms, as servers with short keep-alive do.
    let closing = TestServer::with(ServerOptions {
        bind: Ipv4Addr::LOCALHOST.into(),
        delay: Duration::ZERO,
        idle_close: Some(Duration::from_millis(100)),
    })
    .await;
    let tasks = TaskDir::new(&[(
        "fetch_feed",
        "[capabilities]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n[limits]\ntime_limit = 30.0\n",
    )]);
    // -c 1: one job at a time, each a fresh instance.
    let mut worker = Worker::start(&tasks, 1);
    let client = Client::connect(&tasks.broker()).await.unwrap();

    let jobs: Vec<Job> = (0..FETCHES)
        .map(|i| job("fetch_feed", json!([server.url(&format!("/feed/{i}"))])))
        .collect();
    client.send_many(&jobs).await.unwrap();
    for j in &jobs {
        let record = wait(&client, &j.id).await;
        assert_eq!(record.state, State::Success, "{record:?}");
    }
    assert_eq!(server.hits(), FETCHES);
    let connections = server.connections();
    eprintln!("{FETCHES} successive fetches from {FETCHES} jobs over {connections} connection(s)");
    assert!(
        connections <= 2,
        "{FETCHES} successive requests opened {connections} connections: not reused"
    );

    // The server closes the pooled connection while it is idle: the next job's request
    // goes out on a new one, and no job fails.
    for i in 0..3 {
        let fetch = job("fetch_feed", json!([closing.url(&format!("/feed/{i}"))]));
        client.send(fetch.clone()).await.unwrap();
        let record = wait(&client, &fetch.id).await;
        assert_eq!(record.state, State::Success, "{record:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(closing.hits(), 3);
    assert_eq!(
        closing.connections(),
        3,
        "each idle connection was closed by the server"
    );
    worker.assert_running();
}

// ---------------------------------------------------------------------------------------
// Host waits are async: HTTP waiters and CPU work do not delay each other.

fn feed_capabilities() -> Arc<Capabilities> {
    Arc::new(Capabilities {
        allowed_hosts: vec!["http://127.0.0.1:*".into()],
        ..Capabilities::default()
    })
}

async fn run_job(
    sandbox: &Sandbox,
    module: &TaskModule,
    task: &str,
    args: Value,
) -> (Outcome, Duration) {
    let mut request = RunRequest::new(task, args.as_array().cloned().unwrap_or_default());
    request.capabilities = feed_capabilities();
    let started = Instant::now();
    let execution = sandbox.run(module, request).await;
    (execution.outcome, started.elapsed())
}

/// Spawns `n` fetches of `server` and returns their handles (each yields its latency).
fn spawn_fetches(
    sandbox: &Sandbox,
    module: &Arc<TaskModule>,
    server: &TestServer,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Duration>> {
    (0..n)
        .map(|i| {
            let (sandbox, module) = (sandbox.clone(), module.clone());
            let url = server.url(&format!("/feed/{i}"));
            tokio::spawn(async move {
                let (outcome, took) = run_job(&sandbox, &module, "fetch_feed", json!([url])).await;
                assert!(outcome.is_success(), "{outcome:?}");
                took
            })
        })
        .collect()
}

async fn latencies(handles: Vec<tokio::task::JoinHandle<Duration>>) -> Vec<Duration> {
    let mut all = Vec::new();
    for h in handles {
        all.push(h.await.expect("fetch task"));
    }
    all.sort();
    all
}

/// How long the current runtime's worker threads have been busy (not parked), summed.
/// Only this test's runtime: other tests' threads and other processes do not count.
fn runtime_busy() -> Duration {
    let metrics = tokio::runtime::Handle::current().metrics();
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum()
}

/// Guests waiting on HTTP hold no thread and take no CPU, and guests spinning on the CPU
/// do not hold up guests waiting on HTTP.
///
/// Each bound is a fraction of what the regression it catches would show, and far
/// above what a busy machine adds:
/// - While 200 guests wait on a 1.5 s server, the runtime's two worker threads are busy
///   under a quarter of the time. A wait that held its thread (a blocking call) or
///   polled in a loop would keep both busy all along. Busy time counts only the work
///   this runtime has; other processes cannot make it busy, only slower at work it has.
/// - A CPU job beside the 200 parked waiters takes under 500 ms more than alone (fib(30)
///   takes ~5 ms). A wait that held something the job needs (a thread, an engine lock,
///   an instance slot) would hold it until the server answers, 1.5 s after the requests.
/// - Beside two guests spinning until their 4 s time limit, HTTP guests' p90 latency
///   grows by under 1 s. A spinner that did not yield would hold its runtime thread for
///   the whole 4 s (two of them: both threads), and every fetch would wait for it.
///
/// The fine-grained figures are benchmarks: short jobs' latency beside spinning guests
/// (`cargo bench -p sprout --bench sandbox -- latency`) and a CPU job beside thousands of
/// parked guests (`-- parked`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_http_waits_and_cpu_work_do_not_delay_each_other() {
    let _timed = support::TIMED.lock().await;
    let sandbox = support::sandbox(512);
    let feed = sandbox
        .load_file(&support::task("fetch_feed"))
        .await
        .unwrap();
    let fib = sandbox.load_file(&support::task("fib")).await.unwrap();
    let hog = sandbox.load_file(&support::task("hog")).await.unwrap();

    // 1. A CPU job alone, then while 200 guests are parked waiting on HTTP.
    let mut alone = Duration::MAX;
    for _ in 0..3 {
        let (outcome, took) = run_job(&sandbox, &fib, "fib", json!([30])).await;
        assert!(outcome.is_success(), "{outcome:?}");
        alone = alone.min(took);
    }
    let slow_server = TestServer::start(Duration::from_millis(1500)).await;
    let waiting = spawn_fetches(&sandbox, &feed, &slow_server, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow_server.hits() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        slow_server.hits(),
        200,
        "not every fetch reached the server"
    );
    let (busy_before, window) = (runtime_busy(), Instant::now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (busy, window) = (runtime_busy() - busy_before, window.elapsed());
    let mut beside_waiters = Duration::MAX;
    for _ in 0..3 {
        let (outcome, took) = run_job(&sandbox, &fib, "fib", json!([30])).await;
        assert!(outcome.is_success(), "{outcome:?}");
        beside_waiters = beside_waiters.min(took);
    }
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "the waiters were still waiting when the CPU job ran"
    );
    let waited = latencies(waiting).await;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let busy_share = busy.as_secs_f64() / (window.as_secs_f64() * workers as f64);
    eprintln!(
        "200 HTTP waiters parked: the {workers} runtime threads busy {busy:?} of {window:?} \
         ({:.1}%); fib(30): {alone:?} alone, {beside_waiters:?} beside them; the waiters took \
         {:?}..{:?} for a 1.5 s server",
        100.0 * busy_share,
        waited[0],
        waited[waited.len() - 1]
    );
    assert!(
        busy_share < 0.25,
        "200 parked HTTP waiters kept the runtime's threads busy {busy:?} of {window:?}"
    );
    assert!(
        beside_waiters < alone + Duration::from_millis(500),
        "200 parked HTTP waiters slowed a CPU job from {alone:?} to {beside_waiters:?}"
    );

    // 2. HTTP latency alone, then beside two guests spinning on the CPU.
    let server = TestServer::start(Duration::from_millis(200)).await;
    let p90 = |v: &[Duration]| v[v.len() * 9 / 10];
    let baseline = latencies(spawn_fetches(&sandbox, &feed, &server, 200)).await;
    let spinners = support::spawn_hogs(&sandbox, &hog, 2, Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let beside_spinners = latencies(spawn_fetches(&sandbox, &feed, &server, 200)).await;
    let spinning = spinners.iter().all(|s| !s.is_finished());
    for s in spinners {
        let outcome = s.await.unwrap();
        assert!(
            matches!(outcome, Outcome::TimeLimit { .. }),
            "the spinner was still spinning at its time limit: {outcome:?}"
        );
    }
    eprintln!(
        "200 fetches from a 200 ms server: p90 {:?} max {:?} alone, p90 {:?} max {:?} \
         beside 2 spinning guests",
        p90(&baseline),
        baseline[199],
        p90(&beside_spinners),
        beside_spinners[199]
    );
    assert!(
        p90(&beside_spinners) < p90(&baseline) + Duration::from_secs(1),
        "2 spinning guests delayed HTTP guests: p90 {:?} -> {:?}",
        p90(&baseline),
        p90(&beside_spinners)
    );
    assert!(spinning, "the spinners ran while the fetches did");
}

// ---------------------------------------------------------------------------------------
// Feed hub throughput at -c 1000 on the embedded broker.

/// Wall times of one feed run.
#[derive(Debug, Clone, Copy)]
struct FeedRun {
    /// From the server's first request to the last result read back (the feed hub's
    /// measure).
    from_first_fetch: Duration,
    /// From the moment the jobs were enqueued to the last result read back: also counts
    /// how long the pool took to pick the first one up.
    from_enqueue: Duration,
}

/// Sends one fetch_feed job per feed of a fresh 100 ms server and times it.
async fn feed_run(client: &Client, feeds: usize, extra: &[Job]) -> FeedRun {
    let server = TestServer::start(Duration::from_millis(100)).await;
    if !extra.is_empty() {
        client.send_many(extra).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let jobs: Vec<Job> = (0..feeds)
        .map(|i| job("fetch_feed", json!([server.url(&format!("/feed/{i}"))])))
        .collect();
    let enqueued = Instant::now();
    client.send_many(&jobs).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    for j in &jobs {
        loop {
            match client.result(&j.id).await.unwrap() {
                Some(r) if r.state.is_terminal() => {
                    assert_eq!(r.state, State::Success, "{r:?}");
                    break;
                }
                _ if Instant::now() > deadline => panic!("feeds did not finish in 120 s"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
    let done = Instant::now();
    assert_eq!(server.hits(), feeds);
    FeedRun {
        from_first_fetch: done - server.first_hit().expect("the server saw requests"),
        from_enqueue: done - enqueued,
    }
}

/// A worker at -c 1000 fetches 1,000 feeds of a 100 ms server in under 3 s, and 4 hogs
/// in the same async pool do not starve them: beside the hogs the feeds keep at least
/// half the rate they have without, measured from the first fetch and from enqueue.
///
/// Both bounds are far from what a busy machine does and close to what a regression
/// does. 3 s is ten times the ~0.25 s an idle machine takes; a pool that did not keep
/// the 1,000 waits in flight at once would need 1,000 × 100 ms / its real concurrency.
/// Half the rate: a hog that did not yield to the runtime would hold a thread until its
/// 2.5 s time limit (four of them: both threads), and the feeds would wait for it, at a
/// tenth of the rate or less. Hogs yield every fuel slice (≈35–70 µs), and the feeds keep
/// 72–99% here on a busy machine, 65% in the worst single round of the benchmark that
/// measures the exact ratio (BENCHMARKS.md): `host/benches/feeds_beside_hogs.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_thousand_feeds_at_c1000_with_and_without_hogs() {
    const FEEDS: usize = 1000;
    let _timed = support::TIMED.lock().await;
    let tasks = TaskDir::new(&[
        (
            "fetch_feed",
            "[capabilities]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
        ),
        // Hogs spin until their time limit, long enough to cover a feed run (≤ 1 s).
        (
            "hog",
            "[limits]\nfuel = 10_000_000_000_000\ntime_limit = 2.5\n",
        ),
    ]);
    let mut worker = Worker::start(&tasks, 1000);
    let client = Client::connect(&tasks.broker()).await.unwrap();
    feed_run(&client, 100, &[]).await; // warm-up: the worker is up, slots are warm

    // Best of three interleaved attempts each: other tests share the two cores, and a
    // burst of their work during one run says nothing about the pool.
    // Each measure is the best of its three runs, taken separately.
    let best = |runs: &[FeedRun], of: fn(&FeedRun) -> Duration| {
        runs.iter().map(of).min().expect("three runs")
    };
    let (mut plain, mut with_hogs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        plain.push(feed_run(&client, FEEDS, &[]).await);
        let hogs: Vec<Job> = (0..4).map(|_| job("hog", json!([]))).collect();
        with_hogs.push(feed_run(&client, FEEDS, &hogs).await);
        tokio::time::sleep(Duration::from_millis(2500)).await; // the hogs hit their limit
    }
    worker.assert_running();
    let rate = |d: Duration| FEEDS as f64 / d.as_secs_f64();
    for (measure, of) in [
        (
            "first fetch",
            (|r: &FeedRun| r.from_first_fetch) as fn(&FeedRun) -> Duration,
        ),
        ("enqueue", |r: &FeedRun| r.from_enqueue),
    ] {
        let (plain, with_hogs) = (best(&plain, of), best(&with_hogs, of));
        eprintln!(
            "{FEEDS} feeds, 100 ms latency, -c 1000, from {measure} to last result: {plain:?} \
             ({:.0} feeds/s); with 4 hogs: {with_hogs:?} ({:.0} feeds/s, {:.0}% of the plain \
             rate)",
            rate(plain),
            rate(with_hogs),
            100.0 * rate(with_hogs) / rate(plain)
        );
        assert!(
            plain < Duration::from_secs(3),
            "{FEEDS} feeds took {plain:?} from {measure} to last result"
        );
        assert!(
            rate(with_hogs) >= 0.5 * rate(plain),
            "4 hogs cut feed throughput (from {measure}) from {:.0}/s to {:.0}/s",
            rate(plain),
            rate(with_hogs)
        );
    }
}
