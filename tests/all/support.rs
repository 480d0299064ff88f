//! Shared test helpers: the real wasm tasks, temp work dirs, a builder that runs the
//! real `sprout` binary, and the Redis fixture ([`redis_test`], [`redis_db_test`]) that
//! deletes a test's keys when the test ends, also when it fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sprout::backend::redis::RedisBackend;
use sprout::backend::sqlite::SqliteBackend;
use sprout::backend::{BackendError, ResultBackend};
use sprout::broker::redis::RedisBroker;
use sprout::broker::sqlite::SqliteBroker;
use sprout::broker::{Broker, BrokerError, DeadLetter, Delivery, DeliveryTag, QueueStats};
use sprout::client::Client;
use sprout::model::{Job, Limits, Outcome, ResultRecord, State};
use sprout::registry::Registry;
use sprout::sandbox::{EngineSettings, RunRequest, Sandbox, TaskModule};
use sprout::storage::redis::RedisOptions;
use sprout::storage::sqlite::Database;

/// Held by every test that measures time (their names start with `timing_`), so no two
/// of them measure at once on the two-core machine. `make test` also runs them in a
/// second, single-threaded pass, after everything else, so no other test of this binary
/// loads the machine while they measure. Their bounds still hold on a busy machine: each
/// catches a regression, not a few percent (the fine-grained figures are benchmarks,
/// BENCHMARKS.md "Timing tests").
pub static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Celery reference files (`client_check.py`, `fixtures/`), vendored from the team's
/// `shared/celery` so a clone runs its tests on its own (tests/celery/README.md).
pub fn celery_dir() -> PathBuf {
    repo_root().join("tests").join("celery")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The example tasks, freshly built from `tasks/` by `tasks/build.sh` (once per test
/// run; a no-op when nothing changed), so a test never runs a stale binary.
pub fn tasks_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = repo_root().join("target").join("test-tasks");
        let status = Command::new(repo_root().join("tasks").join("build.sh"))
            .arg(&out)
            .status()
            .expect("run tasks/build.sh");
        assert!(status.success(), "tasks/build.sh failed");
        out
    })
}

/// The path of one built task file, e.g. `task("math")`.
pub fn task(name: &str) -> PathBuf {
    tasks_dir().join(format!("{name}.wasm"))
}

/// The `sprout` binary under test.
pub fn sprout_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sprout"))
}

/// A shared artifact cache for tests, so each test does not recompile every task.
pub fn cache_dir() -> PathBuf {
    repo_root().join("target").join("test-cache")
}

/// A sandbox with room for `instances` guests, using the test artifact cache.
pub fn sandbox(instances: u32) -> Sandbox {
    let settings = EngineSettings {
        max_instances: instances,
        ..EngineSettings::default()
    };
    Sandbox::new(settings, Some(&cache_dir())).expect("sandbox")
}

/// A job of `task` with `args` (a JSON array) and no keyword arguments.
pub fn job(task: &str, args: serde_json::Value) -> Job {
    Job::new(
        task,
        args.as_array().cloned().unwrap_or_default(),
        Default::default(),
    )
}

/// The terminal result of job `id`, waiting up to 60 s for it (panics after).
pub async fn wait_result(client: &Client, id: &str) -> ResultRecord {
    client
        .wait(id, Duration::from_secs(60))
        .await
        .expect("backend")
        .filter(|r| r.state.is_terminal())
        .unwrap_or_else(|| panic!("job {id} did not finish within 60 s"))
}

/// Starts `n` guests of the `hog` task spinning on the CPU in `sandbox` until
/// `time_limit` (fuel is no limit); each handle yields how the guest ended.
pub fn spawn_hogs(
    sandbox: &Sandbox,
    hog: &Arc<TaskModule>,
    n: usize,
    time_limit: Duration,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    (0..n)
        .map(|_| {
            let (sandbox, hog) = (sandbox.clone(), hog.clone());
            tokio::spawn(async move {
                let mut request = RunRequest::new("hog", vec![]);
                request.limits.fuel = u64::MAX / 2;
                request.limits.time_limit = time_limit;
                sandbox.run(&hog, request).await.outcome
            })
        })
        .collect()
}

/// A registry holding every example task.
pub async fn registry(sandbox: &Sandbox) -> Arc<Registry> {
    let registry = Arc::new(Registry::new());
    let rejected = registry
        .load(sandbox, &[tasks_dir().to_path_buf()], &Limits::default())
        .await;
    assert!(rejected.is_empty(), "rejected task files: {rejected:?}");
    registry
}

/// A temporary directory with a broker URL inside it.
pub struct Workdir {
    /// The directory (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl Workdir {
    /// A new empty work dir.
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `sqlite:<dir>/sprout.db`.
    pub fn broker(&self) -> String {
        format!("sqlite:{}", self.dir.path().join("sprout.db").display())
    }

    /// A path inside the work dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `sprout` command with the broker, cache and quiet logging preset.
    pub fn sprout(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sprout_bin());
        cmd.args(args)
            // The binary chooses its threads' stack itself (.cargo/config.toml).
            .env_remove("RUST_MIN_STACK")
            .env("SPROUT_BROKER", self.broker())
            .env("SPROUT_CACHE_DIR", cache_dir())
            .env("SPROUT_LOG", "warn")
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `sprout ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.sprout(args).output().expect("run sprout")
    }

    /// Starts `sprout worker --tasks <tasks> ARGS` in the background.
    pub fn worker(&self, args: &[&str]) -> WorkerProcess {
        self.worker_with_tasks(tasks_dir(), args)
    }

    /// Starts `sprout worker --tasks TASKS ARGS` logging at `info` into
    /// [`Workdir::worker_log`]'s file.
    pub fn worker_logged(&self, tasks: &Path, args: &[&str]) -> WorkerProcess {
        let log = std::fs::File::create(self.path("worker.log")).expect("log file");
        self.spawn_worker(tasks, args, log.into())
    }

    /// What the worker started by [`Workdir::worker_logged`] has logged so far.
    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(self.path("worker.log")).unwrap_or_default()
    }

    /// Starts `sprout worker --tasks TASKS ARGS` in the background.
    pub fn worker_with_tasks(&self, tasks: &Path, args: &[&str]) -> WorkerProcess {
        self.spawn_worker(tasks, args, Stdio::piped())
    }

    /// `sprout worker --tasks TASKS ARGS` at log level `info`, stderr to `stderr`.
    fn spawn_worker(&self, tasks: &Path, args: &[&str], stderr: Stdio) -> WorkerProcess {
        let tasks = tasks.display().to_string();
        let mut all = vec!["worker", "--tasks", &tasks];
        all.extend_from_slice(args);
        let child = self
            .sprout(&all)
            .env("SPROUT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn worker");
        WorkerProcess::new(child)
    }
}

/// A background worker, killed on drop.
pub struct WorkerProcess {
    /// The process.
    pub child: Option<Child>,
    /// Reads a piped stderr as it comes, so a worker that logs a lot never blocks on a
    /// full pipe; [`WorkerProcess::wait`] returns what it read.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl WorkerProcess {
    /// Watches `child`, draining its stderr in the background when it is piped.
    pub fn new(mut child: Child) -> WorkerProcess {
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut bytes = Vec::new();
                let _ = err.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        });
        WorkerProcess {
            child: Some(child),
            stderr,
        }
    }

    /// The worker's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Whether the process is still running (it has not exited by itself).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (libc constant).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the process to exit (up to `timeout`); returns its exit code and stderr.
    pub fn wait(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let stderr = self
                    .stderr
                    .take()
                    .and_then(|reader| reader.join().ok())
                    .unwrap_or_default();
                return (status.code(), stderr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("worker did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `program` runs (`program ARG`, e.g. `--version`); says loudly that `test` is
/// skipped when it does not.
pub fn installed(test: &str, program: &str, arg: &str) -> bool {
    let runs = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !runs {
        eprintln!("SKIPPED {test}: `{program}` is not installed");
    }
    runs
}

/// Whether every one of `programs` runs with `--version` and exits 0. When one does not,
/// says loudly that `test` is skipped and what for (`needed_for`), past the test
/// harness's capture (which hides a passing test's `eprintln!`), so the skip shows in
/// `cargo test`'s output.
pub fn tools_present(test: &str, programs: &[&str], needed_for: &str) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|program| {
            !Command::new(program)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "SKIPPED {test}: {} not installed ({needed_for})\n",
                missing.join(" and ")
            )
            .as_bytes(),
        );
    }
    missing.is_empty()
}

/// Runs an example-building script of the repo (`tasks/python/build.sh`,
/// `tasks/js/build.sh`: `SCRIPT SPROUT OUT`) into `target/test-tasks/OUT`, with the
/// binary under test and the shared artifact cache, and returns that folder. The
/// scripts are no-ops when nothing changed; callers keep the result in a `OnceLock`.
pub fn build_example_tasks(script: &str, out: &str) -> PathBuf {
    let out = repo_root().join("target/test-tasks").join(out);
    let status = Command::new(repo_root().join(script))
        .arg(sprout_bin())
        .arg(&out)
        .env("SPROUT_CACHE_DIR", cache_dir())
        .env("SPROUT_LOG", "warn")
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} failed");
    out
}

/// Exit status, stdout and stderr of a finished command, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `sprout run FILE TASK ARGS --json [EXTRA...]` in `dir`: the execution record it
/// prints (`{"outcome": {...}, "fuel_used": ..., ...}`).
pub fn run_record(
    dir: &Workdir,
    file: &Path,
    task: &str,
    args: &str,
    extra: &[&str],
) -> serde_json::Value {
    let file = file.display().to_string();
    let mut all = vec!["run", &file, task, args, "--json"];
    all.extend_from_slice(extra);
    let out = dir.run(&all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)))
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Reads with `read` every 50 ms until `done` holds for what it returned, for up to
/// 10 s; returns the last reading and whether `done` held for it.
async fn poll_until<T, F: std::future::Future<Output = T>>(
    mut read: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> (T, bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = read().await;
        if done(&value) || Instant::now() >= deadline {
            let held = done(&value);
            return (value, held);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) until no queue holds a ready, leased or scheduled message, and
/// panics with the last stats if one still does. A job's result is stored before its
/// delivery is acked, so a test that has just seen the last result must wait for the ack.
pub async fn assert_nothing_left_behind(broker: &dyn Broker) {
    let (stats, empty) = poll_until(
        || async { broker.stats().await.unwrap() },
        |stats: &Vec<QueueStats>| {
            stats
                .iter()
                .all(|q| q.ready == 0 && q.leased == 0 && q.scheduled == 0)
        },
    )
    .await;
    assert!(empty, "left ready, leased or scheduled: {stats:?}");
}

/// The dead letters (up to 1,000), once there are at least `count` (waiting up to 10 s;
/// panics with what there is after that). A job's FAILURE is stored before its delivery
/// is dead-lettered, so a test that has just seen the result must wait for the letter.
pub async fn dead_letters_at_least(broker: &dyn Broker, count: usize) -> Vec<DeadLetter> {
    let (dead, enough) = poll_until(
        || async { broker.dead_letters(1000).await.unwrap() },
        |dead: &Vec<DeadLetter>| dead.len() >= count,
    )
    .await;
    assert!(
        enough,
        "{} dead letters, expected at least {count}: {dead:?}",
        dead.len()
    );
    dead
}

/// stdout as a trimmed string.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// stderr as a string.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Where the tests find Redis.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// The database of the tests that run only Sprout code: each test has its own key prefix
/// in it (kombu's `global_keyprefix`, which Sprout honours for every key it writes).
pub const REDIS_PREFIX_DB: u8 = 9;

/// Databases lent whole to one test at a time, for tests whose other processes (a
/// Python Celery client or worker) cannot be given a key prefix.
const REDIS_WHOLE_DBS: std::ops::RangeInclusive<u8> = 12..=15;

/// The key that says which test holds a database of [`REDIS_WHOLE_DBS`]; it expires, so
/// a test process killed outright (no `Drop`) blocks the database for an hour at most.
const REDIS_CLAIM_KEY: &str = "sprout-test:claim";
const REDIS_CLAIM_SECS: u64 = 3600;

/// Whether Redis answers at [`REDIS_ADDR`]; prints why `test` is skipped when not.
pub fn redis_up(test: &str) -> bool {
    let addr = REDIS_ADDR.parse().expect("socket address");
    let up = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
    if !up {
        eprintln!("skipping {test}: no Redis at {REDIS_ADDR}");
    }
    up
}

/// The keys one test may write on Redis, deleted when it is dropped — at the end of the
/// test, or while a failed assertion unwinds — so no test leaves anything behind.
///
/// It dereferences to the [`RedisOptions`] the test connects with (tests may change
/// them; what is deleted was fixed at creation). Declare it before anything that writes
/// through it (brokers, worker processes): locals drop in reverse order, so the writers
/// are gone when the keys are deleted.
pub struct RedisScope {
    opts: RedisOptions,
    /// The database to clean, without query keys.
    db_url: String,
    /// What to delete: every key under the test's prefix, or a whole lent database.
    kind: ScopeKind,
}

enum ScopeKind {
    /// Keys matching `pattern` (the prefix and `*`) in [`REDIS_PREFIX_DB`].
    Prefix { pattern: String },
    /// A whole database of [`REDIS_WHOLE_DBS`], held while [`REDIS_CLAIM_KEY`] has `token`.
    Db { token: String },
}

/// A fresh key prefix in the shared test database, for `test`; `None` (after saying
/// why `test` is skipped) when Redis is not reachable.
pub fn redis_test(test: &str) -> Option<RedisScope> {
    if !redis_up(test) {
        return None;
    }
    let prefix = format!("sprout-test-{}:", uuid::Uuid::new_v4().simple());
    let db_url = format!("redis://{REDIS_ADDR}/{REDIS_PREFIX_DB}");
    let opts = RedisOptions::from_url(&format!("{db_url}?global_keyprefix={prefix}"))
        .expect("test Redis URL");
    Some(RedisScope {
        opts,
        db_url,
        kind: ScopeKind::Prefix {
            pattern: format!("{prefix}*"),
        },
    })
}

/// A whole database lent to `test` alone (waiting up to two minutes for one to be
/// free), emptied of a killed run's leftovers first; `None` (after saying why) when
/// Redis is not reachable. For tests whose Python processes cannot take a key prefix.
pub fn redis_db_test(test: &str) -> Option<RedisScope> {
    if !redis_up(test) {
        return None;
    }
    let token = format!("{test} {}", uuid::Uuid::new_v4().simple());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for db in REDIS_WHOLE_DBS {
            let db_url = format!("redis://{REDIS_ADDR}/{db}");
            let claimed = sync_redis(&db_url).and_then(|mut conn| {
                redis::cmd("SET")
                    .arg(REDIS_CLAIM_KEY)
                    .arg(&token)
                    .arg("NX")
                    .arg("EX")
                    .arg(REDIS_CLAIM_SECS)
                    .query::<Option<String>>(&mut conn)
            });
            match claimed {
                Ok(Some(_)) => {
                    // Ours now: whatever is here was left by a run that could not clean up.
                    let stale = delete_matching(&db_url, "*", Some(REDIS_CLAIM_KEY))
                        .expect("clear a lent Redis database");
                    if stale > 0 {
                        eprintln!("{test}: deleted {stale} keys a killed run left in db {db}");
                    }
                    let opts = RedisOptions::from_url(&db_url).expect("test Redis URL");
                    return Some(RedisScope {
                        opts,
                        db_url,
                        kind: ScopeKind::Db { token },
                    });
                }
                Ok(None) => {}
                Err(e) => panic!("{test}: cannot claim Redis db {db}: {e}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{test}: no Redis test database of {REDIS_WHOLE_DBS:?} came free in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl RedisScope {
    /// The URL a `sprout` process (or `broker::connect`) uses to write into this scope:
    /// with `global_keyprefix` for a prefix scope, the bare database URL for a lent one.
    pub fn sprout_url(&self) -> String {
        match &self.kind {
            ScopeKind::Prefix { .. } => {
                format!("{}?global_keyprefix={}", self.db_url, self.opts.key_prefix)
            }
            ScopeKind::Db { .. } => self.db_url.clone(),
        }
    }

    /// The keys in the scope now (a lent database's claim key not counted).
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut conn = sync_redis(&self.db_url).expect("connect to Redis");
        scan(&mut conn, self.pattern())
            .expect("scan Redis")
            .into_iter()
            .filter(|k| k.as_slice() != REDIS_CLAIM_KEY.as_bytes())
            .collect()
    }

    fn pattern(&self) -> &str {
        match &self.kind {
            ScopeKind::Prefix { pattern } => pattern,
            ScopeKind::Db { .. } => "*",
        }
    }

    /// Deletes the scope's keys (and gives a lent database back).
    fn clean(&self) -> redis::RedisResult<()> {
        match &self.kind {
            ScopeKind::Prefix { pattern } => {
                delete_matching(&self.db_url, pattern, None)?;
            }
            ScopeKind::Db { token } => {
                let mut conn = sync_redis(&self.db_url)?;
                let holder: Option<String> =
                    redis::cmd("GET").arg(REDIS_CLAIM_KEY).query(&mut conn)?;
                if holder.as_deref() != Some(token.as_str()) {
                    eprintln!(
                        "warning: Redis db {} was no longer lent to this test; left as it is",
                        self.db_url
                    );
                    return Ok(());
                }
                delete_matching(&self.db_url, "*", Some(REDIS_CLAIM_KEY))?;
                // Give it back last, so nobody else writes here while we delete.
                redis::cmd("EVAL")
                    .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
                    .arg(1)
                    .arg(REDIS_CLAIM_KEY)
                    .arg(token)
                    .query::<i64>(&mut conn)?;
            }
        }
        Ok(())
    }
}

impl std::ops::Deref for RedisScope {
    type Target = RedisOptions;

    fn deref(&self) -> &RedisOptions {
        &self.opts
    }
}

impl std::ops::DerefMut for RedisScope {
    fn deref_mut(&mut self) -> &mut RedisOptions {
        &mut self.opts
    }
}

impl Drop for RedisScope {
    /// Blocking on purpose (`Drop` cannot await): a short-lived synchronous connection,
    /// with timeouts, that never panics (a panic while unwinding would abort the run).
    fn drop(&mut self) {
        if let Err(e) = self.clean() {
            eprintln!(
                "warning: could not delete the test's Redis keys ({} {}): {e}",
                self.db_url,
                self.pattern()
            );
        }
    }
}

/// A blocking connection with short timeouts.
fn sync_redis(url: &str) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Every key matching `pattern` (a full SCAN).
fn scan(conn: &mut redis::Connection, pattern: &str) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .cursor_arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// Deletes every key matching `pattern` except `keep`; scans again (a few times at most)
/// in case something still running wrote more meanwhile. Returns how many it deleted.
fn delete_matching(url: &str, pattern: &str, keep: Option<&str>) -> redis::RedisResult<usize> {
    let mut conn = sync_redis(url)?;
    let mut deleted = 0;
    for _ in 0..3 {
        let found: Vec<Vec<u8>> = scan(&mut conn, pattern)?
            .into_iter()
            .filter(|k| Some(k.as_slice()) != keep.map(str::as_bytes))
            .collect();
        if found.is_empty() {
            break;
        }
        for chunk in found.chunks(500) {
            deleted += redis::cmd("DEL").arg(chunk).query::<usize>(&mut conn)?;
        }
    }
    Ok(deleted)
}

/// An async connection to the scope's database (for looking at raw keys).
pub async fn raw(opts: &RedisOptions) -> redis::aio::MultiplexedConnection {
    opts.client()
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}

/// Runs `body` on a thread of its own with a runtime of its own, where it panics;
/// returns what the body sent before panicking.
fn panic_in_scope<T: Send + 'static, F: std::future::Future<Output = ()>>(
    body: impl FnOnce(std::sync::mpsc::Sender<T>) -> F + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body(tx));
    })
    .join();
    assert!(outcome.is_err(), "the body was meant to panic");
    rx.recv().expect("the body reported before panicking")
}

/// A test that fails inside a [`redis_test`] scope leaves no key behind: what a broker
/// (queue, binding, reservation) and a result backend wrote under the prefix is gone.
#[test]
fn redis_scope_deletes_its_keys_when_the_test_panics() {
    if !redis_up("redis_scope_deletes_its_keys_when_the_test_panics") {
        return;
    }
    let (db_url, pattern, written) = panic_in_scope(|tx| async move {
        let scope = redis_test("panicking test").expect("Redis is up");
        let broker = RedisBroker::connect(scope.clone()).await.expect("broker");
        let backend = RedisBackend::connect(scope.clone()).await.expect("backend");
        let mut job = Job::new("add", vec![1.into()], Default::default());
        job.queue = "scope-check".into();
        broker
            .publish(&[job.clone(), job.clone()])
            .await
            .expect("publish");
        broker
            .fetch(
                &[job.queue.clone()],
                1,
                Duration::from_secs(60),
                Duration::ZERO,
            )
            .await
            .expect("fetch");
        backend
            .store(&[ResultRecord::new(&job.id, "add", State::Success)])
            .await
            .expect("store");
        let written = scope.keys().len();
        tx.send((scope.db_url.clone(), scope.pattern().to_owned(), written))
            .expect("send");
        panic!("expected panic: a failing assertion inside a Redis test scope");
    });
    assert!(
        written >= 4,
        "queue, bindings, reservation, result: {written} keys"
    );
    let mut conn = sync_redis(&db_url).expect("connect");
    let left: Vec<String> = scan(&mut conn, &pattern)
        .expect("scan")
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A test that fails while it holds a lent database ([`redis_db_test`]) leaves nothing
/// in it and gives it back.
#[test]
fn redis_db_scope_empties_the_database_when_the_test_panics() {
    let test = "redis_db_scope_empties_the_database_when_the_test_panics";
    if !redis_up(test) {
        return;
    }
    let (db_url, keys) = panic_in_scope(move |tx| async move {
        let scope = redis_db_test(test).expect("Redis is up");
        let keys: Vec<String> = (0..3)
            .map(|n| format!("celery-task-meta-{n}-{}", uuid::Uuid::new_v4()))
            .collect();
        let mut conn = raw(&scope).await;
        for key in &keys {
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg("{}")
                .query_async(&mut conn)
                .await
                .expect("SET");
        }
        assert_eq!(scope.keys().len(), 3);
        tx.send((scope.db_url.clone(), keys)).expect("send");
        panic!("expected panic: a failing assertion inside a lent Redis database");
    });
    let mut conn = sync_redis(&db_url).expect("connect");
    let left: usize = redis::cmd("EXISTS")
        .arg(&keys)
        .query(&mut conn)
        .expect("EXISTS");
    assert_eq!(left, 0, "keys left behind in {db_url}");
    let holder: Option<String> = redis::cmd("GET")
        .arg(REDIS_CLAIM_KEY)
        .query(&mut conn)
        .expect("GET");
    assert!(
        holder.is_none_or(|h| !h.starts_with(test)),
        "the database was not given back"
    );
}

/// The embedded broker and result backend on one SQLite file, as one handle: tests
/// publish and read results through the same value, the way `sqlite:PATH` is one place
/// for a user. (The library keeps them apart: [`SqliteBroker`] and [`SqliteBackend`].)
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The broker face.
    pub broker: SqliteBroker,
    /// The result-backend face.
    pub backend: SqliteBackend,
}

impl SqliteStore {
    /// Opens (creating if needed) the file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, BrokerError> {
        let db = Database::open(path).await.map_err(BrokerError::from)?;
        Ok(SqliteStore {
            broker: SqliteBroker::new(db.clone()),
            backend: SqliteBackend::new(db),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.broker.database().path()
    }

    /// See [`SqliteBackend::recent_results`].
    pub async fn recent_results(&self, limit: usize) -> Result<Vec<ResultRecord>, BackendError> {
        self.backend.recent_results(limit).await
    }

    /// See [`SqliteBackend::result_counts`].
    pub async fn result_counts(&self) -> Result<Vec<(State, u64)>, BackendError> {
        self.backend.result_counts().await
    }
}

#[async_trait::async_trait]
impl Broker for SqliteStore {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        self.broker.publish(jobs).await
    }
    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        self.broker.fetch(queues, max, lease, wait).await
    }
    async fn extend(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        self.broker.extend(tags, lease).await
    }
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        self.broker.ack(tags).await
    }
    async fn release(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        self.broker.release(tags).await
    }
    async fn retry(&self, tag: &DeliveryTag, job: &Job) -> Result<(), BrokerError> {
        self.broker.retry(tag, job).await
    }
    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        self.broker.dead_letter(tag, reason).await
    }
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        self.broker.purge(queue).await
    }
    async fn stats(&self) -> Result<Vec<QueueStats>, BrokerError> {
        self.broker.stats().await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        self.broker.dead_letters(limit).await
    }
}

#[async_trait::async_trait]
impl ResultBackend for SqliteStore {
    async fn store(&self, records: &[ResultRecord]) -> Result<(), BackendError> {
        self.backend.store(records).await
    }
    async fn get(&self, id: &str) -> Result<Option<ResultRecord>, BackendError> {
        self.backend.get(id).await
    }
    async fn recent(&self, limit: usize) -> Result<Vec<ResultRecord>, BackendError> {
        self.backend.recent(limit).await
    }
    async fn counts(&self) -> Result<Vec<(State, u64)>, BackendError> {
        self.backend.counts().await
    }
    async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultRecord>, BackendError> {
        self.backend.wait(id, timeout).await
    }
    async fn expire_results(&self, older_than: Duration) -> Result<u64, BackendError> {
        self.backend.expire_results(older_than).await
    }
}

/// Appends `n` as unsigned LEB128 (wasm's integer encoding), for hand-built modules.
pub fn leb128(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
