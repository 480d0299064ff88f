//! The `sprout` binary: parse flags, run the command, map errors to exit codes.
//!
//! The command line ([`cli`]) lives here, not in the library: an embedder of the
//! `sprout` library links no clap.

// `eprintln!` panics on a broken stderr: print through `errln!` (cli/output.rs).
#![warn(clippy::print_stderr)]

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::args::{Cli, Command};
use cli::commands;
/// mimalloc instead of glibc's allocator: per-job setup allocates and frees many small
/// objects across the runtime's threads, where glibc's `malloc`/`free` took ~15% of a
/// feed-fetching worker's CPU (BENCHMARKS.md). Built with `no_thp`: with transparent huge
/// pages, each fresh arena region mimalloc touches is faulted in as a zero-filled 2 MiB
/// page, another ~9% of that worker's CPU in `clear_page_erms`; 4 KiB pages zero only
/// what is used.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let Cli {
        log,
        log_format,
        command,
    } = Cli::parse();
    if let Err(e) = cli::telemetry::init(&log, log_format) {
        errln!("error: {e}");
        return ExitCode::from(commands::EXIT_USAGE);
    }
    // A prefork child builds its own single-threaded runtime.
    let command = match command {
        Command::Child(args) => return commands::worker::run_child(args),
        Command::Completions(args) => return commands::completions::run(args),
        Command::Compile(args) => return sprout::sandbox::compile::child_main(&args.request),
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Run(args) => commands::run::run(args).await,
            Command::Tasks(args) => commands::tasks::run(args).await,
            Command::Build(args) => commands::build::run(args).await,
            Command::Worker(args) => commands::worker::run(*args, &log).await,
            Command::Send(args) => commands::send::run(args).await,
            Command::Result(args) => commands::result::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            Command::Purge(args) => commands::purge::run(args).await,
            Command::Inspect(args) => commands::control::run(args, true).await,
            Command::Control(args) => commands::control::run(args, false).await,
            Command::Child(_) | Command::Compile(_) | Command::Completions(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    commands::exit_code(result)
}
