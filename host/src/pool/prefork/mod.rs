//! The prefork pool: N supervised child processes, each running its own sandbox.
//!
//! ```text
//! parent (broker, acks, results)                 child = `sprout child` (same binary)
//!   execute(job) → permit → least-loaded child ──stdin──▶ Load{hash,bytes} (once) / Run
//!                                          ◀──stdout── Done{execution, peak rss}
//!   supervisor per slot: spawn → Ready → serve → exit → WorkerLost for what was in
//!   flight → respawn (with backoff if children keep dying)
//! ```
//! - **Why processes.** Crash isolation (a host or wasmtime bug takes one child, not the
//!   worker), per-process memory limits and recycling, and plain multi-core CPU without
//!   contention in one runtime. Cost: a few ms and ~13 MB per child, and tens of µs per
//!   job for the round trip (see `benches/prefork.rs`).
//! - **Children are `spawn`ed, never `fork`ed**: the parent has threads (tokio, wasmtime)
//!   by the time a child is needed, and fork would copy them in an unknown state. The
//!   child re-executes the `sprout` binary in its hidden `child` mode ([`child`]).
//! - **Same engine, shared cache.** Children get the parent's [`EngineSettings`] and
//!   artifact cache directory, so they load the artifacts the parent compiled
//!   (`.cwasm` files are only valid for the exact same engine configuration and binary).
//! - **Exact versions.** A job carries its `TaskEntry`; the parent sends that module's
//!   bytes to a child the first time the child needs that content hash, so hot reload
//!   never makes a child run a different version than the job started with.
//! - **Supervision.** A child that dies (panic → abort, SIGKILL, the OOM killer, a closed
//!   pipe) is replaced; each job it was running ends as [`Outcome::WorkerLost`] with the
//!   exit status, and the worker retries it when the task's policy allows
//!   (`retry_on_worker_lost`, on by default) or stores a FAILURE — it never vanishes.
//!   A child past `max_tasks_per_child` jobs or whose resident memory went over
//!   `max_memory_per_child` takes no new jobs, finishes its running ones and is replaced.
//!   A job that outlives its hard time limit by [`WATCHDOG_GRACE`] (the child should have
//!   stopped it) gets its child killed.
//! - **Children die with the parent**: parent-death signal plus exit on stdin EOF.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::pin::pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Pool, PoolKind};
use crate::model::{Execution, Outcome, human_bytes};
use crate::registry::TaskEntry;
use crate::sandbox::{EngineSettings, RunRequest, TaskModule};

pub mod child;
mod process;
pub(crate) mod protocol;

use child::ChildOptions;
use process::{Spawner, describe_exit};
use protocol::{FromChild, PROTOCOL_VERSION, ToChild};

/// How far past its hard time limit a job may run before the parent kills its child.
/// The child enforces the limit itself; this catches a child that no longer can.
pub const WATCHDOG_GRACE: Duration = Duration::from_secs(10);

/// How long a child may take from spawn to `Ready` (exec, engine, linkers).
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a child may take to exit after its stdin closes before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most child processes one prefork pool runs: far beyond what a machine's memory holds
/// (each child is a process with its own engine), low enough that a typo cannot make
/// the parent try to fork millions of processes.
pub const MAX_PROCESSES: usize = 4_096;

/// Most jobs one child runs at once (the async pool inside it); each also needs an
/// instance slot, whose address space the machine must be able to reserve.
pub const MAX_CHILD_CONCURRENCY: usize = 100_000;

/// Instance slots a child's engine keeps beyond its concurrency (loading a task file
/// instantiates it too).
const CHILD_SPARE_SLOTS: usize = 4;

/// How the pool runs its children.
#[derive(Debug, Clone)]
pub struct PreforkConfig {
    /// The `sprout` executable children run as `sprout child` (normally
    /// `std::env::current_exe()`; tests pass the binary under test).
    pub program: PathBuf,
    /// Number of child processes, 1 to [`MAX_PROCESSES`]. Default: the number of CPUs.
    pub processes: usize,
    /// Jobs one child runs at once (an async pool inside each child), 1 to
    /// [`MAX_CHILD_CONCURRENCY`]. Default: 1.
    pub child_concurrency: usize,
    /// Replace a child after it has run this many jobs. Default: never.
    pub max_tasks_per_child: Option<u64>,
    /// Replace a child, between jobs, once its peak resident memory is over this many
    /// bytes. Default: never.
    pub max_memory_per_child: Option<u64>,
    /// The children's engine settings: the parent's, so compiled artifacts are shared.
    /// `max_instances` is set from `child_concurrency`.
    pub settings: EngineSettings,
    /// The shared artifact cache directory; `None` makes each child compile every task
    /// file it is sent.
    pub cache_dir: Option<PathBuf>,
    /// The children's log filter (`--log`); `None` leaves it to `SPROUT_LOG`.
    pub log_filter: Option<String>,
    /// How long a child may take to become ready. Default: 30 s.
    pub start_timeout: Duration,
    /// The children's scheduling niceness (0–19; 0 = the parent's). Default: 0.
    pub nice: i32,
    /// Run the children under `SCHED_IDLE` (then `nice` does not matter): they get only
    /// CPU time no other thread wants, and any waking thread of normal priority
    /// preempts them at once. A mixed worker does this by default, so CPU-heavy jobs
    /// take only the CPU its async pools leave idle and their short jobs keep their
    /// throughput. The cost: while the async pools keep every core busy, these children
    /// barely run, and their jobs' wall-clock time limits keep counting. Default: off.
    pub idle_priority: bool,
}

impl PreforkConfig {
    /// `processes` children of `program`, one job at a time each, default engine
    /// settings and no artifact cache.
    pub fn new(program: impl Into<PathBuf>, processes: usize) -> Self {
        PreforkConfig {
            program: program.into(),
            processes,
            child_concurrency: 1,
            max_tasks_per_child: None,
            max_memory_per_child: None,
            settings: EngineSettings::default(),
            cache_dir: None,
            log_filter: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            nice: 0,
            idle_priority: false,
        }
    }

    /// The number of CPUs this process may use (the default for `processes`).
    pub fn default_processes() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    /// The engine settings each child builds its engine with: [`PreforkConfig::settings`]
    /// with room for `child_concurrency` guests.
    pub fn child_settings(&self) -> EngineSettings {
        let slots = self
            .child_concurrency
            .max(1)
            .saturating_add(CHILD_SPARE_SLOTS);
        EngineSettings {
            max_instances: u32::try_from(slots).unwrap_or(u32::MAX),
            ..self.settings.clone()
        }
    }

    /// Checks the counts a caller set: `processes` and `child_concurrency` within
    /// their bounds (0 is taken as 1).
    fn check(&self) -> Result<(), PreforkError> {
        if self.processes > MAX_PROCESSES {
            return Err(PreforkError::OutOfRange(format!(
                "{} child processes is more than the most one pool runs, {MAX_PROCESSES}",
                self.processes
            )));
        }
        if self.child_concurrency > MAX_CHILD_CONCURRENCY {
            return Err(PreforkError::OutOfRange(format!(
                "{} jobs at once per child is more than the most, {MAX_CHILD_CONCURRENCY}",
                self.child_concurrency
            )));
        }
        Ok(())
    }
}

/// Why a prefork pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PreforkError {
    /// The process supervisor (child reaping) could not be set up.
    #[error("cannot supervise child processes: {0}")]
    Supervisor(#[source] std::io::Error),
    /// A child could not be spawned or did not become ready.
    #[error("{0}")]
    ChildStart(String),
    /// `processes` or `child_concurrency` is over its bound ([`MAX_PROCESSES`],
    /// [`MAX_CHILD_CONCURRENCY`]).
    #[error("{0}")]
    OutOfRange(String),
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreforkStats {
    /// Children that became ready.
    pub started: u64,
    /// Children replaced on purpose (max tasks, max memory).
    pub recycled: u64,
    /// Children that died unexpectedly.
    pub lost: u64,
    /// Jobs that ended `WorkerLost` because their child died.
    pub jobs_lost: u64,
}

/// A job running in a child (see [`PreforkPool::active`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveJob {
    /// The child's pid.
    pub pid: u32,
    /// The job's id.
    pub job_id: String,
}

/// Runs jobs in supervised child processes. See the [module docs](self).
pub struct PreforkPool {
    shared: Arc<Shared>,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    config: PreforkConfig,
    spawner: Spawner,
    /// One entry per slot; `None` while that slot's child is (re)starting.
    children: Mutex<Vec<Option<Arc<ChildProc>>>>,
    /// `processes × child_concurrency` permits: waiting for one is back-pressure.
    slots: Arc<Semaphore>,
    /// Signalled when a child becomes ready, frees capacity, or the pool closes.
    changed: Notify,
    next_seq: AtomicU64,
    closing: AtomicBool,
    started: AtomicU64,
    recycled: AtomicU64,
    lost: AtomicU64,
    jobs_lost: AtomicU64,
}

/// The parent's view of one running child.
struct ChildProc {
    pid: u32,
    slot: usize,
    state: Mutex<ChildState>,
}

struct ChildState {
    /// Frames to the child's stdin; `None` once stdin is closed (retire, shutdown).
    frames: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Jobs sent and not yet done, by `seq`.
    in_flight: HashMap<u64, InFlight>,
    /// Module hashes this child has been sent.
    loaded: HashSet<String>,
    /// Jobs it finished.
    done: u64,
    /// Why it takes no new jobs (set when it is to be replaced).
    retiring: Option<String>,
    /// Why the parent killed it, when it did.
    killed: Option<String>,
    /// False once the process has been reaped (its pid may be reused after that).
    alive: bool,
}

/// A job waiting for its `Done`. Holds the pool permit, so a job whose `execute` future
/// was dropped still counts against capacity until its child is done with it.
struct InFlight {
    job_id: String,
    reply: oneshot::Sender<Execution>,
    _permit: OwnedSemaphorePermit,
}

/// A spawned child that said `Ready`.
struct Started {
    child: Arc<ChildProc>,
    process: tokio::process::Child,
    reader: BufReader<ChildStdout>,
    buf: Vec<u8>,
}

impl PreforkPool {
    /// Starts `config.processes` children and waits until every one is ready. The pool
    /// belongs to the calling tokio runtime (it reaps its children there).
    ///
    /// # Errors
    /// A child could not be spawned or did not become ready (wrong program path, an
    /// engine it cannot build): the pool would never run anything, so it fails here
    /// rather than retrying forever. Children already started are stopped. The counts
    /// are over their bounds ([`PreforkError::OutOfRange`]): nothing is started.
    pub async fn start(config: PreforkConfig) -> Result<PreforkPool, PreforkError> {
        config.check()?;
        let mut config = config;
        config.processes = config.processes.max(1);
        config.child_concurrency = config.child_concurrency.max(1);
        config.settings = config.child_settings();
        let permits = config.processes * config.child_concurrency;
        let shared = Arc::new(Shared {
            children: Mutex::new(vec![None; config.processes]),
            spawner: Spawner::new().map_err(PreforkError::Supervisor)?,
            config,
            slots: Arc::new(Semaphore::new(permits)),
            changed: Notify::new(),
            next_seq: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            started: AtomicU64::new(0),
            recycled: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            jobs_lost: AtomicU64::new(0),
        });
        let mut starting = tokio::task::JoinSet::new();
        for slot in 0..shared.config.processes {
            let shared = shared.clone();
            starting.spawn(async move { (slot, shared.spawn_child(slot).await) });
        }
        let mut first = Vec::new();
        let mut failure = None;
        while let Some(joined) = starting.join_next().await {
            match joined {
                Ok((slot, Ok(started))) => first.push((slot, started)),
                Ok((slot, Err(e))) => {
                    failure.get_or_insert(format!("prefork child {slot} did not start: {e}"));
                }
                Err(e) => {
                    failure.get_or_insert(format!("starting a prefork child failed: {e}"));
                }
            }
        }
        if let Some(failure) = failure {
            // Dropping the started children kills them (`kill_on_drop`).
            drop(first);
            return Err(PreforkError::ChildStart(failure));
        }
        {
            let mut children = lock(&shared.children);
            for (slot, started) in &first {
                children[*slot] = Some(started.child.clone());
            }
        }
        let supervisors = first
            .into_iter()
            .map(|(slot, started)| tokio::spawn(shared.clone().supervise(slot, started)))
            .collect();
        Ok(PreforkPool {
            shared,
            supervisors: Mutex::new(supervisors),
        })
    }

    /// The pids of the children running now (in slot order; a slot that is restarting
    /// has none).
    pub fn child_pids(&self) -> Vec<u32> {
        lock(&self.shared.children)
            .iter()
            .flatten()
            .map(|c| c.pid)
            .collect()
    }

    /// The jobs running now, with the pid of the child running each.
    pub fn active(&self) -> Vec<ActiveJob> {
        let children = lock(&self.shared.children);
        let mut active: Vec<ActiveJob> = children
            .iter()
            .flatten()
            .flat_map(|child| {
                lock(&child.state)
                    .in_flight
                    .values()
                    .map(|job| ActiveJob {
                        pid: child.pid,
                        job_id: job.job_id.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        active.sort_by(|a, b| (a.pid, &a.job_id).cmp(&(b.pid, &b.job_id)));
        active
    }

    /// Counters since the pool started.
    pub fn stats(&self) -> PreforkStats {
        let s = &self.shared;
        PreforkStats {
            started: s.started.load(Ordering::Relaxed),
            recycled: s.recycled.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
            jobs_lost: s.jobs_lost.load(Ordering::Relaxed),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &PreforkConfig {
        &self.shared.config
    }

    /// Stops every child: closes their stdin (they exit at once), waits for them to be
    /// reaped, and kills any that do not exit within a few seconds. Jobs still running
    /// end as `WorkerLost`. Call it after the worker using the pool has stopped.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.slots.close();
        self.shared.changed.notify_waiters();
        for child in lock(&self.shared.children).iter().flatten() {
            lock(&child.state).frames = None;
        }
        let supervisors: Vec<JoinHandle<()>> = lock(&self.supervisors).drain(..).collect();
        for mut supervisor in supervisors {
            let limit = EXIT_TIMEOUT + Duration::from_secs(1);
            if tokio::time::timeout(limit, &mut supervisor).await.is_err() {
                // Aborting drops the process handle, which kills the child.
                supervisor.abort();
                let _ = supervisor.await;
            }
        }
    }
}

impl Drop for PreforkPool {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        for child in lock(&self.shared.children).iter().flatten() {
            lock(&child.state).frames = None;
        }
        for supervisor in lock(&self.supervisors).drain(..) {
            supervisor.abort();
        }
    }
}

#[async_trait]
impl Pool for PreforkPool {
    async fn execute(&self, entry: Arc<TaskEntry>, request: RunRequest) -> Execution {
        let shared = &self.shared;
        let Ok(permit) = shared.slots.clone().acquire_owned().await else {
            return lost("the prefork pool is closed");
        };
        let hard_limit = request.limits.time_limit;
        let job_id = request.job_id.clone();
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let run = protocol::encode(&ToChild::Run {
            seq,
            hash: entry.module.hash.clone(),
            request: Box::new(request),
        });
        let (reply, mut done) = oneshot::channel();
        let mut job = Some((
            run,
            InFlight {
                job_id: job_id.clone(),
                reply,
                _permit: permit,
            },
        ));
        let child = loop {
            let mut changed = pin!(shared.changed.notified());
            changed.as_mut().enable();
            if shared.closing.load(Ordering::SeqCst) {
                return lost("the prefork pool is shutting down");
            }
            if let Some(child) = shared.dispatch(&entry.module, seq, &mut job) {
                break child;
            }
            changed.await;
        };
        // Dropped before the child reported (a terminate, a cold shutdown): tell the
        // child to stop this job alone; its permit comes back with the child's `Done`.
        let mut cancel = CancelOnDrop {
            child: Some(child.clone()),
            seq,
        };
        let watchdog = tokio::time::sleep(hard_limit.saturating_add(WATCHDOG_GRACE));
        tokio::select! {
            execution = &mut done => {
                cancel.child = None;
                return execution.unwrap_or_else(|_| dropped(&child));
            }
            _ = watchdog => {}
        }
        child.kill(format!(
            "killed by the pool: job {job_id} ran {}s past its hard time limit of {}s",
            WATCHDOG_GRACE.as_secs(),
            hard_limit.as_secs_f64()
        ));
        let execution = done.await.unwrap_or_else(|_| dropped(&child));
        cancel.child = None;
        execution
    }

    fn concurrency(&self) -> usize {
        self.shared.config.processes * self.shared.config.child_concurrency
    }

    fn kind(&self) -> PoolKind {
        PoolKind::Prefork
    }

    async fn shutdown(&self) {
        self.close().await;
    }
}

impl Shared {
    /// Sends the job to the least-loaded child with a free slot (its module first, if
    /// that child has not seen it). Leaves `job` in place when no child can take it.
    fn dispatch(
        &self,
        module: &TaskModule,
        seq: u64,
        job: &mut Option<(Vec<u8>, InFlight)>,
    ) -> Option<Arc<ChildProc>> {
        let children = lock(&self.children);
        let limit = self.config.child_concurrency;
        let best = children
            .iter()
            .flatten()
            .filter_map(|child| {
                let state = lock(&child.state);
                let load = state.in_flight.len();
                (state.accepts() && load < limit).then_some((load, child))
            })
            .min_by_key(|(load, _)| *load)
            .map(|(_, child)| child.clone())?;
        let mut state = lock(&best.state);
        // A job may have finished (and retired the child) since the loads were read.
        if !state.accepts() || state.in_flight.len() >= limit {
            return None;
        }
        let frames = state.frames.clone()?;
        if !state.loaded.contains(&module.hash) {
            let load = protocol::encode(&ToChild::Load {
                hash: module.hash.clone(),
                bytes: module.bytes.clone(),
            });
            if frames.send(load).is_err() {
                state.frames = None;
                return None;
            }
            state.loaded.insert(module.hash.clone());
        }
        let (run, in_flight) = job.take()?;
        if let Err(unsent) = frames.send(run) {
            // The writer is gone: the child is dying and its supervisor will reap it.
            // Take no more jobs there; this one goes to another child.
            state.frames = None;
            *job = Some((unsent.0, in_flight));
            return None;
        }
        state.in_flight.insert(seq, in_flight);
        drop(state);
        Some(best)
    }

    /// Spawns the child for `slot` and waits for its `Ready`.
    async fn spawn_child(self: &Arc<Self>, slot: usize) -> Result<Started, String> {
        let config = &self.config;
        let mut command = tokio::process::Command::new(&config.program);
        if let Some(filter) = &config.log_filter {
            command.arg("--log").arg(filter);
        }
        command.arg("child").arg("--options").arg(
            ChildOptions {
                settings: config.settings.clone(),
                cache_dir: config.cache_dir.clone(),
                parent_pid: Some(std::process::id()),
                protocol: PROTOCOL_VERSION,
                nice: config.nice,
                idle_priority: config.idle_priority,
                report_memory: config.max_memory_per_child.is_some(),
            }
            .to_arg(),
        );
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut process = self
            .spawner
            .spawn(command)
            .await
            .map_err(|e| format!("cannot run {}: {e}", config.program.display()))?;
        let pid = process.id().unwrap_or_default();
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err("the child has no stdin/stdout pipes".into());
        };
        let mut reader = BufReader::with_capacity(64 << 10, stdout);
        let mut buf = Vec::new();
        let ready = tokio::time::timeout(
            config.start_timeout,
            protocol::read_frame::<FromChild>(&mut reader, &mut buf),
        )
        .await;
        match ready {
            Ok(Ok(Some(FromChild::Ready { version, .. }))) => {
                if version != env!("CARGO_PKG_VERSION") {
                    tracing::warn!(
                        "prefork: child pid {pid} is sprout {version}, the parent {}",
                        env!("CARGO_PKG_VERSION")
                    );
                }
            }
            Ok(Ok(Some(other))) => {
                return Err(format!(
                    "child pid {pid} sent {other:?} before it was ready"
                ));
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = match tokio::time::timeout(EXIT_TIMEOUT, process.wait()).await {
                    Ok(Ok(status)) => describe_exit(status),
                    _ => "it closed its pipe".into(),
                };
                return Err(format!(
                    "child pid {pid} exited before it was ready: {status}"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "child pid {pid} was not ready within {:?}",
                    config.start_timeout
                ));
            }
        }
        let (frames, outgoing) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(stdin, outgoing));
        let child = Arc::new(ChildProc {
            pid,
            slot,
            state: Mutex::new(ChildState {
                frames: Some(frames),
                in_flight: HashMap::new(),
                loaded: HashSet::new(),
                done: 0,
                retiring: None,
                killed: None,
                alive: true,
            }),
        });
        self.started.fetch_add(1, Ordering::Relaxed);
        tracing::info!("prefork: child pid {pid} ready (slot {slot})");
        Ok(Started {
            child,
            process,
            reader,
            buf,
        })
    }

    /// Keeps `slot` staffed until the pool closes: serves the child, and when it exits,
    /// fails what it was running and starts another (backing off while children keep
    /// dying young).
    async fn supervise(self: Arc<Self>, slot: usize, first: Started) {
        let mut next = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = match next.take() {
                Some(started) => started,
                None if self.closing.load(Ordering::SeqCst) => return,
                None => match self.spawn_child(slot).await {
                    Ok(started) => started,
                    Err(e) => {
                        if self.closing.load(Ordering::SeqCst) {
                            return;
                        }
                        tracing::error!("prefork: slot {slot}: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            let born = Instant::now();
            let child = started.child.clone();
            lock(&self.children)[slot] = Some(child.clone());
            if self.closing.load(Ordering::SeqCst) {
                lock(&child.state).frames = None;
            }
            self.changed.notify_waiters();
            let status = self.serve(started).await;
            let orderly = {
                let mut children = lock(&self.children);
                if children[slot]
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, &child))
                {
                    children[slot] = None;
                }
                let mut state = lock(&child.state);
                state.alive = false;
                state.frames = None;
                let lost_jobs: Vec<InFlight> = state.in_flight.drain().map(|(_, j)| j).collect();
                let reason = match &state.killed {
                    Some(why) => format!("child pid {} exited: {status}: {why}", child.pid),
                    None => format!("child pid {} exited: {status}", child.pid),
                };
                let orderly = lost_jobs.is_empty()
                    && state.killed.is_none()
                    && (state.retiring.is_some() || self.closing.load(Ordering::SeqCst));
                if let Some(why) = state.retiring.as_ref().filter(|_| orderly) {
                    tracing::info!("prefork: child pid {} retired {why}", child.pid);
                    self.recycled.fetch_add(1, Ordering::Relaxed);
                } else if !orderly {
                    tracing::warn!(
                        "prefork: {reason}; {} job(s) it was running end as WorkerLost",
                        lost_jobs.len()
                    );
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    self.jobs_lost
                        .fetch_add(lost_jobs.len() as u64, Ordering::Relaxed);
                }
                for job in lost_jobs {
                    let _ = job.reply.send(lost(&reason));
                }
                orderly
            };
            self.changed.notify_waiters();
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            if orderly || born.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            } else {
                // Dying young: do not spin in a crash loop.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    /// Reads `Done` frames until the child's stdout closes, then reaps it. Returns its
    /// exit status, described.
    async fn serve(&self, started: Started) -> String {
        let Started {
            child,
            mut process,
            mut reader,
            mut buf,
        } = started;
        loop {
            match protocol::read_frame::<FromChild>(&mut reader, &mut buf).await {
                Ok(Some(FromChild::Done {
                    seq,
                    execution,
                    peak_rss_bytes,
                })) => self.done(&child, seq, execution, peak_rss_bytes),
                Ok(Some(other)) => {
                    tracing::warn!("prefork: child pid {} sent {other:?}", child.pid)
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(
                        "prefork: bad frame from child pid {}, stopping it: {e}",
                        child.pid
                    );
                    let _ = process.start_kill();
                    break;
                }
            }
        }
        match tokio::time::timeout(EXIT_TIMEOUT, process.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            Ok(Err(e)) => format!("cannot be waited for ({e})"),
            Err(_) => {
                let _ = process.start_kill();
                match process.wait().await {
                    Ok(status) => {
                        format!(
                            "closed its pipe but did not exit, so was killed ({})",
                            describe_exit(status)
                        )
                    }
                    Err(e) => format!("closed its pipe and cannot be waited for ({e})"),
                }
            }
        }
    }

    /// One job finished: hand back its execution, and retire the child if it reached
    /// a recycling limit.
    fn done(&self, child: &ChildProc, seq: u64, execution: Execution, peak: Option<u64>) {
        let job = {
            let mut state = lock(&child.state);
            let job = state.in_flight.remove(&seq);
            state.done += 1;
            tracing::debug!(
                "prefork: child pid {} finished job {} ({} done{})",
                child.pid,
                job.as_ref().map_or("?", |j| j.job_id.as_str()),
                state.done,
                peak.map(|p| format!("; peak resident {}", human_bytes(p)))
                    .unwrap_or_default()
            );
            if state.retiring.is_none() {
                let config = &self.config;
                if let Some(max) = config.max_tasks_per_child.filter(|m| state.done >= *m) {
                    state.retiring = Some(format!(
                        "after {} job(s) (max tasks per child: {max})",
                        state.done
                    ));
                } else if let Some((max, memory)) = config
                    .max_memory_per_child
                    .zip(peak)
                    .filter(|(max, memory)| memory > max)
                {
                    state.retiring = Some(format!(
                        "after {} job(s): resident memory reached {} (max memory per child: {})",
                        state.done,
                        human_bytes(memory),
                        human_bytes(max)
                    ));
                }
            }
            if state.retiring.is_some() && state.in_flight.is_empty() {
                // Close stdin: the child exits, and its supervisor starts a fresh one.
                state.frames = None;
            }
            job
        };
        if let Some(job) = job {
            let _ = job.reply.send(execution);
        }
        self.changed.notify_waiters();
    }
}

impl ChildState {
    fn accepts(&self) -> bool {
        self.alive && self.retiring.is_none() && self.killed.is_none() && self.frames.is_some()
    }
}

impl ChildProc {
    /// SIGKILLs the child (if it has not been reaped yet), recording why.
    fn kill(&self, why: String) {
        let mut state = lock(&self.state);
        if !state.alive {
            return;
        }
        tracing::error!(
            "prefork: killing child pid {} (slot {}): {why}",
            self.pid,
            self.slot
        );
        state.killed.get_or_insert(why);
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill(2) on our own child, which has not been reaped (`alive`), so
            // the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Writes frames to a child's stdin, batching what is queued, until the pool drops the
/// sender (which closes stdin: the child exits) or the pipe breaks.
async fn write_frames(mut stdin: ChildStdin, mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    while outgoing.recv_many(&mut batch, 64).await > 0 {
        bytes.clear();
        for frame in batch.drain(..) {
            bytes.extend_from_slice(&frame);
        }
        if stdin.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Sends `Cancel { seq }` to the child when dropped with `child` still set.
struct CancelOnDrop {
    child: Option<Arc<ChildProc>>,
    seq: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let state = lock(&child.state);
        if state.in_flight.contains_key(&self.seq)
            && let Some(frames) = &state.frames
        {
            let _ = frames.send(protocol::encode(&ToChild::Cancel { seq: self.seq }));
        }
    }
}

fn lost(reason: &str) -> Execution {
    Execution::not_started(Outcome::WorkerLost {
        reason: reason.to_string(),
    })
}

fn dropped(child: &ChildProc) -> Execution {
    lost(&format!(
        "child pid {} went away without reporting the job",
        child.pid
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
