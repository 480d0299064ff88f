//! The feed hub end to end: the real `feed-hub` binary starts its feed server and a real
//! `sprout worker` (the workspace's binary, on a temporary SQLite broker), enqueues
//! fetch_feed jobs built from `tasks/`, and reports every feed fetched.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("examples/feed-hub is two levels down")
        .to_path_buf()
}

/// The example tasks, built by `tasks/build.sh` (a no-op when nothing changed).
fn tasks_dir() -> PathBuf {
    let out = repo_root().join("target").join("test-tasks");
    let status = Command::new(repo_root().join("tasks").join("build.sh"))
        .arg(&out)
        .status()
        .expect("run tasks/build.sh");
    assert!(status.success(), "tasks/build.sh failed");
    out
}

#[test]
fn a_small_run_fetches_every_feed_and_reports_the_rate() {
    let feed_hub = Path::new(env!("CARGO_BIN_EXE_feed-hub"));
    // Cargo builds the workspace's binaries into the same directory.
    let sprout = feed_hub.with_file_name("sprout");
    assert!(
        sprout.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        sprout.display()
    );
    let out = Command::new(feed_hub)
        .args([
            "run",
            "-n",
            "200",
            "-c",
            "100",
            "--delay-ms",
            "20",
            "--json",
        ])
        .arg("--spawn-worker")
        .arg(&sprout)
        .arg("--tasks")
        .arg(tasks_dir())
        .env(
            "SPROUT_CACHE_DIR",
            repo_root().join("target").join("test-cache"),
        )
        .output()
        .expect("run feed-hub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON report ({e}): {stderr}"));
    assert_eq!(report["ok"], 200, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    // The warm-up (one wave of 100 on another server) is not counted by this server.
    assert_eq!(report["server_requests"], 200, "{report}");
    let rate = report["feeds_per_second"].as_f64().unwrap();
    let limit = report["limit_per_second"].as_f64().unwrap();
    assert_eq!(limit, 5000.0, "{report}");
    assert!(rate > 0.0 && rate <= limit, "{report}");
}
