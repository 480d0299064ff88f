//! The feed hub with the Python `fetch_feed` task (tasks/python/fetch_feed.py, built by
//! `sprout build`): the real `feed-hub` binary serves its feeds and a real `sprout
//! worker` fetches every one through the manifest's allow-list; with a manifest that
//! allows nothing, every fetch is denied (`PermissionError`) and the server sees no
//! request. Without python3 the test says so loudly and passes without running.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("examples/feed-hub is two levels down")
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    repo_root().join("target").join("test-cache")
}

/// The Python example tasks, built by `tasks/python/build.sh` (a no-op when nothing
/// changed) with `sprout`.
fn python_tasks(sprout: &Path) -> PathBuf {
    let out = repo_root().join("target/test-tasks/python");
    let status = Command::new(repo_root().join("tasks/python/build.sh"))
        .arg(sprout)
        .arg(&out)
        .env("SPROUT_CACHE_DIR", cache_dir())
        .env("SPROUT_LOG", "warn")
        .status()
        .expect("run tasks/python/build.sh");
    assert!(status.success(), "tasks/python/build.sh failed");
    out
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A task folder (`name`, under the system's temp folder) holding only fetch_feed.wasm
/// with `manifest`.
fn task_dir(built: &Path, name: &str, manifest: &str) -> Scratch {
    let dir = Scratch(
        std::env::temp_dir().join(format!("feed-hub-python-{name}-{}", std::process::id())),
    );
    std::fs::create_dir_all(dir.path()).expect("create the task folder");
    std::fs::copy(
        built.join("fetch_feed.wasm"),
        dir.path().join("fetch_feed.wasm"),
    )
    .expect("copy fetch_feed.wasm");
    std::fs::write(dir.path().join("fetch_feed.toml"), manifest).unwrap();
    dir
}

/// `feed-hub run` of `n` py.fetch_feed jobs with a worker on `tasks`: its exit status
/// and JSON report.
fn feed_hub_run(sprout: &Path, tasks: &Path, n: u32) -> (Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_feed-hub"))
        .args(["run", "-n", &n.to_string(), "-c", "10", "--delay-ms", "5"])
        .args(["--warmup", "0", "--timeout", "180", "--json"])
        .args(["--task", "py.fetch_feed"])
        .arg("--spawn-worker")
        .arg(sprout)
        .arg("--tasks")
        .arg(tasks)
        .env("SPROUT_CACHE_DIR", cache_dir())
        .output()
        .expect("run feed-hub");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

#[test]
fn python_fetch_feed_fetches_from_the_feed_hub_through_the_allow_list() {
    let python3 = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python3 {
        // Past the test harness's capture, so the skip shows in `cargo test`'s output.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED python_fetch_feed_fetches_from_the_feed_hub_through_the_allow_list: \
             python3 is not installed (the Python task tests need it)"
        );
        return;
    }
    let feed_hub = Path::new(env!("CARGO_BIN_EXE_feed-hub"));
    let sprout = feed_hub.with_file_name("sprout");
    assert!(
        sprout.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        sprout.display()
    );
    let built = python_tasks(&sprout);

    // The example's own manifest: any port on loopback.
    let manifest = std::fs::read_to_string(repo_root().join("tasks/python/fetch_feed.toml"))
        .expect("tasks/python/fetch_feed.toml");
    let allowed = task_dir(&built, "allowed", &manifest);
    let (out, report) = feed_hub_run(&sprout, allowed.path(), 30);
    assert!(
        out.status.success(),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["ok"], 30, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["server_requests"], 30, "{report}");

    // `feed-hub serve`: one fetch allowed by the example's manifest, one denied by a
    // manifest that allows nothing (refused inside the worker, before any connection:
    // the server counts one request).
    let mut serve = Command::new(feed_hub)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "-n",
            "3",
            "--delay-ms",
            "0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start feed-hub serve");
    let mut lines = BufReader::new(serve.stderr.take().unwrap()).lines();
    let banner = lines.next().expect("a banner line").unwrap();
    let base = banner
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/feed/<0..3>.xml"))
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_string();
    let args = format!(r#"["{base}/feed/2.xml"]"#);
    let run = |dir: &Path| -> serde_json::Value {
        let out = Command::new(&sprout)
            .arg("run")
            .arg(dir.join("fetch_feed.wasm"))
            .args(["py.fetch_feed", &args, "--json"])
            .env("SPROUT_CACHE_DIR", cache_dir())
            .env("SPROUT_LOG", "warn")
            .output()
            .expect("sprout run");
        let record: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        record["outcome"].clone()
    };
    let e = run(allowed.path());
    assert_eq!(e["value"]["items"], 20, "{e}");
    assert_eq!(e["value"]["title"], "Feed 2: item 1", "{e}");
    let denied = task_dir(&built, "denied", "[limits]\ntime_limit = 60.0\n");
    let e = run(denied.path());
    assert_eq!(e["kind"], "PermissionError", "{e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("127.0.0.1") && message.contains("allowed_hosts"),
        "{e}"
    );
    let status = Command::new("kill")
        .args(["-INT", &serve.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = serve.wait();
    assert!(
        rest.iter().any(|l| l == "served 1 requests"),
        "the denied fetch reached the server: {rest:?}"
    );
}
