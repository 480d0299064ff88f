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

/// Stack of the threads this process starts without naming a size (std's default is
/// 2 MiB): tokio's workers and blocking threads, and the AMQP client's I/O thread. That
/// client parses a message's headers recursively, ~1.5 KiB of stack per nesting level,
/// and RabbitMQ passes on headers nested as deep as a frame holds: ~26,000 levels in the
/// 128 KiB frames Sprout allows ([`sprout::storage::amqp::MAX_FRAME`]), which take
/// ~40 MiB to parse. With 2 MiB, one such message published to a queue killed every
/// worker that received it, again at each redelivery. Stacks are reserved, not used:
/// only the pages a thread touches take memory.
const THREAD_STACK_BYTES: &str = "67108864";

/// Makes [`THREAD_STACK_BYTES`] the default stack of every thread started from now on,
/// unless `RUST_MIN_STACK` already chooses one. std reads the variable once, at the
/// first thread started without a size; that happens here, and the variable is then
/// removed, so child processes (cargo, Python) do not inherit it.
fn default_thread_stack() {
    if std::env::var_os("RUST_MIN_STACK").is_some() {
        return;
    }
    // SAFETY: the first statements of `main`: no other thread exists that could read
    // the environment meanwhile (the one started here has ended before the removal).
    unsafe { std::env::set_var("RUST_MIN_STACK", THREAD_STACK_BYTES) };
    let _ = std::thread::spawn(|| {}).join();
    unsafe { std::env::remove_var("RUST_MIN_STACK") };
}

fn main() -> ExitCode {
    default_thread_stack();
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
