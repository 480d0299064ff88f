//! Guest TCP sockets (`wasi:sockets`) under `tcp://` grants: the allow-list, DNS only for
//! granted names, the per-job bounds (sockets, connect timeout, bytes), sockets closed
//! whatever way a job ends, guests parked in socket reads holding no thread, and the
//! Redis and PostgreSQL example tasks through the real `sprout worker`.
//!
//! Guests are the `net`, `redis_client` and `pg_query` example tasks (tasks/), real
//! wasm32-wasip2 components using plain blocking `std::net`. Test servers are small TCP
//! servers on 127.0.0.1 inside this process; Redis and PostgreSQL are the dev machine's
//! (tests needing them skip loudly when they are absent).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sprout::client::Client;
use sprout::model::{Capabilities, Outcome, ResultRecord, State};
use sprout::sandbox::{RunRequest, Sandbox, TaskModule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{self, job, wait_result as wait};

// ---------------------------------------------------------------------------------------
// A test server that counts the connections it holds open.

/// What the server does with each connection.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Waits, writes `ready\n`, then holds the connection until the client closes it.
    Line(Duration),
    /// Reads until the client shuts its side, then writes this many KiB and closes.
    Sink { reply_kib: usize },
}

struct Server {
    addr: SocketAddr,
    /// Connections accepted and not yet closed by the client.
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        // A thousand guests connect at once: a backlog of 128 would drop SYNs.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = socket.listen(4096).expect("listen");
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                o.fetch_add(1, Ordering::SeqCst);
                a.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, mode).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Server {
            addr,
            open,
            accepted,
            task,
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits up to `within` for the server to have accepted `count` connections in all.
    /// The kernel completes a guest's connect before the server's accept loop runs, so a
    /// job can end before its connection is counted.
    async fn accepted_reaches(&self, count: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while self.accepted() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.accepted()
    }

    /// Waits up to `within` for the clients to have closed every connection.
    async fn all_closed(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.open() == 0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection; returns when the client has closed it.
async fn serve(mut stream: TcpStream, mode: Mode) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    match mode {
        Mode::Line(delay) => {
            // Answer after the delay, unless the client closes the connection first.
            tokio::select! {
                () = tokio::time::sleep(delay) => stream.write_all(b"ready\n").await?,
                read = stream.read(&mut buf) => if read? == 0 {
                    return Ok(());
                },
            }
        }
        Mode::Sink { reply_kib } => {
            while stream.read(&mut buf).await? > 0 {}
            let chunk = vec![b'y'; 1024];
            for _ in 0..reply_kib {
                stream.write_all(&chunk).await?;
            }
            stream.shutdown().await?;
        }
    }
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Running guests in the sandbox.

fn caps(allowed_hosts: &[&str]) -> Capabilities {
    Capabilities {
        allowed_hosts: allowed_hosts.iter().map(|h| h.to_string()).collect(),
        ..Capabilities::default()
    }
}

fn request(task: &str, args: Value, capabilities: &Capabilities) -> RunRequest {
    let mut request = RunRequest::new(task, args.as_array().cloned().unwrap_or_default());
    request.capabilities = Arc::new(capabilities.clone());
    request.limits.time_limit = Duration::from_secs(30);
    request
}

async fn run(
    sandbox: &Sandbox,
    module: &TaskModule,
    task: &str,
    args: Value,
    capabilities: &Capabilities,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let execution = sandbox.run(module, request(task, args, capabilities)).await;
    (execution.outcome, started.elapsed())
}

fn success(outcome: &Outcome) -> &Value {
    match outcome {
        Outcome::Success { value } => value,
        other => panic!("expected success, got {other:?}"),
    }
}

fn guest_error(outcome: &Outcome) -> (&str, &str) {
    match outcome {
        Outcome::GuestError { kind, message, .. } => (kind, message),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

async fn net(sandbox: &Sandbox) -> Arc<TaskModule> {
    sandbox.load_file(&support::task("net")).await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Grants.

/// No grant: the connect fails at once with a permission error naming the address; an
/// IP grant reaches exactly that address and port; a name grant resolves that name only,
/// and connects only to what it resolved to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_what_a_guest_may_connect_to() {
    let test = "grants_decide_what_a_guest_may_connect_to";
    if !support::redis_up(test) {
        return;
    }
    let sandbox = support::sandbox(16);
    let net = net(&sandbox).await;
    let redis = support::REDIS_ADDR;

    // No grant at all: denied before any OS socket exists, at once.
    let (outcome, took) = run(&sandbox, &net, "tcp_ping", json!([redis]), &caps(&[])).await;
    let (kind, message) = guest_error(&outcome);
    assert_eq!(kind, "PermissionError", "{message}");
    assert!(
        message.starts_with(&format!("connect {redis}: ")) && message.contains("ermission denied"),
        "{message}"
    );
    assert!(took < Duration::from_secs(1), "the denial took {took:?}");
    // An HTTP grant for the same address is no TCP grant.
    let http = caps(&["http://127.0.0.1:*"]);
    let (outcome, _) = run(&sandbox, &net, "tcp_ping", json!([redis]), &http).await;
    assert_eq!(guest_error(&outcome).0, "PermissionError");

    // The exact address: PONG.
    let exact = caps(&["tcp://127.0.0.1:6379"]);
    let (outcome, _) = run(&sandbox, &net, "tcp_ping", json!([redis]), &exact).await;
    assert_eq!(success(&outcome), &json!("PONG"));

    // Another port of the same host cannot reach 6379, at once.
    let other_port = caps(&["tcp://127.0.0.1:6380"]);
    let (outcome, took) = run(&sandbox, &net, "tcp_ping", json!([redis]), &other_port).await;
    let (kind, message) = guest_error(&outcome);
    assert_eq!(kind, "PermissionError", "{message}");
    assert!(message.contains("127.0.0.1:6379"), "{message}");
    assert!(took < Duration::from_secs(1), "the denial took {took:?}");

    // A name grant: that name resolves, and reaches Redis through what it resolved to.
    let name = caps(&["tcp://localhost:6379"]);
    let (outcome, _) = run(&sandbox, &net, "resolve", json!(["localhost"]), &name).await;
    let addrs = success(&outcome).as_array().unwrap().clone();
    assert!(addrs.contains(&json!("127.0.0.1")), "{addrs:?}");
    let (outcome, _) = run(&sandbox, &net, "tcp_ping", json!(["localhost:6379"]), &name).await;
    assert_eq!(success(&outcome), &json!("PONG"));
    // ... no other name resolves ...
    for other in ["example.com", "localhost.localdomain", "redis"] {
        let (outcome, took) = run(&sandbox, &net, "resolve", json!([other]), &name).await;
        let (kind, message) = guest_error(&outcome);
        assert_eq!(kind, "PermissionError", "{other}: {message}");
        assert!(took < Duration::from_secs(1), "{other}: {took:?}");
    }
    // ... and the address literal is not granted by the name: only what the name
    // resolved to in the same job is.
    let (outcome, _) = run(&sandbox, &net, "tcp_ping", json!([redis]), &name).await;
    assert_eq!(guest_error(&outcome).0, "PermissionError");

    // A subdomain pattern does not let the guest resolve arbitrary names either.
    let wildcard = caps(&["tcp://*.db.invalid:5432"]);
    let (outcome, _) = run(&sandbox, &net, "resolve", json!(["localhost"]), &wildcard).await;
    assert_eq!(guest_error(&outcome).0, "PermissionError");
}

/// Even with a TCP grant, listening and UDP stay denied, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_and_udp_stay_denied() {
    let sandbox = support::sandbox(8);
    let net = net(&sandbox).await;
    let granted = caps(&["tcp://127.0.0.1:1-65535"]);
    for (task, addr) in [
        ("tcp_listen", "127.0.0.1:0"),
        ("tcp_listen", "0.0.0.0:8080"),
        ("udp_send", "127.0.0.1:53"),
    ] {
        let (outcome, took) = run(&sandbox, &net, task, json!([addr]), &granted).await;
        let (kind, message) = guest_error(&outcome);
        assert_eq!(kind, "PermissionError", "{task} {addr}: {message}");
        assert!(took < Duration::from_secs(1), "{task}: {took:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Bounds.

/// The socket bound: `tcp_max_sockets` connections at once work, one more fails clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sockets_than_the_bound_fail_clearly() {
    let server = Server::start(Mode::Line(Duration::ZERO)).await;
    let sandbox = support::sandbox(8);
    let net = net(&sandbox).await;
    let grant = format!("tcp://{}", server.addr());
    let bounded = Capabilities {
        tcp_max_sockets: Some(3),
        ..caps(&[&grant])
    };
    let (outcome, _) = run(
        &sandbox,
        &net,
        "tcp_hold",
        json!([server.addr(), 3]),
        &bounded,
    )
    .await;
    assert_eq!(success(&outcome), &json!(["ready", "ready", "ready"]));
    let (outcome, took) = run(
        &sandbox,
        &net,
        "tcp_hold",
        json!([server.addr(), 4]),
        &bounded,
    )
    .await;
    let (_, message) = guest_error(&outcome);
    assert!(
        message.starts_with("socket 4 of 4: connect") && message.contains("No file descriptors"),
        "{message}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The default bound is 16.
    let (outcome, _) = run(
        &sandbox,
        &net,
        "tcp_hold",
        json!([server.addr(), 16]),
        &caps(&[&grant]),
    )
    .await;
    assert_eq!(success(&outcome).as_array().unwrap().len(), 16);
    let (outcome, _) = run(
        &sandbox,
        &net,
        "tcp_hold",
        json!([server.addr(), 17]),
        &caps(&[&grant]),
    )
    .await;
    assert!(guest_error(&outcome).1.starts_with("socket 17 of 17"));
    assert!(server.all_closed(Duration::from_secs(5)).await);
}

/// The byte bounds: a job cannot write or read more than its manifest allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_and_read_are_bounded() {
    let server = Server::start(Mode::Sink { reply_kib: 1024 }).await;
    let sandbox = support::sandbox(8);
    let net = net(&sandbox).await;
    let grant = format!("tcp://{}", server.addr());

    // Within the default bounds: 256 KiB out, 1 MiB back.
    let (outcome, _) = run(
        &sandbox,
        &net,
        "tcp_transfer",
        json!([server.addr(), 256]),
        &caps(&[&grant]),
    )
    .await;
    assert_eq!(success(&outcome), &json!(1 << 20));

    let write_bound = Capabilities {
        tcp_max_write_kib: Some(64),
        ..caps(&[&grant])
    };
    let (outcome, _) = run(
        &sandbox,
        &net,
        "tcp_transfer",
        json!([server.addr(), 128]),
        &write_bound,
    )
    .await;
    // wasi-libc reports a failed stream write as EIO.
    let (_, message) = guest_error(&outcome);
    assert!(message.starts_with("write to"), "{message}");

    let read_bound = Capabilities {
        tcp_max_read_kib: Some(64),
        ..caps(&[&grant])
    };
    let (outcome, _) = run(
        &sandbox,
        &net,
        "tcp_transfer",
        json!([server.addr(), 1]),
        &read_bound,
    )
    .await;
    let (_, message) = guest_error(&outcome);
    assert!(message.starts_with("read from"), "{message}");
    // It read up to the bound, not past it.
    let read: u64 = message
        .split("after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(read <= 64 << 10, "{message}");
    assert!(server.all_closed(Duration::from_secs(5)).await);
}

/// The connect timeout: a connect that the peer never answers fails with a timeout after
/// `tcp_connect_timeout`, not after the job's time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_never_completes_times_out() {
    // A listener that never accepts, with its accept queue filled: Linux then drops
    // further SYNs, so a connect hangs (retrying) instead of being refused.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    // Check that a plain connect does hang now, else the test proves nothing.
    if tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr))
        .await
        .is_ok()
    {
        panic!("could not make a connect hang on {addr} (the kernel accepted it)");
    }
    let sandbox = support::sandbox(8);
    let net = net(&sandbox).await;
    let grant = format!("tcp://{addr}");
    let quick = Capabilities {
        tcp_connect_timeout: Some(0.5),
        ..caps(&[&grant])
    };
    let (outcome, took) = run(
        &sandbox,
        &net,
        "tcp_ping",
        json!([addr.to_string()]),
        &quick,
    )
    .await;
    let (kind, message) = guest_error(&outcome);
    assert_eq!(kind, "TimeoutError", "{message}");
    assert!(message.starts_with(&format!("connect {addr}")), "{message}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "the connect gave up after {took:?}"
    );
    drop(listener);
}

/// Whatever way a job ends — success, guest error, trap, out of fuel, time limit, or
/// cancelled from outside (what revoking a running job does) — its sockets are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_close_whatever_way_the_job_ends() {
    let server = Server::start(Mode::Line(Duration::from_secs(3600))).await;
    let sandbox = support::sandbox(8);
    let net = net(&sandbox).await;
    let grant = caps(&[&format!("tcp://{}", server.addr())]);
    for how in [
        "ok",
        "error",
        "trap",
        "spin-fuel",
        "spin-time",
        "sleep-time",
    ] {
        let mut req = request(
            "tcp_then",
            json!([server.addr(), how.split('-').next()]),
            &grant,
        );
        match how {
            "spin-fuel" => req.limits.fuel = 200_000_000,
            "spin-time" | "sleep-time" => {
                req.limits.fuel = u64::MAX / 2;
                req.limits.time_limit = Duration::from_millis(500);
            }
            _ => {}
        }
        let accepted = server.accepted();
        let outcome = sandbox.run(&net, req).await.outcome;
        let expected = match how {
            "ok" => matches!(outcome, Outcome::Success { .. }),
            "error" => matches!(outcome, Outcome::GuestError { .. }),
            "trap" => matches!(outcome, Outcome::Trap { .. }),
            "spin-fuel" => matches!(outcome, Outcome::OutOfFuel { .. }),
            _ => matches!(outcome, Outcome::TimeLimit { .. }),
        };
        assert!(expected, "{how}: {outcome:?}");
        assert_eq!(
            server
                .accepted_reaches(accepted + 1, Duration::from_secs(5))
                .await,
            accepted + 1,
            "{how}: the guest did not connect"
        );
        assert!(
            server.all_closed(Duration::from_secs(2)).await,
            "{how}: the job ended with {} connection(s) still open",
            server.open()
        );
    }
    // Cancelled from outside while parked in a sleep with the socket open.
    let (sandbox2, net2) = (sandbox.clone(), net.clone());
    let req = request("tcp_then", json!([server.addr(), "sleep"]), &grant);
    let running = tokio::spawn(async move { sandbox2.run(&net2, req).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.open() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.open(), 1, "the guest did not connect");
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    assert!(
        server.all_closed(Duration::from_secs(2)).await,
        "a cancelled job left its socket open"
    );
    // Nothing leaked on the guest's side either: no socket of this process to the
    // server is still open (ESTABLISHED or CLOSE_WAIT in /proc/net/tcp). Counted by the
    // server's port, not by fds, as other tests of this binary open fds meanwhile.
    let port = server
        .addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while open_client_sockets(port) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open_client_sockets(port),
        0,
        "guest sockets to the server still open after the jobs"
    );
}

/// TCP sockets on this machine whose peer is 127.0.0.1:`port` and that are still open
/// (ESTABLISHED or CLOSE_WAIT), from /proc/net/tcp.
fn open_client_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let peer = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2] == peer && matches!(fields[3], "01" | "08")
        })
        .count()
}

// ---------------------------------------------------------------------------------------
// Guests blocked in socket reads hold no thread.

/// 1,000 jobs each blocked for 1 s in a socket read finish together in under 3 s on the
/// two runtime threads, beside 4 guests spinning on the CPU in the same sandbox; short
/// jobs run meanwhile stay fast. A read that held its thread would need 1,000 s / 2;
/// one that polled would keep the hogs from running. The precise latency figures are a
/// benchmark (`cargo bench -p sprout --bench sockets`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_thousand_socket_readers_beside_cpu_hogs() {
    let _timed = support::TIMED.lock().await;
    let server = Server::start(Mode::Line(Duration::from_secs(1))).await;
    let sandbox = support::sandbox(1100);
    let net = net(&sandbox).await;
    let hog = sandbox.load_file(&support::task("hog")).await.unwrap();
    let echo = sandbox.load_file(&support::task("echo")).await.unwrap();
    let grant = caps(&[&format!("tcp://{}", server.addr())]);

    let hogs = support::spawn_hogs(&sandbox, &hog, 4, Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let readers: Vec<_> = (0..1000)
        .map(|_| {
            let (sandbox, net) = (sandbox.clone(), net.clone());
            let req = request("tcp_hold", json!([server.addr(), 1]), &grant);
            tokio::spawn(async move { sandbox.run(&net, req).await.outcome })
        })
        .collect();
    // Short jobs while the readers are parked.
    let mut short = Vec::new();
    while readers.iter().any(|r| !r.is_finished()) && short.len() < 400 {
        let t = Instant::now();
        let outcome = sandbox
            .run(&echo, RunRequest::new("echo", vec![json!("hi")]))
            .await
            .outcome;
        assert!(outcome.is_success(), "{outcome:?}");
        short.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for r in readers {
        let outcome = r.await.unwrap();
        assert_eq!(success(&outcome), &json!(["ready"]));
    }
    let wall = started.elapsed();
    let hogs_spinning = hogs.iter().all(|h| !h.is_finished());
    for h in hogs {
        let outcome = h.await.unwrap();
        assert!(matches!(outcome, Outcome::TimeLimit { .. }), "{outcome:?}");
    }
    short.sort();
    let p = |q: f64| short[((short.len() as f64 * q) as usize).min(short.len() - 1)];
    eprintln!(
        "1000 socket readers (1 s each) beside 4 hogs: {wall:?} wall; {} short jobs \
         meanwhile: p50 {:?} p99 {:?} max {:?}",
        short.len(),
        p(0.5),
        p(0.99),
        short[short.len() - 1]
    );
    assert!(hogs_spinning, "the hogs were spinning all along");
    assert!(wall < Duration::from_secs(3), "1000 readers took {wall:?}");
    assert!(short.len() >= 50, "only {} short jobs ran", short.len());
    // The 5 ms p99 target is measured by the bench; here a bound a regression (a
    // reader holding a thread, a hog not yielding) would break by far.
    assert!(
        p(0.99) < Duration::from_millis(50),
        "short jobs' p99 {:?}",
        p(0.99)
    );
    assert!(server.all_closed(Duration::from_secs(5)).await);
}

// ---------------------------------------------------------------------------------------
// The example tasks through the real worker.

struct TaskDir {
    dir: tempfile::TempDir,
}

impl TaskDir {
    /// Copies each task file, with its own manifest from the build when `manifest` is
    /// `None`, else with `manifest` (`""`: none).
    fn new(files: &[(&str, Option<&str>)]) -> TaskDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, manifest) in files {
            std::fs::copy(support::task(name), dir.path().join(format!("{name}.wasm")))
                .expect("copy task file");
            let toml = dir.path().join(format!("{name}.toml"));
            match manifest {
                None => {
                    std::fs::copy(support::tasks_dir().join(format!("{name}.toml")), toml)
                        .expect("copy manifest");
                }
                Some("") => {}
                Some(text) => std::fs::write(toml, text).expect("write manifest"),
            }
        }
        TaskDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `pg_up`: whether PostgreSQL answers at 127.0.0.1:5432 (says why `test` skips if not).
fn pg_up(test: &str) -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_millis(500),
    )
    .is_ok();
    if !up {
        eprintln!("skipping {test}: no PostgreSQL at 127.0.0.1:5432");
    }
    up
}

/// The Redis and PostgreSQL example tasks return correct results through the worker;
/// a task with no grant is denied, and the denial is logged with its job id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_example_tasks_through_the_worker() {
    let test = "redis_and_postgres_example_tasks_through_the_worker";
    let Some(redis) = support::redis_test(test) else {
        return;
    };
    if !pg_up(test) {
        return;
    }
    let work = support::Workdir::new();
    let tasks = TaskDir::new(&[
        ("redis_client", None),
        ("pg_query", None),
        ("net", Some("")),
    ]);
    let mut worker = work.worker_logged(tasks.path(), &["-c", "8", "--broker", &work.broker()]);
    let client = Client::connect(&work.broker()).await.unwrap();

    // The test's own Redis database and key prefix (deleted when `redis` drops).
    let url = format!("redis://{}/9", support::REDIS_ADDR);
    let key = format!("{}counter", redis.key_prefix);
    let ping = job("redis_ping", json!([url]));
    let incr = job("redis_incr", json!([url, key, 5]));
    let incr_again = job(
        "redis_incr",
        json!([url.replace("127.0.0.1", "localhost"), key, 2]),
    );
    // A temporary table lives as long as the job's session: nothing to clean up after.
    let sql = "CREATE TEMP TABLE sprout_sockets_t (n int, s text); \
               INSERT INTO sprout_sockets_t VALUES (1, 'a'), (2, NULL), (39, 'c'); \
               SELECT sum(n) AS total, count(s) AS named, bool_and(n > 0) AS positive FROM sprout_sockets_t";
    let pg = job(
        "pg_query",
        json!(["127.0.0.1:5432", "postgres", "test", sql]),
    );
    let pg_one = job(
        "pg_query",
        json!(["localhost:5432", "postgres", "test", "SELECT 1 AS one"]),
    );
    let pg_bad = job(
        "pg_query",
        json!([
            "127.0.0.1:5432",
            "postgres",
            "test",
            "SELECT * FROM sprout_no_such_table"
        ]),
    );
    let denied = job("tcp_ping", json!([support::REDIS_ADDR]));
    let all = [&ping, &incr, &pg, &pg_one, &pg_bad, &denied];
    for j in all {
        client.send((*j).clone()).await.unwrap();
    }

    let value = |r: &ResultRecord| {
        assert_eq!(r.state, State::Success, "{r:?}");
        r.result.clone().unwrap_or(Value::Null)
    };
    assert_eq!(value(&wait(&client, &ping.id).await), json!("PONG"));
    assert_eq!(value(&wait(&client, &incr.id).await), json!(5));
    client.send(incr_again.clone()).await.unwrap();
    assert_eq!(value(&wait(&client, &incr_again.id).await), json!(7));
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: i64 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    assert_eq!(stored, 7);

    assert_eq!(
        value(&wait(&client, &pg.id).await),
        json!({"command": "SELECT 1", "columns": ["total", "named", "positive"], "rows": [[42, 2, true]]})
    );
    assert_eq!(
        value(&wait(&client, &pg_one.id).await),
        json!({"command": "SELECT 1", "columns": ["one"], "rows": [[1]]})
    );
    let bad = wait(&client, &pg_bad.id).await;
    assert_eq!(bad.state, State::Failure, "{bad:?}");
    let error = bad.error.unwrap();
    assert_eq!(error.kind, "DatabaseError");
    assert!(
        error.message.contains("42P01") && error.message.contains("sprout_no_such_table"),
        "{}",
        error.message
    );

    let record = wait(&client, &denied.id).await;
    assert_eq!(record.state, State::Failure, "{record:?}");
    let error = record.error.unwrap();
    assert_eq!(error.kind, "PermissionError");
    assert!(
        error.message.contains(support::REDIS_ADDR),
        "{}",
        error.message
    );

    assert!(worker.is_running(), "{}", work.worker_log());
    let log = work.worker_log();
    assert!(
        log.lines()
            .any(|l| l.contains("denied") && l.contains(&denied.id) && l.contains("tcp_ping")),
        "no denial line for {} in the worker log:\n{log}",
        denied.id
    );
}
