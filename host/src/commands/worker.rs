//! `sprout worker`: load tasks, connect, print the banner, consume until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;

use crate::broker;
use crate::cli::WorkerArgs;
use crate::pool::{AsyncPool, Pool, parse_pool_kind};
use crate::registry::Registry;
use crate::worker::{Shutdown, Worker, WorkerConfig};

use super::{EXIT_USAGE, ExitError};

/// Runs the command.
///
/// # Errors
/// Bad flags, an unreachable broker, or a worker that could not run.
pub async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let pool_kind = parse_pool_kind(&args.pool).map_err(|e| ExitError::new(EXIT_USAGE, e))?;
    if args.concurrency == 0 {
        bail!(ExitError::new(
            EXIT_USAGE,
            "--concurrency must be at least 1"
        ));
    }
    let sandbox = super::build_sandbox(&args.limits, args.concurrency)?;
    let defaults = super::default_limits(&args.limits);
    let registry = Arc::new(Registry::new());
    let rejected = registry.load(&sandbox, &args.tasks, &defaults).await;
    for r in &rejected {
        tracing::error!("rejected task file {}: {}", r.file.display(), r.reason);
    }
    // Hot reload: new, changed and removed task files are picked up while the worker runs.
    let _watcher = crate::registry::watch::spawn(
        registry.clone(),
        sandbox.clone(),
        args.tasks.clone(),
        defaults.clone(),
        Default::default(),
    );
    let pool: Arc<dyn Pool> = match pool_kind {
        "async" => Arc::new(AsyncPool::new(sandbox.clone(), args.concurrency)),
        other => bail!(ExitError::new(
            EXIT_USAGE,
            format!("the {other} pool is not available in this build yet")
        )),
    };
    let connection = broker::connect(&args.broker.broker)
        .await
        .with_context(|| format!("cannot open broker {}", args.broker.broker))?;
    let hostname = args.hostname.clone().unwrap_or_else(default_hostname);
    print_banner(&hostname, &args, pool.as_ref(), &registry);
    if registry.snapshot().is_empty() {
        tracing::warn!(
            "no tasks loaded from {}: every job will fail as NotRegistered",
            display_paths(&args.tasks)
        );
    }

    let config = WorkerConfig {
        hostname,
        queues: args.queues.clone(),
        reservations: args
            .concurrency
            .saturating_mul(args.prefetch_multiplier.max(1)),
        lease: Duration::from_secs_f64(args.lease.max(1.0)),
        grace: Duration::from_secs_f64(args.grace.max(0.0)),
        track_started: args.track_started,
        max_jobs: args.max_jobs,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(Shutdown::Running);
    tokio::spawn(forward_signals(shutdown_tx));
    let worker = Worker::new(
        connection.broker,
        connection.backend,
        registry,
        pool,
        config,
    );
    let report = worker.run(shutdown_rx).await?;
    tracing::info!(
        "worker stopped: {} succeeded, {} failed, {} retried, {} dead-lettered, {} released{}",
        report.succeeded,
        report.failed,
        report.retried,
        report.dead_lettered,
        report.released,
        if report.cold { " (cold shutdown)" } else { "" }
    );
    Ok(if report.cold {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// First SIGTERM/SIGINT → warm shutdown; the second → cold.
async fn forward_signals(tx: watch::Sender<Shutdown>) {
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

fn print_banner(hostname: &str, args: &WorkerArgs, pool: &dyn Pool, registry: &Registry) {
    let tasks = registry.snapshot();
    let mut banner = format!(
        "\n -------------- {hostname} v{}\n--- ***** -----\n-- ******* ---- [config]\n\
         - *** --- * --- .> broker:      {}\n- ** ---------- .> pool:        {} (concurrency: {})\n\
         - ** ---------- .> queues:      {}\n- ** ---------- .> tasks from:  {}\n--- ***** -----\n\
          -------------- [tasks]\n",
        env!("CARGO_PKG_VERSION"),
        args.broker.broker,
        pool.kind(),
        pool.concurrency(),
        args.queues.join(", "),
        display_paths(&args.tasks),
    );
    for (name, entry) in tasks.iter() {
        banner.push_str(&format!(
            "  . {name}  ({}, {})\n",
            entry.module.kind.name(),
            &entry.module.hash[..12]
        ));
    }
    eprintln!("{banner}");
}
