//! Interop with real Python Celery over Redis (docs/PROTOCOL.md), both directions:
//!
//! - a real Celery client (`tests/celery/client_check.py`, the team's `shared/celery`
//!   one) sends tasks, chains and failing tasks to the real `sprout worker`, and checks
//!   what `AsyncResult.get()` returns or raises;
//! - jobs published by `sprout send --broker redis://…` are run by a real Celery worker
//!   (solo pool, `tests/python/celery_tasks.py`), and `sprout send --wait` reads the
//!   results that worker stored.
//!
//! Needs Redis at 127.0.0.1:6379 (skipped with a note otherwise) and Python 3 with
//! PyPI access the first time (`tests/python/setup_venv.sh` builds
//! `target/celery-venv`). Python's Celery takes no key prefix from a URL, so each test
//! borrows a whole database of its own ([`redis_db_test`]), emptied when the test ends
//! (also when it fails), after its worker processes are gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{WorkerProcess, cache_dir, redis_db_test, repo_root, sprout_bin, tasks_dir};

/// The venv with `celery[redis]`, created once per test run.
pub(crate) fn venv() -> &'static PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let script = repo_root().join("tests/python/setup_venv.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .expect("run setup_venv.sh");
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// `client_check.py` (vendored from `shared/celery`).
pub(crate) fn client_check() -> PathBuf {
    crate::support::celery_dir().join("client_check.py")
}

pub(crate) fn queue(what: &str) -> String {
    format!("interop-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Where [`log_file`] puts the log named `name`.
pub(crate) fn log_path(name: &str) -> PathBuf {
    repo_root()
        .join("target/celery-interop-logs")
        .join(format!("{name}.log"))
}

/// A log file for a worker process of this test run (kept for reading after a failure).
pub(crate) fn log_file(name: &str) -> (PathBuf, Stdio) {
    let path = log_path(name);
    std::fs::create_dir_all(path.parent().expect("a log dir")).expect("log dir");
    let file = std::fs::File::create(&path).expect("log file");
    (path, Stdio::from(file))
}

/// `sprout worker` on Redis, consuming `queue` (its log goes to a file under
/// `target/celery-interop-logs/`, see [`log_file`]).
pub(crate) fn sprout_worker(broker: &str, queue: &str) -> WorkerProcess {
    sprout_worker_with(broker, queue, &[])
}

/// [`sprout_worker`] with more arguments (`--result-backend …`).
pub(crate) fn sprout_worker_with(broker: &str, queue: &str, more: &[&str]) -> WorkerProcess {
    sprout_worker_on(broker, queue, tasks_dir(), more)
}

/// [`sprout_worker_with`] on the task files in `tasks`.
pub(crate) fn sprout_worker_on(
    broker: &str,
    queue: &str,
    tasks: &Path,
    more: &[&str],
) -> WorkerProcess {
    let (log, stderr) = log_file(queue);
    eprintln!("sprout worker log: {}", log.display());
    let tasks = tasks.display().to_string();
    let child = Command::new(sprout_bin())
        .args([
            "worker",
            "--broker",
            broker,
            "--tasks",
            &tasks,
            "-Q",
            queue,
            "-c",
            "50",
            "--unknown-task-grace",
            "0",
        ])
        .args(more)
        .env("SPROUT_CACHE_DIR", cache_dir())
        .env("SPROUT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sprout worker");
    WorkerProcess::new(child)
}

/// Runs client_check.py with `args`; asserts it exits 0 reporting `n passed, 0 failed`.
pub(crate) fn check(broker: &str, queue: &str, n: usize, args: &[&str]) {
    let out: Output = Command::new(venv().join("bin/python"))
        .arg(client_check())
        .args([
            "--broker",
            broker,
            "--queue",
            queue,
            "-n",
            &n.to_string(),
            "--timeout",
            "60",
        ])
        .args(args)
        .output()
        .expect("run client_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("{n} passed, 0 failed");
    assert!(
        out.status.success() && stdout.lines().any(|l| l.trim() == want),
        "client_check {args:?}: expected {want:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// A real Celery client against the real Sprout worker: sums, echo, failures by
/// exception class, chains (and a chain that fails in the middle), groups, link
/// callbacks, chords (and a chord whose part fails), unknown tasks.
#[test]
fn celery_client_against_sprout_worker() {
    // Declared first, so it is dropped last: after the worker is killed.
    let Some(redis) = redis_db_test("celery_client_against_sprout_worker") else {
        return;
    };
    venv();
    let broker = redis.sprout_url();
    let q = queue("client");
    let _worker = sprout_worker(&broker, &q);

    check(
        &broker,
        &q,
        20,
        &["--task", "add", "--args", "[2, 3]", "--vary"],
    );
    check(
        &broker,
        &q,
        5,
        &["--task", "echo", "--args", r#"[{"a": [1, "é", null]}]"#],
    );
    check(
        &broker,
        &q,
        3,
        &[
            "--task",
            "fail",
            "--args",
            r#"["boom"]"#,
            "--expect-error",
            "ValueError",
        ],
    );
    check(
        &broker,
        &q,
        3,
        &["--chain", "add:[1, 2]", "add:[3]", "mul:[2]"],
    );
    check(
        &broker,
        &q,
        2,
        &[
            "--chain",
            "add:[1, 1]",
            r#"fail!:["mid"]"#,
            "add:[5]",
            "--expect-error",
            "ValueError",
        ],
    );
    // Groups, link callbacks (as children), chords and a chord whose part fails.
    let out = Command::new(venv().join("bin/python"))
        .arg(repo_root().join("tests/python/canvas_check.py"))
        .args([broker.as_str(), q.as_str()])
        .output()
        .expect("run canvas_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l.trim() == "4 passed, 0 failed"),
        "canvas_check.py:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown task raises NotRegistered on the client.
    check(
        &broker,
        &q,
        1,
        &["--task", "no_such_task", "--expect-error", "NotRegistered"],
    );
}

/// A real Celery worker (solo pool) in the venv, consuming `queue` on `broker`.
pub(crate) fn python_worker(broker: &str, queue: &str) -> WorkerProcess {
    python_worker_with(broker, queue, &[])
}

/// [`python_worker`] with more environment (`SPROUT_TEST_RESULTS`, the result backend).
pub(crate) fn python_worker_with(broker: &str, queue: &str, env: &[(&str, &str)]) -> WorkerProcess {
    let (log, stderr) = log_file(&format!("py-{queue}"));
    eprintln!("celery worker log: {}", log.display());
    let child = Command::new(venv().join("bin/celery"))
        .args([
            "-A",
            "celery_tasks",
            "worker",
            "-P",
            "solo",
            "-c",
            "1",
            "-Q",
            queue,
        ])
        .args([
            "-n",
            &format!("py-{queue}@%h"),
            "--without-gossip",
            "--without-mingle",
        ])
        .args(["--without-heartbeat", "--loglevel", "WARNING"])
        .current_dir(repo_root().join("tests/python"))
        .env("SPROUT_TEST_BROKER", broker)
        .env("SPROUT_TEST_QUEUE", queue)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn celery worker");
    WorkerProcess::new(child)
}

pub(crate) fn send(broker: &str, queue: &str, args: &[&str]) -> Output {
    Command::new(sprout_bin())
        .arg("send")
        .args(args)
        .args([
            "--broker",
            broker,
            "--queue",
            queue,
            "--wait",
            "--timeout",
            "60",
        ])
        .env("SPROUT_LOG", "warn")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run sprout send")
}

/// What `sprout send --broker redis://…` publishes, a real Celery worker runs; the
/// results it stores are read back by `sprout send --wait`.
#[test]
fn sprout_send_to_celery_worker() {
    // Declared first, so it is dropped last: after the worker is killed.
    let Some(redis) = redis_db_test("sprout_send_to_celery_worker") else {
        return;
    };
    venv();
    let broker = redis.sprout_url();
    let q = queue("send");
    let _worker = python_worker(&broker, &q);

    let out = send(&broker, &q, &["add", "[2, 3]"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "5");

    let out = send(&broker, &q, &["echo", r#"[{"k": [1, "é"]}]"#]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"k":[1,"é"]}"#
    );

    // A countdown is honoured by the Python worker.
    let start = std::time::Instant::now();
    let out = send(&broker, &q, &["add", "[1, 1]", "--countdown", "1.5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "ran before its eta"
    );

    // Failures and revocations come back with Celery's exception names.
    let out = send(&broker, &q, &["fail", r#"["nope"]"#]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FAILURE") && stderr.contains("ValueError: nope"),
        "{stderr}"
    );
    // Expired before its eta: deterministic, unlike a 1 ms expiry a fast worker can beat.
    let out = send(
        &broker,
        &q,
        &["add", "[1, 1]", "--countdown", "1", "--expires", "0.2"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("REVOKED") && stderr.contains("TaskRevokedError"),
        "{stderr}"
    );
}
