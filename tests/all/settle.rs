//! Every delivery ends in the worker's one settle path, whatever panics: a panic in the
//! job path fails that job (`WorkerLostError` with the panic message), a panic while
//! storing its result dead-letters it with the reason, and in both cases its
//! reservation is settled (nothing stays leased) while the other jobs keep completing.
//!
//! The panics come from real code paths of the worker: a [`Pool`] whose `execute`
//! panics for one job (the worker's own job path, outside the pool's guard) and a
//! [`ResultBackend`] whose `store` panics for one job's record, each wrapping the real
//! async pool and the real SQLite backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sprout::backend::{BackendError, ResultBackend};
use sprout::broker::Broker;
use sprout::model::{Execution, Job, ResultRecord, State};
use sprout::pool::{AsyncPool, Pool, PoolKind};
use sprout::registry::TaskEntry;
use sprout::sandbox::{RunRequest, Sandbox};
use sprout::worker::{Shutdown, Worker, WorkerConfig, WorkerReport};

use crate::support::{SqliteStore, Workdir, registry, sandbox};

/// The argument that makes the wrappers below panic.
const BOOM: &str = "boom";

fn asks_for_boom(args: &[Value]) -> bool {
    args.iter().any(|a| a == BOOM)
}

/// The real async pool, except that a job whose first argument is `"boom"` panics in
/// `execute` — in the worker's job path, not inside a guest.
struct PanickingPool(AsyncPool);

#[async_trait]
impl Pool for PanickingPool {
    async fn execute(&self, entry: Arc<TaskEntry>, request: RunRequest) -> Execution {
        if asks_for_boom(&request.args) {
            panic!("injected panic in the job path");
        }
        self.0.execute(entry, request).await
    }
    fn concurrency(&self) -> usize {
        self.0.concurrency()
    }
    fn kind(&self) -> PoolKind {
        self.0.kind()
    }
}

/// The real SQLite backend, except that storing a record whose result is `"boom"`
/// panics — inside the settler.
struct PanickingBackend(SqliteStore);

#[async_trait]
impl ResultBackend for PanickingBackend {
    async fn store(&self, records: &[ResultRecord]) -> Result<(), BackendError> {
        if records.iter().any(|r| r.result == Some(json!(BOOM))) {
            panic!("injected panic while storing a result");
        }
        self.0.store(records).await
    }
    async fn get(&self, id: &str) -> Result<Option<ResultRecord>, BackendError> {
        self.0.get(id).await
    }
}

fn echo(arg: Value) -> Job {
    Job::new("echo", vec![arg], Default::default())
}

/// Runs a worker with `pool` (on `sandbox`) and `backend` over `store` until it has
/// settled `jobs`.
async fn run_worker(
    store: &SqliteStore,
    backend: Arc<dyn ResultBackend>,
    sandbox: &Sandbox,
    pool: Arc<dyn Pool>,
    jobs: usize,
) -> WorkerReport {
    let config = WorkerConfig {
        hostname: "settle-test".into(),
        queues: vec!["celery".into()],
        reservations: 8,
        lease: Duration::from_secs(3),
        grace: Duration::from_secs(5),
        track_started: false,
        max_jobs: Some(jobs as u64),
        unknown_task_grace: std::time::Duration::ZERO,
    };
    let (_tx, rx) = tokio::sync::watch::channel(Shutdown::Running);
    let worker = Worker::new(
        Arc::new(store.clone()),
        backend,
        registry(sandbox).await,
        pool,
        config,
    );
    tokio::time::timeout(Duration::from_secs(60), worker.run(rx))
        .await
        .expect("the worker stops after settling every job")
        .expect("the worker runs")
}

/// Nothing is left ready or leased on any queue.
async fn assert_nothing_reserved(store: &SqliteStore) {
    let stats = store.stats().await.unwrap();
    assert!(
        stats.iter().all(|q| q.ready == 0 && q.leased == 0),
        "left behind: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_job_path_fails_that_job_and_the_others_complete() {
    let dir = Workdir::new();
    let store = SqliteStore::open(dir.path("sprout.db")).await.unwrap();
    let mut jobs: Vec<Job> = (0..20).map(|i| echo(json!(i))).collect();
    let boom = echo(json!(BOOM));
    jobs.insert(7, boom.clone());
    store.publish(&jobs).await.unwrap();

    let sandbox = sandbox(16);
    let pool = Arc::new(PanickingPool(AsyncPool::new(sandbox.clone(), 4)));
    let report = run_worker(&store, Arc::new(store.clone()), &sandbox, pool, jobs.len()).await;
    assert_eq!((report.succeeded, report.failed), (20, 1), "{report:?}");

    let record = store.get(&boom.id).await.unwrap().expect("a result");
    assert_eq!(record.state, State::Failure);
    let error = record.error.expect("an error");
    assert_eq!(error.kind, "WorkerLostError");
    assert!(
        error.message.contains("injected panic in the job path"),
        "{}",
        error.message
    );
    for job in jobs.iter().filter(|j| j.id != boom.id) {
        let record = store.get(&job.id).await.unwrap().expect("a result");
        assert_eq!(record.state, State::Success, "{record:?}");
        assert_eq!(record.result.as_ref(), job.args.first());
    }
    assert_nothing_reserved(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_settling_dead_letters_that_job_and_the_others_complete() {
    let dir = Workdir::new();
    let store = SqliteStore::open(dir.path("sprout.db")).await.unwrap();
    let mut jobs: Vec<Job> = (0..20).map(|i| echo(json!(i))).collect();
    // echo returns its argument: this job's SUCCESS record makes the backend panic.
    let poison = echo(json!(BOOM));
    jobs.insert(3, poison.clone());
    store.publish(&jobs).await.unwrap();

    let sandbox = sandbox(16);
    let pool = Arc::new(AsyncPool::new(sandbox.clone(), 4));
    let backend = Arc::new(PanickingBackend(store.clone()));
    let report = run_worker(&store, backend, &sandbox, pool, jobs.len()).await;
    assert_eq!(report.succeeded, 21, "every job ran: {report:?}");

    // The poisoned job is a dead letter with the panic as its reason ...
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id.as_deref(), Some(poison.id.as_str()));
    assert!(
        dead[0]
            .reason
            .contains("injected panic while storing a result"),
        "{}",
        dead[0].reason
    );
    assert!(store.get(&poison.id).await.unwrap().is_none());
    // ... and every other job, including those settled in the same batch, is stored.
    for job in jobs.iter().filter(|j| j.id != poison.id) {
        let record = store.get(&job.id).await.unwrap().expect("a result");
        assert_eq!(record.state, State::Success, "{record:?}");
    }
    assert_nothing_reserved(&store).await;
}
