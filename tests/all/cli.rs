//! `sprout run` and `sprout tasks`, through the real binary; every printing command
//! with its stdout closed early; and the worker's log off a terminal.

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::support::{self, Workdir, WorkerProcess, stderr, stdout};

fn run(args: &[&str]) -> std::process::Output {
    Workdir::new().run(args)
}

#[test]
fn run_prints_results_and_fuel() {
    let math = support::task("math").display().to_string();
    let out = run(&["run", &math, "add", "[2, 3]"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "5");
    assert!(stderr(&out).contains("fuel used:"), "{}", stderr(&out));

    let fib = support::task("fib").display().to_string();
    let out = run(&["run", &fib, "fib", "[25]"]);
    assert_eq!(stdout(&out), "75025");

    let echo = support::task("echo").display().to_string();
    let out = run(&["run", &echo, "echo", r#"{"k": [1, 2]}"#]);
    assert_eq!(stdout(&out), r#"{"k":[1,2]}"#);

    let out = run(&["run", &math, "mul", "[]", "--kwargs", r#"{"a": 6, "b": 7}"#]);
    assert_eq!(stdout(&out), "42");
}

/// `SPROUT_WASM_PROFILER=perfmap` makes the guest's compiled functions visible to
/// `perf` by name; an unknown profiler is a clear start-up error.
#[test]
fn wasm_profiler_writes_a_perf_map_and_rejects_unknown_names() {
    let w = Workdir::new();
    let fib = support::task("fib").display().to_string();
    let child = w
        .sprout(&["run", &fib, "fib", "[20]"])
        .env("SPROUT_WASM_PROFILER", "perfmap")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let map_path = format!("/tmp/perf-{}.map", child.id());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "6765");
    let map = std::fs::read_to_string(&map_path).unwrap_or_default();
    let _ = std::fs::remove_file(&map_path);
    assert!(
        map.lines().any(|line| line.contains("fib")),
        "{map_path} names no function of the fib guest:\n{map}"
    );

    let out = w
        .sprout(&["run", &fib, "fib", "[20]"])
        .env("SPROUT_WASM_PROFILER", "vtune")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("SPROUT_WASM_PROFILER=\"vtune\": expected perfmap or none"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_exit_codes_say_what_went_wrong() {
    let fail = support::task("fail").display().to_string();
    let out = run(&["run", &fail, "fail", r#"["boom"]"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ValueError: boom"),
        "{}",
        stderr(&out)
    );

    let hog = support::task("hog").display().to_string();
    let out = run(&["run", &hog, "hog", "--fuel", "10000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("OutOfFuel: ran out of fuel (budget 10000000)"),
        "{}",
        stderr(&out)
    );

    let out = run(&[
        "run",
        &hog,
        "hog",
        "--fuel",
        "100000000000000",
        "--time-limit",
        "0.2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("TimeLimitExceeded"),
        "{}",
        stderr(&out)
    );

    let alloc = support::task("alloc").display().to_string();
    let out = run(&["run", &alloc, "alloc", "[32]", "--memory", "16"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("MemoryLimitExceeded: memory limit of 16 MiB exceeded"),
        "{}",
        stderr(&out)
    );

    let math = support::task("math").display().to_string();
    let out = run(&["run", &math, "nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("has no task \"nope\" (it has: add, mul"),
        "{}",
        stderr(&out)
    );

    let out = run(&["run", &math, "add", "[1,"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ARGS is not JSON"),
        "{}",
        stderr(&out)
    );

    let dir = Workdir::new();
    std::fs::write(dir.path("junk.wasm"), b"garbage").unwrap();
    let junk = dir.path("junk.wasm").display().to_string();
    let out = dir.run(&["run", &junk, "x"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("not a WebAssembly file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_json_reports_the_whole_execution() {
    let trap = support::task("trap").display().to_string();
    let out = run(&["run", &trap, "trap", r#"["kaboom"]"#, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["outcome"]["outcome"], "trap");
    assert!(
        record["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("kaboom")
    );
    assert!(
        record["outcome"]["backtrace"]
            .as_str()
            .unwrap()
            .contains("trap.wasm!")
    );
}

#[test]
fn tasks_lists_names_aliases_and_limits() {
    let dir = support::tasks_dir().display().to_string();
    let out = run(&["tasks", &dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    for name in [
        "add",
        "mul",
        "tasks.add -> add",
        "fib",
        "hog",
        "wasi_upper",
        "sleep",
    ] {
        assert!(listing.contains(name), "{name} missing from\n{listing}");
    }
    let hog_line = listing.lines().find(|l| l.starts_with("hog ")).unwrap();
    assert!(
        hog_line.contains("2000000000") && hog_line.contains("10s"),
        "{hog_line}"
    );
    assert!(listing.contains("wasi-command (p1)"));
}

#[test]
fn invalid_manifests_are_rejected_with_the_line() {
    let dir = Workdir::new();
    std::fs::copy(support::task("math"), dir.path("math.wasm")).unwrap();
    std::fs::write(
        dir.path("math.toml"),
        "queue = \"q\"\n[limits]\nfuell = 3\n",
    )
    .unwrap();
    let path = dir.dir.path().display().to_string();
    let out = dir.run(&["tasks", &path]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("math.toml") && err.contains("fuell") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn task_files_over_the_size_cap_are_refused_before_compiling() {
    let math = support::task("math").display().to_string();
    let out = run(&["run", &math, "add", "[1, 2]", "--max-task-file-size", "0"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("MiB") || stderr(&out).contains("bytes"),
        "{}",
        stderr(&out)
    );
}

/// Runs `sprout ARGS` with stdout a pipe whose reader is already gone: what
/// `sprout status | head -1` looks like once `head` has exited.
fn with_closed_stdout(w: &Workdir, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = w
        .sprout(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run sprout");
    let err = stderr(&out);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "sprout {args:?} with a closed stdout: {err}"
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "sprout {args:?} panicked: {err}"
    );
    out
}

#[test]
fn commands_stop_printing_quietly_when_stdout_closes() {
    let w = Workdir::new();
    let echo = support::task("echo").display().to_string();
    let tasks = support::tasks_dir().display().to_string();
    let code = |args: &[&str]| with_closed_stdout(&w, args).status.code();

    assert_eq!(code(&["--help"]), Some(0));
    assert_eq!(code(&["tasks", &tasks]), Some(0));
    assert_eq!(code(&["run", &echo, "echo", "[1]"]), Some(0));
    assert_eq!(code(&["run", &echo, "echo", "[1]", "--json"]), Some(0));
    // The exit code is still the command's own: a failed task exits 1.
    let fail = support::task("fail").display().to_string();
    assert_eq!(code(&["run", &fail, "fail", "[\"boom\"]"]), Some(1));

    // Sending prints the ids; the jobs are queued all the same.
    assert_eq!(code(&["send", "echo", "[1]", "--count", "3"]), Some(0));
    assert_eq!(code(&["status"]), Some(0));
    let status = stdout(&w.run(&["status"]));
    let queue = status
        .lines()
        .find(|l| l.starts_with("celery "))
        .unwrap_or_else(|| panic!("no celery queue in\n{status}"));
    assert_eq!(
        queue.split_whitespace().nth(1),
        Some("3"),
        "3 jobs ready: {queue}"
    );
    // Not ready yet: the usual "not ready" code, 4.
    assert_eq!(code(&["result", "no-such-id"]), Some(4));
    // Purging still purges every queue named after the reader went away.
    assert_eq!(code(&["purge", "-Q", "other,celery"]), Some(0));
    let status = stdout(&w.run(&["status"]));
    assert!(
        status
            .lines()
            .filter(|l| l.starts_with("celery "))
            .all(|l| l.split_whitespace().nth(1) == Some("0")),
        "purged: {status}"
    );

    // A worker answers; `send --wait` prints the result into the closed pipe.
    let mut worker = w.worker(&["-c", "2"]);
    let out = with_closed_stdout(&w, &["send", "echo", "[7]", "--wait", "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    worker.signal(libc::SIGTERM);
    let (exit, log) = worker.wait(Duration::from_secs(30));
    assert_eq!(exit, Some(0), "{log}");
}

/// `send --count N --wait` waits for all N against one deadline: with no worker it gives
/// up after `--timeout` in all (not `--timeout` per job) and says how many are
/// unfinished; with a worker it reports every job, the failed ones by id.
#[test]
fn send_count_wait_shares_one_deadline_and_counts_every_job() {
    let w = Workdir::new();
    // `sprout send TASK ARGS --count N --wait --timeout T`: its exit code and stderr.
    let send_and_wait = |task: &str, args: &str, count: &str, timeout: &str| {
        let out = w.run(&[
            "send",
            task,
            args,
            "--count",
            count,
            "--wait",
            "--timeout",
            timeout,
        ]);
        (out.status.code(), stderr(&out))
    };
    let started = std::time::Instant::now();
    let (code, err) = send_and_wait("echo", "[1]", "5", "1");
    let took = started.elapsed();
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("0 succeeded, 0 failed, 5 timed out"), "{err}");
    assert!(
        took < Duration::from_secs(4),
        "5 jobs with --timeout 1 waited {took:?}"
    );

    let mut worker = w.worker(&["-c", "8"]);
    // The 5 from before run too; these 300 are the ones waited on.
    let (code, err) = send_and_wait("echo", "[2]", "300", "60");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("300 succeeded, 0 failed, 0 timed out"),
        "{err}"
    );
    let (code, err) = send_and_wait("fail", "[\"boom\"]", "3", "60");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("0 succeeded, 3 failed, 0 timed out"), "{err}");
    assert_eq!(err.matches("boom").count(), 3, "each failure by id: {err}");
    worker.signal(libc::SIGTERM);
    let (exit, log) = worker.wait(Duration::from_secs(30));
    assert_eq!(exit, Some(0), "{log}");
}

/// `send --wait` of one job whose stored result cannot be read back (a damaged row,
/// written here while the command waits): the job counts as failed (exit 1) and is named
/// with the reason, as in the `--count N` path; the command does not fail as a whole.
#[test]
fn send_wait_counts_an_unreadable_result_as_failed() {
    let w = Workdir::new();
    let send = w
        .sprout(&["send", "echo", "[1]", "--wait", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start send");
    let db = w.path("sprout.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The queued job's id, once `send` has written it (no worker runs, so it stays).
    let id = loop {
        let queued = rusqlite::Connection::open(&db).ok().and_then(|conn| {
            conn.query_row("SELECT job_id FROM jobs LIMIT 1", [], |row| {
                row.get::<_, String>(0)
            })
            .ok()
        });
        if let Some(id) = queued {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "send queued nothing");
        std::thread::sleep(Duration::from_millis(20));
    };
    rusqlite::Connection::open(&db)
        .expect("open")
        .execute(
            "INSERT INTO results (id, task, state, terminal, updated_at, record)
             VALUES (?1, 'echo', 'SUCCESS', 1, 0, x'00')",
            [&id],
        )
        .expect("write the unreadable row");
    let out = send.wait_with_output().expect("send ends");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{id}: corrupt result record for {id}")),
        "{err}"
    );
    assert!(
        !err.contains("error:"),
        "the command itself did not fail: {err}"
    );
    assert_eq!(stdout(&out), "", "no result printed");
}

/// Queues `add(2, 3)` and runs `sprout worker --max-jobs 1`, logging at `info` to
/// `log_to`; returns the worker's exit code once it stopped, and the job's stored result.
fn one_job_through_a_worker(w: &Workdir, log_to: impl Into<Stdio>) -> (Option<i32>, String) {
    let log_to = log_to.into();
    one_job_through_a_worker_with(w, |worker| {
        worker.stderr(log_to);
    })
}

/// [`one_job_through_a_worker`], with the worker's command set up by `setup`.
fn one_job_through_a_worker_with(
    w: &Workdir,
    setup: impl FnOnce(&mut std::process::Command),
) -> (Option<i32>, String) {
    let sent = w.run(&["send", "add", "[2, 3]"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let id = stdout(&sent);
    let tasks = support::tasks_dir().display().to_string();
    let mut worker = w.sprout(&["worker", "--tasks", &tasks, "-c", "1", "--max-jobs", "1"]);
    worker
        .env("SPROUT_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null());
    setup(&mut worker);
    let child = worker.spawn().expect("spawn worker");
    let (code, _) = WorkerProcess::new(child).wait(Duration::from_secs(60));
    let result = w.run(&["result", &id]);
    (code, stdout(&result))
}

/// A log that goes to a file (or anything but a terminal) is plain text.
#[test]
fn a_log_to_a_file_has_no_colour_codes() {
    let w = Workdir::new();
    let file = std::fs::File::create(w.path("worker.log")).unwrap();
    let (code, result) = one_job_through_a_worker(&w, file);
    assert_eq!(code, Some(0));
    assert!(result.contains(r#""result": 5"#), "{result}");
    let log = std::fs::read_to_string(w.path("worker.log")).unwrap();
    assert!(log.contains(" INFO "), "the worker logged at info:\n{log}");
    assert!(!log.contains("\x1b["), "escape codes in the log:\n{log:?}");
}

/// A worker whose stderr is a pipe nobody reads any more (`sprout worker 2>&1 | head`
/// after `head` exited), or closed (`2>&-`), drops its banner and log lines and still
/// does its work.
#[test]
fn a_worker_with_a_broken_or_closed_stderr_still_runs_its_jobs() {
    let w = Workdir::new();
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let (code, result) = one_job_through_a_worker(&w, writer);
    assert_eq!(
        code,
        Some(0),
        "the worker exits as usual, it does not panic (101)"
    );
    assert!(result.contains(r#""result": 5"#), "{result}");

    let (code, result) = one_job_through_a_worker_with(&w, |worker| {
        use std::os::unix::process::CommandExt;
        // SAFETY: close(2) only, between fork and exec; async-signal-safe.
        unsafe {
            worker.pre_exec(|| {
                libc::close(2);
                Ok(())
            });
        }
    });
    assert_eq!(code, Some(0), "with stderr closed");
    assert!(result.contains(r#""result": 5"#), "{result}");
}
