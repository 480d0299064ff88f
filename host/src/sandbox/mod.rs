//! The sandbox: runs one job in a fresh, limited wasmtime instance.
//!
//! One [`Sandbox`] per process owns the [`wasmtime::Engine`] (fuel metering, pooling
//! allocator), the linkers (WASI p2 + Sprout's host interface for components, WASI p1
//! for command modules) and the compiled-module caches. [`Sandbox::load`] turns task-file
//! bytes into a [`TaskModule`]; [`Sandbox::run`] runs one job of it and always returns
//! an [`Execution`] — every failure becomes an [`Outcome`], never a panic or an `Err`.
//!
//! Preemption: by default fuel is both the job's CPU budget and its time slice. Every
//! `fuel_slice` units the guest yields to tokio, so one CPU-heavy guest cannot starve
//! the others or the worker's I/O. With [`Preemption::Epoch`] a ticker thread gives the
//! slices and the budget is guest time ([`cpu_meter`]). Wall-clock limits wrap the call
//! in a timeout; dropping the future stops the guest at its next yield point.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::model::Limits;
use crate::model::time;
use crate::model::{CONFIG_ENV_PREFIX, Capabilities};
use crate::model::{Execution, Outcome, RetryRequest, TimeLimitKind};

pub(crate) mod cache;
pub(crate) mod classify;
pub(crate) mod command;
pub mod compile;
pub(crate) mod component;
pub mod cpu_meter;
pub(crate) mod deny;
pub(crate) mod engine;
pub(crate) mod http;
pub(crate) mod http_pool;
pub(crate) mod limiter;
pub(crate) mod module;
pub(crate) mod output;
pub(crate) mod prewarm;
pub(crate) mod reuse;
pub mod shape;
pub(crate) mod sockets;
pub(crate) mod ticker;

pub use cache::ArtifactCache;
pub use compile::CompileLimits;
pub use engine::{EngineSettings, Preemption};
pub use module::{LoadError, ModuleKind, TaskModule};
pub use prewarm::{PrewarmError, Prewarmed};
pub use shape::{ShapeCaps, ShapeError};

use classify::{Observed, classify};
use command::{COMMAND_FAILED, CommandState, INVALID_OUTPUT};
use component::{ComponentState, JobInfo, Task};
use limiter::MemoryLimiter;
use module::{Format, check_command_module, link_component, sniff};
use output::CapturedOutput;
use sockets::SocketPolicy;

/// Fuel allowed for listing a component's tasks at load time.
const INSPECT_FUEL: u64 = 1_000_000_000;

/// Default for [`Sandbox::set_max_task_file_bytes`]: 64 MiB.
pub const DEFAULT_MAX_TASK_FILE_BYTES: u64 = 64 << 20;

/// What to run: one task of a loaded module, with arguments, limits and job context.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunRequest {
    /// The task name as the module knows it.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: serde_json::Map<String, Value>,
    /// Effective limits (task limits already lowered by the job).
    pub limits: Limits,
    /// The job id (for the guest's `job()` and logs).
    pub job_id: String,
    /// Retries so far.
    pub retries: u32,
    /// The queue it came from.
    pub queue: String,
    /// What the task's manifest grants (files, env, network). Empty = deny everything.
    #[serde(default)]
    pub capabilities: std::sync::Arc<Capabilities>,
    /// Where the guest's `progress(done, total)` goes while it runs (the worker stores
    /// it as a PROGRESS state). Not sent to prefork children: there the last progress
    /// is not reported while the job runs.
    #[serde(skip)]
    pub progress: Option<ProgressSink>,
}

/// Receives a running guest's latest `progress(done, total)`.
pub type ProgressSink = std::sync::Arc<tokio::sync::watch::Sender<Option<(u64, u64)>>>;

impl RunRequest {
    /// A request with default limits and a random job id, for tools and tests.
    pub fn new(task: impl Into<String>, args: Vec<Value>) -> Self {
        RunRequest {
            task: task.into(),
            args,
            kwargs: Default::default(),
            limits: Limits::default(),
            job_id: uuid::Uuid::new_v4().to_string(),
            retries: 0,
            queue: crate::model::DEFAULT_QUEUE.into(),
            capabilities: Default::default(),
            progress: None,
        }
    }
}

struct Inner {
    engine: Engine,
    component_linker: ComponentLinker<ComponentState>,
    module_linker: Linker<CommandState>,
    settings: EngineSettings,
    disk_cache: Option<ArtifactCache>,
    loaded: Mutex<HashMap<String, Arc<TaskModule>>>,
    max_task_file_bytes: AtomicU64,
    shape_caps: Mutex<ShapeCaps>,
    /// Compile out of process under these limits; `None` compiles in process.
    compile_limits: Mutex<Option<CompileLimits>>,
    /// What loading task files cost so far (for metrics).
    load_counters: LoadCounters,
    /// Advances the epoch while jobs run ([`Preemption::Epoch`] only).
    ticker: Option<ticker::EpochTicker>,
    /// Idle task instances kept for reuse (`Limits::jobs_per_instance`), and the jobs
    /// in flight that bound them.
    instances: reuse::InstanceCache,
}

/// Counters of [`Sandbox::load`], read by [`Sandbox::load_stats`].
#[derive(Debug, Default)]
struct LoadCounters {
    compiles: AtomicU64,
    compile_nanos: AtomicU64,
    artifact_hits: AtomicU64,
    memory_hits: AtomicU64,
}

/// What loading task files has cost this process so far: compiles, and loads the
/// caches saved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadStats {
    /// Task files compiled (in process or in a compile child).
    pub compiles: u64,
    /// Seconds spent compiling them.
    pub compile_seconds: f64,
    /// Loads served by the on-disk artifact cache (no compile).
    pub artifact_hits: u64,
    /// Loads of bytes already loaded in this process (content-hash cache).
    pub memory_hits: u64,
}

/// Why [`Sandbox::new`] failed: the engine or its linkers could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the wasm engine: {0:#}")]
pub struct SandboxError(wasmtime::Error);

/// The per-process sandbox. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Sandbox {
    /// Builds the engine and linkers. `cache_dir` enables the on-disk artifact cache.
    ///
    /// # Errors
    /// [`SandboxError`]: invalid engine settings (e.g. a zero `fuel_slice`, more
    /// instances than the pooling allocator can reserve), or linker setup failure.
    pub fn new(settings: EngineSettings, cache_dir: Option<&Path>) -> Result<Self, SandboxError> {
        Self::build(settings, cache_dir).map_err(SandboxError)
    }

    fn build(settings: EngineSettings, cache_dir: Option<&Path>) -> wasmtime::Result<Self> {
        let engine = engine::build_engine(&settings)?;
        let mut component_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)?;
        // UDP: denied, and every attempt logged with the job. TCP and DNS: denied the
        // same way unless the manifest has a tcp:// grant, then checked and bounded.
        deny::shadow_sockets(&mut component_linker)?;
        sockets::add_to_linker(&mut component_linker)?;
        // Outgoing HTTP; every request is checked by the job's `http::HttpPolicy`.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)?;
        Task::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut component_linker, |s| s)?;
        let mut module_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut CommandState| {
            &mut s.wasi
        })?;
        let disk_cache = cache_dir.map(|dir| ArtifactCache::new(dir, &engine));
        let ticker = match settings.preemption {
            Preemption::Fuel => None,
            Preemption::Epoch => Some(
                ticker::EpochTicker::start(engine.clone(), settings.epoch_tick).map_err(|e| {
                    wasmtime::Error::msg(format!("cannot start the epoch ticker: {e}"))
                })?,
            ),
        };
        Ok(Sandbox {
            inner: Arc::new(Inner {
                instances: reuse::InstanceCache::new(settings.max_instances),
                engine,
                component_linker,
                module_linker,
                settings,
                disk_cache,
                loaded: Mutex::new(HashMap::new()),
                max_task_file_bytes: AtomicU64::new(DEFAULT_MAX_TASK_FILE_BYTES),
                shape_caps: Mutex::new(ShapeCaps::default()),
                compile_limits: Mutex::new(None),
                load_counters: LoadCounters::default(),
                ticker,
            }),
        })
    }

    /// The engine settings in force.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// Task instances kept idle for reuse now (`Limits::jobs_per_instance`; see
    /// [`reuse`] for the bounds).
    pub fn idle_instances(&self) -> usize {
        self.inner.instances.idle()
    }

    /// Caps the size of task files [`Sandbox::load_file`] accepts (default
    /// [`DEFAULT_MAX_TASK_FILE_BYTES`], 64 MiB). Compile time grows with module size, and
    /// a file is read into memory whole: the cap bounds both for files dropped into a
    /// task directory. Bytes handed to [`Sandbox::load`] directly are not checked.
    pub fn set_max_task_file_bytes(&self, bytes: u64) {
        self.inner
            .max_task_file_bytes
            .store(bytes, Ordering::Relaxed);
    }

    /// The task-file size cap in force.
    pub fn max_task_file_bytes(&self) -> u64 {
        self.inner.max_task_file_bytes.load(Ordering::Relaxed)
    }

    /// Sets the caps on a task file's shape (functions, code size, ...), checked before
    /// anything is compiled (default [`ShapeCaps::default`]). They apply to
    /// [`Sandbox::load`] and [`Sandbox::load_file`] alike.
    pub fn set_shape_caps(&self, caps: ShapeCaps) {
        *self
            .inner
            .shape_caps
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = caps;
    }

    /// Compiles task files in a child process under `limits` (see [`compile`]), or in
    /// this process with `None` (the default).
    pub fn set_compile_limits(&self, limits: Option<CompileLimits>) {
        *self
            .inner
            .compile_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// What loading task files has cost so far (compiles, compile time, cache hits).
    pub fn load_stats(&self) -> LoadStats {
        let c = &self.inner.load_counters;
        LoadStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            compile_seconds: c.compile_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            artifact_hits: c.artifact_hits.load(Ordering::Relaxed),
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// Precompiles `bytes` (a component, else a core module) here or in a child,
    /// counting it in [`Sandbox::load_stats`].
    fn precompile(&self, component: bool, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        let started = Instant::now();
        let artifact = self.precompile_uncounted(component, bytes);
        let c = &self.inner.load_counters;
        c.compiles.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        c.compile_nanos.fetch_add(nanos, Ordering::Relaxed);
        artifact
    }

    fn precompile_uncounted(&self, component: bool, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        let limits = self
            .inner
            .compile_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match limits {
            Some(limits) => compile::precompile(&limits, &self.inner.settings, component, bytes)
                .map_err(wasmtime::Error::msg),
            None if component => self.inner.engine.precompile_component(bytes),
            None => self.inner.engine.precompile_module(bytes),
        }
    }

    /// The shape caps in force.
    pub fn shape_caps(&self) -> ShapeCaps {
        *self
            .inner
            .shape_caps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Loads a task file from disk. See [`Sandbox::load`].
    ///
    /// # Errors
    /// [`LoadError`] with a readable reason; [`LoadError::TooLarge`] (before reading it)
    /// for a file over [`Sandbox::max_task_file_bytes`].
    pub async fn load_file(&self, path: &Path) -> Result<Arc<TaskModule>, LoadError> {
        let io_err = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let size = tokio::fs::metadata(path).await.map_err(io_err)?.len();
        let max = self.max_task_file_bytes();
        if size > max {
            return Err(LoadError::TooLarge { size, max });
        }
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        self.load(bytes).await
    }

    /// Validates, compiles (off the async threads, or from the artifact cache) and
    /// pre-links task-file bytes; components are instantiated once to list their tasks.
    /// The same bytes load once per process (content-hash cache).
    ///
    /// Before compiling, the file's shape is checked against [`Sandbox::shape_caps`]: a
    /// file over a cap is [`LoadError::Shape`], and costs no compile.
    ///
    /// # Errors
    /// [`LoadError`] with a readable reason; nothing is cached then.
    pub async fn load(&self, bytes: Vec<u8>) -> Result<Arc<TaskModule>, LoadError> {
        let hash = blake3::hash(&bytes).to_hex().to_string();
        if let Some(module) = self.lock_loaded().get(&hash) {
            let hits = &self.inner.load_counters.memory_hits;
            hits.fetch_add(1, Ordering::Relaxed);
            return Ok(module.clone());
        }
        let bytes: Arc<[u8]> = bytes.into();
        let this = self.clone();
        let hash2 = hash.clone();
        let bytes2 = bytes.clone();
        let kind = tokio::task::spawn_blocking(move || this.compile(&hash2, &bytes2))
            .await
            .map_err(|e| LoadError::Compile(format!("compiler task failed: {e}")))??;
        let tasks = match &kind {
            ModuleKind::Task(pre) => self.inspect_tasks(pre).await?,
            _ => Vec::new(),
        };
        let module = Arc::new(TaskModule {
            hash: hash.clone(),
            kind,
            tasks,
            bytes,
        });
        self.lock_loaded().insert(hash, module.clone());
        Ok(module)
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TaskModule>>> {
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocking: compile or deserialize, then pre-link.
    fn compile(&self, hash: &str, bytes: &[u8]) -> Result<ModuleKind, LoadError> {
        let format = sniff(bytes)?;
        shape::check_shape(bytes, &self.shape_caps())?;
        let engine = &self.inner.engine;
        let cached = || {
            let artifact = self.inner.disk_cache.as_ref().and_then(|c| c.load(hash));
            if artifact.is_some() {
                let hits = &self.inner.load_counters.artifact_hits;
                hits.fetch_add(1, Ordering::Relaxed);
            }
            artifact
        };
        let compile_err = |e: wasmtime::Error| LoadError::Compile(format!("{e:#}"));
        match format {
            Format::Component => {
                let component = match cached() {
                    // SAFETY: the artifact was written by this cache for an engine with the
                    // same compatibility hash (it is in the file name), atomically, in a
                    // directory only this user can write (`ArtifactCache::load` checks the
                    // directory and the file); wasmtime still validates its header and
                    // rejects foreign or damaged files.
                    Some(artifact) => unsafe { Component::deserialize(engine, &artifact) }
                        .or_else(|_| self.compile_component(hash, bytes)),
                    None => self.compile_component(hash, bytes),
                }
                .map_err(compile_err)?;
                let pre = self
                    .inner
                    .component_linker
                    .instantiate_pre(&component)
                    .map_err(|e| {
                        LoadError::WrongShape(format!(
                            "the component needs imports Sprout does not provide: {e:#}"
                        ))
                    })?;
                link_component(pre)
            }
            Format::CoreModule => {
                let module = match cached() {
                    // SAFETY: as above.
                    Some(artifact) => unsafe { Module::deserialize(engine, &artifact) }
                        .or_else(|_| self.compile_module(hash, bytes)),
                    None => self.compile_module(hash, bytes),
                }
                .map_err(compile_err)?;
                check_command_module(&module)?;
                let pre = self
                    .inner
                    .module_linker
                    .instantiate_pre(&module)
                    .map_err(|e| {
                        LoadError::WrongShape(format!(
                            "the module needs imports Sprout does not provide (only WASI p1): {e:#}"
                        ))
                    })?;
                Ok(ModuleKind::CommandModule(pre))
            }
        }
    }

    fn compile_component(&self, hash: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let artifact = self.precompile(true, bytes)?;
        if let Some(cache) = &self.inner.disk_cache {
            cache.store(hash, &artifact);
        }
        // SAFETY: the artifact was produced a moment ago by this engine or by this
        // program's own `sprout compile` child with the same settings.
        unsafe { Component::deserialize(&self.inner.engine, &artifact) }
    }

    fn compile_module(&self, hash: &str, bytes: &[u8]) -> wasmtime::Result<Module> {
        let artifact = self.precompile(false, bytes)?;
        if let Some(cache) = &self.inner.disk_cache {
            cache.store(hash, &artifact);
        }
        // SAFETY: as above.
        unsafe { Module::deserialize(&self.inner.engine, &artifact) }
    }

    /// A store for a call the host makes of its own accord (listing a task file's tasks,
    /// warming a slot), not for a job: default limits, the guest's output kept nowhere,
    /// [`INSPECT_FUEL`] as its budget, `purpose` as the job id its host calls see.
    fn host_call_store(&self, purpose: &str) -> (Store<ComponentState>, Usage) {
        let limits = Limits::default();
        let log = CapturedOutput::new(limits.log_bytes as usize);
        let wasi = WasiCtxBuilder::new()
            .stdout(log.clone())
            .stderr(log.clone())
            .build();
        let job = JobInfo {
            id: purpose.into(),
            task: String::new(),
            retries: 0,
            queue: String::new(),
        };
        let state = ComponentState::new(wasi, MemoryLimiter::new(limits.memory_bytes), job, log);
        self.new_store(state, INSPECT_FUEL, |s| &mut s.limiter)
    }

    /// Instantiates a task component once and calls its `tasks` export.
    async fn inspect_tasks(
        &self,
        pre: &component::TaskPre<ComponentState>,
    ) -> Result<Vec<String>, LoadError> {
        let _in_flight = self.inner.instances.enter();
        self.inner.instances.make_room();
        let (mut store, usage) = self.host_call_store("inspect");
        let call = async {
            let task = pre.instantiate_async(&mut store).await?;
            task.call_tasks(&mut store).await
        };
        match tokio::time::timeout(Duration::from_secs(10), usage.meter(call)).await {
            Ok(Ok(names)) => Ok(names),
            Ok(Err(e)) => Err(LoadError::Inspect(format!("{e:#}"))),
            Err(_) => Err(LoadError::Inspect(
                "`tasks` did not return within 10 s".into(),
            )),
        }
    }

    /// A store for one job with `fuel` as its CPU budget, preempted as the engine says:
    /// by fuel (yield every `fuel_slice`, trap at the budget), or by epoch (yield at each
    /// tick; the returned meter counts the job's CPU time, and the epoch callback stops it past the
    /// budget).
    fn new_store<T: 'static>(
        &self,
        state: T,
        fuel: u64,
        limiter: impl (FnMut(&mut T) -> &mut MemoryLimiter) + Send + Sync + 'static,
    ) -> (Store<T>, Usage) {
        let mut store = Store::new(&self.inner.engine, state);
        let mut limiter = limiter;
        store.limiter(move |s| limiter(s) as &mut dyn wasmtime::ResourceLimiter);
        let usage = match &self.inner.ticker {
            None => {
                store
                    .set_fuel(fuel)
                    .expect("fuel is enabled in the engine config");
                store
                    .fuel_async_yield_interval(Some(self.inner.settings.fuel_slice))
                    .expect("fuel is enabled in the engine config");
                Usage::Fuel
            }
            Some(ticker) => {
                let meter = Arc::new(cpu_meter::CpuMeter::default());
                // The ticker ticks while this store (and its callback) lives.
                let guard = ticker.guard();
                let job = meter.clone();
                let slice = self.inner.settings.epoch_tick;
                store.set_epoch_deadline(1);
                store.epoch_deadline_callback(move |_| {
                    let _ticking = &guard;
                    job.check(fuel)?;
                    // Yield only once the guest has held the thread for a whole tick since
                    // it was last resumed: a short job (or one just back from a host wait)
                    // that a tick happens to land in runs on instead of going to the back
                    // of the run queue behind every hog.
                    Ok(if job.current_poll() >= slice {
                        wasmtime::UpdateDeadline::Yield(1)
                    } else {
                        wasmtime::UpdateDeadline::Continue(1)
                    })
                });
                Usage::Time(meter)
            }
        };
        (store, usage)
    }

    /// Runs one job in a fresh instance (or, for a task component whose limits allow
    /// `jobs_per_instance` above 1, in an idle instance of an earlier job: see
    /// [`reuse`]) and reports how it ended.
    ///
    /// Never fails: every error is an [`Outcome`]. Limits in `request.limits` above the
    /// engine's ceiling are capped at the ceiling.
    pub async fn run(&self, module: &TaskModule, request: RunRequest) -> Execution {
        let mut request = request;
        request.limits.memory_bytes = request
            .limits
            .memory_bytes
            .min(self.inner.settings.max_memory_bytes);
        let _in_flight = self.inner.instances.enter();
        match &module.kind {
            ModuleKind::Task(pre) => self.run_task(&module.hash, pre, request).await,
            ModuleKind::CommandComponent(pre) => self.run_command_component(pre, request).await,
            ModuleKind::CommandModule(pre) => self.run_command_module(pre, request).await,
        }
    }

    /// Whether a job may run in a reused instance: it asks for more than one job per
    /// instance, the budget is fuel (an epoch store's callback holds the job's CPU
    /// meter), and no `tcp://` grant (the WASI context's socket check is built with
    /// the job's grant and counters).
    fn reusable(&self, req: &RunRequest) -> bool {
        req.limits.jobs_per_instance > 1
            && self.inner.ticker.is_none()
            && !req.capabilities.grants_tcp()
    }

    /// A task instance for `req`'s job: an idle one of an earlier job when the job may
    /// reuse one, else a fresh store (instantiated by the job itself, inside its limits).
    /// Either way, everything per job is this job's: fuel, limiter, info, logs,
    /// policies, progress.
    fn task_instance(&self, module_hash: &str, req: &RunRequest) -> (reuse::Instance, Usage) {
        let limits = &req.limits;
        let job = JobInfo {
            id: req.job_id.clone(),
            task: req.task.clone(),
            retries: req.retries,
            queue: req.queue.clone(),
        };
        let reusable = self.reusable(req);
        let key = reuse::Key {
            module: module_hash.to_string(),
            memory_bytes: limits.memory_bytes,
            capabilities: req.capabilities.clone(),
        };
        if reusable && let Some(mut instance) = self.inner.instances.take(&key) {
            let log_cap = limits.log_bytes as usize;
            instance.label.set(&req.job_id, &req.task);
            instance.stderr.reset(log_cap);
            let store = &mut instance.store;
            store
                .set_fuel(limits.fuel)
                .expect("fuel is enabled in the engine config");
            let state = store.data_mut();
            state.start_job(job, req.progress.clone());
            state.log.reset(log_cap);
            // Same limit (the key), so the memory it already has is allowed; `peak`
            // stays the instance's.
            state.limiter.hit = false;
            state.http_policy = http::HttpPolicy::new(&req.capabilities, &req.job_id, &req.task);
            state.sockets = SocketPolicy::default();
            return (instance, Usage::Fuel);
        }
        let log = CapturedOutput::new(limits.log_bytes as usize);
        let stderr = CapturedOutput::new(limits.log_bytes as usize);
        let label = deny::JobLabel::new(&req.job_id, &req.task);
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(log.clone()).stderr(stderr.clone());
        grant(&mut builder, req);
        let sockets = SocketPolicy::new(&req.capabilities, &req.job_id, &req.task);
        if reusable {
            deny::deny_sockets_labelled(&mut builder, label.clone());
        } else {
            sockets.configure(&mut builder, &req.job_id, &req.task);
        }
        let wasi = builder.build();
        let mut state =
            ComponentState::new(wasi, MemoryLimiter::new(limits.memory_bytes), job, log);
        state.http_policy = http::HttpPolicy::new(&req.capabilities, &req.job_id, &req.task);
        state.sockets = sockets;
        state.progress_sink = req.progress.clone();
        self.inner.instances.make_room();
        let (store, usage) = self.new_store(state, limits.fuel, |s| &mut s.limiter);
        (reuse::Instance::new(store, stderr, label, key), usage)
    }

    async fn run_task(
        &self,
        module_hash: &str,
        pre: &component::TaskPre<ComponentState>,
        req: RunRequest,
    ) -> Execution {
        let limits = req.limits.clone();
        let reusable = self.reusable(&req);
        let (mut instance, usage) = self.task_instance(module_hash, &req);
        let args = Value::Array(req.args).to_string();
        let kwargs = Value::Object(req.kwargs).to_string();
        let started = Instant::now();
        let reuse::Instance {
            store, task, jobs, ..
        } = &mut instance;
        let call = async {
            if task.is_none() {
                *task = Some(pre.instantiate_async(&mut *store).await?);
            }
            let task = task.as_ref().expect("instantiated just above");
            task.call_run(&mut *store, &req.task, &args, &kwargs).await
        };
        let result = usage.within_budget(
            with_time_limits(usage.meter(call), &limits).await,
            limits.fuel,
        );
        let duration = started.elapsed();
        *jobs += 1;
        let store = &instance.store;
        let fuel_used = usage.fuel_used(store, limits.fuel);
        let observed = Observed {
            fuel_budget: limits.fuel,
            memory_limit: limits.memory_bytes,
            memory_limit_hit: store.data().limiter.hit,
            stderr: String::from_utf8_lossy(&instance.stderr.contents()).into_owned(),
        };
        // Only a job that returned normally leaves its instance fit for the next one;
        // a trap, running out of fuel, a time limit (the call was dropped mid-way), a
        // refused memory growth or an output over the cap does not.
        let mut clean = false;
        let outcome = match result {
            Err(time_limit) => time_limit,
            Ok(Err(error)) => classify(&error, &observed),
            // A guest language that turns a refused memory growth into an exception
            // (Python's `MemoryError`) still hit the job's memory limit.
            Ok(Ok(Err(guest))) if observed.memory_limit_hit && guest.kind == "MemoryError" => {
                Outcome::MemoryLimit {
                    limit_bytes: limits.memory_bytes,
                }
            }
            Ok(Ok(Err(guest))) => {
                clean = true;
                Outcome::GuestError {
                    kind: guest.kind,
                    message: guest.message,
                    // A guest's countdown (u64 ms) is clamped to time::MAX_SECONDS (100
                    // years), documented in the guest SDK: never an error, never an overflow.
                    retry: guest.retry.map(|r| RetryRequest {
                        countdown: r.countdown_ms.map(time::clamp_millis),
                    }),
                }
            }
            Ok(Ok(Ok(json))) => {
                let outcome = parse_output(json.as_bytes(), false, limits.output_bytes);
                clean = outcome.is_success();
                outcome
            }
        };
        let logs = join_logs(&store.data().log, &instance.stderr);
        let execution = Execution {
            outcome,
            fuel_used,
            duration,
            logs,
            peak_memory_bytes: store.data().limiter.peak,
        };
        if reusable
            && clean
            && !observed.memory_limit_hit
            && instance.jobs < limits.jobs_per_instance
        {
            self.inner.instances.put(instance);
        }
        execution
    }

    async fn run_command_component(
        &self,
        pre: &wasmtime_wasi::p2::bindings::CommandPre<ComponentState>,
        req: RunRequest,
    ) -> Execution {
        let limits = req.limits.clone();
        let sockets = SocketPolicy::new(&req.capabilities, &req.job_id, &req.task);
        let (wasi, stdout, stderr) = command_stdio(&req, &sockets, |b| b.build());
        let job = JobInfo {
            id: req.job_id.clone(),
            task: req.task.clone(),
            retries: req.retries,
            queue: req.queue.clone(),
        };
        let log = CapturedOutput::new(limits.log_bytes as usize);
        let mut state =
            ComponentState::new(wasi, MemoryLimiter::new(limits.memory_bytes), job, log);
        state.http_policy = http::HttpPolicy::new(&req.capabilities, &req.job_id, &req.task);
        state.sockets = sockets;
        self.inner.instances.make_room();
        let (mut store, usage) = self.new_store(state, limits.fuel, |s| &mut s.limiter);
        let started = Instant::now();
        let call = async {
            let command = pre.instantiate_async(&mut store).await?;
            match command.wasi_cli_run().call_run(&mut store).await? {
                Ok(()) => Ok(0),
                Err(()) => Ok(1),
            }
        };
        let result = usage.within_budget(
            with_time_limits(usage.meter(call), &limits).await,
            limits.fuel,
        );
        let duration = started.elapsed();
        let fuel_used = usage.fuel_used(&store, limits.fuel);
        let memory_limit_hit = store.data().limiter.hit;
        let mut execution = command_execution(
            result,
            &limits,
            memory_limit_hit,
            &stdout,
            &stderr,
            fuel_used,
            duration,
        );
        execution.peak_memory_bytes = store.data().limiter.peak;
        execution
    }

    async fn run_command_module(
        &self,
        pre: &wasmtime::InstancePre<CommandState>,
        req: RunRequest,
    ) -> Execution {
        let limits = req.limits.clone();
        // WASI p1 has no sockets to grant.
        let no_sockets = SocketPolicy::default();
        let (wasi, stdout, stderr) = command_stdio(&req, &no_sockets, |b| b.build_p1());
        let state = CommandState {
            wasi,
            limiter: MemoryLimiter::new(limits.memory_bytes),
        };
        self.inner.instances.make_room();
        let (mut store, usage) = self.new_store(state, limits.fuel, |s| &mut s.limiter);
        let started = Instant::now();
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await.map(|()| 0)
        };
        let result = usage.within_budget(
            with_time_limits(usage.meter(call), &limits).await,
            limits.fuel,
        );
        let duration = started.elapsed();
        let fuel_used = usage.fuel_used(&store, limits.fuel);
        let memory_limit_hit = store.data().limiter.hit;
        let mut execution = command_execution(
            result,
            &limits,
            memory_limit_hit,
            &stdout,
            &stderr,
            fuel_used,
            duration,
        );
        execution.peak_memory_bytes = store.data().limiter.peak;
        execution
    }
}

/// How one job's CPU use is counted (see [`Preemption`]).
enum Usage {
    /// By the store's fuel.
    Fuel,
    /// By timing the job's polls.
    Time(Arc<cpu_meter::CpuMeter>),
}

impl Usage {
    /// `call`, timed when the budget is time.
    fn meter<F: Future>(&self, call: F) -> cpu_meter::Metered<F> {
        match self {
            Usage::Fuel => cpu_meter::Metered::unmetered(call),
            Usage::Time(meter) => meter.meter(call),
        }
    }

    /// `result`, or `OutOfFuel` when the job went past its `budget` under epoch
    /// preemption: the ticks that check the budget while the guest runs come late when
    /// the ticker thread waits for a CPU, and a job that finished past its budget between
    /// two checks ends as it would have under fuel. (Under fuel the store traps at the
    /// budget itself.)
    fn within_budget<T>(&self, result: Result<T, Outcome>, budget: u64) -> Result<T, Outcome> {
        match self {
            Usage::Time(meter) if result.is_ok() && meter.check(budget).is_err() => {
                Err(Outcome::OutOfFuel { budget })
            }
            _ => result,
        }
    }

    /// What the job used of its `budget`, in fuel units (at most the budget).
    fn fuel_used<T>(&self, store: &Store<T>, budget: u64) -> u64 {
        match self {
            Usage::Fuel => budget.saturating_sub(store.get_fuel().unwrap_or(0)),
            Usage::Time(meter) => meter.used_fuel().min(budget),
        }
    }
}

/// Adds what the manifest grants to a fresh WASI context: environment variables,
/// `config` values (as `SPROUT_CONFIG_<key>` variables) and read-only directories
/// (sockets: [`SocketPolicy::configure`]). Nothing else is granted: `WasiCtxBuilder::new`
/// starts with no preopens, no environment, no arguments, no network and stdio that is
/// not the host's. A directory that cannot be opened is skipped with a warning (the
/// guest then sees it as missing).
fn grant(builder: &mut WasiCtxBuilder, req: &RunRequest) {
    let capabilities: &Capabilities = &req.capabilities;
    for (name, value) in &capabilities.env {
        builder.env(name, value);
    }
    for (key, value) in &capabilities.config {
        builder.env(format!("{CONFIG_ENV_PREFIX}{key}"), value);
    }
    for (guest, host) in &capabilities.dirs {
        if let Err(e) = builder.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly) {
            tracing::warn!(job = %req.job_id, task = %req.task, "cannot grant directory {host} as {guest}: {e:#}");
        }
    }
}

/// Runs `call` under the soft and hard wall-clock limits; `Err` is the time-limit
/// outcome. Dropping the future stops the guest at its next yield (fuel slice or epoch
/// tick) or host await.
async fn with_time_limits<T>(call: impl Future<Output = T>, limits: &Limits) -> Result<T, Outcome> {
    let (kind, limit) = match limits.soft_time_limit {
        Some(soft) if soft < limits.time_limit => (TimeLimitKind::Soft, soft),
        _ => (TimeLimitKind::Hard, limits.time_limit),
    };
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| Outcome::TimeLimit { kind, limit })
}

/// Builds a WASI context whose stdin is the job's JSON and whose stdout/stderr are
/// captured; returns it with the two capture buffers.
fn command_stdio<C>(
    req: &RunRequest,
    sockets: &SocketPolicy,
    build: impl FnOnce(&mut WasiCtxBuilder) -> C,
) -> (C, CapturedOutput, CapturedOutput) {
    let input = serde_json::json!({ "args": req.args, "kwargs": req.kwargs }).to_string();
    // One byte more than the cap, so "exactly at the cap" and "over it" differ.
    let stdout = CapturedOutput::new(req.limits.output_bytes.saturating_add(1) as usize);
    let stderr = CapturedOutput::new(req.limits.log_bytes as usize);
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdin(MemoryInputPipe::new(input))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .arg(&req.task);
    grant(&mut builder, req);
    sockets.configure(&mut builder, &req.job_id, &req.task);
    (build(&mut builder), stdout, stderr)
}

/// Turns a command's exit (or error) and its captured stdio into an [`Execution`].
fn command_execution(
    result: Result<wasmtime::Result<i32>, Outcome>,
    limits: &Limits,
    memory_limit_hit: bool,
    stdout: &CapturedOutput,
    stderr: &CapturedOutput,
    fuel_used: u64,
    duration: Duration,
) -> Execution {
    let stderr_text = String::from_utf8_lossy(&stderr.contents()).into_owned();
    let exit = match result {
        Err(time_limit) => Err(time_limit),
        Ok(Ok(code)) => Ok(code),
        Ok(Err(error)) => match error.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(classify(
                &error,
                &Observed {
                    fuel_budget: limits.fuel,
                    memory_limit: limits.memory_bytes,
                    memory_limit_hit,
                    stderr: stderr_text.clone(),
                },
            )),
        },
    };
    let outcome = match exit {
        Err(outcome) => outcome,
        Ok(0) => parse_output(&stdout.contents(), stdout.overflowed(), limits.output_bytes),
        Ok(code) => {
            let message = stderr_text.trim();
            Outcome::GuestError {
                kind: COMMAND_FAILED.into(),
                message: if message.is_empty() {
                    format!("exited with status {code}")
                } else {
                    message.to_string()
                },
                retry: None,
            }
        }
    };
    Execution {
        outcome,
        fuel_used,
        duration,
        logs: stderr.text(),
        peak_memory_bytes: 0,
    }
}

/// Parses a guest's JSON result, enforcing the output cap.
fn parse_output(bytes: &[u8], overflowed: bool, limit: u64) -> Outcome {
    if overflowed || bytes.len() as u64 > limit {
        return Outcome::OutputTooLarge { limit_bytes: limit };
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return Outcome::Success { value: Value::Null };
    }
    match serde_json::from_str(text) {
        Ok(value) => Outcome::Success { value },
        Err(e) => Outcome::GuestError {
            kind: INVALID_OUTPUT.into(),
            message: format!("the task's output is not JSON ({e}): {:.200}", text),
            retry: None,
        },
    }
}

fn join_logs(log: &CapturedOutput, stderr: &CapturedOutput) -> String {
    let mut logs = log.text();
    let err = stderr.text();
    if !err.is_empty() {
        if !logs.is_empty() && !logs.ends_with('\n') {
            logs.push('\n');
        }
        logs.push_str(&err);
    }
    logs
}
