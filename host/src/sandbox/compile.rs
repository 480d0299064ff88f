//! Compiling a task file in a child process, under a memory and a time limit.
//!
//! The shape caps ([`super::ShapeCaps`]) refuse the worst files before anything is
//! compiled, but a file under them can still cost a lot: wasmtime compiles functions in
//! parallel, so memory grows with the core count (measured on 2 cores: 0.7 GiB and 32 s
//! for 99,000 functions with 60 MB of code). So the worker compiles out of process: it
//! runs its own binary as `sprout compile` (hidden), hands it the wasm on stdin, and
//! reads the precompiled artifact back on stdout, while it watches the child's resident
//! memory (`/proc/<pid>/status`, every 10 ms) and the clock. A child over
//! [`CompileLimits::max_rss_bytes`] or [`CompileLimits::timeout`] is killed and the file
//! is rejected with the limit it broke; the worker itself never holds the compiler's
//! memory. The child builds an engine with the worker's own settings (one pool slot), so
//! its artifacts are the worker's (same compatibility hash) and go into the same cache.
//!
//! Library users who do not set limits ([`super::Sandbox::set_compile_limits`]) compile
//! in process, as before.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::engine::{EngineSettings, build_engine};

/// Where and how task files are compiled out of process.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileLimits {
    /// The `sprout` executable (it runs as `sprout compile`).
    pub program: PathBuf,
    /// Largest resident memory the compiling child may reach. Default: 2 GiB.
    pub max_rss_bytes: u64,
    /// Longest a compile may take. Default: 300 s.
    pub timeout: Duration,
}

/// Default for [`CompileLimits::max_rss_bytes`]: 2 GiB.
pub const DEFAULT_MAX_RSS_BYTES: u64 = 2 << 30;
/// Default for [`CompileLimits::timeout`]: 300 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the child compiles, passed as its one argument (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileRequest {
    /// The worker's engine settings.
    pub settings: EngineSettings,
    /// A component (else a core module).
    pub component: bool,
}

/// How often the parent looks at the child's memory.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// The resident memory of process `pid` (`VmRSS`), in bytes.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Compiles `bytes` in a child process under `limits`; returns the artifact.
///
/// # Errors
/// A readable reason: the child went over its memory or time limit (naming it), could
/// not be started, or the compiler refused the file.
pub(crate) fn precompile(
    limits: &CompileLimits,
    settings: &EngineSettings,
    component: bool,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let request = CompileRequest {
        settings: EngineSettings {
            max_instances: 1,
            ..settings.clone()
        },
        component,
    };
    let request = serde_json::to_string(&request).expect("a compile request serialises");
    let mut child = Command::new(&limits.program)
        .arg("compile")
        .arg("--request")
        .arg(request)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the compiler process: {e}"))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // A child killed mid-read closes the pipe: nothing to report from here.
            let _ = stdin.write_all(bytes);
        });
        let artifact = scope.spawn(move || {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).map(|_| out)
        });
        let errors = scope.spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let started = Instant::now();
        let mut peak = 0;
        let broke = loop {
            match child.try_wait() {
                Ok(Some(_)) => break None,
                Ok(None) => {}
                Err(e) => break Some(format!("cannot watch the compiler process: {e}")),
            }
            peak = peak.max(resident_bytes(pid).unwrap_or(0));
            if peak > limits.max_rss_bytes {
                break Some(format!(
                    "compiling needed more than {} of memory (the limit, `--compile-memory`)",
                    crate::model::human_bytes(limits.max_rss_bytes)
                ));
            }
            if started.elapsed() > limits.timeout {
                break Some(format!(
                    "compiling took longer than {:?} (the limit, `--compile-timeout`)",
                    limits.timeout
                ));
            }
            std::thread::sleep(WATCH_EVERY);
        };
        if let Some(reason) = broke {
            let _ = child.kill();
            let _ = child.wait();
            return Err(reason);
        }
        let status = child
            .wait()
            .map_err(|e| format!("cannot wait for the compiler process: {e}"))?;
        let artifact = artifact.join().expect("reader thread");
        let errors = errors.join().expect("reader thread");
        match artifact {
            Ok(artifact) if status.success() => Ok(artifact),
            _ => Err(match errors.trim() {
                "" => format!("the compiler process failed ({status})"),
                text => text.to_string(),
            }),
        }
    })
}

/// `sprout compile --request JSON`: reads wasm on stdin, writes the precompiled artifact
/// on stdout; on failure, the reason on stderr and exit code 1 (2: a bad request).
pub fn child_main(request: &str) -> ExitCode {
    let request: CompileRequest = match serde_json::from_str(request) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "unreadable compile request: {e}");
            return ExitCode::from(2);
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        let _ = writeln!(std::io::stderr(), "cannot read the task file: {e}");
        return ExitCode::from(1);
    }
    let compiled = build_engine(&request.settings).and_then(|engine| {
        if request.component {
            engine.precompile_component(&bytes)
        } else {
            engine.precompile_module(&bytes)
        }
    });
    match compiled {
        Ok(artifact) => match std::io::stdout().write_all(&artifact) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        },
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e:#}");
            ExitCode::from(1)
        }
    }
}
