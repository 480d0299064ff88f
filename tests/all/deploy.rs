//! Deploying task files into a running worker: jobs for a task whose file has not
//! arrived yet wait for it (`--unknown-task-grace`), and hostile files (a compile bomb)
//! are refused before they are compiled while the files beside them keep serving.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::backend::ResultBackend;
use sprout::broker::Broker;
use sprout::model::{Job, ResultRecord, State};

use crate::support::{self, SqliteStore, Workdir, WorkerProcess, stderr, wait_until};

/// `sprout worker --tasks <workdir>/tasks ARGS`, its log in `<workdir>/worker.log`.
fn start_worker(w: &Workdir, args: &[&str]) -> (WorkerProcess, PathBuf) {
    let dir = w.path("tasks");
    std::fs::create_dir_all(&dir).unwrap();
    (w.worker_logged(&dir, args), dir)
}

fn worker_log(w: &Workdir) -> String {
    w.worker_log()
}

fn job(task: &str, args: serde_json::Value) -> Job {
    Job::new(
        task,
        args.as_array().cloned().unwrap_or_default(),
        Default::default(),
    )
}

async fn send(store: &SqliteStore, job: &Job) {
    store.publish(std::slice::from_ref(job)).await.unwrap();
}

async fn result(store: &SqliteStore, id: &str, timeout: Duration) -> ResultRecord {
    store
        .wait(id, timeout)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no result for {id} within {timeout:?}"))
}

/// Copies `math.wasm` and its manifest into `dir`.
fn deploy_math(dir: &Path) {
    std::fs::copy(support::task("math"), dir.join("math.wasm")).unwrap();
    let manifest = support::task("math").with_extension("toml");
    std::fs::copy(manifest, dir.join("math.toml")).unwrap();
}

/// A core module with `n` empty functions (and a `_start`): 4 bytes a function, and
/// wasmtime needs ~5 GiB and over a minute to compile a million of them.
pub fn compile_bomb(n: u32) -> Vec<u8> {
    use crate::support::leb128 as leb;
    fn section(id: u8, payload: Vec<u8>, out: &mut Vec<u8>) {
        out.push(id);
        leb(payload.len() as u64, out);
        out.extend(payload);
    }
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    section(1, vec![1, 0x60, 0, 0], &mut wasm);
    let mut funcs = Vec::new();
    leb(n.into(), &mut funcs);
    funcs.resize(funcs.len() + n as usize, 0);
    section(3, funcs, &mut wasm);
    let mut exports = vec![1, 6];
    exports.extend(b"_start");
    exports.extend([0, 0]);
    section(7, exports, &mut wasm);
    let mut code = Vec::new();
    leb(n.into(), &mut code);
    for _ in 0..n {
        code.extend([2, 0, 0x0b]);
    }
    section(10, code, &mut wasm);
    wasm
}

/// Peak resident memory (`VmHWM`) of a process, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sent_before_its_task_file_arrives_runs_when_it_does() {
    let w = Workdir::new();
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    let (_worker, dir) = start_worker(&w, &["-c", "2"]);
    let add = job("add", json!([2, 3]));
    send(&store, &add).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        store.get(&add.id).await.unwrap().is_none(),
        "the job ended before its file arrived:\n{}",
        worker_log(&w)
    );
    deploy_math(&dir);
    let r = result(&store, &add.id, Duration::from_secs(30)).await;
    assert_eq!(
        (r.state, r.result.clone(), r.retries),
        (State::Success, Some(json!(5)), 0),
        "{r:?}\n{}",
        worker_log(&w)
    );
    assert!(worker_log(&w).contains("unknown task: requeued"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_a_task_that_never_arrives_fails_after_the_grace() {
    let w = Workdir::new();
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    let (_worker, dir) = start_worker(&w, &["-c", "2", "--unknown-task-grace", "3"]);
    deploy_math(&dir);
    // The worker is up and has its tasks: a known task runs at once.
    let known = job("add", json!([1, 1]));
    send(&store, &known).await;
    assert_eq!(
        result(&store, &known.id, Duration::from_secs(20))
            .await
            .state,
        State::Success
    );
    let sent = Instant::now();
    let never = job("no.such.task", json!([]));
    send(&store, &never).await;
    let r = result(&store, &never.id, Duration::from_secs(20)).await;
    let elapsed = sent.elapsed();
    assert_eq!(r.state, State::Failure, "{r:?}");
    assert_eq!(r.error.as_ref().unwrap().kind, "NotRegistered");
    assert_eq!(r.retries, 0, "waiting for a file is not a task retry");
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(8),
        "failed after {elapsed:?}, not after the 3 s grace"
    );
    eprintln!("NotRegistered after {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_bomb_is_refused_and_the_tasks_beside_it_keep_serving() {
    let w = Workdir::new();
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    std::fs::create_dir_all(w.path("tasks")).unwrap();
    deploy_math(&w.path("tasks"));
    let (worker, dir) = start_worker(&w, &["-c", "2", "--unknown-task-grace", "0"]);
    let first = job("add", json!([1, 2]));
    send(&store, &first).await;
    assert_eq!(
        result(&store, &first.id, Duration::from_secs(20))
            .await
            .state,
        State::Success
    );

    // A million empty functions beside math.wasm, and over math.wasm itself.
    let bomb = compile_bomb(1_000_000);
    let dropped = Instant::now();
    std::fs::write(dir.join("bomb.wasm"), &bomb).unwrap();
    std::fs::write(dir.join("math.wasm"), &bomb).unwrap();
    let rejected = |log: &str, file: &str| {
        log.lines()
            .any(|l| l.contains("rejected task file") && l.contains(file))
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = worker_log(&w);
            rejected(&log, "bomb.wasm") && rejected(&log, "math.wasm")
        }),
        "no rejection logged:\n{}",
        worker_log(&w)
    );
    let to_reject = dropped.elapsed();
    let log = worker_log(&w);
    let line = log
        .lines()
        .find(|l| l.contains("rejected task file") && l.contains("bomb.wasm"))
        .unwrap();
    assert!(
        line.contains("1000000 functions") && line.contains("module cap `functions`"),
        "{line}"
    );

    // The previous math.wasm keeps serving.
    let after = job("add", json!([20, 22]));
    send(&store, &after).await;
    let r = result(&store, &after.id, Duration::from_secs(20)).await;
    assert_eq!((r.state, r.result), (State::Success, Some(json!(42))));
    let peak = peak_rss(worker.pid());
    eprintln!(
        "compile bomb ({} bytes) rejected in {to_reject:?}; worker peak RSS {} MiB",
        bomb.len(),
        peak >> 20
    );
    assert!(peak < 1 << 30, "worker peak RSS {} MiB", peak >> 20);
    assert!(to_reject < Duration::from_secs(5), "{to_reject:?}");

    // The same file through `sprout run`: exit code 2, naming the cap.
    let out = w.run(&["run", dir.join("bomb.wasm").to_str().unwrap(), "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refused before compiling")
            && err.contains("module cap `functions`")
            && err.contains("--module-caps"),
        "{err}"
    );
}

/// A file that passes the shape caps still cannot exhaust the worker: it is compiled in
/// a child process, which is stopped when its memory passes `--compile-memory`, and the
/// file is rejected naming that limit. Here the caps are raised so the million-function
/// bomb gets past them (it needs gigabytes to compile); the worker's own memory stays
/// small and the task beside it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_under_the_caps_is_compiled_under_a_memory_limit() {
    let w = Workdir::new();
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    std::fs::create_dir_all(w.path("tasks")).unwrap();
    deploy_math(&w.path("tasks"));
    let limits = [
        "--module-caps",
        "functions=2000000",
        "--compile-memory",
        "256",
        "--no-cache",
    ];
    let mut args = vec!["-c", "2", "--unknown-task-grace", "0"];
    args.extend_from_slice(&limits);
    let (worker, dir) = start_worker(&w, &args);
    let first = job("add", json!([1, 2]));
    send(&store, &first).await;
    let r = result(&store, &first.id, Duration::from_secs(20)).await;
    assert_eq!(r.state, State::Success);

    let bomb = compile_bomb(1_000_000);
    std::fs::write(dir.join("bomb.wasm"), &bomb).unwrap();
    let rejected = |log: &str| {
        log.lines()
            .find(|l| {
                l.contains("rejected task file")
                    && l.contains("bomb.wasm")
                    && l.contains("compiling needed more than 256 MiB")
            })
            .map(str::to_string)
    };
    assert!(
        wait_until(Duration::from_secs(60), || rejected(&worker_log(&w))
            .is_some()),
        "no rejection for the compile memory limit:\n{}",
        worker_log(&w)
    );
    let after = job("add", json!([20, 22]));
    send(&store, &after).await;
    let r = result(&store, &after.id, Duration::from_secs(20)).await;
    assert_eq!((r.state, r.result), (State::Success, Some(json!(42))));
    let peak = peak_rss(worker.pid());
    eprintln!("bomb under raised caps: worker peak RSS {} MiB", peak >> 20);
    assert!(peak < 512 << 20, "worker peak RSS {} MiB", peak >> 20);

    // `sprout run` compiles under the same limit: exit 3 (the file cannot be loaded).
    let file = dir.join("bomb.wasm").display().to_string();
    let mut run_args = vec!["run", file.as_str(), "x"];
    run_args.extend_from_slice(&limits);
    let out = w.run(&run_args);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("compiling needed more than 256 MiB"),
        "{}",
        stderr(&out)
    );
}
