//! Plain WASI command tasks (any language, no SDK): a core module with `_start`
//! (wasm32-wasip1) or a component exporting `wasi:cli/run` (wasm32-wasip2).
//!
//! Contract: `{"args":[…],"kwargs":{…}}` on stdin, the JSON result on stdout, exit
//! status 0. A non-zero exit is a failure whose message is the captured stderr.

use wasmtime_wasi::p1::WasiP1Ctx;

use super::limiter::MemoryLimiter;

/// Per-job store data of a WASI p1 command module.
pub struct CommandState {
    /// The WASI p1 context (stdio pipes, no files, no network).
    pub wasi: WasiP1Ctx,
    /// Memory cap for this job.
    pub limiter: MemoryLimiter,
}

/// Exception-like kind of a command that exited non-zero.
pub const COMMAND_FAILED: &str = "CommandFailed";
/// Exception-like kind of a guest whose output is not JSON.
pub const INVALID_OUTPUT: &str = "InvalidOutput";
