//! The outcome suite: every way a job can end, through a pool, with the real tasks.
//! [`outcome_suite`] is pool-agnostic; each pool runs it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sprout::model::LimitOverrides;
use sprout::model::{Execution, Outcome, TimeLimitKind};
use sprout::pool::{AsyncPool, Pool};
use sprout::registry::Registry;
use sprout::sandbox::RunRequest;

use crate::support;

/// Runs `task(args)` on `pool`, with the job asking for `job_limits`.
pub async fn run_job(
    pool: &dyn Pool,
    registry: &Registry,
    task: &str,
    args: Value,
    job_limits: LimitOverrides,
) -> Execution {
    let entry = registry
        .lookup(task)
        .unwrap_or_else(|| panic!("task {task} not loaded"));
    let mut request = RunRequest::new(
        entry.export.clone(),
        args.as_array().cloned().unwrap_or_default(),
    );
    request.limits = entry.limits.lowered_by(&job_limits);
    request.capabilities = entry.capabilities.clone();
    pool.execute(entry, request).await
}

/// Submits `n` jobs of `task(args)` to `pool` at once, each on its own tokio task (as a
/// worker's consume loop does), without waiting for them.
pub fn spawn_many(
    pool: Arc<dyn Pool>,
    registry: &Arc<Registry>,
    task: &str,
    args: Value,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Execution>> {
    (0..n)
        .map(|_| {
            let (pool, registry) = (pool.clone(), registry.clone());
            let (task, args) = (task.to_string(), args.clone());
            tokio::spawn(async move {
                run_job(pool.as_ref(), &registry, &task, args, no_limits()).await
            })
        })
        .collect()
}

/// [`spawn_many`], then waits for every job; the executions in submission order.
pub async fn run_many(
    pool: Arc<dyn Pool>,
    registry: &Arc<Registry>,
    task: &str,
    args: Value,
    n: usize,
) -> Vec<Execution> {
    let mut executions = Vec::with_capacity(n);
    for job in spawn_many(pool, registry, task, args, n) {
        executions.push(job.await.expect("the job's task panicked"));
    }
    executions
}

/// No limits asked for by the job.
pub fn no_limits() -> LimitOverrides {
    LimitOverrides::default()
}

/// The limits a job asks for: none but what `ask` sets.
pub fn asking(ask: impl FnOnce(&mut LimitOverrides)) -> LimitOverrides {
    let mut limits = no_limits();
    ask(&mut limits);
    limits
}

/// Every outcome the pool must produce, with the reason it must carry.
pub async fn outcome_suite(pool: Arc<dyn Pool>, registry: &Registry) {
    let pool = pool.as_ref();
    // Success, with cost reported.
    let e = run_job(pool, registry, "add", json!([2, 3]), no_limits()).await;
    assert_eq!(e.outcome, Outcome::Success { value: json!(5) });
    assert!(e.fuel_used > 0);
    let e = run_job(pool, registry, "fib", json!([20]), no_limits()).await;
    assert_eq!(e.outcome, Outcome::Success { value: json!(6765) });
    let e = run_job(
        pool,
        registry,
        "echo",
        json!([{"nested": [1, "two"]}]),
        no_limits(),
    )
    .await;
    assert_eq!(
        e.outcome,
        Outcome::Success {
            value: json!({"nested": [1, "two"]})
        }
    );
    // A plain WASI command (no SDK).
    let e = run_job(pool, registry, "wasi_upper", json!(["abc", 1]), no_limits()).await;
    assert_eq!(
        e.outcome,
        Outcome::Success {
            value: json!(["ABC", 1])
        }
    );

    // The guest's own error.
    let e = run_job(pool, registry, "fail", json!(["boom"]), no_limits()).await;
    match &e.outcome {
        Outcome::GuestError {
            kind,
            message,
            retry,
        } => {
            assert_eq!(kind, "ValueError");
            assert_eq!(message, "boom");
            assert!(retry.is_none());
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
    // Bad arguments are a TypeError from the SDK, not a trap.
    let e = run_job(pool, registry, "add", json!([1]), no_limits()).await;
    assert!(
        matches!(&e.outcome, Outcome::GuestError { kind, .. } if kind == "TypeError"),
        "{:?}",
        e.outcome
    );

    // A panic is a trap carrying the panic message.
    let e = run_job(pool, registry, "trap", json!(["kaboom"]), no_limits()).await;
    match &e.outcome {
        Outcome::Trap { message, .. } => assert!(message.contains("kaboom"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }

    // CPU budget: hog's manifest gives it 2e9 fuel.
    let e = run_job(pool, registry, "hog", json!([]), no_limits()).await;
    assert_eq!(
        e.outcome,
        Outcome::OutOfFuel {
            budget: 2_000_000_000
        }
    );
    assert_eq!(e.fuel_used, 2_000_000_000);

    // Wall clock: a sleeping guest burns no fuel but hits the time limit.
    let hard = asking(|l| l.time_limit = Some(0.3));
    let e = run_job(pool, registry, "sleep", json!([5.0]), hard).await;
    assert_eq!(
        e.outcome,
        Outcome::TimeLimit {
            kind: TimeLimitKind::Hard,
            limit: Duration::from_millis(300)
        }
    );
    assert!(e.duration < Duration::from_secs(2), "{:?}", e.duration);
    let soft = asking(|l| l.soft_time_limit = Some(0.2));
    let e = run_job(pool, registry, "sleep", json!([5.0]), soft).await;
    assert_eq!(
        e.outcome,
        Outcome::TimeLimit {
            kind: TimeLimitKind::Soft,
            limit: Duration::from_millis(200)
        }
    );

    // Memory cap (64 MiB default).
    let e = run_job(pool, registry, "alloc", json!([100]), no_limits()).await;
    assert_eq!(
        e.outcome,
        Outcome::MemoryLimit {
            limit_bytes: 64 << 20
        }
    );
    let e = run_job(pool, registry, "alloc", json!([8]), no_limits()).await;
    assert!(e.outcome.is_success(), "8 MiB fits: {:?}", e.outcome);

    // Output cap (1 MiB default).
    let e = run_job(pool, registry, "spew", json!([2_000_000]), no_limits()).await;
    assert_eq!(
        e.outcome,
        Outcome::OutputTooLarge {
            limit_bytes: 1 << 20
        }
    );
    // Captured stdout is bounded and never fails the job.
    let e = run_job(pool, registry, "shout", json!([1_000_000]), no_limits()).await;
    assert!(e.outcome.is_success(), "{:?}", e.outcome);
    assert!(
        e.logs.len() < 70_000,
        "stdout capture is capped: {}",
        e.logs.len()
    );
    assert!(e.logs.ends_with("[output truncated]\n"));
}

/// A job may lower its limits but never raise them above the task's.
pub async fn job_limits_suite(pool: Arc<dyn Pool>, registry: &Registry) {
    let pool = pool.as_ref();
    // Each limit asked for below the task's own (it applies), then above it (the task's
    // own applies: raising is ignored).
    let cases = [
        (
            "hog",
            json!([]),
            asking(|l| l.fuel = Some(50_000_000)),
            Outcome::OutOfFuel { budget: 50_000_000 },
        ),
        (
            "hog",
            json!([]),
            asking(|l| l.fuel = Some(1_000_000_000_000)),
            Outcome::OutOfFuel {
                budget: 2_000_000_000,
            },
        ),
        (
            "alloc",
            json!([8]),
            asking(|l| l.memory_bytes = Some(4 << 20)),
            Outcome::MemoryLimit {
                limit_bytes: 4 << 20,
            },
        ),
        (
            "alloc",
            json!([100]),
            asking(|l| l.memory_bytes = Some(1 << 30)),
            Outcome::MemoryLimit {
                limit_bytes: 64 << 20,
            },
        ),
        (
            "spew",
            json!([200]),
            asking(|l| l.output_bytes = Some(100)),
            Outcome::OutputTooLarge { limit_bytes: 100 },
        ),
    ];
    for (task, args, asked, expected) in cases {
        let e = run_job(pool, registry, task, args, asked.clone()).await;
        assert_eq!(e.outcome, expected, "{task} asking for {asked:?}");
    }
    let raise = asking(|l| l.time_limit = Some(1e9));
    let e = run_job(pool, registry, "sleep", json!([0.05]), raise).await;
    assert!(e.outcome.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pool_outcomes() {
    let sandbox = support::sandbox(64);
    let registry = support::registry(&sandbox).await;
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 16));
    outcome_suite(pool.clone(), &registry).await;
    job_limits_suite(pool, &registry).await;
}

/// The log line the sleep task's `log` import produces for `sleep(0.25)`.
const PANICKING_LINE: &str = "guest: sleeping 0.25 s";
/// What [`PanickingSink`] panics with.
const SINK_PANIC: &str = "the log sink failed";

/// A log sink that panics on one line (once), as `eprintln!` does on a broken stderr:
/// a host bug reached from inside a running job (the guest's `log` import logs through
/// it). Once: the fmt layer's buffer still holds the line after the panic.
#[derive(Clone, Default)]
struct PanickingSink {
    fired: Arc<std::sync::atomic::AtomicBool>,
}

impl std::io::Write for PanickingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(buf).contains(PANICKING_LINE)
            && !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("{SINK_PANIC}");
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for PanickingSink {
    type Writer = PanickingSink;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A host panic while a job runs (here inside a host import, on the guest's fiber) fails
/// that job as `WorkerLost`; the job running beside it finishes, and the pool's slots and
/// instances are all free again afterwards.
#[tokio::test(flavor = "current_thread")]
async fn a_host_panic_fails_only_its_job_and_the_pool_keeps_serving() {
    // One thread, so the sink sees the pool's logs.
    let sink = PanickingSink::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Exactly two instances for two slots: a slot or an instance the panic leaked would
    // make one of the last two jobs wait forever or fail.
    let sandbox = support::sandbox(2);
    let registry = support::registry(&sandbox).await;
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 2));

    let beside = spawn_many(pool.clone(), &registry, "sleep", json!([0.5]), 1).remove(0);
    let e = run_job(
        pool.as_ref(),
        &registry,
        "sleep",
        json!([0.25]),
        no_limits(),
    )
    .await;
    match &e.outcome {
        Outcome::WorkerLost { reason } => {
            assert!(reason.contains("the host panicked"), "{reason}");
            assert!(reason.contains(SINK_PANIC), "{reason}");
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    assert!(sink.fired.load(std::sync::atomic::Ordering::SeqCst));
    assert!(!beside.is_finished(), "the other job was running meanwhile");
    let beside = beside.await.expect("the other job's task");
    assert!(beside.outcome.is_success(), "{:?}", beside.outcome);

    let after = tokio::time::timeout(
        Duration::from_secs(10),
        run_many(pool, &registry, "sleep", json!([0.1]), 2),
    )
    .await
    .expect("both slots are free again");
    for e in after {
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
    }
}
