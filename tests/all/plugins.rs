//! Plugin-style deployment: a running `sprout worker` picks up new, changed, broken and
//! removed task files without a restart; `sprout tasks` shows versions, limits and
//! grants; manifests' rate limits hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::SqliteStore;
use serde_json::{Value, json};
use sprout::backend::ResultBackend;
use sprout::broker::Broker;
use sprout::model::Job;
use sprout::model::Limits;
use sprout::model::{ResultRecord, State};
use sprout::registry::Registry;
use sprout::registry::watch::{self, WatchOptions};

use crate::adversarial::guest;
use crate::support::{self, Workdir, WorkerProcess, stdout, wait_until};

/// Starts `sprout worker --tasks DIR ARGS` with its log in `<workdir>/worker.log`.
fn start_worker(w: &Workdir, dir: &Path, args: &[&str]) -> WorkerProcess {
    w.worker_logged(dir, args)
}

fn worker_log(w: &Workdir) -> String {
    w.worker_log()
}

async fn send(store: &SqliteStore, task: &str, args: Value) -> Job {
    let job = Job::new(
        task,
        args.as_array().cloned().unwrap_or_default(),
        Default::default(),
    );
    store.publish(std::slice::from_ref(&job)).await.unwrap();
    job
}

async fn result(store: &SqliteStore, job: &Job) -> ResultRecord {
    store
        .wait(&job.id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no result for {} within 30 s", job.task))
}

/// Sends `task(args)` until a job succeeds with `want`; returns how long that took.
async fn until_result(
    store: &SqliteStore,
    task: &str,
    args: Value,
    want: Value,
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let r = result(store, &send(store, task, args.clone()).await).await;
        if r.state == State::Success && r.result.as_ref() == Some(&want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "no {want} from {task} within {bound:?}; last: {:?} {:?} {:?}",
            r.state,
            r.result,
            r.error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`until_result`] for the `version` guest: sends `version(0)` until it answers
/// `version` (`"v1"` or `"v2"`); returns how long that took.
async fn until_version(store: &SqliteStore, version: &str, bound: Duration) -> Duration {
    until_result(store, "version", json!([0]), json!(version), bound).await
}

/// Copies the way `cp` does: in place, not through a temp file and a rename.
fn cp(from: &Path, to: &Path) {
    std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
}

/// A work dir whose `tasks` dir holds `wasm` as `file`; the work dir and the tasks dir.
fn workdir_with_task(wasm: PathBuf, file: &str) -> (Workdir, PathBuf) {
    let w = Workdir::new();
    let dir = w.path("tasks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(wasm, dir.join(file)).unwrap();
    (w, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_picks_up_new_changed_broken_and_removed_files() {
    let (w, dir) = workdir_with_task(support::task("echo"), "echo.wasm");
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    let _worker = start_worker(
        &w,
        &dir,
        &["-c", "8", "--track-started", "--unknown-task-grace", "0"],
    );
    until_result(
        &store,
        "echo",
        json!([1]),
        json!(1),
        Duration::from_secs(30),
    )
    .await;

    // A new file: jobs for it succeed within 2 s, no restart.
    let task = dir.join("version.wasm");
    cp(&guest("version_v1"), &task);
    let took = until_version(&store, "v1", Duration::from_secs(2)).await;
    eprintln!("new task file serving after {took:?}");

    // A long job on v1, then v2 replaces the file: new jobs get v2, the long one ends on v1.
    let long = send(&store, "version", json!([3.0])).await;
    let started = Instant::now();
    while store
        .get(&long.id)
        .await
        .unwrap()
        .is_none_or(|r| r.state != State::Started)
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the long job did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cp(&guest("version_v2"), &task);
    let took = until_version(&store, "v2", Duration::from_secs(2)).await;
    eprintln!("changed task file serving after {took:?}");
    let r = result(&store, &long).await;
    assert_eq!(
        (r.state, r.result),
        (State::Success, Some(json!("v1"))),
        "the running job kept its version"
    );

    // A corrupt file is rejected with a logged reason; v2 keeps serving.
    std::fs::write(&task, b"\0asm\x0d\0\x01\0 this is not a component").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || worker_log(&w)
            .contains("rejected task file")),
        "no rejection logged:\n{}",
        worker_log(&w)
    );
    let log = worker_log(&w);
    let line = log
        .lines()
        .find(|l| l.contains("rejected task file"))
        .unwrap();
    assert!(line.contains("version.wasm"), "{line}");
    eprintln!("{line}");
    until_version(&store, "v2", Duration::from_secs(1)).await;

    // A fixed file after a broken one loads again.
    cp(&guest("version_v1"), &task);
    until_version(&store, "v1", Duration::from_secs(2)).await;

    // A removed file takes its tasks with it.
    std::fs::remove_file(&task).unwrap();
    let started = Instant::now();
    loop {
        let r = result(&store, &send(&store, "version", json!([0])).await).await;
        if r.state == State::Failure {
            assert_eq!(r.error.unwrap().kind, "NotRegistered");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the removed task still runs"
        );
    }
    eprintln!("removed task gone after {:?}", started.elapsed());
    until_result(
        &store,
        "echo",
        json!(["still here"]),
        json!("still here"),
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_alone_picks_up_changes() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = support::sandbox(4);
    let registry = Arc::new(Registry::new());
    let paths = vec![dir.path().to_path_buf()];
    assert!(
        registry
            .load(&sandbox, &paths, &Limits::default())
            .await
            .is_empty()
    );
    let options = WatchOptions {
        fs_events: false,
        poll_interval: Duration::from_millis(200),
        ..WatchOptions::default()
    };
    let _watcher = watch::spawn(registry.clone(), sandbox, paths, Limits::default(), options);
    let file: PathBuf = dir.path().join("version.wasm");
    cp(&guest("version_v1"), &file);
    let started = Instant::now();
    assert!(
        wait_until_async(Duration::from_secs(3), || registry
            .lookup("version")
            .is_some())
        .await,
        "not picked up by polling"
    );
    let v1 = registry.lookup("version").unwrap();
    eprintln!("polling picked up a new file after {:?}", started.elapsed());
    cp(&guest("version_v2"), &file);
    assert!(
        wait_until_async(Duration::from_secs(3), || {
            registry.lookup("version").unwrap().module.hash != v1.module.hash
        })
        .await,
        "change not picked up by polling"
    );
    // The old entry is still whole for whoever holds it.
    assert_eq!(v1.module.tasks, ["version"]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        wait_until_async(Duration::from_secs(3), || registry
            .lookup("version")
            .is_none())
        .await,
        "removal not picked up by polling"
    );
}

/// [`wait_until`] without blocking the runtime: polls `check` every 20 ms until it holds
/// or `timeout` passes; whether it held.
async fn wait_until_async(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_rate_limit_spaces_jobs_in_the_worker() {
    let (w, dir) = workdir_with_task(guest("version_v1"), "version.wasm");
    std::fs::write(dir.join("version.toml"), "rate_limit = \"5/s\"\n").unwrap();
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    let jobs: Vec<Job> = (0..6)
        .map(|_| Job::new("version", vec![json!(0)], Default::default()))
        .collect();
    store.publish(&jobs).await.unwrap();
    let _worker = start_worker(&w, &dir, &["-c", "8"]);
    let mut starts = Vec::new();
    for job in &jobs {
        let r = result(&store, job).await;
        assert_eq!(
            r.state,
            State::Success,
            "a rate-limited job is never failed: {r:?}"
        );
        starts.push(r.started_at.expect("started_at"));
    }
    starts.sort();
    let spread = (*starts.last().unwrap() - starts[0]).num_milliseconds();
    eprintln!("6 jobs at 5/s started over {spread} ms");
    assert!(spread >= 950, "6 jobs at 5/s need >= 1 s, took {spread} ms");
}

/// `[capabilities] config` values reach the guest through `sprout_guest::config`, in a
/// real worker: the greet example reads the value its manifest grants, and a key the
/// manifest does not grant reads as `None` (`null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_values_reach_the_guest_through_the_sdk() {
    let (w, dir) = workdir_with_task(support::task("greet"), "greet.wasm");
    std::fs::write(
        dir.join("greet.toml"),
        "[capabilities]\nconfig = { greeting = \"hi\", \"region.name\" = \"eu-west\" }\n\
         env = { GREETING = \"not a config value\" }\n",
    )
    .unwrap();
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    let _worker = start_worker(&w, &dir, &["-c", "4"]);
    let cases = [
        ("greet", json!(["Ada"]), json!("hi, Ada!")),
        ("config_value", json!(["greeting"]), json!("hi")),
        ("config_value", json!(["region.name"]), json!("eu-west")),
        // Not granted: neither another key, nor an env grant's name, nor a case variant.
        ("config_value", json!(["api_url"]), Value::Null),
        ("config_value", json!(["GREETING"]), Value::Null),
        ("config_value", json!(["Greeting"]), Value::Null),
    ];
    for (task, args, want) in cases {
        let r = result(&store, &send(&store, task, args.clone()).await).await;
        // A stored `null` result reads back as a present `null`, as Celery shows it.
        assert_eq!(
            (r.state, r.result.clone()),
            (State::Success, Some(want)),
            "{task}{args}: {:?}\n{}",
            r.error,
            worker_log(&w)
        );
    }

    // The example as shipped (tasks/greet/greet.toml grants greeting = "Hello"), and the
    // same file with no manifest at all: nothing granted, so the default greeting.
    let out = w.run(&[
        "run",
        &support::task("greet").display().to_string(),
        "greet",
        "[\"Ada\"]",
    ]);
    assert_eq!(stdout(&out), "\"Hello, Ada!\"", "{}", support::stderr(&out));
    let bare = w.path("bare.wasm");
    std::fs::copy(support::task("greet"), &bare).unwrap();
    let out = w.run(&["run", &bare.display().to_string(), "greet", "[\"Ada\"]"]);
    assert_eq!(stdout(&out), "\"Hi, Ada!\"", "{}", support::stderr(&out));
}

#[test]
fn sprout_tasks_shows_versions_limits_and_grants() {
    let (w, dir) = workdir_with_task(guest("version_v1"), "version.wasm");
    std::fs::write(
        dir.join("version.toml"),
        "queue = \"slow\"\nrate_limit = \"10/m\"\naliases = { \"proj.version\" = \"version\" }\n\
         [limits]\nfuel = 123456789\nmemory_mib = 16\n\
         [capabilities]\nenv = { TOKEN = \"secret-value\" }\nconfig = { region = \"eu\" }\n\
         dirs = { \"/data\" = \".\" }\n",
    )
    .unwrap();
    std::fs::copy(guest("escape"), dir.join("escape.wasm")).unwrap();
    let out = w.run(&["tasks", &dir.display().to_string()]);
    let text = stdout(&out);
    eprintln!("{text}");
    assert!(out.status.success(), "{}", support::stderr(&out));
    let hash = blake3_hex(&dir.join("version.wasm"));
    assert!(text.contains(&hash[..12]), "version hash shown");
    assert!(text.contains("proj.version -> version"));
    assert!(
        text.contains("123456789") && text.contains("16 MiB"),
        "limits shown"
    );
    assert!(text.contains("queue: slow") && text.contains("rate limit: 10/m"));
    assert!(
        text.contains("env TOKEN") && text.contains("config region"),
        "grants shown"
    );
    assert!(!text.contains("secret-value"), "env values are not printed");
    assert!(text.contains("dirs /data="), "{text}");
    assert!(
        text.contains("grants: nothing"),
        "escape has no manifest: {text}"
    );
}

fn blake3_hex(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}
