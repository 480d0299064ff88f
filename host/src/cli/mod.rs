//! Command-line interface: clap types only. The commands themselves live in
//! `crate::commands`; `main.rs` parses, dispatches and maps errors to exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sprout: a WebAssembly sandboxed task runner with Celery-style workers.
#[derive(Debug, Parser)]
#[command(name = "sprout", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `sprout=debug`.
    #[arg(long, global = true, env = "SPROUT_LOG", default_value = "info")]
    pub log: String,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Sprout's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume jobs from a broker and run them.
    Worker(WorkerArgs),
    /// Send a job (or many) to a queue.
    Send(SendArgs),
    /// Show (or wait for) the result of a job.
    Result(ResultArgs),
    /// Show queue depths, dead letters and recent results.
    Status(BrokerArgs),
    /// Remove every waiting job from queues.
    Purge(PurgeArgs),
    /// Run one task locally, without a broker (for task authors).
    ///
    /// Prints the JSON result on stdout, and the fuel used and duration on stderr.
    ///
    /// Exit codes: 0 the task succeeded; 1 the task failed (its error, a trap, a limit);
    /// 2 bad usage or arguments; 3 the task file cannot be loaded or lacks the task.
    Run(RunArgs),
    /// List the tasks a directory or file provides, with their limits.
    Tasks(TasksArgs),
}

/// Where the broker is.
#[derive(Debug, Args, Clone)]
pub struct BrokerArgs {
    /// Broker URL: `sqlite:PATH` (embedded, default), `redis://HOST:PORT/DB`.
    #[arg(short, long, env = "SPROUT_BROKER", default_value = crate::broker::DEFAULT_BROKER_URL)]
    pub broker: String,
}

/// Engine-wide limits shared by `worker`, `run` and `tasks`.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Default fuel budget per job (manifests may change it per task).
    #[arg(long, env = "SPROUT_FUEL")]
    pub fuel: Option<u64>,
    /// Default hard time limit in seconds.
    #[arg(long, env = "SPROUT_TIME_LIMIT")]
    pub time_limit: Option<f64>,
    /// Default soft time limit in seconds.
    #[arg(long, env = "SPROUT_SOFT_TIME_LIMIT")]
    pub soft_time_limit: Option<f64>,
    /// Default memory cap in MiB.
    #[arg(long, env = "SPROUT_MEMORY")]
    pub memory: Option<u64>,
    /// Directory for compiled artifacts (default: $XDG_CACHE_HOME/sprout).
    #[arg(long, env = "SPROUT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Disable the on-disk compiled-artifact cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Largest task file accepted, in MiB (bounds read and compile time of files dropped
    /// into a task directory).
    #[arg(long, env = "SPROUT_MAX_TASK_FILE_SIZE", default_value_t = 64)]
    pub max_task_file_size: u64,
}

/// `sprout worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Task directory or file (repeatable).
    #[arg(
        short,
        long = "tasks",
        env = "SPROUT_TASKS",
        default_value = "./tasks",
        value_delimiter = ','
    )]
    pub tasks: Vec<PathBuf>,
    /// Pool: `async` (also `eventlet`, `gevent`) or `prefork`.
    #[arg(short = 'P', long = "pool", default_value = "async")]
    pub pool: String,
    /// Concurrency: jobs running at once.
    #[arg(short = 'c', long, env = "SPROUT_CONCURRENCY", default_value_t = 100)]
    pub concurrency: usize,
    /// Queues to consume, comma-separated.
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = crate::job::DEFAULT_QUEUE)]
    pub queues: Vec<String>,
    /// Jobs reserved per slot (1 = never hold more jobs than can run).
    #[arg(long, default_value_t = 1)]
    pub prefetch_multiplier: usize,
    /// Worker name in results and logs (default: sprout@HOST).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Seconds running jobs get to finish on warm shutdown before they are released.
    #[arg(long, default_value_t = 60.0)]
    pub grace: f64,
    /// Lease (visibility timeout) in seconds; extended while a job runs.
    #[arg(long, default_value_t = 30.0)]
    pub lease: f64,
    /// Store a STARTED state when a job begins (one extra write per job).
    #[arg(long)]
    pub track_started: bool,
    /// Stop after this many jobs (for benchmarks and tests).
    #[arg(long, hide = true)]
    pub max_jobs: Option<u64>,
    /// Broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `sprout send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Task name.
    pub task: String,
    /// Positional arguments as a JSON array (a single non-array value is one argument).
    #[arg(default_value = "[]")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Queue (default: `celery`).
    #[arg(short, long)]
    pub queue: Option<String>,
    /// Priority 0–9 (higher first on the embedded broker).
    #[arg(long, default_value_t = 0)]
    pub priority: u8,
    /// Run no earlier than this many seconds from now.
    #[arg(long, conflicts_with = "eta")]
    pub countdown: Option<f64>,
    /// Run no earlier than this time (RFC 3339, e.g. 2030-01-02T03:04:05Z).
    #[arg(long)]
    pub eta: Option<String>,
    /// Revoke the job if it has not started within this many seconds.
    #[arg(long)]
    pub expires: Option<f64>,
    /// Most retries for this job.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Lower the fuel budget for this job.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Lower the hard time limit (seconds) for this job.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Lower the memory cap (MiB) for this job.
    #[arg(long)]
    pub memory: Option<u64>,
    /// Send this many copies (shows a progress bar).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Wait for the result and print it.
    #[arg(short, long)]
    pub wait: bool,
    /// Seconds to wait with `--wait`.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `sprout result`.
#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Job id.
    pub id: String,
    /// Wait until the job finishes.
    #[arg(short, long)]
    pub wait: bool,
    /// Seconds to wait with `--wait`.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `sprout purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Queues to purge, comma-separated.
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = crate::job::DEFAULT_QUEUE)]
    pub queues: Vec<String>,
    /// Broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `sprout run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task file (`.wasm`).
    pub file: PathBuf,
    /// The task name in the file.
    pub task: String,
    /// Positional arguments as a JSON array (a single non-array value is one argument).
    #[arg(default_value = "[]")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Print the whole execution record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `sprout tasks`.
#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Task directories or files.
    #[arg(default_value = "./tasks")]
    pub paths: Vec<PathBuf>,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}
