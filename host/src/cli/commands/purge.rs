//! `sprout purge [-Q queues] [-f]`: drop waiting jobs (asking first on a terminal).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::args::PurgeArgs;
use sprout::connect;

/// Runs the command. On a terminal (stdin and stderr), without `-f`, it asks first
/// and does nothing unless the answer is yes.
///
/// # Errors
/// An unreachable broker.
pub async fn run(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let connection = connect::connect_with(&args.broker.broker, &args.broker.connect_options(None))
        .await
        .with_context(|| format!("cannot open broker {}", args.broker.broker))?;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if interactive && !args.force && !confirm(&args) {
        crate::errln!("nothing purged");
        return Ok(ExitCode::SUCCESS);
    }
    for queue in &args.queues {
        let n = connection.broker.purge(queue).await?;
        crate::outln!("purged {n} job(s) from {queue}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on stderr, reads a line from stdin: `y` or `yes` (any case) is yes.
fn confirm(args: &PurgeArgs) -> bool {
    crate::errprint!(
        "Remove every waiting job from {} on {}? [y/N] ",
        args.queues.join(", "),
        args.broker.broker
    );
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
