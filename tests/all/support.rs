//! Shared test helpers: the real wasm tasks, temp work dirs, and a builder that runs
//! the real `sprout` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sprout::backend::sqlite::SqliteBackend;
use sprout::backend::{BackendError, ResultBackend};
use sprout::broker::sqlite::SqliteBroker;
use sprout::broker::{Broker, BrokerError, DeadLetter, Delivery, DeliveryTag, QueueStats};
use sprout::model::{Job, Limits, ResultRecord, State};
use sprout::registry::Registry;
use sprout::sandbox::{EngineSettings, Sandbox};
use sprout::storage::sqlite::Database;

/// Held by every test that asserts on wall-clock speed (their names start with
/// `timing_`), so no two of them measure at once on the two-core machine. `make test`
/// also runs them in a second, single-threaded pass, after everything else, so no other
/// test of this binary loads the machine while they measure.
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

    /// Starts `sprout worker --tasks TASKS ARGS` in the background.
    pub fn worker_with_tasks(&self, tasks: &Path, args: &[&str]) -> WorkerProcess {
        let tasks = tasks.display().to_string();
        let mut all = vec!["worker", "--tasks", &tasks];
        all.extend_from_slice(args);
        let child = self
            .sprout(&all)
            .env("SPROUT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        WorkerProcess { child: Some(child) }
    }
}

/// A background worker, killed on drop.
pub struct WorkerProcess {
    /// The process.
    pub child: Option<Child>,
}

impl WorkerProcess {
    /// The worker's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
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
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    use std::io::Read;
                    let _ = err.read_to_string(&mut stderr);
                }
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

/// stdout as a trimmed string.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// stderr as a string.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
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
