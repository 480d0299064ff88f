//! Write [Sprout](https://example.invalid/sprout) tasks as plain Rust functions.
//!
//! A task file is a WebAssembly component holding one or more tasks. With this crate a task
//! is an ordinary function; `#[task]` makes it callable with Celery-style JSON `args` and
//! `kwargs`, and [`export_tasks!`] exports the file's tasks to the host:
//!
//! ```
//! use sprout_guest::{task, TaskError};
//!
//! /// Adds two numbers.
//! #[task]
//! fn add(a: i64, b: i64) -> Result<i64, TaskError> {
//!     Ok(a + b)
//! }
//!
//! #[task]
//! fn mul(a: i64, b: i64) -> i64 {
//!     a * b
//! }
//!
//! sprout_guest::export_tasks!(add, mul);
//!
//! # fn main() {
//! // The functions are untouched: test them directly...
//! assert_eq!(add(1, 2), Ok(3));
//! // ...or through the same JSON binding the host uses.
//! assert_eq!(TASKS.run("mul", "[6]", r#"{"b": 7}"#).unwrap(), "42");
//! # }
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (crate-type `cdylib`) and run
//! the file with `sprout run target/wasm32-wasip2/release/<crate>.wasm add '[1, 2]'`.
//! See the README for the whole workflow.
//!
//! # Arguments
//! A call carries `args` (a JSON array) and `kwargs` (a JSON object). They are bound to the
//! function's parameters like Python binds a call: positional arguments first, in order,
//! then keyword arguments by parameter name. Each value is deserialised with serde into the
//! parameter's type. A parameter spelled `Option<T>` may be omitted (it is then `None`).
//! Binding failures are [`TaskError`]s of kind `TypeError`:
//!
//! | mistake | message |
//! |---|---|
//! | too many positional | `add() takes 2 positional arguments but 3 were given` |
//! | unknown keyword | `add() got an unexpected keyword argument 'c'` |
//! | positional and keyword | `add() got multiple values for argument 'a'` |
//! | missing | `add() missing required argument 'b'` |
//! | wrong type | `add() argument 'a': invalid type: string "x", expected i64` |
//! | `args` not an array | `add() args must be a JSON array, not an object` |
//!
//! `args`/`kwargs` that are not valid JSON give kind `DecodeError`; empty text or `null`
//! count as no arguments. An unknown task name gives kind `NotRegistered`.
//!
//! # Results
//! A task returns `Result<T, E>` with `T: Serialize` and `E: Into<TaskError>`, or any plain
//! `T: Serialize` (including `()`, which becomes `null`). The value crosses to the host as
//! JSON; a value that cannot be serialised gives kind `EncodeError`.
//!
//! # Panics
//! A panic aborts the guest: the host sees a wasm trap (`unreachable`) and the panic message
//! on the guest's stderr. Return a [`TaskError`] for failures you expect.
//!
//! # Host services
//! [`log`] writes to the job's log, [`progress`] reports progress, [`job`] says which job is
//! running, [`config`] reads the configuration values the task's manifest grants, [`http`]
//! sends blocking HTTP requests (to the hosts the task's manifest allows). Natively (in
//! unit tests) they work without a host; see [`testing`].

// `#[task]` expansions name `::sprout_guest`, which must also resolve inside this crate.
extern crate self as sprout_guest;

mod error;
mod host;
pub mod http;
pub mod log;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// The wit-bindgen bindings for the `sprout:task/task` world (used by [`export_tasks!`]).
#[doc(hidden)]
#[allow(missing_docs, clippy::all, unsafe_op_in_unsafe_fn)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::sprout_guest::bindings",
    });
}

pub use error::{Retry, TaskError, kind};
pub use serde_json;

/// Turns a function into a task, leaving the function itself untouched.
///
/// ```
/// use sprout_guest::task;
///
/// /// Greets someone.
/// #[task(name = "greetings.hello")]
/// fn hello(name: String, punctuation: Option<String>) -> String {
///     format!("Hello, {name}{}", punctuation.unwrap_or_default())
/// }
/// # sprout_guest::export_tasks!(hello);
/// # fn main() {
/// # assert_eq!(TASKS.run("greetings.hello", r#"["Ada"]"#, "{}").unwrap(), r#""Hello, Ada""#);
/// # }
/// ```
///
/// - The task's name is the function's name, or `name = "..."`.
/// - Parameters must be plain names with owned types that implement `serde::Deserialize`
///   (`String`, not `&str`). `Option<T>` parameters may be omitted by the caller.
/// - The function must not be `async`, generic, or take `self`.
/// - The return type is `Result<T, E>` (`T: Serialize`, `E: Into<TaskError>`) or any
///   `T: Serialize`.
///
/// Beside the function it generates a hidden constant, `__sprout_task_<fn name>`, that
/// [`export_tasks!`] refers to; it has the function's visibility, so a task in a module
/// must be visible where `export_tasks!` is called.
pub use sprout_guest_macros::task;

/// Exports the listed `#[task]` functions as this file's tasks. Call it once per crate.
///
/// ```ignore
/// sprout_guest::export_tasks!(add, mul, feeds::fetch);
/// ```
///
/// It implements the component's exports (`tasks` lists the names in the order given; `run`
/// dispatches by name) and defines `pub(crate) static TASKS: `[`TaskSet`] in the calling
/// module, for native tests. Two tasks with the same name are a compile-time error.
pub use sprout_guest_macros::export_tasks;

/// Information about the job being run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobInfo {
    /// The job id (Celery's task id).
    pub id: String,
    /// The task name being run.
    pub task: String,
    /// How many times this job has been retried before this attempt (0 on the first).
    pub retries: u32,
    /// The queue the job came from.
    pub queue: String,
}

/// The job being run. Natively, the job set with [`testing::set_job`] (by default
/// [`JobInfo::default()`]).
pub fn job() -> JobInfo {
    host::job()
}

/// The prefix of the environment variables that carry a task's configuration values:
/// the worker passes `config = { api_url = "…" }` as `SPROUT_CONFIG_api_url`.
pub const CONFIG_ENV_PREFIX: &str = "SPROUT_CONFIG_";

/// A configuration value the task's manifest grants (`[capabilities] config`), or `None`
/// when it grants no value under `key`.
///
/// ```toml
/// # greet.toml, beside greet.wasm
/// [capabilities]
/// config = { greeting = "Hello" }
/// ```
///
/// ```
/// # sprout_guest::testing::set_config("greeting", "Hello");
/// let greeting = sprout_guest::config("greeting").unwrap_or_else(|| "Hi".into());
/// # assert_eq!(greeting, "Hello");
/// ```
///
/// The worker hands each value to the guest as the environment variable
/// [`CONFIG_ENV_PREFIX`]`<key>` (key as written, case kept), so this is
/// `std::env::var("SPROUT_CONFIG_<key>").ok()`: plain WASI programs read the same
/// variables. Config values are per deployment (the manifest beside the task file), not
/// per job; use the job's arguments for per-job data. Natively (in unit tests) it
/// returns what [`testing::set_config`] set on this thread, and `None` otherwise.
pub fn config(key: &str) -> Option<String> {
    host::config(key)
}

/// Reports progress: `done` out of `total` units. Natively it is only recorded (see
/// [`testing::last_progress`]).
pub fn progress(done: u64, total: u64) {
    host::progress(done, total);
}

/// The tasks of a file, as built by [`export_tasks!`] (which names it `TASKS`).
#[derive(Debug, Clone, Copy)]
pub struct TaskSet {
    tasks: &'static [__private::TaskDef],
}

impl TaskSet {
    #[doc(hidden)]
    pub const fn __new(tasks: &'static [__private::TaskDef]) -> Self {
        let mut i = 0;
        while i < tasks.len() {
            let mut j = i + 1;
            while j < tasks.len() {
                if str_eq(tasks[i].name, tasks[j].name) {
                    panic!("export_tasks!: two exported tasks have the same name");
                }
                j += 1;
            }
            i += 1;
        }
        Self { tasks }
    }

    /// The task names, in the order they were exported.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tasks.iter().map(|t| t.name)
    }

    /// Runs `task` with JSON `args_json` (an array) and `kwargs_json` (an object) and returns
    /// its JSON result: exactly what the host's call does.
    pub fn run(&self, task: &str, args_json: &str, kwargs_json: &str) -> Result<String, TaskError> {
        let Some(def) = self.tasks.iter().find(|t| t.name == task) else {
            let known: Vec<&str> = self.names().collect();
            return Err(TaskError::new(
                kind::NOT_REGISTERED,
                format!(
                    "task '{task}' is not in this file (it has: {})",
                    known.join(", ")
                ),
            ));
        };
        let call = __private::decode_call(def.name, args_json, kwargs_json)?;
        (def.run)(call)
    }

    /// Like [`run`](Self::run) with JSON values instead of text.
    ///
    /// ```ignore
    /// assert_eq!(TASKS.call("add", json!([1]), json!({"b": 2}))?, json!(3));
    /// ```
    pub fn call(
        &self,
        task: &str,
        args: serde_json::Value,
        kwargs: serde_json::Value,
    ) -> Result<serde_json::Value, TaskError> {
        let out = self.run(task, &args.to_string(), &kwargs.to_string())?;
        Ok(serde_json::from_str(&out).expect("a task's result is valid JSON"))
    }

    #[doc(hidden)]
    pub fn __wit_tasks(&self) -> Vec<String> {
        self.names().map(String::from).collect()
    }

    #[doc(hidden)]
    pub fn __wit_run(
        &self,
        task: &str,
        args_json: &str,
        kwargs_json: &str,
    ) -> Result<String, bindings::TaskError> {
        self.run(task, args_json, kwargs_json)
            .map_err(__private::to_wit)
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests;
