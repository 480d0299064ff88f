//! `sprout build CRATE_DIR -o DIR` for Rust (issue 15's symmetry with Python): a small
//! crate written by the test is built from source by the real binary (`cargo build
//! --release --target wasm32-wasip2` underneath), its manifest copied or generated, and
//! the result runs; a crate that does not compile, a crate that makes no wasm file and
//! a folder that is neither a crate nor a Python package are refused with clear errors.
//!
//! The crates build into `target/wasm` (tasks/build.sh's target folder) with the example
//! tasks' release profile and lock file, so the SDK's dependencies are the ones already
//! compiled there: each build compiles only the SDK and the crate itself.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::{self, Workdir, output_text as text, repo_root};

/// Writes a task crate named `name` in `dir` with `lib` as its `src/lib.rs`; a
/// standalone workspace using the SDK from this repository and the example tasks'
/// lock file and release profile.
fn write_crate(dir: &Path, name: &str, crate_type: &str, lib: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let sdk = repo_root().join("guest-sdk");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
             publish = false\n\n[lib]\ncrate-type = [\"{crate_type}\"]\n\n\
             [dependencies]\nsprout-guest = {{ path = {:?} }}\n\n\
             # Its own workspace, whatever folder it is in.\n[workspace]\n\n\
             [profile.release]\nopt-level = 3\nlto = true\ncodegen-units = 1\n\
             strip = \"debuginfo\"\n",
            sdk.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(repo_root().join("tasks/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
}

/// `sprout build` with the shared wasm target folder.
fn build(dir: &Workdir, args: &[&str]) -> Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    dir.sprout(&all)
        .env("CARGO_TARGET_DIR", repo_root().join("target/wasm"))
        .output()
        .expect("run sprout build")
}

const SHOP: &str = r#"//! A test crate: the shop tasks in Rust.
use sprout_guest::{TaskError, task};

/// The sum of the prices, less the discount.
#[task(name = "shop.total")]
fn total(items: Vec<f64>, discount: Option<f64>) -> f64 {
    items.iter().sum::<f64>() - discount.unwrap_or(0.0)
}

/// `n`, or a ValueError for a negative one.
#[task(name = "shop.check")]
fn check(n: i64) -> Result<i64, TaskError> {
    if n < 0 {
        return Err(TaskError::new("ValueError", format!("n must not be negative: {n}")));
    }
    Ok(n)
}

sprout_guest::export_tasks!(total, check);
"#;

/// A crate built from source runs; its manifest (`<crate>.toml` in the crate folder) is
/// checked and copied, and without one a template is generated; `DIR/Cargo.toml` is
/// accepted for the folder.
#[test]
fn sprout_build_a_rust_crate_from_source() {
    if !support::installed(
        "sprout_build_a_rust_crate_from_source",
        "cargo",
        "--version",
    ) {
        return;
    }
    let dir = Workdir::new();
    let krate = dir.path("shop-rs");
    write_crate(&krate, "shop-rs", "cdylib", SHOP);
    // The manifest is named after the crate's wasm file (`-` becomes `_`).
    std::fs::write(
        krate.join("shop_rs.toml"),
        "# shop's limits\naliases = { \"tasks.total\" = \"shop.total\" }\n\n[limits]\ntime_limit = 20.0\n",
    )
    .unwrap();
    let out = build(&dir, &["shop-rs", "-o", "out/"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("built "), "{report}");
    assert!(report.contains("tasks: shop.total, shop.check"), "{report}");
    assert!(!report.contains("generated template"), "{report}");
    assert!(dir.path("out/shop_rs.wasm").is_file(), "{report}");
    assert_eq!(
        std::fs::read_to_string(dir.path("out/shop_rs.toml")).unwrap(),
        std::fs::read_to_string(krate.join("shop_rs.toml")).unwrap(),
        "the manifest is copied as written"
    );

    let out = dir.run(&[
        "run",
        "out/shop_rs.wasm",
        "shop.total",
        "[[2, 3.5]]",
        "--kwargs",
        r#"{"discount": 1}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(support::stdout(&out), "4.5");
    // The copied manifest is in force: its alias names the same task.
    let out = dir.run(&["run", "out/shop_rs.wasm", "tasks.total", "[[1, 2]]"]);
    assert_eq!(support::stdout(&out), "3.0", "{}", text(&out));
    let out = dir.run(&["run", "out/shop_rs.wasm", "shop.check", "[-1]", "--json"]);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["outcome"]["kind"], "ValueError", "{record}");

    // Without a manifest: a commented template (every key off), and `Cargo.toml` names
    // the folder too.
    std::fs::remove_file(krate.join("shop_rs.toml")).unwrap();
    let out = build(
        &dir,
        &["shop-rs/Cargo.toml", "-o", "out2", "--no-precompile"],
    );
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("generated template"), "{report}");
    let template = std::fs::read_to_string(dir.path("out2/shop_rs.toml")).unwrap();
    assert!(
        template
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "{template}"
    );
    assert!(dir.path("out2/shop_rs.wasm").is_file());
}

/// A crate that does not compile fails the build (exit 1) with cargo's diagnostics; a
/// crate that is not a `cdylib` makes no wasm file and says what to add; a folder that
/// is neither a crate nor a Python package is bad usage (exit 2) naming what was
/// expected. Nothing is written for a failed build.
#[test]
fn sprout_build_refuses_rust_crates_that_make_no_task_file() {
    if !support::installed(
        "sprout_build_refuses_rust_crates_that_make_no_task_file",
        "cargo",
        "--version",
    ) {
        return;
    }
    let dir = Workdir::new();
    write_crate(
        &dir.path("broken"),
        "broken",
        "cdylib",
        "use sprout_guest::task;\n\n#[task]\nfn f(n: i64) -> i64 {\n    n + \"one\"\n}\n\nsprout_guest::export_tasks!(f);\n",
    );
    let out = build(&dir, &["broken", "-o", "out"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = support::stderr(&out);
    assert!(
        stderr.contains("cargo build") && stderr.contains("error[E0277]"),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("src/lib.rs"), "{}", text(&out));
    assert!(!dir.path("out/broken.wasm").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path("out"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    write_crate(
        &dir.path("plain"),
        "plain",
        "rlib",
        "pub fn f() -> i64 {\n    1\n}\n",
    );
    let out = build(&dir, &["plain", "-o", "out"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        support::stderr(&out).contains("crate-type = [\"cdylib\"]"),
        "{}",
        text(&out)
    );

    std::fs::create_dir_all(dir.path("neither")).unwrap();
    std::fs::write(dir.path("neither/README"), "x").unwrap();
    let out = build(&dir, &["neither", "-o", "out"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = support::stderr(&out);
    assert!(
        stderr.contains("neither")
            && stderr.contains("__init__.py")
            && stderr.contains("Cargo.toml"),
        "{}",
        text(&out)
    );
}
