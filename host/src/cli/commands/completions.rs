//! `sprout completions SHELL`: a completion script on stdout (clap_complete).

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::args::{Cli, CompletionsArgs};

/// Writes the completion script for the shell to stdout.
pub fn run(args: CompletionsArgs) -> ExitCode {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "sprout", &mut script);
    crate::outln!("{}", String::from_utf8_lossy(&script).trim_end());
    ExitCode::SUCCESS
}
