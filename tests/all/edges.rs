//! Every value from outside is checked at its edge (DESIGN.md "Layers"): a time value out
//! of range — infinite, negative, NaN or more than `model::time::MAX_SECONDS` (100
//! years) — is a dead letter with the reason (messages), a rejected task file naming the
//! file and the key (manifests), a usage error with exit code 2 (CLI flags and broker
//! URLs), or a documented clamp (a guest's retry countdown); never a panic, never a job
//! left reserved. Each test goes through the real edge: a real Celery client on Redis,
//! a real SQLite file, real manifest files, the real `sprout` binary, a real guest.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use sprout::backend::ResultBackend;
use sprout::backend::redis::RedisBackend;
use sprout::broker::Broker;
use sprout::broker::redis::RedisBroker;
use sprout::model::time::MAX_SECONDS;
use sprout::model::{CeleryContext, Job, ResultRecord, State};

use crate::celery_redis::{log_path, sprout_worker, venv};
use crate::support::{self, SqliteStore, Workdir, repo_root, stderr, stdout};
use crate::support::{REDIS_ADDR, raw, redis_test};

fn job(task: &str, args: Value) -> Job {
    Job::new(
        task,
        args.as_array().cloned().unwrap_or_default(),
        Default::default(),
    )
}

/// Polls `backend` until `id` has a result in one of `states`, for up to `timeout`.
async fn result_in(
    backend: &dyn ResultBackend,
    id: &str,
    states: &[State],
    timeout: Duration,
) -> ResultRecord {
    let deadline = Instant::now() + timeout;
    loop {
        let record = backend.get(id).await.expect("read the result");
        match record {
            Some(r) if states.contains(&r.state) => return r,
            other => assert!(
                Instant::now() < deadline,
                "{id}: no {states:?} within {timeout:?}, found {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts `record` is a FAILURE of kind `DecodeError` whose message has every one of
/// `needles`.
fn assert_decode_failure(case: &str, record: &ResultRecord, needles: &[&str]) {
    assert_eq!(record.state, State::Failure, "{case}: {record:?}");
    let error = record.error.as_ref().expect("a failure has an error");
    assert_eq!(error.kind, "DecodeError", "{case}: {error:?}");
    for needle in needles {
        assert!(
            error.message.contains(needle),
            "{case}: {:?} lacks {needle:?}",
            error.message
        );
    }
}

/// (a) Real Celery messages on Redis, sent by the real Celery client
/// (`tests/python/edges_send.py`) to the real `sprout worker`: a `timelimit` of `1e300`
/// or `-1`, an eta or expiry past 100 years, and link, errback and chain signatures with
/// a `countdown` of `1e15`, a `time_limit` of `1e300` or an `expires` of `inf` each end
/// as a FAILURE (`DecodeError`, with the reason) and a dead letter within seconds; an
/// envelope with `Infinity` in a header (no JSON parser reads it) is a dead letter; a
/// negative `expires` is REVOKED (Celery's meaning: already expired). Nothing stays
/// reserved, the worker logs no panic, and the job sent after them succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_messages_with_out_of_range_times_end_within_seconds() {
    let Some(opts) = redis_test("celery_messages_with_out_of_range_times_end_within_seconds")
    else {
        return;
    };
    let python = venv().join("bin/python");
    let queue = format!("edges-{}", uuid::Uuid::new_v4().simple());
    let base = format!("redis://{REDIS_ADDR}/9");
    let url = format!("{base}?global_keyprefix={}", opts.key_prefix);
    let _worker = sprout_worker(&url, &queue);

    let out = Command::new(python)
        .arg(repo_root().join("tests/python/edges_send.py"))
        .args([&base, &opts.key_prefix, &queue])
        .output()
        .expect("run edges_send.py");
    assert!(out.status.success(), "edges_send.py: {}", stderr(&out));
    let ids: HashMap<String, String> =
        serde_json::from_slice(&out.stdout).expect("edges_send.py prints the ids as JSON");
    let sent = Instant::now();

    let backend = RedisBackend::connect(opts.clone()).await.expect("backend");
    // The worker keeps serving: the job sent after all the others succeeds.
    let ok = result_in(
        &backend,
        &ids["ok"],
        &[State::Success],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(ok.result, Some(json!(5)));

    let failures: &[(&str, &[&str])] = &[
        (
            "time_limit_huge",
            &["`timelimit`", "1e300 s is more than the maximum"],
        ),
        (
            "soft_time_limit_negative",
            &["`timelimit`", "-1.0 s is negative"],
        ),
        (
            "countdown_huge",
            &["bad `eta` header", "(100 years) from now"],
        ),
        (
            "expires_huge",
            &["bad `expires` header", "(100 years) from now"],
        ),
        (
            "link_countdown_huge",
            &[
                "embed.callbacks",
                "echo: `countdown` option: 1000000000000000.0 s is more than",
            ],
        ),
        (
            "link_time_limit_huge",
            &["embed.callbacks", "`time_limit` option: 1e300 s"],
        ),
        ("link_error_expires_inf", &["body is not JSON"]),
        (
            "chain_countdown_huge",
            &["embed.chain", "`countdown` option"],
        ),
    ];
    for (case, needles) in failures {
        let record = result_in(
            &backend,
            &ids[*case],
            &[State::Failure],
            Duration::from_secs(10),
        )
        .await;
        assert_decode_failure(case, &record, needles);
    }
    let revoked = result_in(
        &backend,
        &ids["expires_negative"],
        &[State::Revoked],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(revoked.error.unwrap().kind, "TaskRevokedError");
    assert!(
        sent.elapsed() < Duration::from_secs(60),
        "took {:?}",
        sent.elapsed()
    );

    // Dead letters: every failure above, plus the envelope no one can read (no id).
    let broker = RedisBroker::connect(opts.clone()).await.expect("broker");
    let dead = support::dead_letters_at_least(&broker, failures.len() + 1).await;
    for (case, _) in failures {
        assert!(
            dead.iter()
                .any(|d| d.id.as_deref() == Some(ids[*case].as_str())),
            "{case} is not a dead letter: {dead:?}"
        );
    }
    assert!(
        dead.iter()
            .any(|d| d.id.is_none() && d.reason.starts_with("not a kombu JSON envelope")),
        "the Infinity envelope is not a dead letter: {dead:?}"
    );
    assert_eq!(dead.len(), failures.len() + 1, "{dead:?}");

    // Nothing stays reserved, nothing waits.
    let mut conn = raw(&opts).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (unacked, index, waiting): (i64, i64, i64) = redis::pipe()
            .hlen(opts.key("unacked"))
            .zcard(opts.key("unacked_index"))
            .llen(opts.key(&queue))
            .query_async(&mut conn)
            .await
            .unwrap();
        if (unacked, index, waiting) == (0, 0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left: {unacked} unacked, {index} in unacked_index, {waiting} queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(log_path(&queue)).unwrap_or_default();
    assert!(!log.contains("panic"), "the worker panicked:\n{log}");
}

/// (b) Jobs stored in a real SQLite file with a time value out of range — a `time_limit`
/// of `1e300`, a negative `soft_time_limit`, a link signature with a `countdown` of
/// `1e15` — are dead letters with the reason and a FAILURE (`DecodeError`), not a panic
/// once they run; nothing stays leased, and the next job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_jobs_with_out_of_range_times_are_dead_letters() {
    let dir = Workdir::new();
    let store = SqliteStore::open(dir.path("sprout.db")).await.unwrap();
    let mut huge = job("add", json!([1, 2]));
    huge.limits.time_limit = Some(1e300);
    let mut negative = job("add", json!([1, 2]));
    negative.limits.soft_time_limit = Some(-1.0);
    let mut linked = job("add", json!([1, 2]));
    linked.celery = Some(CeleryContext {
        embed: json!({"callbacks": [{"task": "echo", "options": {"countdown": 1e15}}]}),
        ..CeleryContext::default()
    });
    let ok = job("add", json!([2, 3]));
    store
        .publish(&[huge.clone(), negative.clone(), linked.clone(), ok.clone()])
        .await
        .unwrap();
    let mut worker = dir.worker(&[]);

    let done = result_in(&store, &ok.id, &[State::Success], Duration::from_secs(60)).await;
    assert_eq!(done.result, Some(json!(5)));
    let cases: [(&str, &Job, &[&str]); 3] = [
        (
            "time_limit",
            &huge,
            &["`time_limit`: 1e300 s is more than the maximum"],
        ),
        (
            "soft_time_limit",
            &negative,
            &["`soft_time_limit`: -1.0 s is negative"],
        ),
        (
            "link countdown",
            &linked,
            &["embed.callbacks", "echo: `countdown` option"],
        ),
    ];
    for (case, job, needles) in &cases {
        let record = result_in(&store, &job.id, &[State::Failure], Duration::from_secs(10)).await;
        assert_decode_failure(case, &record, needles);
    }
    let dead = support::dead_letters_at_least(&store, cases.len()).await;
    for (case, job, needles) in cases {
        let letter = dead
            .iter()
            .find(|d| d.id.as_deref() == Some(job.id.as_str()));
        assert!(
            letter.is_some_and(|d| d.reason.contains(needles[0])),
            "{case}: {dead:?}"
        );
    }
    support::assert_nothing_left_behind(&store).await;
    worker.signal(libc::SIGTERM);
    let (_, log) = worker.wait(Duration::from_secs(30));
    assert!(!log.contains("panic"), "{log}");
    // Every job has ended: the warm shutdown waits for none.
    assert!(!log.contains("running job(s)"), "{log}");
}

/// A task directory with `math` as it is and `echo`, `fib` and `fail` beside manifests
/// whose seconds are out of range.
fn tasks_with_bad_manifests(dir: &Workdir) -> std::path::PathBuf {
    let tasks = dir.path("tasks");
    std::fs::create_dir(&tasks).unwrap();
    for (name, manifest) in [
        ("math", None),
        ("echo", Some("[limits]\ntime_limit = inf\n")),
        ("fib", Some("[retry]\nbackoff = 1e300\n")),
        ("fail", Some("[capabilities]\nhttp_timeout = 1e300\n")),
    ] {
        std::fs::copy(support::task(name), tasks.join(format!("{name}.wasm"))).unwrap();
        if let Some(text) = manifest {
            std::fs::write(tasks.join(format!("{name}.toml")), text).unwrap();
        }
    }
    tasks
}

/// The rejection each bad manifest of [`tasks_with_bad_manifests`] must report.
const BAD_MANIFESTS: [(&str, &str); 3] = [
    (
        "echo",
        "[limits] time_limit: inf s is not a finite number of seconds",
    ),
    ("fib", "[retry] backoff: 1e300 s is more than the maximum"),
    (
        "fail",
        "[capabilities] http_timeout: 1e300 s is more than the maximum",
    ),
];

/// (c) Real manifest files with `time_limit = inf`, `backoff = 1e300` and `http_timeout =
/// 1e300`: `sprout tasks` reports each rejected file with the manifest and the key and
/// exits 1; `sprout run` exits 3 with the same; a worker with them beside a good file
/// logs the rejections and keeps serving the good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_with_out_of_range_seconds_are_rejected_naming_file_and_key() {
    let dir = Workdir::new();
    let tasks = tasks_with_bad_manifests(&dir);
    let manifest = |name: &str| tasks.join(format!("{name}.toml")).display().to_string();

    let out = dir.run(&["tasks", &tasks.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("add"), "{}", stdout(&out));
    for (name, reason) in BAD_MANIFESTS {
        let want = format!("{}: {reason}", manifest(name));
        assert!(stderr(&out).contains(&want), "{want}\n{}", stderr(&out));
    }
    for (name, reason) in BAD_MANIFESTS {
        let file = tasks.join(format!("{name}.wasm")).display().to_string();
        let out = dir.run(&["run", &file, name, "[1]"]);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        let want = format!("{}: {reason}", manifest(name));
        assert!(stderr(&out).contains(&want), "{want}\n{}", stderr(&out));
    }

    let store = SqliteStore::open(dir.path("sprout.db")).await.unwrap();
    let add = job("add", json!([2, 3]));
    let echo = job("echo", json!(["x"]));
    store.publish(&[echo.clone(), add.clone()]).await.unwrap();
    // The rejected task is not waited for (the deploy grace is for files on their way).
    let mut worker = dir.worker_with_tasks(&tasks, &["--unknown-task-grace", "0"]);
    let done = result_in(&store, &add.id, &[State::Success], Duration::from_secs(60)).await;
    assert_eq!(done.result, Some(json!(5)));
    let rejected = result_in(&store, &echo.id, &[State::Failure], Duration::from_secs(10)).await;
    assert_eq!(rejected.error.unwrap().kind, "NotRegistered");
    worker.signal(libc::SIGTERM);
    let (_, log) = worker.wait(Duration::from_secs(30));
    for (name, reason) in BAD_MANIFESTS {
        let want = format!("{}: {reason}", manifest(name));
        assert!(log.contains(&want), "{want}\n{log}");
    }
    assert!(!log.contains("panic"), "{log}");
}

/// Runs `sprout ARGS`; asserts exit code 2 and that stderr has every one of `needles`.
fn assert_usage_error(dir: &Workdir, args: &[&str], needles: &[&str]) {
    let out = dir.run(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    for needle in needles {
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: no {needle:?} in\n{}",
            stderr(&out)
        );
    }
}

/// (d) The real binary: every duration flag and environment variable, and every
/// duration key of a Redis URL, out of range is a usage error (exit code 2) naming the
/// flag or the key.
#[test]
fn cli_flags_and_url_keys_out_of_range_are_usage_errors() {
    let dir = Workdir::new();
    let math = support::task("math").display().to_string();
    let tasks = support::tasks_dir().display().to_string();
    let more = "is more than the maximum of 3155760000 seconds";
    for (args, needles) in [
        (
            vec!["send", "add", "[1, 2]", "--countdown", "1e13"],
            vec!["--countdown", more],
        ),
        (
            vec!["send", "add", "--countdown=-1"],
            vec!["--countdown", "is negative"],
        ),
        (
            vec!["send", "add", "--countdown", "nan"],
            vec!["--countdown", "not a finite"],
        ),
        (
            vec!["send", "add", "--expires", "inf"],
            vec!["--expires", "not a finite"],
        ),
        (
            vec!["send", "add", "--time-limit", "1e300"],
            vec!["--time-limit", more],
        ),
        (
            vec!["send", "add", "--eta", "9999-01-01T00:00:00Z"],
            vec!["--eta", "from now"],
        ),
        (
            vec!["send", "add", "--wait", "--timeout", "inf"],
            vec!["--timeout"],
        ),
        (
            vec!["result", "x", "--wait", "--timeout", "1e300"],
            vec!["--timeout", more],
        ),
        (
            vec!["worker", "--time-limit", "inf"],
            vec!["--time-limit", "not a finite"],
        ),
        (
            vec!["worker", "--soft-time-limit", "1e300"],
            vec!["--soft-time-limit", more],
        ),
        (vec!["worker", "--lease", "1e300"], vec!["--lease", more]),
        (vec!["worker", "--grace=-1"], vec!["--grace", "is negative"]),
        (
            vec!["worker", "--result-expires", "1e13"],
            vec!["--result-expires", more],
        ),
        (
            vec!["run", &math, "add", "--time-limit", "inf"],
            vec!["--time-limit"],
        ),
        (
            vec!["tasks", &tasks, "--soft-time-limit", "nan"],
            vec!["--soft-time-limit"],
        ),
        // The flags of the deploy grace, liveness and the bounded compile.
        (
            vec!["worker", "--unknown-task-grace", "inf"],
            vec!["--unknown-task-grace", "not a finite"],
        ),
        (
            vec!["worker", "--heartbeat-interval", "nan"],
            vec!["--heartbeat-interval", "not a finite"],
        ),
        (
            vec!["worker", "--worker-dead-after", "1e300"],
            vec!["--worker-dead-after", more],
        ),
        (
            vec!["worker", "--compile-timeout=-1"],
            vec!["--compile-timeout", "is negative"],
        ),
        (
            vec!["worker", "--compile-memory", "inf"],
            vec!["--compile-memory"],
        ),
        (
            vec!["run", &math, "add", "--compile-memory", "1"],
            vec!["--compile-memory"],
        ),
        (
            vec!["worker", "--module-caps", "functions=-1"],
            vec!["--module-caps"],
        ),
    ] {
        assert_usage_error(&dir, &args, &needles);
    }
    // The environment variables go through the same parser.
    let out = dir
        .sprout(&["tasks", &tasks])
        .env("SPROUT_TIME_LIMIT", "inf")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--time-limit"), "{}", stderr(&out));

    // Broker URL keys: checked before anything connects (no Redis needed).
    let redis = format!("redis://{REDIS_ADDR}/15");
    for (command, key, value, why) in [
        ("send", "visibility_timeout", "1e300", more),
        ("status", "sweep_interval", "inf", "not a finite number"),
        ("worker", "result_expires", "-1", "is negative"),
    ] {
        let url = format!("{redis}?{key}={value}");
        let mut args = vec![command, "--broker", &url];
        if command == "send" {
            args.extend(["add", "[1, 2]"]);
        }
        if command == "worker" {
            args.extend(["--tasks", &tasks]);
        }
        assert_usage_error(&dir, &args, &[&format!("`{key}={value}`"), why]);
    }
    // URLs the client underneath cannot take, and options a SQLite URL does not have:
    // the URL's fault (exit code 2), found before anything connects or any file is
    // made (not a file named `q.db?mode=ro`).
    let sqlite = dir.path("q.db");
    let with_options = format!("sqlite://{}?mode=ro", sqlite.display());
    for (url, why) in [
        ("redis://[::1", "invalid broker URL"),
        ("rediss://127.0.0.1:6379/0", "TLS"),
        (with_options.as_str(), "takes no options"),
        (
            "amqp://guest:guest@127.0.0.1:5672//?frame_max=1",
            "expected 4096 to 131072 bytes",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672//?frame_max=0",
            "expected 4096 to 131072 bytes",
        ),
    ] {
        assert_usage_error(&dir, &["status", "--broker", url], &[why]);
    }
    assert!(
        std::fs::read_dir(sqlite.parent().unwrap())
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().contains('?')),
        "a file was made from the URL's options"
    );
    // And as a result backend URL.
    let url = format!("{redis}?visibility_timeout=inf");
    assert_usage_error(
        &dir,
        &["send", "add", "--result-backend", &url],
        &["invalid result backend URL", "`visibility_timeout=inf`"],
    );
}

/// The `visible_at` (ms) of the queued row of `job_id` in a real SQLite broker file.
fn visible_at_ms(db: &Path, job_id: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT visible_at FROM jobs WHERE job_id = ?1",
        [job_id],
        |row| row.get(0),
    )
    .ok()
}

/// (e) A real guest asks to be retried with a countdown of `u64::MAX` milliseconds: the
/// worker clamps it to 100 years (the documented maximum) — the job is RETRY and
/// scheduled 100 years from now, never an overflow — and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_retry_countdown_is_clamped_to_the_maximum() {
    let dir = Workdir::new();
    let store = SqliteStore::open(dir.path("sprout.db")).await.unwrap();
    let forever = job("flaky", json!([1, u64::MAX]));
    store.publish(std::slice::from_ref(&forever)).await.unwrap();
    let mut worker = dir.worker(&[]);

    let retry = result_in(
        &store,
        &forever.id,
        &[State::Retry],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(retry.error.unwrap().kind, "Retry");
    let max_ms = (MAX_SECONDS * 1000) as i64;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The RETRY result is stored before the broker reschedules the message: until then
    // the row still shows its lease (seconds ahead), so wait for a date past a year.
    let year_ms = 365 * 24 * 3600 * 1000;
    let eta = loop {
        if let Some(at) = visible_at_ms(store.path(), &forever.id)
            .filter(|&at| at - Utc::now().timestamp_millis() > year_ms)
        {
            break at;
        }
        assert!(Instant::now() < deadline, "the retry was not scheduled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ahead = eta - Utc::now().timestamp_millis();
    assert!(
        (max_ms - 60_000..=max_ms).contains(&ahead),
        "the retry is {ahead} ms ahead, not the clamped {max_ms} ms"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.iter().map(|q| q.scheduled).sum::<u64>(),
        1,
        "{stats:?}"
    );

    let ok = job("add", json!([2, 3]));
    store.publish(std::slice::from_ref(&ok)).await.unwrap();
    let done = result_in(&store, &ok.id, &[State::Success], Duration::from_secs(30)).await;
    assert_eq!(done.result, Some(json!(5)));
    worker.signal(libc::SIGTERM);
    let (_, log) = worker.wait(Duration::from_secs(30));
    assert!(!log.contains("panic"), "{log}");
}

/// The real binary: every count and size flag out of range is a usage error (exit code
/// 2) naming the flag and what is accepted, before anything starts. Each of these once
/// got through: a huge `--prefetch-multiplier` or `--child-concurrency` panicked in a
/// semaphore, a huge prefork `-c` aborted on its allocation, and a `--memory` of 2^44
/// MiB or more wrapped round to a limit of 0 bytes.
#[test]
fn cli_counts_and_sizes_out_of_range_are_usage_errors() {
    let dir = Workdir::new();
    let math = support::task("math").display().to_string();
    let tasks = support::tasks_dir().display().to_string();
    let huge = u64::MAX.to_string();
    let wraps = (1u64 << 44).to_string(); // MiB: 2^64 bytes
    let sizes = "expected a whole number of MiB from 0 to 17592186044415";
    let long_queue = "q".repeat(256);
    for (args, needles) in [
        (
            vec!["worker", "--prefetch-multiplier", "0"],
            vec!["--prefetch-multiplier", "from 1 to 10000"],
        ),
        (
            vec!["worker", "--prefetch-multiplier", &huge],
            vec!["--prefetch-multiplier", "from 1 to 10000"],
        ),
        (
            vec!["worker", "-P", "prefork", "--child-concurrency", &huge],
            vec!["--child-concurrency", "from 1 to 100000"],
        ),
        (
            vec!["worker", "--pool", "cpu=prefork:1:child-concurrency=100001"],
            vec!["child-concurrency must be from 1 to 100000, not 100001"],
        ),
        (
            vec!["worker", "-P", "prefork", "-c", &huge],
            vec!["child processes", "at most 4096"],
        ),
        (
            vec!["worker", "--pool", "cpu=prefork:4097"],
            vec!["pool cpu: 4097 child processes", "at most 4096"],
        ),
        (vec!["worker", "--memory", &wraps], vec!["--memory", sizes]),
        (
            vec!["run", &math, "add", "--memory", &huge],
            vec!["--memory", sizes],
        ),
        (
            vec!["tasks", &tasks, "--memory", &wraps],
            vec!["--memory", sizes],
        ),
        (
            vec!["send", "add", "--memory", &wraps],
            vec!["--memory", sizes],
        ),
        // A heartbeat is a write to the broker: not more often than every 10 ms.
        (
            vec!["worker", "--heartbeat-interval", "1e-9"],
            vec!["--heartbeat-interval", "must be at least 10ms"],
        ),
        // Queue names: one rule for every flag that takes one.
        (
            vec!["worker", "-Q", "a,,b"],
            vec!["--queues", "cannot be empty"],
        ),
        (
            vec!["send", "add", "-q", ""],
            vec!["--queue", "cannot be empty"],
        ),
        (
            vec!["purge", "-f", "-Q", &long_queue],
            vec!["--queues", "at most 255"],
        ),
        (
            vec!["send", "add", "-q", "a\tb"],
            vec!["--queue", "control character"],
        ),
        (
            vec!["worker", "--pool", "io=async:2:ok,a\u{7f}b"],
            vec!["pool", "control character"],
        ),
    ] {
        assert_usage_error(&dir, &args, &needles);
    }
}

/// The real binary: a concurrency within the flags' bounds but more than this machine
/// can reserve address space for (every slot reserves its guests' memories up front,
/// ~8 GiB; 100,000 slots need ~800 TiB, more than a 47-bit address space holds) is a
/// usage error naming the flag and the most that fits: for the async pool's `-c` and
/// for a prefork child's `--child-concurrency` (checked in the parent, before any child
/// starts, not as a child that dies while starting).
#[test]
fn a_concurrency_the_machine_cannot_reserve_is_a_usage_error_naming_what_fits() {
    let dir = Workdir::new();
    let tasks = support::tasks_dir().display().to_string();
    let db = format!("sqlite://{}", dir.path("q.db").display());
    for (args, flag) in [
        (vec!["-c", "100000"], "-c/--concurrency 100000"),
        (
            vec!["-P", "prefork", "-c", "1", "--child-concurrency", "100000"],
            "--child-concurrency 100000",
        ),
    ] {
        let mut all = vec!["worker", "--tasks", &tasks, "--broker", &db];
        all.extend(args);
        assert_usage_error(
            &dir,
            &all,
            &[
                &format!("{flag} is more than this machine can reserve"),
                "slots fit here",
            ],
        );
    }
}

/// The library edge: a `WorkerConfig` asking for more reservations than a semaphore
/// holds runs (at [`sprout::worker::MAX_RESERVATIONS`]) instead of panicking, and a
/// prefork pool over its bounds is refused before any child starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_counts_past_their_bounds_are_clamped_or_refused() {
    use std::sync::Arc;

    use sprout::pool::prefork::{MAX_CHILD_CONCURRENCY, MAX_PROCESSES};
    use sprout::pool::{AsyncPool, PreforkConfig, PreforkError, PreforkPool};
    use sprout::worker::{Shutdown, Worker, WorkerConfig};

    let dir = Workdir::new();
    let store = SqliteStore::open(dir.path("sprout.db")).await.unwrap();
    let add = job("add", json!([20, 22]));
    store.publish(std::slice::from_ref(&add)).await.unwrap();
    let sandbox = support::sandbox(4);
    let config = WorkerConfig {
        hostname: "edges-test".into(),
        queues: vec!["celery".into()],
        reservations: usize::MAX,
        lease: Duration::from_secs(5),
        grace: Duration::from_secs(5),
        track_started: false,
        max_jobs: Some(1),
        unknown_task_grace: Duration::ZERO,
    };
    let worker = Worker::new(
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        support::registry(&sandbox).await,
        Arc::new(AsyncPool::new(sandbox.clone(), 2)),
        config,
    );
    let (_tx, rx) = tokio::sync::watch::channel(Shutdown::Running);
    let report = tokio::time::timeout(Duration::from_secs(60), worker.run(rx))
        .await
        .expect("the worker stops after its one job")
        .expect("the worker runs");
    assert_eq!(report.succeeded, 1, "{report:?}");
    let record = store.get(&add.id).await.unwrap().expect("a result");
    assert_eq!(record.result, Some(json!(42)));

    for (processes, child_concurrency, why) in [
        (MAX_PROCESSES + 1, 1, "child processes"),
        (usize::MAX, usize::MAX, "child processes"),
        (1, MAX_CHILD_CONCURRENCY + 1, "jobs at once per child"),
    ] {
        let mut config = PreforkConfig::new(support::sprout_bin(), processes);
        config.child_concurrency = child_concurrency;
        match PreforkPool::start(config).await {
            Err(PreforkError::OutOfRange(e)) => assert!(e.contains(why), "{e}"),
            Err(e) => panic!("{processes} x {child_concurrency}: {e}"),
            Ok(_) => panic!("{processes} x {child_concurrency}: started"),
        }
    }
}
