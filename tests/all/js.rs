//! JavaScript tasks (issue 15): `sprout build x.js` (componentize-js underneath) with the
//! `sprout-task` helper module; the example tasks in `tasks/js/` run by the real binary
//! through `sprout run` and through a worker on both pools, and the helper's
//! registration errors.
//!
//! The examples are built once per test run by `tasks/js/build.sh` (a no-op when
//! nothing changed: a JavaScript component is ~11 MB and takes 15–45 s to build).
//! Without `node` and `npm` every test here says so loudly and passes without running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use sprout::model::Limits;

use crate::support::{self, Workdir, output_text as text, repo_root, sprout_bin};

/// Whether node and npm are installed; says loudly what is skipped when they are not.
fn node_and_npm(test: &str) -> bool {
    support::tools_present(
        test,
        &["node", "npm"],
        "the JavaScript task tests need them to install componentize-js",
    )
}

/// The folder componentize-js is installed in (guest-sdk/js/setup_tools.sh).
fn js_tools() -> PathBuf {
    let out = Command::new(repo_root().join("guest-sdk/js/setup_tools.sh"))
        .output()
        .expect("run setup_tools.sh");
    assert!(
        out.status.success(),
        "setup_tools.sh failed: {}",
        text(&out)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The example JavaScript tasks, built once per test run into `target/test-tasks/js`.
fn js_tasks(test: &str) -> Option<&'static Path> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if !node_and_npm(test) {
        return None;
    }
    Some(DIR.get_or_init(|| {
        let out = support::build_example_tasks("tasks/js/build.sh", "js");
        assert!(
            out.join("math_js.wasm").is_file(),
            "no math_js.wasm in {out:?}"
        );
        out
    }))
}

/// The record's outcome (`{"outcome": "success", "value": …}`, …).
fn run_json(dir: &Workdir, file: &Path, task: &str, args: &str, extra: &[&str]) -> Value {
    support::run_record(dir, file, task, args, extra)["outcome"].clone()
}

/// `js.fib(n)` as the example computes it (mod 1e9+7).
fn fib_mod(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, (a + b) % 1_000_000_007);
    }
    a
}

/// Every way a JavaScript job ends, through `sprout run`: values, keyword arguments, a
/// thrown error's constructor name as the kind, `TaskError` and `Retry`, and the limits
/// (fuel under the defaults, memory, time).
#[test]
fn js_tasks_through_sprout_run() {
    let Some(tasks) = js_tasks("js_tasks_through_sprout_run") else {
        return;
    };
    let dir = Workdir::new();
    let file = tasks.join("math_js.wasm");
    let e = run_json(&dir, &file, "js.add", "[2, 3]", &[]);
    assert_eq!(e["value"], 5, "{e}");
    let e = run_json(&dir, &file, "js.fib", "[90]", &[]);
    assert_eq!(e["value"], fib_mod(90), "{e}");
    let record = support::run_record(
        &dir,
        &file,
        "js.greet",
        r#"["Ada"]"#,
        &["--kwargs", r#"{"punctuation": "?"}"#],
    );
    assert_eq!(record["outcome"]["value"], "hello Ada?", "{record}");
    assert!(
        record.to_string().contains("greeting Ada"),
        "the log line reaches the record: {record}"
    );

    for (arg, kind, message) in [
        ("TypeError", "TypeError", "bad type"),
        ("RangeError", "RangeError", "out of range"),
        ("TaskError", "FeedError", "not a feed"),
    ] {
        let e = run_json(&dir, &file, "js.fail", &format!(r#"["{arg}"]"#), &[]);
        assert_eq!(e["outcome"], "guest_error", "{e}");
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["message"], message, "{e}");
    }
    let e = run_json(&dir, &file, "js.fail", r#"["Retry"]"#, &[]);
    assert_eq!(e["kind"], "Retry", "{e}");
    assert_eq!(e["retry"]["countdown"], 2.0, "{e}");
    let e = run_json(&dir, &file, "js.fib", r#"["x"]"#, &[]);
    assert_eq!(e["kind"], "RangeError", "{e}");

    // An endless loop under the default limits (no --fuel): OutOfFuel.
    let e = run_json(&dir, &file, "js.loop", "[]", &[]);
    assert_eq!(e["outcome"], "out_of_fuel", "{e}");
    assert_eq!(e["budget"], Limits::default().fuel, "{e}");
    let e = run_json(
        &dir,
        &file,
        "js.loop",
        "[]",
        &["--fuel", "1000000000000000", "--time-limit", "0.5"],
    );
    assert_eq!(e["outcome"], "time_limit", "{e}");
    let e = run_json(&dir, &file, "js.alloc", "[1024]", &[]);
    assert_eq!(e["outcome"], "memory_limit", "{e}");
    let e = run_json(&dir, &file, "js.alloc", "[4]", &[]);
    assert_eq!(e["value"], 4 << 20, "{e}");

    // The human form: the kind on stderr, exit 1; an unknown task names the ones there.
    let path = file.display().to_string();
    let out = dir.run(&["run", &path, "js.fail", r#"["RangeError"]"#]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(support::stderr(&out).contains("RangeError: out of range"));
    let out = dir.run(&["run", &path, "js.loop"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        support::stderr(&out).contains("OutOfFuel"),
        "{}",
        text(&out)
    );
    let out = dir.run(&["run", &path, "js.nope"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        support::stderr(&out).contains("js.add, js.alloc, js.fail, js.fib, js.greet, js.loop"),
        "{}",
        text(&out)
    );
}

/// A worker runs JavaScript jobs sent with `sprout send`, on the async and prefork
/// pools: a result, a thrown error's kind, and a runaway loop ended by fuel without
/// taking the worker down.
#[test]
fn js_jobs_through_a_worker_on_both_pools() {
    let Some(tasks) = js_tasks("js_jobs_through_a_worker_on_both_pools") else {
        return;
    };
    for pool in ["async", "prefork"] {
        let dir = Workdir::new();
        let mut worker = dir.worker_with_tasks(tasks, &["-P", pool, "-c", "2"]);
        let out = dir.run(&["send", "js.add", "[20, 22]", "--wait", "--timeout", "120"]);
        assert!(out.status.success(), "{pool}: {}", text(&out));
        assert_eq!(support::stdout(&out), "42", "{pool}: {}", text(&out));
        for (task, args, extra, kind) in [
            (
                "js.fail",
                r#"["TypeError"]"#,
                &[][..],
                "TypeError: bad type",
            ),
            (
                "js.fail",
                r#"["TaskError"]"#,
                &[][..],
                "FeedError: not a feed",
            ),
            ("js.loop", "[]", &["--fuel", "300000000"][..], "OutOfFuel"),
            ("js.alloc", "[1024]", &[][..], "MemoryLimitExceeded"),
        ] {
            let mut all = vec!["send", task, args, "--wait", "--timeout", "60"];
            all.extend_from_slice(extra);
            let out = dir.run(&all);
            assert_eq!(out.status.code(), Some(1), "{pool} {task}: {}", text(&out));
            assert!(
                support::stderr(&out).contains(&format!("FAILURE: {kind}")),
                "{pool} {task}: {}",
                text(&out)
            );
        }
        assert!(worker.is_running(), "{pool}: the worker exited");
        let out = dir.run(&[
            "send",
            "js.greet",
            r#"["Bo"]"#,
            "--kwargs",
            r#"{"punctuation": "."}"#,
            "--wait",
        ]);
        assert_eq!(
            support::stdout(&out),
            r#""hello Bo.""#,
            "{pool}: {}",
            text(&out)
        );
    }
}

/// The `sprout-task` helper's registration errors end the build with the helper's
/// message (componentize-js runs the module's top level at build time), and what
/// `sprout build` refuses in a JavaScript source before compiling.
#[test]
fn js_helper_refuses_bad_registrations() {
    if js_tasks("js_helper_refuses_bad_registrations").is_none() {
        return;
    }
    let tools = js_tools();
    let dir = Workdir::new();
    let build = |name: &str, source: &str| {
        std::fs::write(dir.path(name), source).unwrap();
        dir.sprout(&["build", name, "-o", "out", "--no-precompile"])
            .env("SPROUT_JS_TOOLS", &tools)
            .output()
            .unwrap()
    };
    for (name, source, message) in [
        (
            "twice.js",
            "import { task } from \"sprout-task\";\ntask(\"t.a\", () => 1);\ntask(\"t.a\", () => 2);\n",
            "two tasks are named t.a",
        ),
        (
            "notfn.js",
            "import { task } from \"sprout-task\";\ntask(\"t.b\", 42);\n",
            "task t.b: not a function",
        ),
    ] {
        let out = build(name, source);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert!(
            support::stderr(&out).contains(message),
            "{name}: {}",
            text(&out)
        );
        let wasm = dir.path(&format!("out/{}", name.replace(".js", ".wasm")));
        assert!(
            !wasm.exists(),
            "{name}: nothing is written for a failed build"
        );
        // The note maps componentize-js's line numbers back to the task file: the
        // failing `task(…)` call is on line 3 of twice.js, 2 of notfn.js.
        let stderr = support::stderr(&out);
        let offset: usize = stderr
            .split_once("its source.js line N is line N - ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no line note: {}", text(&out)));
        let line = if name == "twice.js" { 3 } else { 2 };
        assert!(
            stderr.contains(&format!("source.js:{}:", line + offset)),
            "{name}: {}",
            text(&out)
        );
    }

    // Only named imports of the helper: a usage error before anything is compiled.
    let out = build(
        "star.js",
        "import * as sprout from \"sprout-task\";\nsprout.task(\"t.c\", () => 1);\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        support::stderr(&out).contains("import named bindings from \"sprout-task\""),
        "{}",
        text(&out)
    );

    // componentize-js missing: the error says what to install.
    std::fs::write(
        dir.path("ok.js"),
        "import { task } from \"sprout-task\";\ntask(\"t.ok\", () => 1);\n",
    )
    .unwrap();
    // From a copy of the binary outside the repository, so the tools beside it
    // (target/js-tools, next to target/release) are not found either.
    let copy = dir.path("bin/sprout");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(sprout_bin(), &copy).unwrap();
    let out = Command::new(&copy)
        .args(["build", "ok.js", "-o", "out"])
        .env("SPROUT_JS_TOOLS", dir.path("no-tools"))
        .env("SPROUT_LOG", "warn")
        .current_dir(dir.path("."))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        support::stderr(&out).contains("@bytecodealliance/componentize-js@0.23.0"),
        "{}",
        text(&out)
    );
}
