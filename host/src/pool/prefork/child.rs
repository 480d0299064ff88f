//! The child side of the prefork pool: `sprout child`, a hidden mode of the same binary.
//!
//! A child builds its own [`Sandbox`] with the engine settings the parent passed (the
//! same binary and settings give the same engine compatibility hash, so it loads the
//! artifacts the parent compiled into the shared cache directory instead of compiling),
//! then answers `Run` frames until its stdin closes. It runs on a current-thread tokio
//! runtime: guests yield every fuel slice, so the frame reader stays responsive even
//! while a CPU-heavy job runs, and more than one job can run at once
//! (`--child-concurrency`).
//!
//! It dies with its parent: `PR_SET_PDEATHSIG(SIGKILL)` at startup, a check that the
//! parent is still the one that spawned it, and an immediate exit when stdin reaches EOF
//! or stdout breaks. It ignores SIGINT and SIGTERM, which a terminal or a service
//! manager sends to the whole group: the parent's warm shutdown decides when it stops.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, FromChild, PROTOCOL_VERSION, ToChild};
use crate::model::{Execution, Outcome};
use crate::sandbox::{EngineSettings, Sandbox, TaskModule};

/// What `sprout child` needs: the parent's engine settings and cache directory. The
/// one declaration of a child's settings: the parent writes them as one argument
/// ([`ChildOptions::to_arg`]) and the child reads them back ([`ChildOptions::from_arg`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildOptions {
    /// Engine settings (must match the parent's for the artifact cache to be shared).
    pub settings: EngineSettings,
    /// The shared artifact cache; `None` compiles in every child.
    pub cache_dir: Option<PathBuf>,
    /// The parent's pid: the child exits at once if it has already been re-parented.
    pub parent_pid: Option<u32>,
    /// The parent's protocol version; a child of another version refuses to start.
    pub protocol: u32,
    /// Scheduling niceness for the whole child (0 = the parent's; higher = yields the
    /// CPU to the parent and to other pools' work).
    pub nice: i32,
    /// Run under `SCHED_IDLE`: only CPU time nothing else wants (see
    /// `PreforkConfig::idle_priority`).
    pub idle_priority: bool,
    /// Report the peak resident memory with every `Done` (the parent sets it when it
    /// recycles children by memory; reading it costs a few µs per job).
    pub report_memory: bool,
}

impl ChildOptions {
    /// The options as the one command-line argument the parent passes (JSON).
    pub fn to_arg(&self) -> String {
        serde_json::to_string(self).expect("child options always serialise")
    }

    /// Reads the argument written by [`ChildOptions::to_arg`].
    ///
    /// # Errors
    /// Not the JSON of a `ChildOptions` (a child of another Sprout version).
    pub fn from_arg(arg: &str) -> Result<ChildOptions, serde_json::Error> {
        serde_json::from_str(arg)
    }
}

/// Exit code when the child cannot start (bad protocol version, engine error).
const EXIT_START_FAILED: u8 = 3;

/// Runs the child until the parent closes its stdin. Call it before any tokio runtime
/// exists: it builds its own current-thread runtime.
pub fn main(options: ChildOptions) -> ExitCode {
    ignore_group_signals();
    die_with_parent(options.parent_pid);
    let pid = std::process::id();
    if options.nice != 0 {
        // Before any thread exists: on Linux niceness is per thread, and threads created
        // later (tokio's blocking pool, the compiler's) inherit it.
        // SAFETY: setpriority on this process only.
        let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, options.nice) };
        if set != 0 {
            tracing::warn!(
                "child pid {pid}: cannot set niceness {}: {}",
                options.nice,
                std::io::Error::last_os_error()
            );
        }
    }
    if options.idle_priority {
        // Also before any thread exists: the policy is per thread and inherited.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler on this thread, with a valid parameter block.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::warn!(
                "child pid {pid}: cannot switch to idle priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if options.protocol != PROTOCOL_VERSION {
        tracing::error!(
            "child pid {pid}: the parent speaks prefork protocol {}, this binary {PROTOCOL_VERSION} \
             (was the sprout binary replaced while the worker ran?)",
            options.protocol
        );
        return ExitCode::from(EXIT_START_FAILED);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("child pid {pid}: cannot start its runtime: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    // The pipes register with the runtime's I/O driver, so they are made inside it.
    let fds = runtime.block_on(async { protocol_fds() });
    let (input, output) = match fds {
        Ok(fds) => fds,
        Err(e) => {
            tracing::error!("child pid {pid}: cannot set up its pipes: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    runtime.block_on(serve(options, input, output))
}

/// Ignores SIGINT and SIGTERM. Ctrl-C in a terminal signals the whole process group,
/// and a service manager stopping the worker may signal every process of it: the parent
/// alone decides when a child stops (a warm shutdown lets running jobs finish), by
/// closing its stdin.
fn ignore_group_signals() {
    // SAFETY: setting signal dispositions to SIG_IGN, before any thread exists.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

/// Makes the kernel SIGKILL this process when the thread that spawned it exits (the
/// parent keeps one spawner thread for the pool's lifetime), then checks the parent did
/// not already die before the signal was armed.
fn die_with_parent(parent_pid: Option<u32>) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    let armed = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } == 0;
    if !armed {
        tracing::warn!(
            "child pid {}: cannot arm the parent-death signal; relying on pipe EOF",
            std::process::id()
        );
    }
    if let Some(parent) = parent_pid {
        // SAFETY: getppid has no preconditions.
        let now = unsafe { libc::getppid() };
        if u32::try_from(now).ok() != Some(parent) {
            std::process::exit(0);
        }
    }
}

/// The protocol's file descriptors: stdin for frames in, and a private duplicate of
/// stdout for frames out. fd 1 itself is then pointed at stderr, so nothing else in the
/// process (a stray `println!`, a library) can corrupt the frame stream.
fn protocol_fds() -> std::io::Result<(pipe::Receiver, pipe::Sender)> {
    // SAFETY: plain fd syscalls on this process's own stdio descriptors; the duplicate is
    // owned by exactly one `OwnedFd`.
    let (input, output) = unsafe {
        let out = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if out < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let output = OwnedFd::from_raw_fd(out);
        if libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let input = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        if input < 0 {
            return Err(std::io::Error::last_os_error());
        }
        (OwnedFd::from_raw_fd(input), output)
    };
    Ok((
        pipe::Receiver::from_owned_fd(input)?,
        pipe::Sender::from_owned_fd(output)?,
    ))
}

async fn serve(options: ChildOptions, input: pipe::Receiver, output: pipe::Sender) -> ExitCode {
    let pid = std::process::id();
    // Buffered: a frame's length and body (and often the next frames) in one read.
    let mut input = tokio::io::BufReader::with_capacity(64 << 10, input);
    let sandbox = match Sandbox::new(options.settings, options.cache_dir.as_deref()) {
        Ok(sandbox) => sandbox,
        Err(e) => {
            tracing::error!("child pid {pid}: cannot build the wasm engine: {e:#}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    // Every file comes from the parent, which checked its shape against its own caps.
    sandbox.set_shape_caps(crate::sandbox::ShapeCaps::UNLIMITED);
    let peak = if options.report_memory {
        match PeakRss::open() {
            Ok(peak) => Some(Arc::new(peak)),
            Err(e) => {
                tracing::error!("child pid {pid}: cannot read its memory use: {e}");
                return ExitCode::from(EXIT_START_FAILED);
            }
        }
    } else {
        None
    };
    let (frames, outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(write_frames(output, outgoing));
    let _ = frames.send(protocol::encode(&FromChild::Ready {
        pid,
        version: env!("CARGO_PKG_VERSION").into(),
    }));

    // Module versions by hash, or why one failed to load.
    let mut modules: HashMap<String, Result<Arc<TaskModule>, String>> = HashMap::new();
    // How to stop each running job, by seq.
    let running: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
    let mut buf = Vec::new();
    loop {
        let frame = match protocol::read_frame::<ToChild>(&mut input, &mut buf).await {
            Ok(Some(frame)) => frame,
            // The parent closed our stdin: it wants us gone, or it died. Running jobs
            // have nobody to report to.
            Ok(None) => std::process::exit(0),
            Err(e) => {
                tracing::error!("child pid {pid}: bad frame from the parent, exiting: {e}");
                std::process::exit(2);
            }
        };
        match frame {
            ToChild::Load { hash, bytes } => {
                let loaded = match sandbox.load(bytes.to_vec()).await {
                    Ok(module) if module.hash == hash => Ok(module),
                    Ok(module) => Err(format!(
                        "the module bytes hash to {}, not {hash}",
                        module.hash
                    )),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(reason) = &loaded {
                    tracing::warn!("child pid {pid}: cannot load module {hash}: {reason}");
                }
                modules.insert(hash, loaded);
            }
            ToChild::Run { seq, hash, request } => {
                let module = modules.get(&hash).cloned();
                let sandbox = sandbox.clone();
                let reply = Reply {
                    seq,
                    frames: Some(frames.clone()),
                    peak: peak.clone(),
                };
                let (cancel, cancelled) = oneshot::channel();
                lock(&running).insert(seq, cancel);
                let running = running.clone();
                // One task per job, as in the async pool; the reply reports a panic in
                // it as a failed job instead of leaving the parent waiting. A cancel
                // drops the guest at its next yield point; the job's neighbours run on.
                tokio::spawn(async move {
                    let execution = tokio::select! {
                        execution = run(&sandbox, module, &hash, *request) => execution,
                        Ok(()) = cancelled => Execution::not_started(Outcome::WorkerLost {
                            reason: "cancelled by the parent".into(),
                        }),
                    };
                    lock(&running).remove(&seq);
                    reply.send(execution);
                });
            }
            ToChild::Cancel { seq } => {
                if let Some(cancel) = lock(&running).remove(&seq) {
                    let _ = cancel.send(());
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one job (on the task [`serve`] spawned for it).
async fn run(
    sandbox: &Sandbox,
    module: Option<Result<Arc<TaskModule>, String>>,
    hash: &str,
    request: crate::sandbox::RunRequest,
) -> Execution {
    let module = match module {
        Some(Ok(module)) => module,
        Some(Err(reason)) => {
            return Execution::not_started(Outcome::InvalidTaskFile { reason });
        }
        None => {
            return Execution::not_started(Outcome::InvalidTaskFile {
                reason: format!("the prefork parent never sent module {hash} to this child"),
            });
        }
    };
    sandbox.run(&module, request).await
}

/// Sends a job's `Done` frame. Dropped without [`Reply::send`] — the job's task
/// panicked (a host bug) — it reports the job as `WorkerLost`, so one bad job fails
/// alone and the parent never waits for a frame that will not come.
struct Reply {
    seq: u64,
    /// `None` once sent.
    frames: Option<mpsc::UnboundedSender<Vec<u8>>>,
    peak: Option<Arc<PeakRss>>,
}

impl Reply {
    fn send(mut self, execution: Execution) {
        self.deliver(execution);
    }

    fn deliver(&mut self, execution: Execution) {
        let Some(frames) = self.frames.take() else {
            return;
        };
        let peak_rss_bytes = self.peak.as_ref().and_then(|peak| peak.read());
        let _ = frames.send(protocol::encode(&FromChild::Done {
            seq: self.seq,
            execution,
            peak_rss_bytes,
        }));
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.frames.is_some() {
            self.deliver(Execution::not_started(Outcome::WorkerLost {
                reason: "the host task running the job panicked".into(),
            }));
        }
    }
}

/// Writes queued frames to the parent, batching what is queued into one write. Exits
/// the process when the pipe breaks: the parent is gone.
async fn write_frames(mut output: pipe::Sender, mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    while outgoing.recv_many(&mut batch, 64).await > 0 {
        bytes.clear();
        for frame in batch.drain(..) {
            bytes.extend_from_slice(&frame);
        }
        if output.write_all(&bytes).await.is_err() {
            std::process::exit(0);
        }
    }
}

/// This process's peak resident memory, `VmHWM` in `/proc/self/status`, read through a
/// file kept open (one `pread` per job, no `open`/`close`).
///
/// Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries the high-water mark of the
/// address space a process had *before* `execve` into it, and a spawned child's
/// pre-exec address space is its parent's, so a child of a 400 MB worker reports
/// 400 MB from its first job on (measured: 423,500 KiB vs `VmHWM` 13,584 kB).
/// `VmHWM` belongs to the address space the child built after `exec`.
#[derive(Debug)]
pub struct PeakRss {
    status: std::fs::File,
}

impl PeakRss {
    /// Opens `/proc/self/status`.
    ///
    /// # Errors
    /// `/proc` is not mounted or not readable.
    pub fn open() -> std::io::Result<PeakRss> {
        Ok(PeakRss {
            status: std::fs::File::open("/proc/self/status")?,
        })
    }

    /// The peak resident size in bytes so far (`None` if it cannot be read).
    pub fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        // The whole file is ~1.5 KiB; VmHWM is in its first half.
        let mut buf = [0u8; 4096];
        let n = self.status.read_at(&mut buf, 0).ok()?;
        parse_vm_hwm(&buf[..n])
    }
}

/// The `VmHWM:   13584 kB` line of a `/proc/PID/status` text, in bytes.
fn parse_vm_hwm(status: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_this_process() {
        let peak = PeakRss::open().unwrap();
        // Touch 32 MiB: the peak is then at least the resident size, which includes it,
        // and a second read through the same fd (offset 0) sees the new value.
        let block = vec![1u8; 32 << 20];
        std::hint::black_box(&block);
        let resident = std::fs::read_to_string("/proc/self/statm")
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            // SAFETY: sysconf has no preconditions.
            * u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        assert!(resident >= 32 << 20, "{resident}");
        let first = peak.read().expect("VmHWM");
        assert!(first >= resident, "peak {first} < resident {resident}");
        assert_eq!(peak.read().map(|again| again >= first), Some(true));
        assert_eq!(
            parse_vm_hwm(b"Name:\tx\nVmPeak:\t 1 kB\nVmHWM:\t   13584 kB\n"),
            Some(13584 * 1024)
        );
        assert_eq!(parse_vm_hwm(b"Name:\tx\n"), None);
    }
}
