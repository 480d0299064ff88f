//! Sprout task components (world `sprout:task/task`): store state, the host interface
//! the guest imports, and the generated bindings for calling `tasks` and `run`.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::http::HttpPolicy;
use super::limiter::MemoryLimiter;
use super::output::CapturedOutput;
use super::sockets::SocketPolicy;

/// Generated from `wit/task.wit`, the single source of truth shared with the guest SDK.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "task",
        exports: { default: async },
    });
}

pub use bindings::sprout::task::host::{JobInfo, Level};
pub use bindings::{Task, TaskPre};

/// Per-job store data of a component guest.
pub struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    /// What outgoing HTTP may reach (deny everything unless set from the manifest).
    pub http_policy: HttpPolicy,
    /// What raw TCP may reach, and the job's socket bounds (deny everything unless set
    /// from the manifest).
    pub sockets: SocketPolicy,
    /// Memory cap for this job.
    pub limiter: MemoryLimiter,
    /// The job the guest may ask about.
    pub job: JobInfo,
    /// Where `log` lines and stdout go.
    pub log: CapturedOutput,
    /// The last progress the guest reported: (done, total).
    pub progress: Option<(u64, u64)>,
    /// Where progress goes while the job runs (the worker's reporter), if anywhere.
    pub progress_sink: Option<super::ProgressSink>,
    /// Log lines passed on to the host's log so far (bounded by [`MAX_LOGGED_LINES`]).
    logged_lines: u32,
}

/// Guest log lines passed on to the worker's log per job; the rest are only kept in
/// the job's captured log (which has its own byte limit).
pub const MAX_LOGGED_LINES: u32 = 100;
/// Characters of one guest log line passed on to the worker's log.
pub const MAX_LOGGED_LINE_CHARS: usize = 1000;

impl ComponentState {
    /// State for one job.
    pub fn new(wasi: WasiCtx, limiter: MemoryLimiter, job: JobInfo, log: CapturedOutput) -> Self {
        ComponentState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            http_policy: HttpPolicy::default(),
            sockets: SocketPolicy::default(),
            limiter,
            job,
            log,
            progress: None,
            progress_sink: None,
            logged_lines: 0,
        }
    }
}

impl ComponentState {
    /// Makes a reused instance's state the next job's: its info, no progress, its
    /// progress sink, a fresh count of lines logged to the host. (The caller resets
    /// the rest: fuel, limiter, logs, policies.)
    pub fn start_job(&mut self, job: JobInfo, progress_sink: Option<super::ProgressSink>) {
        self.job = job;
        self.progress = None;
        self.progress_sink = progress_sink;
        self.logged_lines = 0;
    }

    /// The job's resource table (sockets, streams, pollables, ...).
    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// wasmtime-wasi's own `wasi:sockets` implementation over this job's context.
    pub(crate) fn sockets_view(&mut self) -> wasmtime_wasi::sockets::WasiSocketsCtxView<'_> {
        wasmtime_wasi::sockets::WasiSocketsView::sockets(self)
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

impl ComponentState {
    /// Passes a guest log line on to the host's log at the guest's own level, with the
    /// task and job id; at most [`MAX_LOGGED_LINES`] per job, each cut at
    /// [`MAX_LOGGED_LINE_CHARS`] (a chatty guest cannot flood the worker's log; the
    /// job's captured log keeps what its limit allows).
    fn log_to_host(&mut self, level: Level, message: &str) {
        self.logged_lines = self.logged_lines.saturating_add(1);
        if self.logged_lines > MAX_LOGGED_LINES + 1 {
            return;
        }
        let (job, task) = (&self.job.id, &self.job.task);
        if self.logged_lines == MAX_LOGGED_LINES + 1 {
            tracing::warn!(job = %job, task = %task, "guest: more than {MAX_LOGGED_LINES} log lines; the rest are only in the job's log (sprout result ID --logs)");
            return;
        }
        let line = match message.char_indices().nth(MAX_LOGGED_LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &message[..cut]),
            None => message.to_string(),
        };
        match level {
            Level::Trace => tracing::trace!(job = %job, task = %task, "guest: {line}"),
            Level::Debug => tracing::debug!(job = %job, task = %task, "guest: {line}"),
            Level::Info => tracing::info!(job = %job, task = %task, "guest: {line}"),
            Level::Warn => tracing::warn!(job = %job, task = %task, "guest: {line}"),
            Level::Error => tracing::error!(job = %job, task = %task, "guest: {line}"),
        }
    }
}

impl bindings::sprout::task::types::Host for ComponentState {}

impl bindings::sprout::task::host::Host for ComponentState {
    fn log(&mut self, level: Level, message: String) {
        let level_name = match level {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        };
        self.log_to_host(level, &message);
        self.log
            .append(format!("[{level_name}] {message}\n").as_bytes());
    }

    fn progress(&mut self, done: u64, total: u64) {
        self.progress = Some((done, total));
        if let Some(sink) = &self.progress_sink {
            sink.send_replace(Some((done, total)));
        }
    }

    fn job(&mut self) -> JobInfo {
        self.job.clone()
    }
}
