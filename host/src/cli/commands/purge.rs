//! `sprout purge [-Q queues]`: drop waiting jobs.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::args::PurgeArgs;
use sprout::connect;

/// Runs the command.
///
/// # Errors
/// An unreachable broker.
pub async fn run(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let connection = connect::connect_with(&args.broker.broker, &args.broker.connect_options(None))
        .await
        .with_context(|| format!("cannot open broker {}", args.broker.broker))?;
    for queue in &args.queues {
        let n = connection.broker.purge(queue).await?;
        crate::outln!("purged {n} job(s) from {queue}");
    }
    Ok(ExitCode::SUCCESS)
}
