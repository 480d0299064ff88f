//! Instance reuse (`[limits] jobs_per_instance`): one task instance runs up to N jobs,
//! one at a time, and only after a clean finish; everything per job stays per job.
//!
//! A tiny Python task file (`COUNTER_PY`, built once per test run with `sprout build`)
//! keeps a module-level counter: its value shows whether a job ran in a reused instance
//! (the count goes on) or a fresh one (it starts at 1 again).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};
use sprout::model::{Execution, LimitOverrides, Limits, Outcome, TimeLimitKind};
use sprout::pool::{AsyncPool, Pool, PoolKind};
use sprout::registry::{Registry, TaskEntry};
use sprout::sandbox::{RunRequest, Sandbox, TaskModule};

use crate::outcomes::{job_limits_suite, outcome_suite, run_job};
use crate::support::{self, Workdir, cache_dir, repo_root, sprout_bin};

/// The fixture: a counter that persists in module globals, and ways to end a job badly.
const COUNTER_PY: &str = r#"from sprout_task import task, log
import sys
import time

calls = 0


@task(name="ctr.count")
def count(tag):
    """How many jobs this instance has run (a module global), logging `tag`."""
    global calls
    calls += 1
    print(f"printed by {tag}")
    log("info", f"logged by {tag}")
    return calls


@task(name="ctr.fail")
def fail(tag):
    """Counts, then raises ValueError(tag): a clean finish (the guest returned)."""
    global calls
    calls += 1
    raise ValueError(tag)


@task(name="ctr.spin")
def spin():
    while True:
        pass


@task(name="ctr.hoard")
def hoard():
    return len(bytearray(1 << 30))


@task(name="ctr.nap")
def nap(seconds):
    time.sleep(seconds)
    return seconds
"#;

/// The manifest built beside it: reuse on, 3 jobs per instance.
const COUNTER_TOML: &str = "[limits]\njobs_per_instance = 3\n";

/// The fixture's task file dir (`counter.wasm`, `counter.toml`), built once per test run
/// into `target/test-tasks/reuse` (skipped when the source and the SDK did not change).
/// `None` without python3 (the Python tests say so and pass without running).
fn counter_dir(test: &str) -> Option<&'static Path> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    crate::python::python_tasks(test)?;
    Some(DIR.get_or_init(|| {
        let out = repo_root().join("target/test-tasks/reuse");
        std::fs::create_dir_all(&out).unwrap();
        let sdk = repo_root().join("guest-sdk/python/sprout_task");
        let mut stamp = format!("{COUNTER_PY}\n{COUNTER_TOML}\n");
        let mut files: Vec<_> = std::fs::read_dir(&sdk)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "py"))
        {
            stamp.push_str(&std::fs::read_to_string(f).unwrap());
        }
        let stamp_file = out.join(".counter.stamp");
        let wasm = out.join("counter.wasm");
        if wasm.is_file() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
            return out;
        }
        let src = out.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("counter.py"), COUNTER_PY).unwrap();
        std::fs::write(src.join("counter.toml"), COUNTER_TOML).unwrap();
        let venv = Command::new(repo_root().join("guest-sdk/python/setup_venv.sh"))
            .output()
            .expect("setup_venv.sh");
        let built = Command::new(sprout_bin())
            .args(["build", "counter.py", "-o"])
            .arg(&out)
            .current_dir(&src)
            .env(
                "SPROUT_PYTHON_VENV",
                String::from_utf8_lossy(&venv.stdout).trim(),
            )
            .env("SPROUT_CACHE_DIR", cache_dir())
            .env("SPROUT_LOG", "warn")
            .output()
            .expect("sprout build");
        assert!(
            built.status.success(),
            "sprout build counter.py: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        std::fs::write(&stamp_file, stamp).unwrap();
        out
    }))
}

/// A pool that asks every job to run in reused instances (`jobs_per_instance`), for the
/// outcome suites: the limits a manifest would set, on every task.
struct Reusing {
    inner: Arc<dyn Pool>,
    jobs: u32,
}

#[async_trait::async_trait]
impl Pool for Reusing {
    async fn execute(&self, entry: Arc<TaskEntry>, mut request: RunRequest) -> Execution {
        request.limits.jobs_per_instance = self.jobs;
        self.inner.execute(entry, request).await
    }
    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }
    fn kind(&self) -> PoolKind {
        self.inner.kind()
    }
}

/// A request for `task(args)` allowing `jobs` per instance.
fn request(task: &str, args: Value, jobs: u32) -> RunRequest {
    let mut r = RunRequest::new(task, args.as_array().cloned().unwrap_or_default());
    r.limits.jobs_per_instance = jobs;
    r
}

async fn run(sandbox: &Sandbox, module: &TaskModule, r: RunRequest) -> Execution {
    sandbox.run(module, r).await
}

/// The outcome suite and the job-limits suite pass with every task asking for reuse:
/// the contract is the same, whatever instance a job runs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_suites_pass_with_reuse_on() {
    let sandbox = support::sandbox(64);
    let registry = support::registry(&sandbox).await;
    let inner: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox.clone(), 16));
    let pool: Arc<dyn Pool> = Arc::new(Reusing { inner, jobs: 4 });
    // Twice, so the second round runs in instances the first left idle.
    for _ in 0..2 {
        outcome_suite(pool.clone(), &registry).await;
        job_limits_suite(pool.clone(), &registry).await;
    }
    assert!(sandbox.idle_instances() > 0, "some instances were kept");
}

/// Rust `fib`: fuel is reset per job, never accumulated: every job in a reused instance
/// uses the same fuel, the fuel of a fresh job less instantiation; the instance is
/// dropped after `jobs_per_instance` jobs, and a lower budget still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_used_is_the_jobs_own() {
    let sandbox = support::sandbox(8);
    let fib = sandbox.load_file(&support::task("fib")).await.unwrap();
    let fresh = run(&sandbox, &fib, request("fib", json!([25]), 1)).await;
    assert_eq!(
        fresh.outcome,
        Outcome::Success {
            value: json!(75025)
        }
    );
    assert_eq!(
        sandbox.idle_instances(),
        0,
        "jobs_per_instance = 1 keeps nothing"
    );
    let mut used = Vec::new();
    for _ in 0..7 {
        let e = run(&sandbox, &fib, request("fib", json!([25]), 3)).await;
        assert_eq!(e.outcome, fresh.outcome);
        used.push(e.fuel_used);
    }
    // Jobs 1, 4 and 7 instantiated (3 per instance): exactly a fresh job's fuel. The
    // others reused an instance: all the same, and less by exactly what instantiating
    // costs (the component's start functions, a few hundred units for a Rust guest),
    // which a reused job does not pay. Nothing accumulates across jobs.
    let f = fresh.fuel_used;
    assert!(
        [used[0], used[3], used[6]].iter().all(|&u| u == f),
        "{used:?} vs fresh {f}"
    );
    let reused = used[1];
    assert!(reused < f && f - reused < 10_000, "{used:?} vs fresh {f}");
    assert!(
        [used[2], used[4], used[5]].iter().all(|&u| u == reused),
        "{used:?} vs fresh {f}"
    );
    assert_eq!(sandbox.idle_instances(), 1);
    // A smaller budget applies to a reused instance too.
    let mut r = request("fib", json!([25]), 3);
    r.limits.fuel = fresh.fuel_used / 2;
    let e = run(&sandbox, &fib, r).await;
    assert_eq!(
        e.outcome,
        Outcome::OutOfFuel {
            budget: fresh.fuel_used / 2
        }
    );
    assert_eq!(sandbox.idle_instances(), 0, "out of fuel: dropped");
}

/// Rust `sleep` logs its argument: a reused instance's job sees only its own log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_the_jobs_own() {
    let sandbox = support::sandbox(8);
    let sleep = sandbox.load_file(&support::task("sleep")).await.unwrap();
    let mut previous = None;
    for i in 1..=4 {
        let seconds = i as f64 / 1000.0;
        let e = run(&sandbox, &sleep, request("sleep", json!([seconds]), 10)).await;
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
        let own = format!("sleeping {seconds} s");
        assert!(e.logs.contains(&own), "{}", e.logs);
        assert_eq!(e.logs.matches("sleeping").count(), 1, "{}", e.logs);
        if let Some(previous) = previous {
            assert!(!e.logs.contains(&previous), "{}", e.logs);
        }
        previous = Some(own);
    }
    assert_eq!(sandbox.idle_instances(), 1);
}

/// A trapping job's instance is never kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapped_instance_is_dropped() {
    let sandbox = support::sandbox(8);
    let trap = sandbox.load_file(&support::task("trap")).await.unwrap();
    let echo = sandbox.load_file(&support::task("echo")).await.unwrap();
    let e = run(&sandbox, &echo, request("echo", json!([1]), 5)).await;
    assert!(e.outcome.is_success(), "{:?}", e.outcome);
    assert_eq!(sandbox.idle_instances(), 1);
    let e = run(&sandbox, &trap, request("trap", json!(["boom"]), 5)).await;
    assert!(matches!(e.outcome, Outcome::Trap { .. }), "{:?}", e.outcome);
    assert_eq!(sandbox.idle_instances(), 1, "only echo's");
}

/// Idle instances hold pool slots, but never keep a job from getting one: with 2 slots
/// and 2 idle instances of one file, 2 jobs of another file still run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_give_way_to_jobs() {
    let sandbox = support::sandbox(2);
    let sleep = sandbox.load_file(&support::task("sleep")).await.unwrap();
    let echo = sandbox.load_file(&support::task("echo")).await.unwrap();
    let two = |module: Arc<TaskModule>, task: &'static str, args: Value| {
        let sandbox = sandbox.clone();
        let job = move || {
            let (sandbox, module, args) = (sandbox.clone(), module.clone(), args.clone());
            tokio::spawn(async move { run(&sandbox, &module, request(task, args, 100)).await })
        };
        [job(), job()]
    };
    // Long enough that the two overlap even on a loaded machine.
    for h in two(sleep.clone(), "sleep", json!([1.0])) {
        let e = h.await.unwrap();
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
    }
    assert_eq!(sandbox.idle_instances(), 2);
    for h in two(echo, "echo", json!([0.2])) {
        let e = h.await.unwrap();
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
    }
    // And without reuse too (a WASI command module, a fresh store per job).
    let upper = sandbox
        .load_file(&support::task("wasi_upper"))
        .await
        .unwrap();
    let e = run(
        &sandbox,
        &upper,
        RunRequest::new("wasi_upper", vec![json!("a")]),
    )
    .await;
    assert!(e.outcome.is_success(), "{:?}", e.outcome);
    assert!(sandbox.idle_instances() <= 2);
}

/// Python: the module-level counter goes on across the jobs of one instance (reuse
/// happens), starts again after `jobs_per_instance` (3, from the manifest), and after
/// every bad ending (out of fuel, memory limit, time limit) the next job runs fresh. A
/// raised exception is a clean finish: that instance is kept. Each job's logs (print
/// and `log`) are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_state_persists_within_an_instance_and_restarts() {
    let Some(dir) = counter_dir("python_state_persists_within_an_instance_and_restarts") else {
        return;
    };
    let sandbox = support::sandbox(16);
    let registry = Registry::new();
    let rejected = registry
        .load(&sandbox, &[dir.to_path_buf()], &Limits::default())
        .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox.clone(), 4));
    let entry = registry.lookup("ctr.count").unwrap();
    assert_eq!(entry.limits.jobs_per_instance, 3, "from counter.toml");
    let pool = pool.as_ref();
    let registry = &registry;
    let count = |tag: &str| {
        let tag = tag.to_string();
        async move {
            let e = run_job(pool, registry, "ctr.count", json!([tag]), no()).await;
            let Outcome::Success { value } = &e.outcome else {
                panic!("{tag}: {:?}", e.outcome);
            };
            assert!(e.logs.contains(&format!("logged by {tag}")), "{}", e.logs);
            assert_eq!(e.logs.matches("logged by").count(), 1, "{tag}: {}", e.logs);
            // print() goes to the job's own capture too, and nothing of another job's.
            let printed: Vec<_> = e
                .logs
                .lines()
                .filter(|l| l.contains("printed by"))
                .collect();
            assert_eq!(printed, [format!("printed by {tag}")], "{}", e.logs);
            value.as_u64().unwrap()
        }
    };
    let mut seen = Vec::new();
    for i in 0..7 {
        seen.push(count(&format!("job{i}")).await);
    }
    assert_eq!(seen, [1, 2, 3, 1, 2, 3, 1], "3 jobs per instance");

    // A raised exception: the guest returned, its instance is kept (count goes on).
    let e = run_job(pool, registry, "ctr.fail", json!(["nope"]), no()).await;
    assert!(
        matches!(&e.outcome, Outcome::GuestError { kind, .. } if kind == "ValueError"),
        "{:?}",
        e.outcome
    );
    assert_eq!(count("after-fail").await, 3);

    let bad: [BadEnding; 3] = [
        (
            "ctr.spin",
            json!([]),
            LimitOverrides {
                fuel: Some(300_000_000),
                ..no()
            },
            |o| matches!(o, Outcome::OutOfFuel { .. }),
        ),
        ("ctr.hoard", json!([]), no(), |o| {
            matches!(o, Outcome::MemoryLimit { .. })
        }),
        (
            "ctr.nap",
            json!([30]),
            LimitOverrides {
                time_limit: Some(0.3),
                ..no()
            },
            |o| {
                matches!(
                    o,
                    Outcome::TimeLimit {
                        kind: TimeLimitKind::Hard,
                        ..
                    }
                )
            },
        ),
    ];
    for (task, args, limits, expected) in bad {
        assert_eq!(count(&format!("before {task}")).await, 1);
        assert_eq!(count(&format!("before {task} 2")).await, 2);
        let e = run_job(pool, registry, task, args, limits).await;
        assert!(expected(&e.outcome), "{task}: {:?}", e.outcome);
        // The instance with count 2 is gone: the next job starts afresh.
        assert_eq!(count(&format!("after {task}")).await, 1, "{task}");
        // Finish the instance (3 jobs), so the next round starts fresh.
        count(&format!("after {task} 2")).await;
        count(&format!("after {task} 3")).await;
    }
}

/// A task, its arguments, the job's limits, and the outcome expected.
type BadEnding = (&'static str, Value, LimitOverrides, fn(&Outcome) -> bool);

fn no() -> LimitOverrides {
    LimitOverrides::default()
}

/// The real worker with `-c 1`, on the async pool and in a prefork child (which gets
/// the limits in each job's request), runs Python `count` jobs from the manifest's
/// reuse setting: the results count up to 3 and start again.
#[test]
fn python_reuse_through_the_worker() {
    let Some(dir) = counter_dir("python_reuse_through_the_worker") else {
        return;
    };
    for pool in [&["-c", "1"][..], &["-P", "prefork", "-c", "1"]] {
        let work = Workdir::new();
        let mut worker = work.worker_with_tasks(dir, pool);
        let mut seen = Vec::new();
        for i in 0..5 {
            let tag = format!("[\"w{i}\"]");
            let out = work.run(&["send", "ctr.count", &tag, "--wait", "--timeout", "60"]);
            assert!(out.status.success(), "{pool:?}: {}", support::stderr(&out));
            seen.push(support::stdout(&out));
        }
        assert_eq!(seen, ["1", "2", "3", "1", "2"], "{pool:?}");
        assert!(worker.is_running(), "{pool:?}");
    }
}

/// `[limits] jobs_per_instance` out of range is refused where the manifest is read,
/// naming the key and the range; `sprout tasks` shows a valid one.
#[test]
fn manifest_values_are_checked_and_shown() {
    let work = Workdir::new();
    let tasks = work.path("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::copy(support::task("echo"), tasks.join("echo.wasm")).unwrap();
    for (value, want) in [
        (
            "0",
            "[limits] jobs_per_instance: 0 is out of range: expected 1",
        ),
        (
            "100001",
            "[limits] jobs_per_instance: 100001 is out of range",
        ),
        ("-5", "jobs_per_instance"),
    ] {
        std::fs::write(
            tasks.join("echo.toml"),
            format!("[limits]\njobs_per_instance = {value}\n"),
        )
        .unwrap();
        let out = work.run(&["tasks", "tasks"]);
        assert_eq!(out.status.code(), Some(1), "{value}");
        let err = support::stderr(&out);
        assert!(
            err.contains("echo.toml") && err.contains(want),
            "{value}: {err}"
        );
    }
    std::fs::write(
        tasks.join("echo.toml"),
        "[limits]\njobs_per_instance = 50\n",
    )
    .unwrap();
    let out = work.run(&["tasks", "tasks"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(
        support::stdout(&out).contains("jobs per instance: 50"),
        "{}",
        support::stdout(&out)
    );
}
