//! The one place that turns a wasmtime error into a job [`Outcome`].
//!
//! Guests fail in many ways that all arrive as `wasmtime::Error`: traps (with a code),
//! a WASI exit, a refused memory growth that the guest turned into an abort, a failed
//! instantiation. This module decides which [`Outcome`] each one is, using what the store
//! observed (limiter hits, captured stderr) to give the precise reason.

use wasmtime::{Trap, WasmBacktrace};

use crate::model::Outcome;

/// What the store saw while the guest ran, used to explain an error.
#[derive(Debug, Default)]
pub struct Observed {
    /// The fuel budget of the attempt.
    pub fuel_budget: u64,
    /// The memory cap in bytes.
    pub memory_limit: u64,
    /// Whether the limiter refused a memory or table growth.
    pub memory_limit_hit: bool,
    /// The guest's captured stderr (a Rust panic message lands here).
    pub stderr: String,
}

/// Classifies an error raised while instantiating or running a guest.
pub fn classify(error: &wasmtime::Error, observed: &Observed) -> Outcome {
    // Out of fuel, or (epoch preemption) past the same budget in guest time.
    if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel)
        || error
            .downcast_ref::<super::cpu_meter::CpuBudgetExceeded>()
            .is_some()
    {
        return Outcome::OutOfFuel {
            budget: observed.fuel_budget,
        };
    }
    // A refused growth surfaces as an abort (Rust's OOM handler), a failed instantiation
    // (initial memory or table too large) or a trap in the guest's allocator.
    if observed.memory_limit_hit {
        return Outcome::MemoryLimit {
            limit_bytes: observed.memory_limit,
        };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        let what = match trap {
            Trap::StackOverflow => "stack overflow".to_string(),
            Trap::UnreachableCodeReached => {
                "unreachable code reached (the guest panicked or aborted)".into()
            }
            other => other.to_string(),
        };
        let message = match panic_message(&observed.stderr) {
            Some(panic) => format!("{what}: {panic}"),
            None => what,
        };
        let backtrace = error
            .downcast_ref::<WasmBacktrace>()
            .map(|bt| bt.to_string());
        return Outcome::Trap { message, backtrace };
    }
    Outcome::Trap {
        message: format!("{error:#}"),
        backtrace: None,
    }
}

/// The last panic message a Rust guest printed to stderr
/// (`thread 'main' panicked at src/lib.rs:3:5:\nboom`), if any.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at")?;
    let rest = &stderr[start..];
    // "panicked at FILE:LINE:COL:\nMESSAGE\nnote: ..."
    let mut lines = rest.lines();
    let location = lines.next()?.trim_end_matches(':');
    let message: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note:") && !l.is_empty())
        .collect();
    Some(if message.is_empty() {
        location.to_string()
    } else {
        format!("{} ({location})", message.join("\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_rust_panic_messages() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:7:5:\nboom: bad input\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("boom: bad input (panicked at src/lib.rs:7:5)")
        );
        assert_eq!(panic_message("nothing here"), None);
    }

    #[test]
    fn out_of_fuel_wins_over_everything() {
        let err = wasmtime::Error::new(Trap::OutOfFuel);
        let observed = Observed {
            fuel_budget: 7,
            memory_limit_hit: true,
            ..Default::default()
        };
        assert_eq!(classify(&err, &observed), Outcome::OutOfFuel { budget: 7 });
    }
}
