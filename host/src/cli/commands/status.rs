//! `sprout status`: queue depths, dead letters and recent results.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::args::BrokerArgs;
use sprout::connect;

/// Runs the command.
///
/// # Errors
/// An unreachable broker.
pub async fn run(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let connection = connect::connect_with(&args.broker, &args.connect_options(None))
        .await
        .with_context(|| format!("cannot open broker {}", args.broker))?;
    let stats = connection.broker.stats().await?;
    crate::outln!(
        "{:<24} {:>10} {:>10} {:>10} {:>10}",
        "QUEUE",
        "READY",
        "SCHEDULED",
        "RUNNING",
        "DEAD"
    );
    for q in &stats {
        crate::outln!(
            "{:<24} {:>10} {:>10} {:>10} {:>10}",
            q.queue,
            q.ready,
            q.scheduled,
            q.leased,
            q.dead
        );
    }
    if stats.is_empty() {
        crate::outln!("(no queues)");
    }
    let dead = connection.broker.dead_letters(10).await?;
    if !dead.is_empty() {
        crate::outln!("\nDEAD LETTERS (newest first)");
        for d in &dead {
            crate::outln!(
                "  {}  {:<12} {}  {}",
                d.at.format("%Y-%m-%d %H:%M:%S"),
                d.queue,
                d.id.as_deref().unwrap_or("-"),
                d.reason
            );
        }
    }
    let counts = connection.backend.counts().await?;
    if !counts.is_empty() {
        crate::outln!("\nRESULTS");
        for (state, n) in &counts {
            crate::outln!("  {state:<10} {n}");
        }
    }
    let recent = connection.backend.recent(10).await?;
    if !recent.is_empty() {
        crate::outln!("\nLAST RESULTS");
        for r in &recent {
            let detail = match (&r.result, &r.error) {
                (Some(v), _) => format!("{v:.60}"),
                (_, Some(e)) => format!("{}: {:.60}", e.kind, e.message),
                _ => String::new(),
            };
            crate::outln!(
                "  {}  {:<8} {:<16} {}  {}",
                r.updated_at.format("%H:%M:%S"),
                r.state,
                r.task,
                r.id,
                detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
