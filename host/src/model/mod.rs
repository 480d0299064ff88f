//! The model: plain data every layer shares — jobs, their limits and capabilities, how
//! an attempt ended, and the states and records a result backend keeps.
//!
//! Nothing here does I/O or knows a broker, a backend or wasmtime, and nothing here
//! imports another module of this crate: everything else may import the model.
//!
//! - [`job`] — one request to run a task ([`Job`]), broker-neutral.
//! - [`limits`] — what a job may use ([`Limits`]).
//! - [`capabilities`] — what a task may touch outside its sandbox ([`Capabilities`]).
//! - [`outcome`] — how one attempt ended ([`Outcome`], [`Execution`]).
//! - [`state`] — job states and result records ([`State`], [`ResultRecord`]).
//! - [`time`] — the one checked conversion for seconds, milliseconds and timestamps from
//!   outside ([`time::seconds`], [`time::MAX_SECONDS`], [`TimeError`]).

pub mod capabilities;
pub mod job;
pub mod limits;
pub mod outcome;
pub mod routes;
pub mod state;
pub mod time;

pub use capabilities::{AllowList, CONFIG_ENV_PREFIX, Capabilities, HostPattern, PatternError};
pub use job::{
    CeleryContext, DEFAULT_QUEUE, DecodeError, Job, LimitOverrides, MAX_QUEUE_NAME_BYTES,
    check_queue_name,
};
pub use limits::{Limits, MAX_JOBS_PER_INSTANCE, SizeUnit};
pub use outcome::{Execution, Outcome, RetryRequest, TimeLimitKind, human_bytes};
pub use routes::WorkerRoutes;
pub use state::{
    CeleryResultMeta, ChordMembership, DEFAULT_RESULT_EXPIRES, ErrorInfo, Progress, ResultRecord,
    State,
};
pub use time::TimeError;
