//! `sprout worker`: load tasks, start the pools, connect, print the banner, consume until
//! a signal. Also `sprout child`, the prefork pool's hidden child mode.
//!
//! One worker may run several pools, each bound to its own queues
//! (`--pool io=async:1000 --pool cpu=prefork:2`): every pool gets its own consume loop
//! ([`Worker`]) over the shared broker, result backend and registry, and all of them stop
//! together.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::cli::args::{ChildArgs, LimitArgs, WorkerArgs};
use sprout::connect;
use sprout::pool::prefork;
use sprout::pool::prefork::child::{self, ChildOptions};
use sprout::pool::{
    AsyncPool, Pool, PoolKind, PoolSpec, PreforkConfig, PreforkOptions, PreforkPool,
    parse_pool_spec,
};
use sprout::registry::Registry;
use sprout::sandbox::{ArtifactCache, EngineSettings, Preemption, Sandbox};
use sprout::worker::events::Events;
use sprout::worker::metrics::Metrics;
use sprout::worker::revoked::Revoked;
use sprout::worker::{
    ControlPlane, Liveness, MIN_HEARTBEAT_INTERVAL, Shutdown, Worker, WorkerConfig, WorkerReport,
};

use super::{EXIT_USAGE, ExitError};

/// Default concurrency of an async pool.
const DEFAULT_ASYNC_CONCURRENCY: usize = 100;

/// Runs the command. `log_filter` is passed on to prefork children.
///
/// # Errors
/// Bad flags, an unreachable broker, a pool that cannot start, or a worker that could
/// not run.
pub async fn run(args: WorkerArgs, log_filter: &str) -> anyhow::Result<ExitCode> {
    let (specs, named) = plan_pools(&args).map_err(|e| ExitError::new(EXIT_USAGE, e))?;
    let liveness = liveness(&args).map_err(|e| ExitError::new(EXIT_USAGE, e))?;
    super::check_task_paths("--tasks", &args.tasks)?;
    let revoked = match &args.statedb {
        Some(path) => Revoked::open(path).map_err(|e| ExitError::new(EXIT_USAGE, e.to_string()))?,
        None => Revoked::default(),
    };
    let async_slots: usize = specs
        .iter()
        .filter(|s| s.kind == PoolKind::Async)
        .filter_map(|s| s.concurrency)
        .sum();
    // The parent's sandbox runs the async pools and loads (validates, lists, caches)
    // every task file; prefork children load the artifacts it cached.
    let sandbox = super::build_sandbox(&args.limits, async_slots)?;
    let defaults = super::default_limits(&args.limits);
    let registry = Arc::new(Registry::new());
    let rejected = registry.load(&sandbox, &args.tasks, &defaults).await;
    for r in &rejected {
        tracing::error!("rejected task file {}: {}", r.file.display(), r.reason);
    }
    // Hot reload: new, changed and removed task files are picked up while the worker runs.
    let _watcher = sprout::registry::watch::spawn(
        registry.clone(),
        sandbox.clone(),
        args.tasks.clone(),
        defaults.clone(),
        Default::default(),
    );
    // In a worker that also runs async pools, prefork children yield the CPU to them
    // (idle priority, unless a niceness is given).
    let mixed = async_slots > 0;
    let mut pools: Vec<(PoolSpec, Arc<dyn Pool>)> = Vec::new();
    for spec in specs {
        let pool = match start_pool(&args, &spec, &sandbox, log_filter, mixed).await {
            Ok(pool) => pool,
            Err(e) => {
                for (_, pool) in &pools {
                    pool.shutdown().await;
                }
                return Err(e);
            }
        };
        pools.push((spec, pool));
    }
    prewarm(&args.prewarm, &registry, &sandbox, &pools).await;
    let options = args.broker.connect_options(args.result_expires);
    let connection = match connect::connect_with(&args.broker.broker, &options).await {
        Ok(connection) => connection,
        Err(e) => {
            for (_, pool) in &pools {
                pool.shutdown().await;
            }
            return Err(e).with_context(|| format!("cannot open broker {}", args.broker.broker));
        }
    };
    let hostname = args.hostname.clone().unwrap_or_else(default_hostname);
    // Remote control: one plane for every pool of the process (served below); its
    // events switch is `-E`, turned later by `enable_events` / `disable_events`.
    let plane = ControlPlane::new(&hostname, revoked);
    plane.set_events(args.task_events);
    let observers =
        match Observability::start(&args, &hostname, &sandbox, plane.events_switch()).await {
            Ok(observers) => observers,
            Err(e) => {
                for (_, pool) in &pools {
                    pool.shutdown().await;
                }
                return Err(e);
            }
        };
    print_banner(&hostname, &args, &pools, named, mixed, &registry);
    if registry.snapshot().is_empty() {
        tracing::warn!(
            "no tasks loaded from {}: every job will fail as NotRegistered",
            display_paths(&args.tasks)
        );
    }

    // Celery's result_expires: delete old results from backends that keep them (SQLite);
    // Redis results carry it as their TTL (set by `connect_with` above).
    let result_expires = args
        .result_expires
        .unwrap_or(sprout::model::DEFAULT_RESULT_EXPIRES);
    let sweeper = (!result_expires.is_zero()).then(|| {
        tokio::spawn(sprout::backend::expiry::sweep(
            connection.backend.clone(),
            result_expires,
        ))
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(Shutdown::Running);
    let shutdown_tx = Arc::new(shutdown_tx);
    tokio::spawn(forward_signals(shutdown_tx.clone()));

    // Remote control answers on its own thread; a remote `shutdown` is a warm shutdown.
    plane.set_broker_info(broker_info(&args.broker.broker));
    let _control = match connection.broker.mailbox() {
        Some(mailbox) => Some(
            plane
                .serve(mailbox)
                .context("cannot start the remote-control thread")?,
        ),
        None => None,
    };
    {
        let plane = plane.clone();
        let tx = shutdown_tx.clone();
        tokio::spawn(async move {
            plane.shutdown_requested().await;
            tx.send_if_modified(|state| {
                let running = *state == Shutdown::Running;
                if running {
                    *state = Shutdown::Warm;
                }
                running
            });
        });
    }
    let mut workers = tokio::task::JoinSet::new();
    // Each consume loop publishes the task → queue map it serves (senders without the
    // task files route by it); withdrawn when the worker stops.
    let mut publishers = tokio::task::JoinSet::new();
    for (spec, _) in &pools {
        let name = if named {
            format!("{hostname}/{}", spec.name)
        } else {
            hostname.clone()
        };
        publishers.spawn(sprout::worker::routes::publish(
            connection.broker.clone(),
            registry.clone(),
            name,
            spec.queues.clone(),
            shutdown_rx.clone(),
        ));
    }
    for (spec, pool) in &pools {
        let config = WorkerConfig {
            hostname: hostname.clone(),
            queues: spec.queues.clone(),
            reservations: pool
                .concurrency()
                .saturating_mul(args.prefetch_multiplier.max(1)),
            lease: args.lease.max(Duration::from_secs(1)),
            grace: args.grace,
            track_started: args.track_started,
            max_jobs: args.max_jobs,
            unknown_task_grace: args.unknown_task_grace,
        };
        let worker = Worker::new(
            connection.broker.clone(),
            connection.backend.clone(),
            registry.clone(),
            pool.clone(),
            config,
        )
        .liveness(liveness)
        .liveness(liveness)
        .control(plane.clone(), spec.name.clone())
        .log_jobs(args.log_jobs);
        let worker = observers.observe(worker, &spec.name, pool.as_ref());
        let name = spec.name.clone();
        let shutdown = shutdown_rx.clone();
        workers.spawn(async move { (name, worker.run(shutdown).await) });
    }

    // The pools stop together: when one consume loop ends (a signal, `--max-jobs`, a
    // broker that stays down), the others get a warm shutdown.
    let mut total = WorkerReport::default();
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        shutdown_tx.send_if_modified(|state| {
            let running = *state == Shutdown::Running;
            if running {
                *state = Shutdown::Warm;
            }
            running
        });
        match joined {
            Ok((name, Ok(report))) => {
                if named {
                    log_report(&format!("pool {name}"), &report);
                }
                add_report(&mut total, &report);
            }
            Ok((name, Err(e))) => {
                tracing::error!("pool {name}: the worker failed: {e:#}");
                failure.get_or_insert(anyhow::Error::new(e).context(format!("pool {name}")));
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("a worker task failed: {e}"));
            }
        }
    }
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    // The shutdown state is no longer Running: each publisher withdraws its map.
    let withdrawn = async { while publishers.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), withdrawn).await;
    observers.stop().await;
    for (_, pool) in &pools {
        pool.shutdown().await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    log_report("worker", &total);
    Ok(if total.cold {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What watches the worker: Celery events (`-E`) and the `/metrics` server.
struct Observability {
    events: Option<Events>,
    metrics: Option<(Arc<Metrics>, tokio::task::JoinHandle<()>)>,
}

impl Observability {
    /// Starts what the flags ask for: the metrics server first (a taken address fails
    /// the start), then the events (`worker-online`).
    async fn start(
        args: &WorkerArgs,
        hostname: &str,
        sandbox: &Sandbox,
        task_events: Arc<AtomicBool>,
    ) -> anyhow::Result<Observability> {
        let metrics = match args.metrics_addr {
            Some(addr) => {
                let metrics = Metrics::new(Some(sandbox.clone()));
                let (local, server) = metrics
                    .serve(addr)
                    .await
                    .with_context(|| format!("cannot serve metrics on {addr} (--metrics-addr)"))?;
                tracing::info!("serving metrics on http://{local}/metrics");
                Some((metrics, server))
            }
            None => None,
        };
        // Worker events (online, heartbeat, offline) go wherever the broker carries
        // events, as Celery's do; task events only while the switch is on (`-E`, or
        // `celery control enable_events`, which is how Flower turns them on).
        let sink = connect::events(&args.broker.broker)
            .await
            .with_context(|| format!("cannot send events on {}", args.broker.broker))?;
        let events = match sink {
            Some(sink) => {
                if args.task_events {
                    tracing::info!("task events: on (the celeryev exchange)");
                }
                Some(Events::start(sink, hostname, task_events).await)
            }
            None => {
                if args.task_events {
                    tracing::warn!(
                        "task events (-E): no events are sent on this broker (the embedded \
                         SQLite broker has no subscribers; AMQP is not supported yet): use a \
                         Redis broker for Flower"
                    );
                }
                None
            }
        };
        Ok(Observability { events, metrics })
    }

    /// `worker` with the observers of the pool `name`.
    fn observe(&self, worker: Worker, name: &str, pool: &dyn Pool) -> Worker {
        let kind = pool.kind().to_string();
        let mut worker = worker;
        if let Some((metrics, _)) = &self.metrics {
            worker = worker.observe(metrics.for_pool(name, &kind, pool.concurrency()));
        }
        if let Some(events) = &self.events {
            worker = worker.observe(events.for_pool(name, &kind, pool.concurrency()));
        }
        worker
    }

    /// Sends `worker-offline` and stops the metrics server.
    async fn stop(self) {
        if let Some(events) = self.events {
            events.stop().await;
        }
        if let Some((_, server)) = self.metrics {
            server.abort();
        }
    }
}

/// `sprout child`: one prefork child, until its parent closes its stdin.
pub fn run_child(args: ChildArgs) -> ExitCode {
    match ChildOptions::from_arg(&args.options) {
        Ok(options) => child::main(options),
        Err(e) => {
            crate::errln!(
                "error: sprout child: unreadable --options (another Sprout version?): {e}"
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The pools to run, and whether they were named (`--pool NAME=...`) rather than the
/// single-pool form (`-P KIND -c N -Q QUEUES`).
fn plan_pools(args: &WorkerArgs) -> Result<(Vec<PoolSpec>, bool), String> {
    if args.concurrency == Some(0) {
        return Err("--concurrency must be at least 1".into());
    }
    let named = args.pool.iter().any(|p| p.contains('='));
    if !named {
        let [kind] = args.pool.as_slice() else {
            return Err(format!(
                "several pools need names: --pool NAME=KIND[:CONCURRENCY[:QUEUE,...]], \
                 e.g. --pool io=async:1000 --pool cpu=prefork:2 (got {})",
                args.pool.join(", ")
            ));
        };
        let (kind, solo) = PoolKind::parse_solo(kind)?;
        if solo.is_some() && args.concurrency.is_some_and(|c| c != 1) {
            return Err(
                "-P solo runs one job at a time (the async pool with -c 1); for more, give -P async -c N"
                    .into(),
            );
        }
        let queues = if args.queues.is_empty() {
            vec![sprout::model::DEFAULT_QUEUE.to_string()]
        } else {
            args.queues.clone()
        };
        let spec = PoolSpec {
            name: kind.to_string(),
            kind,
            concurrency: Some(
                solo.or(args.concurrency)
                    .unwrap_or_else(|| default_concurrency(kind)),
            ),
            queues,
            prefork: PreforkOptions::default(),
        };
        check_prefork_processes(&spec)?;
        return Ok((vec![spec], false));
    }
    if !args.queues.is_empty() {
        return Err(
            "-Q/--queues cannot be combined with named pools: give each pool its queues, \
             e.g. --pool cpu=prefork:2:cpu,hogs"
                .into(),
        );
    }
    let mut specs = Vec::new();
    let mut queue_owner: HashMap<String, String> = HashMap::new();
    for text in &args.pool {
        let mut spec = parse_pool_spec(text)?;
        if specs.iter().any(|s: &PoolSpec| s.name == spec.name) {
            return Err(format!("two pools are named {:?}", spec.name));
        }
        spec.concurrency = Some(
            spec.concurrency
                .or(args.concurrency)
                .unwrap_or_else(|| default_concurrency(spec.kind)),
        );
        check_prefork_processes(&spec)?;
        for queue in &spec.queues {
            if let Some(other) = queue_owner.insert(queue.clone(), spec.name.clone()) {
                tracing::warn!(
                    "queue {queue:?} is consumed by pools {other} and {}: they will compete for its jobs",
                    spec.name
                );
            }
        }
        specs.push(spec);
    }
    Ok((specs, true))
}

/// A prefork pool runs at most [`prefork::MAX_PROCESSES`] children.
fn check_prefork_processes(spec: &PoolSpec) -> Result<(), String> {
    match spec.concurrency {
        Some(n) if spec.kind == PoolKind::Prefork && n > prefork::MAX_PROCESSES => Err(format!(
            "pool {}: {n} child processes is more than a prefork pool runs (at most {}); \
             for more jobs at once per process, add --child-concurrency",
            spec.name,
            prefork::MAX_PROCESSES
        )),
        _ => Ok(()),
    }
}

fn default_concurrency(kind: PoolKind) -> usize {
    match kind {
        PoolKind::Prefork => PreforkConfig::default_processes(),
        PoolKind::Async => DEFAULT_ASYNC_CONCURRENCY,
    }
}

/// `, 4 per child, max 100 tasks per child, nice 10` for the banner.
fn describe_children(config: &PreforkConfig) -> String {
    let mut text = String::new();
    if config.child_concurrency > 1 {
        text.push_str(&format!(", {} per child", config.child_concurrency));
    }
    if let Some(n) = config.max_tasks_per_child {
        text.push_str(&format!(", max {n} tasks per child"));
    }
    if let Some(bytes) = config.max_memory_per_child {
        text.push_str(&format!(
            ", max {} per child",
            sprout::model::human_bytes(bytes)
        ));
    }
    if config.idle_priority {
        text.push_str(", idle priority");
    } else if config.nice != 0 {
        text.push_str(&format!(", nice {}", config.nice));
    }
    text
}

/// The prefork settings the worker's flags give every prefork pool.
fn prefork_flags(args: &WorkerArgs) -> PreforkOptions {
    PreforkOptions {
        child_concurrency: Some(args.child_concurrency),
        max_tasks_per_child: args.max_tasks_per_child,
        max_memory_per_child: args.max_memory_per_child,
        nice: args.prefork_nice,
    }
}

async fn start_pool(
    args: &WorkerArgs,
    spec: &PoolSpec,
    sandbox: &Sandbox,
    log_filter: &str,
    mixed: bool,
) -> anyhow::Result<Arc<dyn Pool>> {
    let concurrency = spec.concurrency.unwrap_or(1);
    Ok(match spec.kind {
        PoolKind::Prefork => {
            let program = std::env::current_exe()
                .context("cannot find the sprout executable to start prefork children")?;
            let mut config = PreforkConfig::new(program, concurrency);
            spec.prefork
                .or(prefork_flags(args))
                .apply(&mut config, mixed);
            config.settings = sandbox.settings().clone();
            config.cache_dir = (!args.limits.no_cache)
                .then(|| {
                    args.limits
                        .cache_dir
                        .clone()
                        .or_else(ArtifactCache::default_dir)
                })
                .flatten();
            config.log_filter = Some(log_filter.to_string());
            super::check_child_engine(
                sandbox.settings(),
                &config.child_settings(),
                config.child_concurrency,
            )?;
            let pool = PreforkPool::start(config)
                .await
                .with_context(|| format!("cannot start the prefork pool {:?}", spec.name))?;
            Arc::new(pool)
        }
        _ => Arc::new(AsyncPool::new(sandbox.clone(), concurrency)),
    })
}

/// Pre-warms the async pools' instance slots with each `--prewarm` task in turn (up to
/// the pools' total concurrency); a task that is not loaded or cannot be warmed is
/// logged and skipped.
async fn prewarm(
    tasks: &[String],
    registry: &Registry,
    sandbox: &Sandbox,
    pools: &[(PoolSpec, Arc<dyn Pool>)],
) {
    let slots: usize = pools
        .iter()
        .filter(|(_, pool)| pool.kind() == PoolKind::Async)
        .map(|(_, pool)| pool.concurrency())
        .sum();
    if slots == 0 {
        return;
    }
    for task in tasks {
        let Some(entry) = registry.lookup(task) else {
            tracing::warn!("--prewarm {task}: no loaded task file provides it");
            continue;
        };
        match sandbox.prewarm(&entry.module, slots).await {
            Ok(done) => tracing::info!(
                "pre-warmed {} instance slots with {task} in {:.0?}",
                done.slots,
                done.elapsed
            ),
            Err(e) => tracing::warn!("--prewarm {task}: {e}"),
        }
    }
}

fn add_report(total: &mut WorkerReport, report: &WorkerReport) {
    total.succeeded += report.succeeded;
    total.failed += report.failed;
    total.retried += report.retried;
    total.dead_lettered += report.dead_lettered;
    total.released += report.released;
    total.cold |= report.cold;
}

fn log_report(what: &str, report: &WorkerReport) {
    tracing::info!(
        "{what} stopped: {} succeeded, {} failed, {} retried, {} dead-lettered, {} released{}",
        report.succeeded,
        report.failed,
        report.retried,
        report.dead_lettered,
        report.released,
        if report.cold { " (cold shutdown)" } else { "" }
    );
}

/// First SIGTERM/SIGINT → warm shutdown; the second → cold.
async fn forward_signals(tx: Arc<watch::Sender<Shutdown>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for next in [Shutdown::Warm, Shutdown::Cold] {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        match next {
            Shutdown::Warm => tracing::info!(
                "warm shutdown requested (send the signal again for a cold shutdown)"
            ),
            _ => tracing::warn!("cold shutdown requested"),
        }
        let _ = tx.send(next);
    }
}

/// The worker's liveness settings: off when `--worker-dead-after` is 0.
fn liveness(args: &WorkerArgs) -> Result<Option<Liveness>, String> {
    if args.worker_dead_after.is_zero() {
        return Ok(None);
    }
    if args.heartbeat_interval < MIN_HEARTBEAT_INTERVAL
        || args.heartbeat_interval >= args.worker_dead_after
    {
        return Err(format!(
            "--heartbeat-interval ({:?}) must be at least {MIN_HEARTBEAT_INTERVAL:?} (each \
             heartbeat is a write to the broker) and below --worker-dead-after ({:?})",
            args.heartbeat_interval, args.worker_dead_after
        ));
    }
    Ok(Some(Liveness {
        interval: args.heartbeat_interval,
        dead_after: args.worker_dead_after,
    }))
}

/// What `inspect stats` says about the broker: its transport and where it is (never
/// credentials).
fn broker_info(url: &str) -> serde_json::Value {
    let transport = url.split(':').next().unwrap_or("").to_string();
    let (mut host, mut port, mut vhost) = (None, None, String::new());
    if let Some(rest) = url.split_once("://").map(|(_, rest)| rest) {
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hostport = authority.rsplit('@').next().unwrap_or(authority);
        match hostport.rsplit_once(':') {
            Some((h, p)) => {
                host = Some(h.to_string());
                port = p.parse::<u16>().ok();
            }
            None => host = Some(hostport.to_string()),
        }
        vhost = path.to_string();
    }
    serde_json::json!({
        "transport": transport,
        "hostname": host,
        "port": port,
        "virtual_host": vhost,
        "userid": null,
        "insist": false,
        "ssl": transport == "rediss",
    })
}

fn default_hostname() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("sprout@{host}")
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `fuel` or `epoch (tick 50µs)` for the banner.
fn describe_preemption(limits: &LimitArgs) -> String {
    match limits.preemption {
        Preemption::Fuel => "fuel".into(),
        Preemption::Epoch => {
            let tick = limits
                .epoch_tick
                .unwrap_or(EngineSettings::default().epoch_tick);
            format!("epoch (tick {}µs)", tick.as_micros())
        }
    }
}

fn print_banner(
    hostname: &str,
    args: &WorkerArgs,
    pools: &[(PoolSpec, Arc<dyn Pool>)],
    named: bool,
    mixed: bool,
    registry: &Registry,
) {
    let tasks = registry.snapshot();
    let mut banner = format!(
        "\n -------------- {hostname} v{}\n--- ***** -----\n-- ******* ---- [config]\n\
         - *** --- * --- .> broker:      {}\n- *** --- * --- .> preemption:  {}\n",
        env!("CARGO_PKG_VERSION"),
        args.broker.broker,
        describe_preemption(&args.limits),
    );
    for (spec, pool) in pools {
        let extra = if pool.kind() == PoolKind::Prefork {
            let mut config = PreforkConfig::new("", 1);
            spec.prefork
                .or(prefork_flags(args))
                .apply(&mut config, mixed);
            describe_children(&config)
        } else {
            String::new()
        };
        if named {
            banner.push_str(&format!(
                "- ** ---------- .> pool {}: {} (concurrency: {}{extra}) ← queues: {}\n",
                spec.name,
                pool.kind(),
                spec.concurrency.unwrap_or_default(),
                spec.queues.join(", ")
            ));
        } else {
            banner.push_str(&format!(
                "- ** ---------- .> pool:        {} (concurrency: {}{extra})\n\
                 - ** ---------- .> queues:      {}\n",
                pool.kind(),
                spec.concurrency.unwrap_or_default(),
                spec.queues.join(", ")
            ));
        }
    }
    banner.push_str(&format!(
        "- ** ---------- .> tasks from:  {}\n--- ***** -----\n -------------- [tasks]\n",
        display_paths(&args.tasks)
    ));
    for (name, entry) in tasks.iter() {
        let queue = entry
            .manifest
            .queue
            .as_deref()
            .map(|q| format!(", queue {q}"))
            .unwrap_or_default();
        banner.push_str(&format!(
            "  . {name}  ({}, {}{queue})\n",
            entry.module.kind.name(),
            &entry.module.hash[..12]
        ));
    }
    crate::errln!("{banner}");
}
