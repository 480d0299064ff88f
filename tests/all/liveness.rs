//! Liveness: a `kill -9`ed worker's reserved jobs are restored by the other worker
//! within seconds (its liveness record lapses after `--worker-dead-after`, 10 s by
//! default), not after their lease; a live worker's long job is never restored.
//!
//! The workers run with `--lease 3600` (Redis: and kombu's default visibility timeout,
//! 3600 s), so nothing but liveness can bring the jobs back within the test's limits.
//! The Redis tests start a private `redis-server` (AOF on) on a free port and skip,
//! loudly, when it is not installed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::connect::{Connection, connect};
use sprout::model::{Job, State};

use crate::support::{
    Workdir, WorkerProcess, cache_dir, installed, sprout_bin, tasks_dir, wait_until,
};

/// Jobs the killed worker holds.
const IN_FLIGHT: usize = 200;
/// How long each of them sleeps.
const JOB_SECONDS: f64 = 2.0;

/// A private `redis-server`, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    /// Starts one, or `None` (with a loud message) when `redis-server` is missing.
    fn start(test: &str) -> Option<RedisServer> {
        if !installed(test, "redis-server", "--version") {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Self::spawn(port, dir.path());
        let server = RedisServer { child, port, dir };
        server.wait_up();
        Some(server)
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server")
    }

    fn wait_up(&self) {
        let up = wait_until(Duration::from_secs(10), || {
            redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        assert!(up, "redis-server on port {} did not come up", self.port);
    }

    /// Stops the server (SIGTERM: it writes its append-only file, as a restart by an
    /// operator would) and starts it again on the same port and data directory.
    fn restart(&mut self, down_for: Duration) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_up();
    }

    /// `CLIENT KILL TYPE normal`: drops every client connection at once.
    fn kill_clients(&self) -> i64 {
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis");
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query(&mut conn)
            .unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// How many liveness keys exist.
    fn live_workers(&self) -> usize {
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sprout.worker.*")
            .query(&mut conn)
            .expect("KEYS");
        keys.len()
    }
}

/// How many live `workers` rows an SQLite broker file has.
fn sqlite_live_workers(path: &Path) -> usize {
    let Ok(conn) = rusqlite::Connection::open(path) else {
        return 0;
    };
    let now = chrono::Utc::now().timestamp_millis();
    conn.query_row(
        "SELECT count(*) FROM workers WHERE expires_at > ?1",
        [now],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
    .unwrap_or(0)
}

/// Starts `sprout worker` on `url` with its stderr in `log`.
fn worker(wd: &Workdir, url: &str, log: &Path, args: &[&str]) -> WorkerProcess {
    let tasks = tasks_dir().display().to_string();
    let child = Command::new(sprout_bin())
        .args(["worker", "--tasks", &tasks, "--lease", "3600"])
        .args(args)
        .env("SPROUT_BROKER", url)
        .env("SPROUT_CACHE_DIR", cache_dir())
        .env("SPROUT_LOG", "info")
        .current_dir(wd.dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn worker");
    WorkerProcess::new(child)
}

fn sleep_job(seconds: f64) -> Job {
    Job::new("sleep", vec![json!(seconds)], serde_json::Map::new())
}

fn successes(rt: &tokio::runtime::Runtime, conn: &Connection, ids: &[String]) -> usize {
    rt.block_on(async {
        let mut done = 0;
        for id in ids {
            if let Ok(Some(r)) = conn.backend.get(id).await
                && r.state == State::Success
            {
                done += 1;
            }
        }
        done
    })
}

fn leased(rt: &tokio::runtime::Runtime, conn: &Connection) -> u64 {
    rt.block_on(conn.broker.stats())
        .map(|s| s.iter().map(|q| q.leased).sum())
        .unwrap_or(0)
}

/// Worker B starts (and is paused with SIGSTOP so it takes nothing), worker A leases
/// all [`IN_FLIGHT`] jobs, B resumes and A is killed with SIGKILL. Returns the time from
/// the kill to the last job's SUCCESS.
fn crash_recovery(url: &str, live_workers: &dyn Fn() -> usize) -> Duration {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let wd = Workdir::new();
    let conn = rt.block_on(connect(url)).expect("connect");
    let log_a = wd.path("a.log");
    let log_b = wd.path("b.log");
    let b = worker(&wd, url, &log_b, &["-c", "200", "-n", "b@test"]);
    assert!(
        wait_until(Duration::from_secs(60), || live_workers() == 1),
        "worker B did not go live: {}",
        read(&log_b)
    );
    b.signal(libc::SIGSTOP);
    let jobs: Vec<Job> = (0..IN_FLIGHT).map(|_| sleep_job(JOB_SECONDS)).collect();
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    rt.block_on(conn.broker.publish(&jobs)).expect("publish");
    let a = worker(&wd, url, &log_a, &["-c", "200", "-n", "a@test"]);
    let all_leased = wait_until(Duration::from_secs(60), || {
        leased(&rt, &conn) == IN_FLIGHT as u64
    });
    b.signal(libc::SIGCONT);
    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        all_leased,
        "worker A did not lease every job: {}",
        read(&log_a)
    );
    let done_at_kill = successes(&rt, &conn, &ids);
    assert!(
        done_at_kill < IN_FLIGHT / 2,
        "worker A finished {done_at_kill} jobs before it was killed"
    );
    let recovered = wait_until(Duration::from_secs(30), || {
        successes(&rt, &conn, &ids) == IN_FLIGHT
    });
    let elapsed = killed.elapsed();
    assert!(
        recovered,
        "only {} of {IN_FLIGHT} jobs ended SUCCESS within 30 s of the kill; B: {}",
        successes(&rt, &conn, &ids),
        read(&log_b)
    );
    eprintln!(
        "liveness: {IN_FLIGHT} jobs ({done_at_kill} done at the kill) of a killed worker \
         finished {:.1} s after kill -9 ({url})",
        elapsed.as_secs_f64()
    );
    drop(a);
    b.signal(libc::SIGTERM);
    let mut b = b;
    let (code, _) = b.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "worker B: {}", read(&log_b));
    assert_eq!(
        live_workers(),
        0,
        "B's liveness record stays after a clean exit"
    );
    elapsed
}

/// Worker A runs one job longer than `--worker-dead-after` while B sweeps: the job runs
/// exactly once.
fn long_job_runs_once(url: &str, seconds: f64, args: &[&str], live_workers: &dyn Fn() -> usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let wd = Workdir::new();
    let conn = rt.block_on(connect(url)).expect("connect");
    let log_a = wd.path("a.log");
    let log_b = wd.path("b.log");
    let mut a_args = vec!["-c", "1", "-n", "a@test"];
    a_args.extend_from_slice(args);
    let mut a = worker(&wd, url, &log_a, &a_args);
    assert!(
        wait_until(Duration::from_secs(60), || live_workers() == 1),
        "worker A did not go live: {}",
        read(&log_a)
    );
    let job = sleep_job(seconds);
    rt.block_on(conn.broker.publish(std::slice::from_ref(&job)))
        .expect("publish");
    assert!(wait_until(Duration::from_secs(30), || leased(&rt, &conn) == 1));
    let mut b_args = vec!["-c", "10", "-n", "b@test"];
    b_args.extend_from_slice(args);
    let mut b = worker(&wd, url, &log_b, &b_args);
    let finished = wait_until(Duration::from_secs_f64(seconds + 30.0), || {
        successes(&rt, &conn, std::slice::from_ref(&job.id)) == 1
    });
    assert!(finished, "the long job did not finish: {}", read(&log_a));
    for w in [&a, &b] {
        w.signal(libc::SIGTERM);
    }
    a.wait(Duration::from_secs(30));
    b.wait(Duration::from_secs(30));
    let (log_a, log_b) = (read(&log_a), read(&log_b));
    assert!(log_a.contains("stopped: 1 succeeded"), "A: {log_a}");
    assert!(
        log_b.contains("stopped: 0 succeeded"),
        "the job ran again on B: {log_b}"
    );
    assert!(!log_b.contains("restored"), "B restored something: {log_b}");
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn liveness_redis_killed_worker_jobs_recovered() {
    let Some(redis) = RedisServer::start("liveness_redis_killed_worker_jobs_recovered") else {
        return;
    };
    let elapsed = crash_recovery(&redis.url(), &|| redis.live_workers());
    assert!(elapsed < Duration::from_secs(30));
}

#[test]
fn liveness_redis_long_job_on_live_worker_not_restored() {
    let Some(redis) = RedisServer::start("liveness_redis_long_job_on_live_worker_not_restored")
    else {
        return;
    };
    long_job_runs_once(&redis.url(), 60.0, &[], &|| redis.live_workers());
}

#[test]
fn liveness_sqlite_killed_worker_jobs_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sprout.db");
    let url = format!("sqlite:{}", path.display());
    let elapsed = crash_recovery(&url, &|| sqlite_live_workers(&path));
    assert!(elapsed < Duration::from_secs(30));
}

#[test]
fn liveness_sqlite_long_job_on_live_worker_not_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sprout.db");
    let url = format!("sqlite:{}", path.display());
    // Shorter settings keep it quick: a 12 s job, dead after 3 s.
    let args = ["--heartbeat-interval", "500ms", "--worker-dead-after", "3s"];
    long_job_runs_once(&url, 12.0, &args, &|| sqlite_live_workers(&path));
}

/// A version-1 file (before liveness) is upgraded in place: `jobs.owner` and `workers`
/// appear and waiting jobs stay.
#[test]
fn liveness_sqlite_schema_v1_upgrades() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sprout.db");
    let url = format!("sqlite:{}", path.display());
    let job = sleep_job(0.0);
    rt.block_on(async {
        let conn = connect(&url).await.expect("connect");
        conn.broker
            .publish(std::slice::from_ref(&job))
            .await
            .unwrap();
    });
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE jobs DROP COLUMN owner; DROP TABLE workers; PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let broker = rt
        .block_on(sprout::broker::sqlite::SqliteBroker::open(&path))
        .expect("open a v1 file");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    let owners: i64 = conn
        .query_row("SELECT count(owner) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(owners, 0);
    assert_eq!(sqlite_live_workers(&path), 0);
    use sprout::broker::Broker;
    let got = rt
        .block_on(broker.fetch(
            &["celery".to_string()],
            10,
            Duration::from_secs(30),
            Duration::ZERO,
        ))
        .unwrap();
    assert_eq!(got.len(), 1);
}

/// Broker level, on Redis: reservations of a live broker are tagged, settling removes
/// the tag, a live owner's reservations are never swept, a dead owner's are restored
/// at once, and untagged reservations (no liveness, as a Celery worker's) are left to
/// the visibility timeout.
#[test]
fn liveness_redis_tags_and_sweep() {
    use sprout::broker::Broker;
    use sprout::broker::redis::RedisBroker;
    use sprout::storage::redis::RedisOptions;
    let Some(redis) = RedisServer::start("liveness_redis_tags_and_sweep") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let opts = RedisOptions::from_url(&redis.url()).unwrap();
        let a = RedisBroker::connect(opts.clone()).await.unwrap();
        let b = RedisBroker::connect(opts.clone()).await.unwrap();
        let plain = RedisBroker::connect(opts).await.unwrap();
        let mut raw = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let queues = ["celery".to_string()];
        let lease = Duration::from_secs(3600);
        let jobs: Vec<Job> = (0..4).map(|_| sleep_job(0.0)).collect();
        a.publish(&jobs).await.unwrap();
        a.go_live(Duration::from_secs(10)).await.unwrap();
        let got = a.fetch(&queues, 3, lease, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 3);
        let untagged = plain
            .fetch(&queues, 1, lease, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(untagged.len(), 1);
        let probe = raw.clone();
        let tagged = || {
            let mut conn = probe.clone();
            async move {
                let n: usize = redis::cmd("HLEN")
                    .arg("sprout.reserved_by")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                n
            }
        };
        assert_eq!(tagged().await, 3);
        a.ack(&[got[0].tag.clone()]).await.unwrap();
        assert_eq!(tagged().await, 2);
        // A is live: nothing is restored.
        assert_eq!(b.sweep_dead().await.unwrap(), 0);
        // A dies (its key lapses): B restores A's two, not the untagged one.
        let key = format!("sprout.worker.{}", a.identity().unwrap());
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(b.sweep_dead().await.unwrap(), 2);
        assert_eq!(tagged().await, 0);
        let again = b.fetch(&queues, 10, lease, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|d| d.delivery_count == 2));
        let unacked: usize = redis::cmd("HLEN")
            .arg("unacked")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(unacked, 3, "B's two and the untagged one stay reserved");
        // Sign-off removes the record (A re-joined first, so there is one).
        a.go_live(Duration::from_secs(10)).await.unwrap();
        assert_eq!(redis.live_workers(), 1);
        a.sign_off().await.unwrap();
        a.sign_off().await.unwrap();
        assert_eq!(redis.live_workers(), 0);
    });
}

/// A Redis restart and a kill of every client connection, each in the middle of a run
/// of a real worker: nothing is lost, and every job ends with its one terminal result.
#[test]
fn liveness_redis_restart_and_client_kill_lose_nothing() {
    let Some(mut redis) = RedisServer::start("liveness_redis_restart_and_client_kill_lose_nothing")
    else {
        return;
    };
    let url = redis.url();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let wd = Workdir::new();
    let conn = rt.block_on(connect(&url)).expect("connect");
    let jobs: Vec<Job> = (0..3_000).map(|_| sleep_job(0.05)).collect();
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    rt.block_on(conn.broker.publish(&jobs)).expect("publish");
    let log = wd.path("worker.log");
    let mut w = worker(&wd, &url, &log, &["-c", "20"]);
    let reached =
        |n: usize| wait_until(Duration::from_secs(60), || successes(&rt, &conn, &ids) >= n);
    assert!(reached(500), "the worker did not get going: {}", read(&log));
    assert!(
        redis.kill_clients() >= 1,
        "the worker's connections were killed"
    );
    assert!(
        reached(1_200),
        "no progress after CLIENT KILL: {}",
        read(&log)
    );
    redis.restart(Duration::from_millis(500));
    let conn = rt.block_on(connect(&url)).expect("reconnect");
    assert!(
        wait_until(Duration::from_secs(120), || successes(&rt, &conn, &ids)
            == ids.len()),
        "{} of {} jobs ended SUCCESS after the restart: {}",
        successes(&rt, &conn, &ids),
        ids.len(),
        read(&log)
    );
    assert!(
        w.is_running(),
        "the worker stopped by itself: {}",
        read(&log)
    );
    assert_eq!(leased(&rt, &conn), 0, "nothing stays reserved");
    w.signal(libc::SIGTERM);
    let (code, _) = w.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", read(&log));
    assert!(!read(&log).contains("panicked"), "{}", read(&log));
}
