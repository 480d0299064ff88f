//! `sprout tasks [PATHS]`: what a task directory provides.

use std::process::ExitCode;

use crate::cli::TasksArgs;
use crate::outcome::human_bytes;
use crate::registry;

/// Runs the command: one line per task name, then the rejected files. Exits 1 when any
/// file was rejected.
///
/// # Errors
/// The engine cannot be built.
pub async fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let sandbox = super::build_sandbox(&args.limits, 1)?;
    let defaults = super::default_limits(&args.limits);
    let (entries, rejected) = registry::scan(&sandbox, &args.paths, &defaults).await;
    println!(
        "{:<24} {:<18} {:<12} {:>14} {:>9} {:>9}  {}",
        "TASK", "KIND", "VERSION", "FUEL", "MEMORY", "TIME", "FILE"
    );
    for entry in entries.values() {
        let name = if entry.name == entry.export {
            entry.name.clone()
        } else {
            format!("{} -> {}", entry.name, entry.export)
        };
        println!(
            "{:<24} {:<18} {:<12} {:>14} {:>9} {:>8}s  {}",
            name,
            entry.module.kind.name(),
            &entry.module.hash[..12],
            entry.limits.fuel,
            human_bytes(entry.limits.memory_bytes),
            entry.limits.time_limit.as_secs_f64(),
            entry.file.display()
        );
    }
    for r in &rejected {
        eprintln!("rejected {}: {}", r.file.display(), r.reason);
    }
    Ok(if rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
