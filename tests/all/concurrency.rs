//! Preemption and parking on the async pool: CPU hogs do not starve short jobs, and
//! sleeping guests hold no thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::model::Limits;
use sprout::model::{Outcome, TimeLimitKind};
use sprout::pool::{AsyncPool, Pool};
use sprout::registry::Registry;

use crate::outcomes::{run_job, run_many, spawn_many};
use crate::support::{self, Workdir};

/// 200 short jobs submitted while 4 hogs run (-c 1000): all complete quickly, and every
/// hog is stopped by its budget or its hard time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_jobs_are_not_starved_by_hogs() {
    // A hog with a large budget and a 2 s hard limit, so it is still running while the
    // short jobs are submitted.
    let dir = Workdir::new();
    std::fs::copy(support::task("hog"), dir.path("hog.wasm")).unwrap();
    std::fs::write(
        dir.path("hog.toml"),
        "[limits]\nfuel = 100_000_000_000\ntime_limit = 2.0\n",
    )
    .unwrap();
    std::fs::copy(support::task("echo"), dir.path("echo.wasm")).unwrap();
    let sandbox = support::sandbox(1100);
    let registry = Arc::new(Registry::new());
    let rejected = registry
        .load(
            &sandbox,
            &[dir.dir.path().to_path_buf()],
            &Limits::default(),
        )
        .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 1000));

    let hogs = spawn_many(pool.clone(), &registry, "hog", json!([]), 4);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut shorts = Vec::new();
    for i in 0..200 {
        let (pool, registry) = (pool.clone(), registry.clone());
        shorts.push(tokio::spawn(async move {
            let submitted = Instant::now();
            let e = run_job(
                pool.as_ref(),
                &registry,
                "echo",
                json!([i]),
                Default::default(),
            )
            .await;
            assert_eq!(e.outcome, Outcome::Success { value: json!(i) });
            submitted.elapsed()
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut latencies = Vec::new();
    for s in shorts {
        latencies.push(s.await.unwrap());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!("short jobs behind 4 hogs: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");

    for hog in hogs {
        let e = hog.await.unwrap();
        assert!(
            matches!(
                e.outcome,
                Outcome::OutOfFuel { .. }
                    | Outcome::TimeLimit {
                        kind: TimeLimitKind::Hard,
                        ..
                    }
            ),
            "{:?}",
            e.outcome
        );
    }
}

/// 1000 guests sleeping 1 s at -c 1000 finish in well under 3 s on 2 cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_guests_hold_no_thread() {
    let sandbox = support::sandbox(1100);
    let registry = support::registry(&sandbox).await;
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 1000));
    // Warm the module (compile outside the timed part).
    let e = run_job(
        pool.as_ref(),
        &registry,
        "sleep",
        json!([0.0]),
        Default::default(),
    )
    .await;
    assert!(e.outcome.is_success());

    let started = Instant::now();
    for e in run_many(pool, &registry, "sleep", json!([1.0]), 1000).await {
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
        assert!(
            e.fuel_used < 1_000_000,
            "sleeping burns no fuel: {}",
            e.fuel_used
        );
    }
    let wall = started.elapsed();
    eprintln!("1000 x sleep(1s) at -c 1000: {wall:?}");
    assert!(wall < Duration::from_secs(3), "{wall:?}");
}

/// A full pool is back-pressure: with 2 slots, 6 sleeping jobs run two at a time and
/// none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_waits_instead_of_failing() {
    let sandbox = support::sandbox(8);
    let registry = support::registry(&sandbox).await;
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 2));
    let started = Instant::now();
    for e in run_many(pool, &registry, "sleep", json!([0.2]), 6).await {
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
    }
    let wall = started.elapsed();
    assert!(
        wall >= Duration::from_millis(590),
        "3 waves of 0.2 s: {wall:?}"
    );
}

/// Dropping a job's future (a caller's timeout, a cold shutdown) stops the guest and
/// frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_stop_and_free_their_slot() {
    let sandbox = support::sandbox(8);
    let registry = support::registry(&sandbox).await;
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 1));
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        run_job(
            pool.as_ref(),
            &registry,
            "sleep",
            json!([30.0]),
            Default::default(),
        ),
    )
    .await;
    assert!(cancelled.is_err(), "the sleep is still running at 100 ms");
    // The only slot must be free again at once.
    let e = tokio::time::timeout(
        Duration::from_secs(2),
        run_job(
            pool.as_ref(),
            &registry,
            "add",
            json!([1, 2]),
            Default::default(),
        ),
    )
    .await
    .expect("the slot was released");
    assert!(e.outcome.is_success());
}

/// `Sandbox::prewarm` (`sprout worker --prewarm`) runs a task file once in every slot it
/// asks for, up to the engine's slots, and frees them all: afterwards the pool still runs
/// as many jobs at once as it has slots. A command module cannot be pre-warmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_runs_each_slot_once_and_frees_them() {
    let sandbox = support::sandbox(8);
    let registry = support::registry(&sandbox).await;
    let echo = registry
        .lookup("echo")
        .expect("echo is loaded")
        .module
        .clone();
    let done = sandbox.prewarm(&echo, 8).await.expect("8 slots warm");
    assert_eq!(done.slots, 8);
    // Asking for more than the engine has warms what there is (all were freed above).
    let capped = sandbox.prewarm(&echo, 100).await.expect("capped");
    assert_eq!(capped.slots, 8);
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox.clone(), 8));
    let executions = run_many(pool, &registry, "sleep", json!([0.1]), 8).await;
    assert_eq!(executions.len(), 8);
    for e in executions {
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
    }
    let command = sandbox
        .load_file(&support::task("wasi_upper"))
        .await
        .expect("wasi_upper loads");
    assert!(matches!(
        sandbox.prewarm(&command, 1).await,
        Err(sprout::sandbox::PrewarmError::NotATask)
    ));
}
