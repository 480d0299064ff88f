//! End-to-end worker throughput on the embedded SQLite broker (issue: queue and worker):
//! jobs are published first, then an in-process worker drains them (fetch → run →
//! store → ack) and the rate from start to the last stored result is printed.
//!
//! ```text
//! ./tasks/build.sh target/tasks && cargo bench -p sprout --bench worker
//! SPROUT_BENCH_JOBS=50000 SPROUT_BENCH_CONCURRENCY=100 cargo bench -p sprout --bench worker
//! ```
//! `SPROUT_BENCH_TASKS` overrides the task dir; `SPROUT_BENCH_TASK` the task (default
//! `echo`, called with `[i]`; any other task is called with `[i, 0]`, an `add`):
//! Python `add` is
//! `SPROUT_BENCH_TASKS=target/tasks/python SPROUT_BENCH_TASK=py.add cargo bench -p sprout --bench worker`.
//! The enqueue rate of the CLI is measured with
//! `sprout send echo '[1]' --count 100000 --broker sqlite:/tmp/b.db` (it prints jobs/s).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::connect;
use sprout::model::Job;
use sprout::model::Limits;
use sprout::pool::{AsyncPool, Pool};
use sprout::registry::Registry;
use sprout::sandbox::{EngineSettings, Sandbox};
use sprout::worker::{Shutdown, Worker, WorkerConfig};

use common::{env_usize, runtime};

fn main() {
    let jobs = env_usize("SPROUT_BENCH_JOBS", 50_000);
    let concurrency = env_usize("SPROUT_BENCH_CONCURRENCY", 100);
    let tasks = common::pool::tasks_dir();
    let task = std::env::var("SPROUT_BENCH_TASK").unwrap_or_else(|_| "echo".into());
    runtime().block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("bench.db").display());
        let store = connect::connect(&url).await.unwrap();
        let args = |i: usize| if task == "echo" { vec![json!(i)] } else { vec![json!(i), json!(0)] };
        let batch: Vec<Job> = (0..jobs).map(|i| Job::new(&task, args(i), Default::default())).collect();
        let t = Instant::now();
        for chunk in batch.chunks(10_000) {
            store.broker.publish(chunk).await.unwrap();
        }
        let publish = t.elapsed().as_secs_f64();
        println!("publish {jobs} jobs: {:.0} jobs/s", jobs as f64 / publish);

        let settings = EngineSettings { max_instances: concurrency as u32 + 16, ..EngineSettings::default() };
        let sandbox = Sandbox::new(settings, Some(&std::env::temp_dir().join("sprout-bench-cache"))).unwrap();
        let registry = Arc::new(Registry::new());
        assert!(registry.load(&sandbox, &[tasks], &Limits::default()).await.is_empty());
        let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, concurrency));
        let config = WorkerConfig {
            hostname: "bench".into(),
            queues: vec!["celery".into()],
            reservations: concurrency,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            track_started: false,
            max_jobs: Some(jobs as u64),
            unknown_task_grace: std::time::Duration::ZERO,
        };
        let (_tx, rx) = tokio::sync::watch::channel(Shutdown::Running);
        let worker = Worker::new(store.broker.clone(), store.backend.clone(), registry, pool, config);
        let t = Instant::now();
        let report = worker.run(rx).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.succeeded, jobs as u64, "{report:?}");
        let last = store.backend.get(&batch[jobs - 1].id).await.unwrap().expect("stored");
        assert_eq!(last.result, Some(json!(jobs - 1)));
        println!(
            "end to end (fetch → run → store → ack), {task}, -c {concurrency}: {jobs} jobs in {secs:.2} s = {:.0} jobs/s",
            jobs as f64 / secs
        );
    });
}
