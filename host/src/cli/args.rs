//! Command-line interface: clap types only. The commands themselves live in
//! `crate::cli::commands`; `main.rs` parses, dispatches and maps errors to exit codes.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use sprout::connect::ConnectOptions;
use sprout::model::{SizeUnit, time};
use sprout::sandbox::Preemption;

/// `sprout --version`: Sprout's version and the wasmtime it embeds (pinned in the
/// workspace's Cargo.toml; a unit test checks it against Cargo.lock).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (wasmtime 48.0.8)");

/// Exit codes shared by the commands that talk to a broker, for `--help` (a macro so
/// that `concat!` can use it).
macro_rules! exit_codes_broker {
    () => {
        "  2  bad usage: a flag, argument or URL that cannot be right (the message names it)
  5  the broker or result backend cannot be reached (the message says where and why)
  130  interrupted (Ctrl-C)"
    };
}

/// Sprout: a WebAssembly sandboxed task runner with Celery-style workers.
#[derive(Debug, Parser)]
#[command(name = "sprout", version = VERSION, about, long_about = None,
          after_help = "Examples:\n  sprout worker --tasks target/tasks &\n  sprout send add '[2, 3]' --wait\n  sprout tasks target/tasks\n\nExit codes: 0 ok, 1 a job or task failed, 2 bad usage, 3 unloadable task file,\n4 timed out waiting (or not finished), 5 broker unreachable, 130 interrupted.")]
pub struct Cli {
    /// Log filter: levels and `TARGET=LEVEL`, comma-separated (tracing's `EnvFilter`),
    /// e.g. `info`, `warn,sprout::worker=debug`. Anything else is refused (exit 2).
    /// The AMQP client's log of closed channels is off unless the filter names `lapin`.
    #[arg(long, global = true, env = "SPROUT_LOG", default_value = "info")]
    pub log: String,
    /// Log lines as `text` or `json` (one object per line, for log shippers).
    #[arg(
        long,
        global = true,
        env = "SPROUT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::cli::telemetry::LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Sprout's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume jobs from a broker and run them.
    #[command(after_help = concat!("Examples:
  sprout worker --tasks target/tasks                       # async pool, queue celery
  sprout worker --tasks target/tasks -P prefork -c 2 -Q celery,cpu
  sprout worker --tasks target/tasks --pool io=async:100:celery --pool cpu=prefork:2

Exit codes:
  0  stopped by a signal (warm shutdown) or --max-jobs
  1  cold shutdown, or the worker failed
", "  2  bad usage: unknown pool, missing --tasks path, a concurrency the sandbox cannot reserve, ...
  5  the broker or result backend cannot be reached (the message says where and why)"))]
    Worker(Box<WorkerArgs>),
    /// Send a job (or many) to a queue.
    #[command(after_help = concat!("Examples:
  sprout send add '[2, 3]' --wait              # prints 5
  sprout send fib '[20]' --countdown 10 --retries 3
  sprout send echo '[\"hi\"]' --count 1000

Routing: without -q, the queue is the task's `queue` from a manifest under --tasks, else
the queue the workers on this broker published for it, else `celery`.

Exit codes:
  0  sent (with --wait: every job succeeded)
  1  with --wait: a job failed or was revoked
", exit_codes_broker!(), "
  4  with --wait: timed out waiting"))]
    Send(SendArgs),
    /// Show (or wait for) the result of a job.
    #[command(after_help = concat!("Examples:
  sprout result 3f2a…                 # the stored record as JSON
  sprout result 3f2a… --wait --timeout 30
  sprout result 3f2a… --logs          # the job's captured log lines

Exit codes:
  0  SUCCESS
  1  FAILURE or REVOKED
", exit_codes_broker!(), "
  4  not finished (PENDING, STARTED, PROGRESS, RETRY; with --wait: timed out waiting)"))]
    Result(ResultArgs),
    /// Show queue depths, dead letters and recent results.
    #[command(after_help = concat!("Examples:
  sprout status
  sprout status --broker redis://127.0.0.1:6379/0

Exit codes:
  0  shown
", exit_codes_broker!()))]
    Status(BrokerArgs),
    /// Remove every waiting job from queues.
    #[command(after_help = concat!("Examples:
  sprout purge -Q celery,cpu          # asks first on a terminal
  sprout purge -Q celery -f           # no question

Exit codes:
  0  purged (or nothing to do after a \"no\")
", exit_codes_broker!()))]
    Purge(PurgeArgs),
    /// Ask workers about themselves (Celery's `inspect`): ping, active, reserved,
    /// scheduled, registered, stats, active_queues, revoked, conf, clock, query_task ID...
    ///
    /// Exit codes: 0 some worker replied; 1 none replied within the timeout; 2 bad usage.
    Inspect(ControlArgs),
    /// Tell workers to do something (Celery's `control`): revoke ID... [--terminate],
    /// terminate SIGNAL ID..., rate_limit TASK RATE, time_limit TASK SOFT [HARD],
    /// enable_events, disable_events, heartbeat, shutdown, pool_grow [N], pool_shrink
    /// [N], autoscale MAX MIN, add_consumer QUEUE, cancel_consumer QUEUE.
    ///
    /// Exit codes: 0 some worker replied; 1 none replied within the timeout; 2 bad usage.
    Control(ControlArgs),
    /// Run one task locally, without a broker (for task authors).
    ///
    /// Prints the JSON result on stdout, and the fuel used and duration on stderr.
    ///
    /// Exit codes: 0 the task succeeded; 1 the task failed (its error, a trap, a limit);
    /// 2 bad usage or arguments, or a task file over the module caps (`--module-caps`:
    /// refused before compiling, like an argument out of range); 3 the task file cannot
    /// be loaded otherwise, or lacks the task.
    #[command(after_help = "Examples:
  sprout run target/tasks/math.wasm add '[1, 2]'
  sprout run target/tasks/fib.wasm fib '[25]' --json")]
    Run(RunArgs),
    /// List the tasks a directory or file provides, with their limits; or, with
    /// `--broker`, the tasks and queues the workers on that broker serve.
    #[command(after_help = "Examples:
  sprout tasks target/tasks
  sprout tasks --broker redis://127.0.0.1:6379/0    # what the fleet serves

Exit codes:
  0  listed
  1  a task file was rejected
  2  bad usage: a path that does not exist, or a directory with no task files
  5  --broker cannot be reached")]
    Tasks(TasksArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:
  sprout completions bash > ~/.local/share/bash-completion/completions/sprout
  sprout completions zsh > \"${fpath[1]}/_sprout\"
  sprout completions fish > ~/.config/fish/completions/sprout.fish")]
    Completions(CompletionsArgs),
    /// Build a task file from source: a Python module (`shop.py`) or package, a Rust
    /// crate folder, or a JavaScript module (`tasks.js`, with componentize-js).
    ///
    /// Writes `DIR/<name>.wasm` and `DIR/<name>.toml` (the manifest beside the source,
    /// checked, or a commented template), then compiles the file once for this machine
    /// into the artifact cache, so a worker sharing the cache starts it without
    /// compiling. Python needs componentize-py (the error says how to install it);
    /// pure-Python dependencies in `requirements.txt` or `pyproject.toml` beside the
    /// module are bundled, native ones refused.
    ///
    /// Exit codes: 0 built; 1 the build failed (a compile error, a missing tool, a
    /// native dependency); 2 bad usage (not a buildable source, an invalid manifest).
    Build(BuildArgs),
    /// A prefork pool's child process (started by `sprout worker -P prefork`; it speaks
    /// frames on stdin/stdout, not a command to type).
    #[command(hide = true)]
    Child(ChildArgs),
    /// Compiles one task file read from stdin for a worker, which limits its memory and
    /// time (started by the worker; not a command to type).
    #[command(hide = true)]
    Compile(CompileArgs),
}

/// `sprout completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Where the broker is.
#[derive(Debug, Args, Clone)]
pub struct BrokerArgs {
    /// Broker URL: `sqlite:PATH` (embedded, default), `redis://HOST:PORT/DB`,
    /// `amqp://USER:PASS@HOST:PORT/VHOST` (RabbitMQ).
    #[arg(short, long, env = "SPROUT_BROKER", default_value = sprout::connect::DEFAULT_BROKER_URL)]
    pub broker: String,
    /// Result backend URL (Celery's `result_backend`): `sqlite:PATH`,
    /// `redis://HOST:PORT/DB`, or `rpc://` (results as messages, with an amqp:// broker).
    /// Default: the broker's own store; `rpc://` for amqp://.
    #[arg(long, env = "SPROUT_RESULT_BACKEND")]
    pub result_backend: Option<String>,
}

impl BrokerArgs {
    /// The connect options these flags give (`result_expires` as given beside them).
    pub fn connect_options(&self, result_expires: Option<Duration>) -> ConnectOptions {
        ConnectOptions {
            result_backend: self.result_backend.clone(),
            result_expires,
        }
    }
}

/// Engine-wide limits shared by `worker`, `run` and `tasks`.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Default fuel budget per job (manifests may change it per task).
    #[arg(long, env = "SPROUT_FUEL")]
    pub fuel: Option<u64>,
    /// Default hard time limit in seconds (or with a unit: `90s`, `30m`).
    #[arg(long, env = "SPROUT_TIME_LIMIT", value_parser = parse_duration)]
    pub time_limit: Option<Duration>,
    /// Default soft time limit in seconds (or with a unit).
    #[arg(long, env = "SPROUT_SOFT_TIME_LIMIT", value_parser = parse_duration)]
    pub soft_time_limit: Option<Duration>,
    /// Default memory cap in MiB.
    #[arg(long, env = "SPROUT_MEMORY", value_parser = parse_mib)]
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
    /// Caps on a task file's shape, checked before it is compiled, as
    /// `name=value,...` over the defaults: functions (100000), code-bytes (64 MiB),
    /// function-bytes (4 MiB), data-segments (100000), imports (10000), tables (100),
    /// table-elements (10000000), memories (100), modules (1000; nested in a
    /// component). Totals over the whole file. A file over a cap is refused, naming it.
    #[arg(long, env = "SPROUT_MODULE_CAPS", value_parser = sprout::sandbox::ShapeCaps::parse)]
    pub module_caps: Option<sprout::sandbox::ShapeCaps>,
    /// Task files are compiled in a child process; it is stopped, and the file
    /// rejected, when its resident memory passes this many MiB. Default: 2048.
    #[arg(long, env = "SPROUT_COMPILE_MEMORY", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(16..))]
    pub compile_memory: u64,
    /// The longest a task file may take to compile (in the child process). Default: 300.
    #[arg(long, env = "SPROUT_COMPILE_TIMEOUT", default_value = "300", value_parser = parse_duration)]
    pub compile_timeout: Duration,
    /// How running guests are preempted: `fuel` (default: every instruction counted,
    /// deterministic budgets) or `epoch` (a ticker thread gives time slices and the
    /// budget is counted in CPU time; faster guest code, docs/operations.md).
    #[arg(long, env = "SPROUT_PREEMPTION", default_value = "fuel", value_parser = parse_preemption)]
    pub preemption: Preemption,
    /// With `--preemption epoch`: the time slice, from 10us to 100ms (`50us`, `1ms`,
    /// `0.0002`). Default: 50us.
    #[arg(long, env = "SPROUT_EPOCH_TICK", value_parser = parse_epoch_tick)]
    pub epoch_tick: Option<Duration>,
}

/// `sprout build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The source: a Python module (`.py`), a Python package folder (with
    /// `__init__.py`), a Rust crate folder (with `Cargo.toml`), or a JavaScript module
    /// (`.js`).
    pub src: PathBuf,
    /// Where the task file and its manifest go.
    #[arg(short = 'o', long = "out", default_value = ".")]
    pub out: PathBuf,
    /// Do not compile the built file into the artifact cache.
    #[arg(long)]
    pub no_precompile: bool,
    /// Limits (the artifact cache, module caps and compile limits apply to the
    /// pre-compile; a worker with the same cache directory finds the artifact).
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `sprout compile` (hidden).
#[derive(Debug, Args)]
pub struct CompileArgs {
    /// What to compile, as the worker wrote it (JSON).
    #[arg(long)]
    pub request: String,
}

/// A task call's arguments, shared by `send` and `run`.
#[derive(Debug, Args, Clone)]
pub struct CallArgs {
    /// Positional arguments as a JSON array (a single non-array value is one argument).
    #[arg(default_value = "[]")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
}

/// `sprout worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Task directory or file (repeatable; each must exist). The example tasks are
    /// built into `target/tasks` (`make tasks`).
    #[arg(
        short,
        long = "tasks",
        env = "SPROUT_TASKS",
        default_value = "./tasks",
        value_delimiter = ','
    )]
    pub tasks: Vec<PathBuf>,
    /// Pool: `async` (also `eventlet`, `gevent`), `prefork` (also `processes`) or
    /// `solo` (the async pool running one job at a time, `-c 1`), used with `-c` and `-Q`.
    /// Or, repeated, named pools each bound to its own queues:
    /// `NAME=KIND[:CONCURRENCY[:QUEUE,...]][:OPTION=VALUE,...]`, e.g. `--pool
    /// io=async:1000 --pool cpu=prefork:2:cpu,hogs` (a pool's queue defaults to its
    /// name). A prefork pool's options are the prefork flags without dashes, for that
    /// pool alone: `--pool cpu=prefork:2:max-tasks-per-child=100,child-concurrency=4`
    /// (also `max-memory-per-child`, `prefork-nice`).
    #[arg(short = 'P', long = "pool", default_value = "async")]
    pub pool: Vec<String>,
    /// Concurrency: jobs running at once (prefork: child processes). Default: 100 for
    /// async, the number of CPUs for prefork.
    #[arg(short = 'c', long, env = "SPROUT_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Queues to consume, comma-separated (default: `celery`). Not with named pools,
    /// which name their own queues.
    #[arg(short = 'Q', long, value_delimiter = ',', value_parser = parse_queue)]
    pub queues: Vec<String>,
    /// Prefork: jobs each child runs at once (an async pool inside each child), 1 to
    /// 100000. The default for every prefork pool; a `--pool` spec may set its own.
    #[arg(long, default_value_t = 1,
          value_parser = count_in::<1, { sprout::pool::prefork::MAX_CHILD_CONCURRENCY }>)]
    pub child_concurrency: usize,
    /// Prefork: replace a child after it has run this many jobs (default for every
    /// prefork pool; a `--pool` spec may set its own, 0 = never).
    #[arg(long, env = "SPROUT_MAX_TASKS_PER_CHILD")]
    pub max_tasks_per_child: Option<u64>,
    /// Prefork: replace a child, between jobs, once its peak resident memory is over
    /// this many KiB (Celery's unit). Default for every prefork pool; a `--pool` spec
    /// may set its own (0 = never).
    #[arg(long, env = "SPROUT_MAX_MEMORY_PER_CHILD")]
    pub max_memory_per_child: Option<u64>,
    /// Prefork: the children's scheduling niceness, 0–19 (higher yields the CPU to
    /// other work). Default: 0; but in a worker that also runs an async pool, children
    /// without a niceness run at idle priority (SCHED_IDLE: they get only CPU time
    /// nothing else wants, so CPU-heavy jobs cannot slow the async pool's jobs down).
    /// A `--pool` spec may set its own.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub prefork_nice: Option<i32>,
    /// Jobs reserved per slot, 1 to 10000 (1 = never hold more jobs than can run;
    /// Celery's 0, no limit, has no equivalent).
    #[arg(long, default_value_t = 1, value_parser = count_in::<1, MAX_PREFETCH_MULTIPLIER>)]
    pub prefetch_multiplier: usize,
    /// Worker name in results and logs (default: sprout@HOST).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Seconds running jobs get to finish on warm shutdown before they are released.
    #[arg(long, default_value = "60", value_parser = parse_duration)]
    pub grace: Duration,
    /// Lease (visibility timeout) in seconds, at least 1; extended while a job runs.
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    pub lease: Duration,
    /// How often the worker refreshes its liveness record in the broker: seconds, or a
    /// number with a unit (`500ms`, `2s`), at least 10ms. Default: 2s.
    #[arg(long, env = "SPROUT_HEARTBEAT_INTERVAL", value_parser = parse_duration,
          default_value = "2s")]
    pub heartbeat_interval: Duration,
    /// After how long without a heartbeat a worker counts as dead, and any other
    /// worker restores its reserved jobs at once instead of waiting for their lease
    /// (Redis: the visibility timeout). Must exceed `--heartbeat-interval`; `0` turns
    /// liveness off. Default: 10s.
    #[arg(long, env = "SPROUT_WORKER_DEAD_AFTER", value_parser = parse_duration,
          default_value = "10s")]
    pub worker_dead_after: Duration,
    /// Delete stored results this long after their last update (Celery's
    /// `result_expires`): seconds, or a number with a unit (`90s`, `30m`, `12h`, `1d`);
    /// `0` keeps them forever. Default: 1d. The worker sweeps the embedded SQLite
    /// backend at startup and then every quarter of this (at least every minute). On
    /// Redis it is each result's TTL (rounded up to whole seconds); the broker URL's
    /// `result_expires` key does the same, and giving both with different values is an
    /// error.
    #[arg(long, env = "SPROUT_RESULT_EXPIRES", value_parser = parse_duration)]
    pub result_expires: Option<Duration>,
    /// Store a STARTED state when a job begins (one extra write per job).
    #[arg(long)]
    pub track_started: bool,
    /// Log one INFO line per finished job (task, id, state, duration, fuel). Off by
    /// default: a line per job costs throughput on a busy worker.
    #[arg(long)]
    pub log_jobs: bool,
    /// Pre-warm the async pools' instance slots with this task at start (repeatable):
    /// each slot runs the task file once (its `tasks` export, no task code) before jobs
    /// are fetched, so the first jobs do not pay for faulting in fresh pages (~60 µs per
    /// slot). Slots stay warm for the task file that used them last.
    #[arg(long, value_name = "TASK")]
    pub prewarm: Vec<String>,
    /// Stop after this many jobs (for benchmarks and tests).
    #[arg(long, hide = true)]
    pub max_jobs: Option<u64>,
    /// Seconds a job for an unknown task (no loaded file provides it) is requeued, with
    /// backoff (1 s doubling to 10 s), before it fails `NotRegistered`: covers a task file
    /// still being deployed, and fleets where only some workers have it. 0 = fail at once.
    #[arg(long, env = "SPROUT_UNKNOWN_TASK_GRACE", default_value = "60", value_parser = parse_duration)]
    pub unknown_task_grace: Duration,
    /// File where the worker keeps the ids of revoked jobs across restarts (Celery's
    /// `--statedb`), so a revoked job delivered again after a restart does not run.
    /// Default: revoked ids are kept in memory only.
    #[arg(long, env = "SPROUT_STATEDB")]
    pub statedb: Option<PathBuf>,
    /// Send Celery's monitoring events (Celery's `-E`, `worker_send_task_events`):
    /// worker online/heartbeat/offline and task received/started/succeeded/failed/
    /// retried/revoked/rejected, so Flower and `celery events` show this worker. On
    /// Redis they go to the `celeryev` pub/sub channels; the embedded SQLite broker has
    /// no subscribers, so there they are not sent.
    #[arg(short = 'E', long = "task-events", env = "SPROUT_TASK_EVENTS")]
    pub task_events: bool,
    /// Serve Prometheus metrics (OpenMetrics text) at `http://ADDR/metrics`, e.g.
    /// `127.0.0.1:9808`; port 0 picks a free port (the log says which). Default: off.
    #[arg(long, env = "SPROUT_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
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
    /// The call's arguments.
    #[command(flatten)]
    pub call: CallArgs,
    /// Queue (default: the `queue` in the task's manifest under `--tasks`, else
    /// `celery`).
    #[arg(short, long, value_parser = parse_queue)]
    pub queue: Option<String>,
    /// Task directories or files whose manifests give a task's default queue (only the
    /// `.toml` manifests are read; no wasm is compiled). Default: none, so the queue the
    /// workers on the broker published for the task. A path given must exist.
    #[arg(short, long = "tasks", env = "SPROUT_TASKS", value_delimiter = ',')]
    pub tasks: Vec<PathBuf>,
    /// Priority 0–9 (higher first on the embedded broker).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: u8,
    /// Run no earlier than this many seconds from now.
    #[arg(long, conflicts_with = "eta", value_parser = parse_duration)]
    pub countdown: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2030-01-02T03:04:05Z).
    #[arg(long, value_parser = parse_eta)]
    pub eta: Option<DateTime<Utc>>,
    /// Revoke the job if it has not started within this many seconds.
    #[arg(long, value_parser = parse_duration)]
    pub expires: Option<Duration>,
    /// Most retries for this job.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Lower the fuel budget for this job.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Lower the hard time limit (seconds) for this job.
    #[arg(long, value_parser = parse_duration)]
    pub time_limit: Option<Duration>,
    /// Lower the memory cap (MiB) for this job.
    #[arg(long, value_parser = parse_mib)]
    pub memory: Option<u64>,
    /// Send this many copies (shows a progress bar).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Wait for the result and print it (with `--count`: wait for all of them and
    /// print how many succeeded, failed and timed out, and each failure by id).
    #[arg(short, long)]
    pub wait: bool,
    /// Seconds to wait with `--wait` (for all `--count` jobs together).
    #[arg(long, default_value = "60", value_parser = parse_duration)]
    pub timeout: Duration,
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
    #[arg(long, default_value = "60", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the job's captured log (its log lines, stdout and stderr) instead of the
    /// record. (`--logs`, not `--log`: that is the global log filter.)
    #[arg(long)]
    pub logs: bool,
    /// Broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `sprout purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Queues to purge, comma-separated.
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = sprout::model::DEFAULT_QUEUE,
          value_parser = parse_queue)]
    pub queues: Vec<String>,
    /// Do not ask for confirmation (on a terminal, purge asks first).
    #[arg(short, long)]
    pub force: bool,
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
    /// The call's arguments.
    #[command(flatten)]
    pub call: CallArgs,
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
    /// Task directories or files (each must exist).
    #[arg(default_value = "./tasks")]
    pub paths: Vec<PathBuf>,
    /// Instead of reading files, list what the workers on this broker serve: the
    /// task → queue map each worker publishes when it starts or reloads.
    #[arg(long, conflicts_with = "paths")]
    pub broker: Option<String>,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `sprout child` (hidden): one prefork child. The parent passes its engine settings so
/// the child's engine matches and shares the artifact cache.
#[derive(Debug, Args)]
pub struct ChildArgs {
    /// The child's settings as the parent wrote them (JSON of `ChildOptions`).
    #[arg(long)]
    pub options: String,
}

/// Most jobs reserved per slot (`--prefetch-multiplier`).
pub const MAX_PREFETCH_MULTIPLIER: usize = 10_000;

/// Parses a count flag: a whole number from `MIN` to `MAX`. A bad value is a usage
/// error naming the flag (clap, exit code 2).
///
/// # Errors
/// Not a whole number, or out of range; the message gives the range.
pub fn count_in<const MIN: usize, const MAX: usize>(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (MIN..=MAX).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {MIN} to {MAX}")),
    }
}

/// Parses a queue name flag (`-Q`, `-q`) through [`sprout::model::check_queue_name`].
///
/// # Errors
/// Empty, too long, or with a control character.
pub fn parse_queue(text: &str) -> Result<String, String> {
    sprout::model::check_queue_name(text)?;
    Ok(text.to_string())
}

/// Parses a memory flag in MiB (`--memory`): a whole number whose bytes fit in 64 bits
/// (at most [`SizeUnit::max_count`], 16 EiB), so it never wraps round to a small limit.
///
/// # Errors
/// Not a whole number, or too large.
pub fn parse_mib(text: &str) -> Result<u64, String> {
    let max = SizeUnit::Mib.max_count();
    match text.trim().parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("expected a whole number of MiB from 0 to {max}")),
    }
}

/// Parses every duration flag (time limits, countdown, expiry, lease, grace, timeouts,
/// result expiry): plain seconds (`86400`, `0.5`, `1e3`), or a number with one unit,
/// `ms`, `s`, `m`, `h` or `d` (`250ms`, `90s`, `30m`, `12h`, `1d`), checked through
/// [`time::seconds`]: at most [`time::MAX_SECONDS`] (100 years), never negative, NaN
/// or infinite. A bad value is a usage error naming the flag (clap, exit code 2).
///
/// # Errors
/// Not a number with a known unit, or out of range; the message says what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let units = [
        ("ms", 0.001),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3_600.0),
        ("d", 86_400.0),
    ];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| Some((text.strip_suffix(unit)?, *scale)))
        .unwrap_or((text, 1.0));
    let Ok(value) = number.trim().parse::<f64>() else {
        return Err(format!(
            "{text:?} is not a duration: give seconds (86400) or a number with a unit \
             (250ms, 90s, 30m, 12h, 1d)"
        ));
    };
    time::seconds(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses `--preemption`: `fuel` or `epoch`.
///
/// # Errors
/// Any other word.
pub fn parse_preemption(text: &str) -> Result<Preemption, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "fuel" => Ok(Preemption::Fuel),
        "epoch" => Ok(Preemption::Epoch),
        _ => Err(format!(
            "{text:?} is not a preemption mode: give fuel or epoch"
        )),
    }
}

/// The shortest and longest `--epoch-tick`: below 10 µs the ticker thread would eat a
/// core; above 100 ms a hog would hold a thread for longer than any job should wait.
const EPOCH_TICK_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(10)..=Duration::from_millis(100);

/// Parses `--epoch-tick`: microseconds with `us` (or `µs`), or anything
/// [`parse_duration`] takes, between 10 µs and 100 ms, rounded to whole microseconds.
///
/// # Errors
/// Not a duration, or outside the range.
pub fn parse_epoch_tick(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let micros = trimmed
        .strip_suffix("us")
        .or_else(|| trimmed.strip_suffix("µs"))
        .map(str::trim);
    let tick = match micros {
        Some(number) => {
            let value = number.parse::<f64>().map_err(|_| {
                format!("{text:?} is not a duration: give 50us, 1ms or seconds (0.0005)")
            })?;
            time::seconds(value / 1e6).map_err(|e| format!("{text:?}: {e}"))?
        }
        None => parse_duration(trimmed)?,
    };
    let tick =
        Duration::from_micros(u64::try_from(tick.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX));
    if !EPOCH_TICK_RANGE.contains(&tick) {
        return Err(format!(
            "--epoch-tick {text:?} is outside 10us..100ms (the epoch time slice)"
        ));
    }
    Ok(tick)
}

/// Parses `--eta`: an RFC 3339 time (`2030-01-02T03:04:05Z`), at most
/// [`time::MAX_SECONDS`] from now ([`time::instant`]).
///
/// # Errors
/// Not RFC 3339, or too far ahead.
pub fn parse_eta(text: &str) -> Result<DateTime<Utc>, String> {
    let at = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|e| format!("{text:?} is not RFC 3339 (2030-01-02T03:04:05Z): {e}"))?;
    time::instant(at.with_timezone(&Utc), Utc::now()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--preemption` takes the two modes; `--epoch-tick` units, rounding and range.
    #[test]
    fn preemption_flags_parse_and_refuse() {
        assert_eq!(parse_preemption("fuel"), Ok(Preemption::Fuel));
        assert_eq!(parse_preemption(" Epoch "), Ok(Preemption::Epoch));
        assert!(
            parse_preemption("time")
                .unwrap_err()
                .contains("fuel or epoch")
        );
        assert_eq!(parse_epoch_tick("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_epoch_tick("50µs"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_epoch_tick("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_epoch_tick("0.0002"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_epoch_tick("20.4us"), Ok(Duration::from_micros(21)));
        assert_eq!(parse_epoch_tick("100ms"), Ok(Duration::from_millis(100)));
        for bad in [
            "9us", "0", "101ms", "1s", "-5us", "NaNus", "fast", "", "1e30us", "inf", "1e300",
            "nan", "-0.001",
        ] {
            let err = parse_epoch_tick(bad).expect_err(bad);
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    /// `--version` names the wasmtime Cargo.lock resolved.
    #[test]
    fn version_names_the_locked_wasmtime() {
        let lock = include_str!("../../../Cargo.lock");
        let pinned = lock
            .split("name = \"wasmtime\"\nversion = \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("wasmtime in Cargo.lock");
        assert!(
            VERSION.contains(&format!("(wasmtime {pinned})")),
            "{VERSION} vs {pinned}"
        );
    }

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("86400"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1e3"), Ok(Duration::from_secs(1_000)));
        for bad in ["", "d", "-1", "1w", "one day", "1 d x", "s1"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Every out-of-range value is refused with a message naming it (model::time).
    #[test]
    fn durations_out_of_range_are_refused() {
        for (bad, want) in [
            ("inf", "not a finite number"),
            ("nan", "not a finite number"),
            ("-1", "is negative"),
            ("-0.5s", "is negative"),
            ("1e13", "10000000000000.0 s is more than the maximum"),
            ("1e300d", "is more than the maximum"),
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
        assert!(parse_duration("3155760000").is_ok());
        assert!(parse_eta("2030-01-02T03:04:05Z").is_ok());
        assert!(
            parse_eta("9999-01-02T03:04:05Z")
                .unwrap_err()
                .contains("from now")
        );
        assert!(parse_eta("tomorrow").is_err());
    }
}

/// `sprout inspect` / `sprout control`: a remote-control command to workers.
#[derive(Debug, Args, Clone)]
pub struct ControlArgs {
    /// The command (`ping`, `active`, `revoke`, …; see the command's help).
    pub verb: String,
    /// Its arguments (task ids, a task name and a rate, a queue, …).
    pub args: Vec<String>,
    /// Only these workers (by name, e.g. `sprout@host`; repeatable or comma-separated).
    #[arg(short, long, value_delimiter = ',')]
    pub destination: Vec<String>,
    /// Seconds to wait for replies (or with a unit: `500ms`).
    #[arg(short, long, default_value = "1", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the replies as one JSON object (worker name → reply).
    #[arg(short, long)]
    pub json: bool,
    /// With `revoke`: also stop the job if it is running (at its next fuel slice).
    #[arg(long)]
    pub terminate: bool,
    /// With `revoke --terminate`: the signal Celery would send (checked, then recorded
    /// in the reason; Sprout stops the job the same way for every signal).
    #[arg(long, default_value = "SIGTERM")]
    pub signal: String,
    /// The broker's location.
    #[command(flatten)]
    pub broker: BrokerArgs,
}
