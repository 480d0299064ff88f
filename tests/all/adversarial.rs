//! The adversarial suite: guests that try to escape the sandbox or take the worker down.
//! Each case must end as a clean outcome with a reason, within its limits, and the pool
//! must still serve the next (good) job.
//!
//! [`adversarial_suite`] takes any `Arc<dyn Pool>` (with [`Fixture`] and [`load`]), so
//! every pool runs the same cases: the async pool here, the prefork pool in its own
//! test module. The misbehaving guests are the Rust crates in `tests/guests/` (built by
//! `tests/guests/build.sh`) and hand-written WAT modules assembled here (the engine is
//! built without wasmtime's `wat` feature).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sprout::model::LimitOverrides;
use sprout::model::Limits;
use sprout::model::{Execution, Outcome};
use sprout::pool::{AsyncPool, Pool};
use sprout::registry::{Registry, Rejected};
use sprout::sandbox::Sandbox;

use crate::outcomes::run_job;
use crate::support;

/// The test-only guests, built from `tests/guests/` once per test run.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = support::repo_root().join("target").join("test-guests");
        let status = Command::new(support::repo_root().join("tests/guests/build.sh"))
            .arg(&out)
            .status()
            .expect("run tests/guests/build.sh");
        assert!(status.success(), "tests/guests/build.sh failed");
        out
    })
}

/// One built test guest, e.g. `guest("escape")`.
pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(format!("{name}.wasm"))
}

/// Functions in `big.wasm`, the large-but-allowed module.
const BIG_MODULE_FUNCS: usize = 20_000;

/// Assembles WAT text.
fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid WAT")
}

/// A WASI command module whose `_start` runs `body` (plus the memory WASI needs).
fn command(extra: &str, body: &str) -> Vec<u8> {
    wasm(&format!(
        r#"(module
             (memory (export "memory") 1)
             {extra}
             (func (export "_start") {body}))"#
    ))
}

/// Where the suite's task files and the directory it grants live.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// Task files with no manifest: nothing granted.
    pub bare: PathBuf,
    /// `escape.wasm` with a manifest granting `/data` (read-only), one env var and one
    /// config value.
    pub granted: PathBuf,
    /// Hand-written hostile modules, one task each (named after the file).
    pub wat: PathBuf,
}

impl Fixture {
    /// Lays out the task directories.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (bare, granted, data, wat) = (
            root.join("bare"),
            root.join("granted"),
            root.join("data"),
            root.join("wat"),
        );
        for d in [&bare, &granted, &data, &wat] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::copy(guest("escape"), bare.join("escape.wasm")).unwrap();
        std::fs::copy(guest("escape"), granted.join("escape.wasm")).unwrap();
        std::fs::write(
            granted.join("escape.toml"),
            format!(
                "[capabilities]\ndirs = {{ \"/data\" = {:?} }}\nenv = {{ GRANTED = \"yes\" }}\n\
                 config = {{ api_url = \"http://api.invalid\" }}\n",
                data.display().to_string()
            ),
        )
        .unwrap();
        std::fs::write(data.join("hello.txt"), "hello from /data").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", data.join("passwd")).unwrap();
        std::os::unix::fs::symlink("..", data.join("up")).unwrap();
        std::os::unix::fs::symlink("../granted/escape.toml", data.join("sibling")).unwrap();

        let write = |name: &str, bytes: Vec<u8>| std::fs::write(wat.join(name), bytes).unwrap();
        // An infinite loop in the start function: runs while instantiating.
        write(
            "start_loop.wasm",
            command("(func $spin (loop br 0)) (start $spin)", ""),
        );
        // Unbounded recursion on the native wasm stack.
        write(
            "deep.wasm",
            command(
                "(func $down (param i32) (result i32) local.get 0 i32.const 1 i32.add call $down)",
                "i32.const 0 call $down drop",
            ),
        );
        // Grows a table 10k elements at a time until refused, then traps.
        write(
            "table_bomb.wasm",
            command(
                "(table $t 1 funcref)",
                "(loop (if (i32.eq (table.grow $t (ref.null func) (i32.const 10000)) (i32.const -1)) \
                 (then unreachable)) br 0)",
            ),
        );
        // Grows memory a page at a time until refused, then traps.
        write(
            "memory_bomb.wasm",
            command(
                "",
                "(loop (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable)) br 0)",
            ),
        );
        // A 4 GiB initial memory with a data segment near its end.
        write(
            "huge_data.wasm",
            wasm(
                r#"(module
                     (memory (export "memory") 65536)
                     (data (i32.const 0xfff00000) "the end")
                     (func (export "_start")))"#,
            ),
        );
        // 2 MiB of data for a memory of one 64 KiB page.
        let mut big = String::from(r#"(module (memory (export "memory") 1) (data (i32.const 0) ""#);
        big.push_str(&"\\00".repeat(2 << 20));
        big.push_str(r#"") (func (export "_start")))"#);
        write("overflowing_data.wasm", wasm(&big));
        // A component that instantiates far more core instances than a slot allows.
        let mut component = String::from("(component (core module $m)");
        for _ in 0..200 {
            component.push_str(" (core instance (instantiate $m))");
        }
        component.push(')');
        write("instance_bomb.wasm", wasm(&component));
        // A large module (many functions) under the file cap: compiles within a bound.
        let mut many =
            String::from("(module (memory (export \"memory\") 1) (func (export \"_start\"))");
        for i in 0..BIG_MODULE_FUNCS {
            many.push_str(&format!(
                " (func (result i64) i64.const {i} i64.const 3 i64.mul i64.const 7 i64.add \
                 i64.const 11 i64.xor i64.const 13 i64.rotl)"
            ));
        }
        many.push(')');
        write("big.wasm", wasm(&many));
        // Over the suite's 4 MiB cap for task files: refused before it is even read.
        let mut bomb = wasm(r#"(module (memory (export "memory") 1) (func (export "_start")))"#);
        bomb.extend(custom_section("padding", 5 << 20));
        write("compile_bomb.wasm", bomb);
        Fixture {
            _dir: dir,
            bare,
            granted,
            wat,
        }
    }
}

/// A wasm custom section of `len` zero bytes (valid anywhere after the header).
fn custom_section(name: &str, len: usize) -> Vec<u8> {
    fn leb(n: usize, out: &mut Vec<u8>) {
        crate::support::leb128(n as u64, out);
    }
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name.as_bytes());
    payload.resize(payload.len() + len, 0);
    let mut section = vec![0u8];
    leb(payload.len(), &mut section);
    section.extend(payload);
    section
}

/// The registries the suite runs against, loaded through the real registry path.
pub struct Suite {
    /// `escape` with nothing granted.
    pub bare: Arc<Registry>,
    /// `escape` with `/data`, env and config granted.
    pub granted: Arc<Registry>,
    /// The hand-written modules that loaded.
    pub wat: Arc<Registry>,
    /// The hand-written modules that were refused at load, with the reason.
    pub wat_rejected: Vec<Rejected>,
}

/// Loads the fixture's directories (task files capped at 4 MiB).
pub async fn load(sandbox: &Sandbox, fx: &Fixture) -> Suite {
    sandbox.set_max_task_file_bytes(4 << 20);
    let defaults = Limits::default();
    let bare = Arc::new(Registry::new());
    assert!(
        bare.load(sandbox, std::slice::from_ref(&fx.bare), &defaults)
            .await
            .is_empty()
    );
    let granted = Arc::new(Registry::new());
    assert!(
        granted
            .load(sandbox, std::slice::from_ref(&fx.granted), &defaults)
            .await
            .is_empty()
    );
    let wat = Arc::new(Registry::new());
    let started = Instant::now();
    let wat_rejected = wat
        .load(sandbox, std::slice::from_ref(&fx.wat), &defaults)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "loading took {:?}",
        started.elapsed()
    );
    Suite {
        bare,
        granted,
        wat,
        wat_rejected,
    }
}

fn no_limits() -> LimitOverrides {
    LimitOverrides::default()
}

fn io_error(e: &Execution) -> String {
    match &e.outcome {
        Outcome::GuestError { kind, message, .. } if kind == "IOError" => message.clone(),
        other => panic!("expected an IOError the guest handled, got {other:?}"),
    }
}

/// A good job after each bad one: the pool still serves.
async fn still_serving(pool: &dyn Pool, suite: &Suite) {
    let e = run_job(pool, &suite.granted, "env", json!(["GRANTED"]), no_limits()).await;
    assert_eq!(
        e.outcome,
        Outcome::Success {
            value: json!("yes")
        },
        "the pool stopped serving"
    );
}

/// Which of the suite's registries a case runs against.
#[derive(Debug, Clone, Copy)]
enum Tasks {
    /// `escape` with nothing granted.
    Bare,
    /// `escape` with `/data`, env and config granted.
    Granted,
    /// The hand-written modules.
    Wat,
}

/// What a case must end as.
type Expect<'a> = Box<dyn Fn(&Execution) + 'a>;

/// One hostile job: what it runs, how long it may take, and how it must end.
struct Case<'a> {
    /// What it tries (printed with the outcome).
    what: &'static str,
    from: Tasks,
    task: &'static str,
    args: Value,
    limits: LimitOverrides,
    /// The job (not the follow-up good job) must end within this.
    within: Duration,
    expect: Expect<'a>,
}

impl<'a> Case<'a> {
    /// A case with no job limits and a 5 s bound.
    fn new(what: &'static str, from: Tasks, task: &'static str, args: Value) -> Self {
        Case {
            what,
            from,
            task,
            args,
            limits: no_limits(),
            within: Duration::from_secs(5),
            expect: Box::new(|e| panic!("no expectation set: {:?}", e.outcome)),
        }
    }

    fn within(mut self, secs: u64) -> Self {
        self.within = Duration::from_secs(secs);
        self
    }

    fn limits(mut self, limits: LimitOverrides) -> Self {
        self.limits = limits;
        self
    }

    /// The guest got an IO error it handled (a denial, not a crash).
    fn io_error(self) -> Self {
        self.expect(|e| eprintln!("    -> {}", io_error(e)))
    }

    /// Exactly this outcome.
    fn outcome(self, want: Outcome) -> Self {
        self.expect(move |e| assert_eq!(e.outcome, want))
    }

    /// Success with this value.
    fn success(self, value: Value) -> Self {
        self.outcome(Outcome::Success { value })
    }

    /// Stopped at the default 64 MiB memory limit.
    fn memory_limit(self) -> Self {
        self.outcome(Outcome::MemoryLimit {
            limit_bytes: 64 << 20,
        })
    }

    /// A trap whose message contains `needle`.
    fn trap(self, needle: &'static str) -> Self {
        self.expect(move |e| {
            assert!(
                matches!(&e.outcome, Outcome::Trap { message, .. } if message.contains(needle)),
                "expected a trap containing {needle:?}, got {:?}",
                e.outcome
            )
        })
    }

    fn expect(mut self, check: impl Fn(&Execution) + 'a) -> Self {
        self.expect = Box::new(check);
        self
    }
}

/// Every hostile case. `listener` is a local port the guests must not reach.
fn cases(listener: &TcpListener) -> Vec<Case<'_>> {
    use Tasks::{Bare, Granted, Wat};
    let addr = listener.local_addr().unwrap().to_string();
    let mut cases = vec![
        // Files: nothing granted → nothing to open.
        Case::new(
            "read without a grant",
            Bare,
            "read_file",
            json!(["/etc/passwd"]),
        )
        .io_error(),
        Case::new("list / without a grant", Bare, "list_dir", json!(["/"])).io_error(),
        // A granted directory is readable...
        Case::new(
            "read the grant",
            Granted,
            "read_file",
            json!(["/data/hello.txt"]),
        )
        .success(json!("hello from /data")),
        // ...but only it, read-only, with no way out.
        Case::new(
            "read outside the grant",
            Granted,
            "read_file",
            json!(["/etc/passwd"]),
        )
        .io_error(),
        Case::new(
            "write into the read-only grant",
            Granted,
            "write_file",
            json!(["/data/new.txt", "x"]),
        )
        .io_error(),
        Case::new(
            "write outside the grant",
            Granted,
            "write_file",
            json!(["/tmp/sprout-escape.txt", "x"]),
        )
        .expect(|e| {
            eprintln!("    -> {}", io_error(e));
            assert!(!Path::new("/tmp/sprout-escape.txt").exists());
        }),
    ];
    for path in [
        "/data/../../../../etc/passwd",
        "/data/../granted/escape.toml",
        "../etc/passwd",
    ] {
        cases.push(Case::new("path traversal", Granted, "read_file", json!([path])).io_error());
    }
    for path in [
        "/data/passwd",
        "/data/up/granted/escape.toml",
        "/data/sibling",
    ] {
        cases.push(Case::new("symlink escape", Granted, "read_file", json!([path])).io_error());
    }
    // Network: a listening port the guest must not reach, and DNS.
    cases.push(
        Case::new("connect to a local port", Granted, "connect", json!([addr])).expect(move |e| {
            eprintln!("    -> {}", io_error(e));
            assert!(listener.accept().is_err(), "the guest reached the port");
        }),
    );
    cases.push(
        Case::new(
            "connect without a grant",
            Bare,
            "connect",
            json!(["127.0.0.1:6379"]),
        )
        .io_error(),
    );
    for host in ["localhost", "example.com"] {
        cases.push(Case::new("DNS", Bare, "resolve", json!([host])).io_error());
    }
    cases.extend([
        // Environment: only what was granted, config values under their prefix.
        Case::new("inherit the environment", Bare, "environ", json!([])).success(json!([])),
        Case::new(
            "read an env var not granted",
            Granted,
            "env",
            json!(["HOME"]),
        )
        .success(Value::Null),
        Case::new("read the whole environment", Granted, "environ", json!([])).success(json!([
            "GRANTED=yes",
            "SPROUT_CONFIG_api_url=http://api.invalid"
        ])),
        // Memory: a Rust guest allocating forever, and raw memory.grow / table.grow loops.
        Case::new("Rust memory bomb", Bare, "memory_bomb", json!([]))
            .within(10)
            .memory_limit(),
        Case::new("memory.grow bomb", Wat, "memory_bomb", json!([]))
            .within(10)
            .memory_limit(),
        // Growth stops at the pool's per-table cap (or the limiter's): `table.grow`
        // returns -1 and this guest traps on it.
        Case::new("table.grow bomb", Wat, "table_bomb", json!([]))
            .within(10)
            .expect(|e| {
                assert!(
                    matches!(
                        e.outcome,
                        Outcome::MemoryLimit { .. } | Outcome::Trap { .. }
                    ),
                    "{:?}",
                    e.outcome
                )
            }),
        // A 4 GiB initial memory is refused when instantiating.
        Case::new("4 GiB initial memory", Wat, "huge_data", json!([]))
            .within(10)
            .memory_limit(),
        // Data that does not fit its memory fails instantiation with a reason.
        Case::new("data past its memory", Wat, "overflowing_data", json!([]))
            .within(10)
            .trap("out of bounds"),
        // Stack: native wasm stack, and a Rust guest's shadow stack in linear memory.
        Case::new("native stack overflow", Wat, "deep", json!([]))
            .within(10)
            .trap("stack overflow"),
        Case::new(
            "shadow stack overflow",
            Bare,
            "recurse",
            json!([10_000_000]),
        )
        .within(10)
        .trap(""),
        // CPU: an infinite loop in the start function is stopped by fuel.
        Case::new("infinite loop in start", Wat, "start_loop", json!([]))
            .within(10)
            .limits(LimitOverrides {
                fuel: Some(500_000_000),
                ..no_limits()
            })
            .outcome(Outcome::OutOfFuel {
                budget: 500_000_000,
            }),
        // A large module that did load runs like any other.
        Case::new("large module", Wat, "big", json!([]))
            .within(10)
            .success(Value::Null),
        // Output: 64 MiB to stdout is captured up to the log cap; the job still succeeds.
        Case::new("stdout flood", Bare, "flood", json!([64]))
            .within(30)
            .expect(|e| {
                assert_eq!(
                    e.outcome,
                    Outcome::Success {
                        value: json!("done")
                    }
                );
                assert!(e.logs.len() < 100_000, "captured {} bytes", e.logs.len());
            }),
    ]);
    cases
}

/// Every hostile case, on `pool`: each ends as its expected outcome within its bound,
/// and a good job right after it still succeeds.
pub async fn adversarial_suite(pool: Arc<dyn Pool>, suite: &Suite) {
    let pool = pool.as_ref();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    for case in cases(&listener) {
        let registry = match case.from {
            Tasks::Bare => &suite.bare,
            Tasks::Granted => &suite.granted,
            Tasks::Wat => &suite.wat,
        };
        let started = Instant::now();
        let e = run_job(pool, registry, case.task, case.args.clone(), case.limits).await;
        let took = started.elapsed();
        eprintln!(
            "{}: {}{}: {:?} in {took:?}",
            case.what, case.task, case.args, e.outcome
        );
        (case.expect)(&e);
        assert!(
            took < case.within,
            "{}: {} took {took:?} (bound {:?})",
            case.what,
            case.task,
            case.within
        );
        still_serving(pool, suite).await;
    }
}

/// What the hand-written modules that must not load said.
pub fn check_rejections(suite: &Suite) {
    let reason = |name: &str| -> String {
        suite
            .wat_rejected
            .iter()
            .find(|r| r.file.file_name().is_some_and(|f| f == name))
            .unwrap_or_else(|| panic!("{name} was not rejected: {:?}", suite.wat_rejected))
            .reason
            .clone()
    };
    let r = reason("compile_bomb.wasm");
    assert!(r.contains("limit for task files"), "{r}");
    let r = reason("instance_bomb.wasm");
    eprintln!("instance bomb: {r}");
    assert_eq!(suite.wat_rejected.len(), 2, "{:?}", suite.wat_rejected);
}

/// Denials the host can see are logged with the task and the job id.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn async_pool_adversarial() {
    // One thread, so this test's log capture sees the pool's logs.
    let logs = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fx = Fixture::new();
    let sandbox = support::sandbox(32);
    let suite = load(&sandbox, &fx).await;
    check_rejections(&suite);
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 8));
    adversarial_suite(pool.clone(), &suite).await;

    // The socket and DNS attempts above were logged with task and job id.
    let e = run_job(
        pool.as_ref(),
        &suite.bare,
        "connect",
        json!(["127.0.0.1:9"]),
        no_limits(),
    )
    .await;
    io_error(&e);
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let denial = text
        .lines()
        .find(|l| l.contains("denied") && l.contains("TCP socket") && l.contains("task=connect"))
        .unwrap_or_else(|| panic!("no TCP denial logged:\n{text}"));
    assert!(denial.contains("job="), "{denial}");
    assert!(
        text.lines()
            .any(|l| l.contains("denied") && l.contains("resolve \"example.com\"")),
        "{text}"
    );
}
