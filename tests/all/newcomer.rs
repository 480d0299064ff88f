//! A newcomer's first hour, through the real binary: every refusal is exit code 2 with
//! a one-line reason naming the problem; waits time out with one code and stop on
//! Ctrl-C; an unreachable broker is reported at once; workers publish what they serve
//! and `send` routes by it; progress and guest logs reach the operator; the comforts
//! (completions, `--version`, `--log-format json`, `--help` examples and exit codes).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, Workdir, stderr, stdout, wait_until};

/// Runs `sprout ARGS` in a fresh work dir; asserts exit code 2 and a one-line error
/// naming `names`.
fn refused(w: &Workdir, args: &[&str], names: &[&str]) {
    let out = w.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    // The reason is the first line (clap adds its usage line and a hint below it).
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error:"), "{args:?}: {err}");
    for name in names {
        assert!(first.contains(name), "{args:?}: {name:?} not in: {err}");
    }
}

#[test]
fn unknown_pools_are_refused_naming_the_valid_ones() {
    let w = Workdir::new();
    let tasks = support::tasks_dir().display().to_string();
    for args in [
        vec!["worker", "--tasks", &tasks, "-P", "threads"],
        vec!["worker", "--tasks", &tasks, "--pool", "io=threads:4"],
        vec!["worker", "--tasks", &tasks, "-P", "greenlet"],
    ] {
        refused(&w, &args, &["unknown pool", "async", "prefork", "solo"]);
    }
    // solo is the async pool with one slot: more is a contradiction.
    refused(
        &w,
        &["worker", "--tasks", &tasks, "-P", "solo", "-c", "4"],
        &["solo", "one job at a time"],
    );
    refused(
        &w,
        &["worker", "--tasks", &tasks, "--pool", "one=solo:3"],
        &["solo", "one job at a time"],
    );
}

/// `-P solo` runs jobs one at a time: the banner says concurrency 1, and it runs jobs.
#[test]
fn solo_is_the_async_pool_with_one_slot() {
    let w = Workdir::new();
    let mut worker = w.worker_logged(support::tasks_dir(), &["-P", "solo"]);
    let out = w.run(&["send", "add", "[2, 3]", "--wait", "--timeout", "60"]);
    assert_eq!(stdout(&out), "5", "{}", stderr(&out));
    worker.signal(libc::SIGTERM);
    let (code, _) = worker.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let log = w.worker_log();
    assert!(log.contains("async (concurrency: 1)"), "{log}");
}

#[test]
fn invalid_log_filters_are_refused() {
    let w = Workdir::new();
    refused(
        &w,
        &["--log", "verbose", "status"],
        &["--log", "\"verbose\" is not a level"],
    );
    refused(
        &w,
        &["--log", "sprout=loud", "status"],
        &["\"loud\" is not a level"],
    );
    let out = w
        .sprout(&["status"])
        .env("SPROUT_LOG", "chatty")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"chatty\" is not a level"));
    // Valid filters still work.
    let out = w.run(&["--log", "warn,sprout::worker=debug", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn missing_task_paths_are_refused() {
    let w = Workdir::new();
    refused(
        &w,
        &["tasks", "/nonexistent/tasks"],
        &["/nonexistent/tasks", "no such file"],
    );
    refused(
        &w,
        &["worker", "--tasks", "/nonexistent/tasks"],
        &["--tasks /nonexistent/tasks", "no such file", "target/tasks"],
    );
    refused(
        &w,
        &["send", "add", "[1, 2]", "--tasks", "/nonexistent"],
        &["--tasks /nonexistent"],
    );
    // A directory without task files (the sources in a checkout's ./tasks) says where
    // the built ones are.
    std::fs::create_dir(w.path("tasks")).unwrap();
    std::fs::write(w.path("tasks/Cargo.toml"), "").unwrap();
    refused(&w, &["tasks", "tasks"], &["no task files", "target/tasks"]);
    // The default `./tasks` in a directory without one.
    let empty = Workdir::new();
    refused(&empty, &["worker"], &["--tasks ./tasks", "no such file"]);
}

#[test]
fn sqlite_paths_in_missing_directories_are_refused_and_not_created() {
    let w = Workdir::new();
    let url = format!("sqlite:{}", w.path("typo/sprout.db").display());
    for args in [
        vec!["send", "add", "[1]", "--broker", url.as_str()],
        vec!["status", "--broker", url.as_str()],
        vec!["result", "x", "--broker", url.as_str()],
        vec!["status", "--result-backend", url.as_str()],
    ] {
        refused(&w, &args, &["typo", "does not exist"]);
    }
    assert!(!w.path("typo").exists(), "a directory was created");
    // The file itself is created in a directory that exists.
    let url = format!("sqlite:{}", w.path("new.db").display());
    let out = w.run(&["send", "add", "[1]", "--broker", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(w.path("new.db").is_file());
}

#[test]
fn out_of_range_priorities_are_refused() {
    let w = Workdir::new();
    refused(
        &w,
        &["send", "add", "[1]", "--priority", "12"],
        &["--priority", "12", "0..=9"],
    );
    refused(
        &w,
        &["send", "add", "[1]", "--priority=-1"],
        &["--priority"],
    );
    let out = w.run(&["send", "add", "[1]", "--priority", "9"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A concurrency whose sandbox slots cannot all be reserved names the flag to lower
/// and the most that fits, instead of an mmap error.
#[test]
fn a_concurrency_the_sandbox_cannot_reserve_names_the_ceiling() {
    let w = Workdir::new();
    let tasks = support::tasks_dir().display().to_string();
    let out = w.run(&["worker", "--tasks", &tasks, "-c", "1000000"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("-c/--concurrency"), "{err}");
    let ceiling: u64 = err
        .split("lower -c/--concurrency (the async pools' added up) to ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ceiling in: {err}"));
    assert!((100..1_000_000).contains(&ceiling), "{err}");
}

#[test]
fn unsupported_schemes_do_not_list_themselves_as_expected() {
    let w = Workdir::new();
    for url in [
        "kafka://127.0.0.1:9092",
        "amqp://guest:guest@127.0.0.1:5672//",
    ] {
        let out = w.run(&["status", "--broker", url]);
        let err = stderr(&out);
        if url.starts_with("amqp") && !err.contains("unsupported") {
            continue; // this build speaks AMQP
        }
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(url), "{err}");
        let scheme = &url[..url.find(':').unwrap()];
        let expected = err.split("expected").nth(1).unwrap_or_default();
        assert!(!expected.contains(scheme), "{err}");
    }
}

/// An unreachable Redis is reported at once, once, with host, port and the error.
#[test]
fn unreachable_brokers_fail_at_once_saying_where() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let w = Workdir::new();
    let url = format!("redis://127.0.0.1:{port}/0");
    for args in [
        vec!["send", "add", "[1]", "--broker", url.as_str()],
        vec!["status", "--broker", url.as_str()],
        vec!["result", "x", "--broker", url.as_str()],
    ] {
        let started = Instant::now();
        let out = w.run(&args);
        let err = stderr(&out);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}: {err}",
            started.elapsed()
        );
        assert_eq!(out.status.code(), Some(5), "{err}");
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(
            err.matches(&addr).count(),
            2,
            "URL and address once each: {err}"
        );
        assert!(err.to_lowercase().contains("refused"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn waits_that_time_out_exit_4_from_send_and_result() {
    let w = Workdir::new();
    let out = w.run(&["send", "add", "[1, 2]", "--wait", "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out waiting"),
        "{}",
        stderr(&out)
    );
    let out = w.run(&["send", "add", "[1, 2]"]);
    let id = stdout(&out);
    let out = w.run(&["result", &id, "--wait", "--timeout", "0.3"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out waiting"),
        "{}",
        stderr(&out)
    );
    let out = w.run(&["result", &id]);
    assert_eq!(out.status.code(), Some(4), "not finished: {}", stderr(&out));
}

#[test]
fn ctrl_c_during_a_wait_says_interrupted_and_exits_130() {
    let w = Workdir::new();
    let out = w.run(&["send", "add", "[1, 2]"]);
    let id = stdout(&out);
    for args in [
        vec!["send", "add", "[1, 2]", "--wait", "--timeout", "60"],
        vec!["result", id.as_str(), "--wait", "--timeout", "60"],
    ] {
        let child = w
            .sprout(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(out.status.code(), Some(130), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains("no result within"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn every_command_lists_its_exit_codes_and_an_example() {
    let w = Workdir::new();
    for command in [
        "worker", "send", "result", "status", "purge", "tasks", "run",
    ] {
        let out = w.run(&[command, "--help"]);
        let help = stdout(&out);
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        assert!(help.contains("Exit codes"), "{command} --help: {help}");
        assert!(help.contains("Examples:"), "{command} --help: {help}");
        assert!(
            help.contains(&format!("sprout {command}")),
            "{command}: {help}"
        );
    }
    let out = w.run(&["completions", "--help"]);
    assert!(stdout(&out).contains("Examples:"));
}

#[test]
fn version_names_wasmtime_and_completions_are_generated() {
    let w = Workdir::new();
    let out = w.run(&["--version"]);
    assert!(stdout(&out).contains("(wasmtime 48."), "{}", stdout(&out));
    for (shell, marker) in [
        ("bash", "_sprout()"),
        ("zsh", "#compdef sprout"),
        ("fish", "complete -c sprout"),
    ] {
        let out = w.run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("worker") && script.contains("--broker"),
            "{shell}"
        );
    }
    refused(&w, &["completions", "tcsh"], &["tcsh"]);
}

/// Off a terminal, purge does not ask; on one, it asks and a "no" purges nothing.
#[test]
fn purge_asks_on_a_terminal_unless_forced() {
    let w = Workdir::new();
    assert!(w.run(&["send", "add", "[1]"]).status.success());
    // `script` gives the command a terminal; "n" answers the question.
    let has_script = Command::new("script").arg("--version").output().is_ok();
    if has_script {
        let cmd = format!(
            "{} purge -Q celery --broker {}",
            support::sprout_bin().display(),
            w.broker()
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("SPROUT_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(500));
        child.stdin.take().unwrap().write_all(b"n\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains("[y/N]"), "{text}");
        assert!(text.contains("nothing purged"), "{text}");
    } else {
        eprintln!(
            "purge_asks_on_a_terminal_unless_forced: no `script` command; the terminal case is not checked"
        );
    }
    let out = w.run(&["purge", "-Q", "celery"]);
    assert_eq!(
        stdout(&out),
        "purged 1 job(s) from celery",
        "{}",
        stderr(&out)
    );
    let out = w.run(&["purge", "-Q", "celery", "-f"]);
    assert_eq!(stdout(&out), "purged 0 job(s) from celery");
}

/// A task directory whose manifest routes `add` to `mathq`.
fn mathq_tasks(w: &Workdir) -> std::path::PathBuf {
    let dir = w.path("mathq-tasks");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(support::task("math"), dir.join("math.wasm")).unwrap();
    std::fs::write(dir.join("math.toml"), "queue = \"mathq\"\n").unwrap();
    dir
}

/// `send` from a directory without task files routes by the map the workers published;
/// `tasks --broker` lists it; the map is withdrawn when the worker stops.
#[test]
fn send_routes_by_the_fleets_published_map() {
    let w = Workdir::new();
    let tasks = mathq_tasks(&w);
    let mut worker = w.worker_logged(&tasks, &["-Q", "mathq"]);
    let listed = || stdout(&w.run(&["tasks", "--broker", &w.broker()]));
    assert!(
        wait_until(Duration::from_secs(60), || listed().contains("mathq")),
        "never published: {}\n{}",
        listed(),
        w.worker_log()
    );
    let fleet = listed();
    let add = fleet
        .lines()
        .find(|l| l.starts_with("add "))
        .unwrap_or_default();
    assert!(add.contains("mathq"), "{fleet}");
    // The sender's directory has no task files: the work dir root.
    let out = w.run(&["send", "add", "[2, 3]", "--wait", "--timeout", "30"]);
    assert_eq!(stdout(&out), "5", "{}\n{}", stderr(&out), w.worker_log());
    // An explicit -q still wins.
    let out = w.run(&["send", "add", "[2, 3]", "-q", "elsewhere"]);
    assert!(out.status.success());
    let status = stdout(&w.run(&["status"]));
    assert!(status.contains("elsewhere"), "{status}");
    worker.signal(libc::SIGTERM);
    worker.wait(Duration::from_secs(30));
    let out = w.run(&["tasks", "--broker", &w.broker()]);
    assert!(
        !stdout(&out).contains("mathq"),
        "not withdrawn: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("no worker"), "{}", stderr(&out));
}

/// The same on Redis, where another machine would send from.
#[test]
fn send_routes_by_the_published_map_on_redis() {
    let Some(redis) = support::redis_test("send_routes_by_the_published_map_on_redis") else {
        return;
    };
    let url = redis.sprout_url();
    let w = Workdir::new();
    let tasks = mathq_tasks(&w);
    let _worker = w.worker_logged(&tasks, &["-Q", "mathq", "--broker", &url]);
    let listed = || stdout(&w.run(&["tasks", "--broker", &url]));
    assert!(
        wait_until(Duration::from_secs(60), || listed().contains("mathq")),
        "never published: {}",
        w.worker_log()
    );
    let out = w.run(&[
        "send",
        "add",
        "[20, 22]",
        "--wait",
        "--timeout",
        "30",
        "--broker",
        &url,
    ]);
    assert_eq!(stdout(&out), "42", "{}\n{}", stderr(&out), w.worker_log());
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// A task that reports progress and logs at warn: both visible through `sprout result`
/// while it runs and after it succeeded; its warnings in the worker's log at WARN with
/// the job id; with `--log-jobs`, an INFO line per finished job; JSON logs parse.
#[test]
fn progress_and_guest_logs_reach_the_operator() {
    let w = Workdir::new();
    let _worker = w.worker_logged(
        support::tasks_dir(),
        &["--log-jobs", "--log-format", "json"],
    );
    let out = w.run(&["send", "steps", "[6, 0.4]"]);
    let id = stdout(&out);
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            let record = json_of(&w.run(&["result", &id]));
            if record["state"] == "PROGRESS" && record["progress"]["current"].as_u64() >= Some(1) {
                seen = Some(record);
            }
            seen.is_some()
        }),
        "no PROGRESS: {}",
        w.worker_log()
    );
    let record = seen.unwrap();
    assert_eq!(record["progress"]["total"], 6, "{record}");
    let out = w.run(&["result", &id]);
    assert_eq!(out.status.code(), Some(4), "running is not finished");
    let out = w.run(&["result", &id, "--wait", "--timeout", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = json_of(&out);
    assert_eq!(done["state"], "SUCCESS");
    assert_eq!(done["result"], 6);
    assert!(
        done["log"]
            .as_str()
            .unwrap_or_default()
            .contains("[WARN] step 5 of 6"),
        "{done}"
    );
    let out = w.run(&["result", &id, "--logs"]);
    assert!(
        stdout(&out).contains("[WARN] step 0 of 6"),
        "{}",
        stdout(&out)
    );

    let log = w.worker_log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON log lines: {log}");
    let warned = lines.iter().find(|l| {
        l["level"] == "WARN"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("step 3 of 6"))
    });
    let warned = warned.unwrap_or_else(|| panic!("no guest WARN line: {log}"));
    assert_eq!(warned["job"], id.as_str(), "{warned}");
    assert_eq!(warned["task"], "steps", "{warned}");
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["message"] == "job finished"
            && l["id"] == id.as_str()
            && l["state"] == "SUCCESS"),
        "no --log-jobs line: {log}"
    );
}

/// Without `--log-jobs` there is no line per job.
#[test]
fn job_lines_are_off_by_default() {
    let w = Workdir::new();
    let _worker = w.worker_logged(support::tasks_dir(), &[]);
    let out = w.run(&["send", "add", "[1, 1]", "--wait", "--timeout", "60"]);
    assert_eq!(stdout(&out), "2", "{}", stderr(&out));
    assert!(
        !w.worker_log().contains("job finished"),
        "{}",
        w.worker_log()
    );
}

/// On Redis the PROGRESS state is Celery's custom-state meta: the real Celery client's
/// `AsyncResult.info` reads `{"current": …, "total": …}`.
#[test]
fn celery_async_result_info_shows_progress() {
    let Some(redis) = support::redis_db_test("celery_async_result_info_shows_progress") else {
        return;
    };
    let url = redis.sprout_url();
    let queue = format!("progress-{}", uuid::Uuid::new_v4().simple());
    let _worker = crate::celery_redis::sprout_worker(&url, &queue);
    let python = crate::celery_redis::venv().join("bin/python");
    let script = r#"
import json, sys, time
from celery import Celery
url, queue = sys.argv[1], sys.argv[2]
app = Celery(broker=url, backend=url)
r = app.send_task("steps", args=[8, 0.4], queue=queue)
deadline = time.time() + 60
info = None
while time.time() < deadline:
    if r.state == "PROGRESS":
        info = r.info
        if info.get("current", 0) >= 1:
            break
    time.sleep(0.05)
print(json.dumps({"info": info, "result": r.get(timeout=60)}))
"#;
    let out = Command::new(python)
        .args(["-c", script, &url, &queue])
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = json_of(&out);
    assert_eq!(seen["info"]["total"], 8, "{seen}");
    assert!(seen["info"]["current"].as_u64() >= Some(1), "{seen}");
    assert_eq!(seen["result"], 8, "{seen}");
}

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// An idle worker on SQLite costs well under 1% of a core (measured: BENCHMARKS.md,
/// `host/benches/idle_sqlite.sh`), and a job sent after a quiet spell is not delayed
/// by the longer naps (a generous bound: the benchmark has the numbers).
#[test]
fn timing_idle_sqlite_worker_is_cheap_and_wakes_at_once() {
    let w = Workdir::new();
    let worker = w.worker_logged(support::tasks_dir(), &[]);
    let out = w.run(&["send", "add", "[0, 0]", "--wait", "--timeout", "60"]);
    assert_eq!(stdout(&out), "0", "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(2));
    let hz = 100.0; // USER_HZ on Linux
    let before = cpu_ticks(worker.pid());
    let idle = Duration::from_secs(5);
    std::thread::sleep(idle);
    let used = (cpu_ticks(worker.pid()) - before) as f64 / hz;
    let percent = 100.0 * used / idle.as_secs_f64();
    eprintln!("idle worker: {percent:.2}% of a core");
    assert!(percent < 2.0, "an idle worker used {percent:.2}% of a core");

    let mut extra = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        let t0 = Instant::now();
        let out = w.run(&["send", "add", "[2, 3]", "--wait"]);
        let after_idle = t0.elapsed();
        assert_eq!(stdout(&out), "5");
        let t1 = Instant::now();
        w.run(&["send", "add", "[2, 3]", "--wait"]);
        let warm = t1.elapsed();
        extra.push(after_idle.saturating_sub(warm));
    }
    extra.sort();
    eprintln!("extra latency after idle: {extra:?}");
    assert!(
        extra[1] < Duration::from_millis(250),
        "the first job after idle waited {extra:?} longer than a warm one"
    );
}
