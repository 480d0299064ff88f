//! `sprout result ID [--wait]`: print a job's record as JSON.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::args::ResultArgs;
use sprout::client::Client;
use sprout::model::State;

use super::EXIT_TASK_FAILED;

/// Exit code when the job has no terminal result (PENDING/STARTED/RETRY).
pub const EXIT_NOT_READY: u8 = 4;

/// Runs the command. Exit 0 on SUCCESS, 1 on FAILURE/REVOKED, 4 when not finished.
///
/// # Errors
/// An unreachable broker.
pub async fn run(args: ResultArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect_with(&args.broker.broker, &args.broker.connect_options(None))
        .await
        .with_context(|| format!("cannot open broker {}", args.broker.broker))?;
    let record = if args.wait {
        client.wait(&args.id, args.timeout).await?
    } else {
        client.result(&args.id).await?
    };
    let Some(record) = record else {
        crate::outln!(
            "{}",
            serde_json::json!({ "id": args.id, "state": "PENDING" })
        );
        return Ok(ExitCode::from(EXIT_NOT_READY));
    };
    crate::outln!("{}", serde_json::to_string_pretty(&record)?);
    Ok(match record.state {
        State::Success => ExitCode::SUCCESS,
        State::Failure | State::Revoked => ExitCode::from(EXIT_TASK_FAILED),
        _ => ExitCode::from(EXIT_NOT_READY),
    })
}
