//! `sprout tasks [PATHS]`: what a task directory provides — each task with its version,
//! its limits and everything its manifest grants.

use std::process::ExitCode;

use serde_json::Value;

use anyhow::Context;

use super::{EXIT_USAGE, ExitError};
use crate::cli::args::TasksArgs;
use sprout::model::Capabilities;
use sprout::model::human_bytes;
use sprout::registry::{self, TaskEntry};

/// Runs the command: one line per task name (version, kind, limits, file), then an
/// indented line with its routing and rate limit and one with its capabilities; then
/// the rejected files. Exits 1 when any file was rejected.
///
/// # Errors
/// The engine cannot be built.
pub async fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.broker {
        return fleet(url).await;
    }
    super::check_task_paths("sprout tasks", &args.paths)?;
    if registry::task_files(&args.paths).is_empty() {
        let paths: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ExitError::new(
            EXIT_USAGE,
            format!(
                "no task files (*.wasm) in {} (the example tasks are built into target/tasks \
                 by `make tasks`)",
                paths.join(", ")
            ),
        )
        .into());
    }
    let sandbox = super::build_sandbox(&args.limits, 1)?;
    let defaults = super::default_limits(&args.limits);
    let (entries, rejected) = registry::scan(&sandbox, &args.paths, &defaults).await;
    crate::outln!(
        "{:<24} {:<18} {:<12} {:>14} {:>9} {:>9} {:>9}  FILE",
        "TASK",
        "KIND",
        "VERSION",
        "FUEL",
        "MEMORY",
        "TIME",
        "OUTPUT"
    );
    for entry in entries.values() {
        let name = if entry.name == entry.export {
            entry.name.clone()
        } else {
            format!("{} -> {}", entry.name, entry.export)
        };
        crate::outln!(
            "{:<24} {:<18} {:<12} {:>14} {:>9} {:>8}s {:>9}  {}",
            name,
            entry.module.kind.name(),
            &entry.module.hash[..12],
            entry.limits.fuel,
            human_bytes(entry.limits.memory_bytes),
            entry.limits.time_limit.as_secs_f64(),
            human_bytes(entry.limits.output_bytes),
            entry.file.display()
        );
        crate::outln!("    {}", settings_line(entry));
        crate::outln!("    grants: {}", grants_line(&entry.capabilities));
    }
    for r in &rejected {
        crate::errln!("rejected {}: {}", r.file.display(), r.reason);
    }
    Ok(if rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `sprout tasks --broker URL`: what the workers on that broker serve, from the maps
/// they published: one line per task and worker, with the queue a sender routes to.
async fn fleet(url: &str) -> anyhow::Result<ExitCode> {
    let broker = sprout::connect::broker(url)
        .await
        .with_context(|| format!("cannot open broker {url}"))?;
    let fleet = broker.routes().await?;
    crate::outln!(
        "{:<24} {:<16} {:<32} QUEUES READ",
        "TASK",
        "QUEUE",
        "WORKER"
    );
    let mut rows = Vec::new();
    for worker in &fleet {
        for task in worker.tasks.keys() {
            let queue = worker.queue_for(task).unwrap_or("-");
            rows.push((task.clone(), queue.to_string(), worker));
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.2.worker).cmp(&(&b.0, &b.2.worker)));
    for (task, queue, worker) in &rows {
        crate::outln!(
            "{:<24} {:<16} {:<32} {}",
            task,
            queue,
            worker.worker,
            worker.queues.join(",")
        );
    }
    if fleet.is_empty() {
        crate::errln!("no worker on {url} has published its tasks (is one running?)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Queue, rate limit, the limits not in the table, and the retry policy.
fn settings_line(entry: &TaskEntry) -> String {
    let manifest = &entry.manifest;
    let limits = &entry.limits;
    let mut parts = vec![
        format!(
            "queue: {}",
            manifest.queue.as_deref().unwrap_or("(the sender's)")
        ),
        format!(
            "rate limit: {}",
            manifest
                .rate_limit
                .map(|r| r.to_string())
                .unwrap_or_else(|| "none".into())
        ),
    ];
    if let Some(soft) = limits.soft_time_limit {
        parts.push(format!("soft time limit: {}s", soft.as_secs_f64()));
    }
    parts.push(format!("log: {}", human_bytes(limits.log_bytes)));
    if limits.jobs_per_instance > 1 {
        parts.push(format!("jobs per instance: {}", limits.jobs_per_instance));
    }
    parts.push(format!("max retries: {}", manifest.retry.max_retries));
    if !manifest.retry.autoretry_for.is_empty() {
        parts.push(format!(
            "autoretry for: {}",
            manifest.retry.autoretry_for.join(", ")
        ));
    }
    parts.join("; ")
}

/// Every granted capability, or "nothing". Rendered from the manifest's own field
/// names, so a new capability shows up here without changes; the values of `env` and
/// `config` are left out (they may be secrets), their names are shown.
fn grants_line(capabilities: &Capabilities) -> String {
    let Ok(Value::Object(fields)) = serde_json::to_value(capabilities) else {
        return "?".into();
    };
    let mut parts = Vec::new();
    for (key, value) in fields {
        let shown = match (&value, key.as_str()) {
            (Value::Null, _) => continue,
            (Value::Array(list), _) if list.is_empty() => continue,
            (Value::Object(map), _) if map.is_empty() => continue,
            (Value::Object(map), "env" | "config") => {
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            }
            (Value::Object(map), _) => map
                .iter()
                .map(|(k, v)| format!("{k}={}", plain(v)))
                .collect::<Vec<_>>()
                .join(", "),
            (Value::Array(list), _) => list.iter().map(plain).collect::<Vec<_>>().join(", "),
            (other, _) => plain(other),
        };
        let read_only = if key == "dirs" { " (read-only)" } else { "" };
        parts.push(format!("{key} {shown}{read_only}"));
    }
    if parts.is_empty() {
        "nothing (no files, network, env or config)".into()
    } else {
        parts.join("; ")
    }
}

/// A JSON value without the quotes around strings.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
