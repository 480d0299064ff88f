//! `sprout run FILE TASK [ARGS]`: one task, locally, no broker.

use std::process::ExitCode;

use crate::cli::args::RunArgs;
use sprout::model::Outcome;
use sprout::registry;
use sprout::sandbox::RunRequest;

use super::{EXIT_INVALID_TASK, EXIT_TASK_FAILED, ExitError};

/// A task file over the module caps exits [`super::EXIT_USAGE`] with the cap it broke,
/// before anything is compiled (other load errors are left to the loader).
fn refuse_over_caps(
    sandbox: &sprout::sandbox::Sandbox,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if size > sandbox.max_task_file_bytes() {
        return Ok(());
    }
    let Ok(bytes) = std::fs::read(file) else {
        return Ok(());
    };
    match sprout::sandbox::shape::check_shape(&bytes, &sandbox.shape_caps()) {
        Ok(()) => Ok(()),
        Err(e) => Err(ExitError::new(
            super::EXIT_USAGE,
            format!(
                "{}: refused before compiling: {e}; raise the cap with --module-caps {}=N if the file is trusted",
                file.display(),
                e.name
            ),
        )
        .into()),
    }
}

/// Runs the command.
///
/// # Errors
/// Bad arguments ([`super::EXIT_USAGE`]) or an unloadable file / unknown task
/// ([`EXIT_INVALID_TASK`]).
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let call_args = super::parse_args(&args.call.args)?;
    let kwargs = super::parse_kwargs(&args.call.kwargs)?;
    let sandbox = super::build_sandbox(&args.limits, 1)?;
    let defaults = super::default_limits(&args.limits);
    refuse_over_caps(&sandbox, &args.file)?;
    let entries = registry::load_file(&sandbox, &args.file, &defaults)
        .await
        .map_err(|reason| {
            ExitError::new(
                EXIT_INVALID_TASK,
                format!("{}: {reason}", args.file.display()),
            )
        })?;
    let Some(entry) = entries.iter().find(|e| e.name == args.task) else {
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        return Err(ExitError::new(
            EXIT_INVALID_TASK,
            format!(
                "{} has no task {:?} (it has: {})",
                args.file.display(),
                args.task,
                names.join(", ")
            ),
        )
        .into());
    };
    // Explicit flags are the author's limits for this run: they replace the manifest's.
    let mut limits = entry.limits.clone();
    super::apply_limit_flags(&args.limits, &mut limits);
    let mut request = RunRequest::new(entry.export.clone(), call_args);
    request.kwargs = kwargs;
    request.limits = limits;
    request.capabilities = entry.capabilities.clone();
    let execution = sandbox.run(&entry.module, request).await;

    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&execution)?);
    } else {
        if !execution.logs.is_empty() {
            crate::errprint!("{}", execution.logs);
            if !execution.logs.ends_with('\n') {
                crate::errln!();
            }
        }
        match &execution.outcome {
            Outcome::Success { value } => crate::outln!("{value}"),
            failure => {
                crate::errln!(
                    "{}: {}",
                    failure.error_kind().unwrap_or("Error"),
                    failure.error_message().unwrap_or_default()
                );
                if let Outcome::Trap {
                    backtrace: Some(bt),
                    ..
                } = failure
                {
                    crate::errln!("{bt}");
                }
            }
        }
        crate::errln!(
            "fuel used: {}  duration: {:.3} ms",
            execution.fuel_used,
            execution.duration.as_secs_f64() * 1e3
        );
    }
    Ok(match execution.outcome {
        Outcome::Success { .. } => ExitCode::SUCCESS,
        Outcome::InvalidTaskFile { .. } | Outcome::UnknownTask { .. } => {
            ExitCode::from(EXIT_INVALID_TASK)
        }
        _ => ExitCode::from(EXIT_TASK_FAILED),
    })
}
