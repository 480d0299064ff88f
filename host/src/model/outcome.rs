//! Job outcomes: the one enum every pool returns.
//!
//! Whatever happens to a guest — it returns, fails, traps, runs out of fuel or time,
//! grows too much memory, prints too much — ends as exactly one [`Outcome`]. The
//! sandbox's classifier (`crate::sandbox::classify`) is the only place that turns
//! wasmtime errors into outcomes; the worker turns outcomes into result states.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How one attempt of a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The task returned a value.
    Success {
        /// The JSON result.
        value: Value,
    },
    /// The task returned an error of its own.
    GuestError {
        /// Exception-like type name (`ValueError`).
        kind: String,
        /// The task's message.
        message: String,
        /// Set when the task asked to be retried.
        retry: Option<RetryRequest>,
    },
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, stack overflow).
    Trap {
        /// What trapped, with the guest's panic message when it printed one.
        message: String,
        /// The wasm backtrace, when available.
        backtrace: Option<String>,
    },
    /// The guest used its whole CPU budget.
    OutOfFuel {
        /// The budget it had.
        budget: u64,
    },
    /// The guest ran past a wall-clock limit.
    TimeLimit {
        /// Which limit.
        kind: TimeLimitKind,
        /// The limit that was exceeded.
        #[serde(with = "duration_secs")]
        limit: Duration,
    },
    /// The guest tried to grow its memory past the cap.
    MemoryLimit {
        /// The cap in bytes.
        limit_bytes: u64,
    },
    /// The result (or a command's stdout) is larger than allowed.
    OutputTooLarge {
        /// The cap in bytes.
        limit_bytes: u64,
    },
    /// The task file is not a usable task: not wasm, wrong world, missing exports, a
    /// module the sandbox refuses to instantiate.
    InvalidTaskFile {
        /// Why.
        reason: String,
    },
    /// No loaded task file provides this task name.
    UnknownTask {
        /// The requested name.
        task: String,
    },
    /// The process running the job died (prefork child crash or kill).
    WorkerLost {
        /// What happened to it.
        reason: String,
    },
}

/// A guest's request to be run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRequest {
    /// Delay before the next attempt; `None` = the worker's backoff policy.
    #[serde(with = "opt_duration_secs")]
    pub countdown: Option<Duration>,
}

/// Which wall-clock limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeLimitKind {
    /// The soft limit (`SoftTimeLimitExceeded`).
    Soft,
    /// The hard limit (`TimeLimitExceeded`).
    Hard,
}

impl Outcome {
    /// True for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success { .. })
    }

    /// The exception-like type name the result backend stores (Celery's `exc_type`).
    /// `None` for success.
    pub fn error_kind(&self) -> Option<&str> {
        Some(match self {
            Outcome::Success { .. } => return None,
            Outcome::GuestError { kind, .. } => kind,
            Outcome::Trap { .. } => "WasmTrap",
            Outcome::OutOfFuel { .. } => "OutOfFuel",
            Outcome::TimeLimit {
                kind: TimeLimitKind::Soft,
                ..
            } => "SoftTimeLimitExceeded",
            Outcome::TimeLimit {
                kind: TimeLimitKind::Hard,
                ..
            } => "TimeLimitExceeded",
            Outcome::MemoryLimit { .. } => "MemoryLimitExceeded",
            Outcome::OutputTooLarge { .. } => "OutputTooLarge",
            Outcome::InvalidTaskFile { .. } => "InvalidTaskFile",
            Outcome::UnknownTask { .. } => "NotRegistered",
            Outcome::WorkerLost { .. } => "WorkerLostError",
        })
    }

    /// A one-line human-readable reason. `None` for success.
    pub fn error_message(&self) -> Option<String> {
        Some(match self {
            Outcome::Success { .. } => return None,
            Outcome::GuestError { message, .. } => message.clone(),
            Outcome::Trap { message, .. } => message.clone(),
            Outcome::OutOfFuel { budget } => format!("ran out of fuel (budget {budget})"),
            Outcome::TimeLimit { kind, limit } => format!(
                "{} time limit of {:.3}s exceeded",
                match kind {
                    TimeLimitKind::Soft => "soft",
                    TimeLimitKind::Hard => "hard",
                },
                limit.as_secs_f64()
            ),
            Outcome::MemoryLimit { limit_bytes } => {
                format!("memory limit of {} exceeded", human_bytes(*limit_bytes))
            }
            Outcome::OutputTooLarge { limit_bytes } => {
                format!(
                    "output larger than the limit of {}",
                    human_bytes(*limit_bytes)
                )
            }
            Outcome::InvalidTaskFile { reason } => format!("invalid task file: {reason}"),
            Outcome::UnknownTask { task } => format!("no task file provides {task:?}"),
            Outcome::WorkerLost { reason } => format!("worker lost: {reason}"),
        })
    }
}

/// `64 MiB`, `1.5 KiB`, `12 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The full record of one attempt: its outcome and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// How it ended.
    pub outcome: Outcome,
    /// Fuel consumed (0 when the guest never started).
    pub fuel_used: u64,
    /// Wall time from instantiation to the end.
    #[serde(with = "duration_secs")]
    pub duration: Duration,
    /// Captured guest output: stdout, stderr and `log` lines, bounded.
    pub logs: String,
    /// The largest linear memory the guest reached, in bytes (0 when it never started).
    #[serde(default)]
    pub peak_memory_bytes: u64,
}

impl Execution {
    /// An execution that ended before the guest ran (unknown task, invalid file).
    pub fn not_started(outcome: Outcome) -> Self {
        Execution {
            outcome,
            fuel_used: 0,
            duration: Duration::ZERO,
            logs: String::new(),
            peak_memory_bytes: 0,
        }
    }
}

mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Through [`time::seconds`](crate::model::time::seconds): an out-of-range value (from
    /// a prefork child, say) is a decoding error, never a panic.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        crate::model::time::seconds(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod opt_duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    /// As `duration_secs::deserialize`, for an optional value.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(crate::model::time::seconds)
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefork parent decodes outcomes from its children: an out-of-range duration is
    /// a decoding error, not a panic.
    #[test]
    fn out_of_range_durations_do_not_decode() {
        let ok: RetryRequest = serde_json::from_str(r#"{"countdown": 1.5}"#).unwrap();
        assert_eq!(ok.countdown, Some(Duration::from_millis(1500)));
        for bad in ["1e300", "-1"] {
            let text = format!(r#"{{"countdown": {bad}}}"#);
            let err = serde_json::from_str::<RetryRequest>(&text).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        let text = r#"{"outcome": {"outcome": "success", "value": 1}, "fuel_used": 0,
            "duration": 1e300, "logs": ""}"#;
        assert!(serde_json::from_str::<Execution>(text).is_err());
    }
}
