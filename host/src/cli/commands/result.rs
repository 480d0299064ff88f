//! `sprout result ID [--wait] [--logs]`: print a job's record as JSON, or its log.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::args::ResultArgs;
use sprout::client::Client;
use sprout::model::State;

use super::{EXIT_NOT_READY, EXIT_TASK_FAILED};

/// Runs the command. Exit 0 on SUCCESS, 1 on FAILURE/REVOKED, 4
/// ([`EXIT_NOT_READY`]) when not finished (with `--wait`: timed out waiting), 130 on
/// Ctrl-C during a wait.
///
/// # Errors
/// An unreachable broker.
pub async fn run(args: ResultArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect_with(&args.broker.broker, &args.broker.connect_options(None))
        .await
        .with_context(|| format!("cannot open broker {}", args.broker.broker))?;
    let record = if args.wait {
        let record = super::until_interrupted(client.wait(&args.id, args.timeout)).await?;
        if record.as_ref().is_none_or(|r| !r.state.is_terminal()) {
            crate::errln!(
                "{}: timed out waiting: not finished within {:.1} s",
                args.id,
                args.timeout.as_secs_f64()
            );
        }
        record
    } else {
        client.result(&args.id).await?
    };
    let Some(record) = record else {
        if !args.logs {
            crate::outln!(
                "{}",
                serde_json::json!({ "id": args.id, "state": "PENDING" })
            );
        }
        return Ok(ExitCode::from(EXIT_NOT_READY));
    };
    if args.logs {
        if let Some(log) = record.log.as_deref().filter(|l| !l.is_empty()) {
            crate::outln!("{}", log.trim_end_matches('\n'));
        }
    } else {
        crate::outln!("{}", serde_json::to_string_pretty(&record)?);
    }
    Ok(match record.state {
        State::Success => ExitCode::SUCCESS,
        State::Failure | State::Revoked => ExitCode::from(EXIT_TASK_FAILED),
        _ => ExitCode::from(EXIT_NOT_READY),
    })
}
