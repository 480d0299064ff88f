//! Support code for the expansions of `#[task]` and `export_tasks!`. Not a stable API.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::TaskError;
use crate::error::kind;

/// One parameter of a task function, as `#[task]` saw it.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The parameter's name: what callers use as a keyword argument.
    pub name: &'static str,
    /// Whether the parameter is an `Option<T>` and may be omitted.
    pub optional: bool,
}

/// The decoded arguments of one call.
#[derive(Debug, Default)]
pub struct Call {
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Map<String, Value>,
}

/// The generated, type-erased entry point of one task.
pub type RunFn = fn(Call) -> Result<String, TaskError>;

/// What `#[task]` generates for each task function.
#[derive(Clone, Copy)]
pub struct TaskDef {
    pub(crate) name: &'static str,
    pub(crate) run: RunFn,
}

impl TaskDef {
    /// A task named `name` run by `run`.
    pub const fn new(name: &'static str, run: RunFn) -> Self {
        Self { name, run }
    }
}

impl std::fmt::Debug for TaskDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskDef").field("name", &self.name).finish()
    }
}

/// Arguments matched to parameters: one slot per parameter, in order.
#[derive(Debug)]
pub struct Bound {
    task: &'static str,
    params: &'static [Param],
    slots: Vec<Option<Value>>,
}

fn type_error(message: String) -> TaskError {
    TaskError::new(kind::TYPE_ERROR, message)
}

fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Binds a call's arguments to parameters the way Python does: positional arguments fill
/// parameters in order, then keyword arguments fill the rest by name.
///
/// Errors (all kind `TypeError`), in the order Python checks them: too many positional
/// arguments, an unexpected keyword argument, a parameter given both positionally and by
/// keyword, missing required (non-`Option`) parameters.
pub fn bind(task: &'static str, params: &'static [Param], call: Call) -> Result<Bound, TaskError> {
    let Call { args, kwargs } = call;
    if args.len() > params.len() {
        let n = params.len();
        let given = args.len();
        return Err(type_error(format!(
            "{task}() takes {n} positional argument{} but {given} {} given",
            if n == 1 { "" } else { "s" },
            if given == 1 { "was" } else { "were" },
        )));
    }
    let mut slots: Vec<Option<Value>> = Vec::with_capacity(params.len());
    let given_positionally = args.len();
    slots.extend(args.into_iter().map(Some));
    slots.resize(params.len(), None);

    for (key, value) in kwargs {
        let Some(index) = params.iter().position(|p| p.name == key) else {
            return Err(type_error(format!(
                "{task}() got an unexpected keyword argument '{key}'"
            )));
        };
        if index < given_positionally {
            return Err(type_error(format!(
                "{task}() got multiple values for argument '{key}'"
            )));
        }
        slots[index] = Some(value);
    }

    let missing: Vec<&str> = params
        .iter()
        .zip(&slots)
        .filter(|(p, slot)| !p.optional && slot.is_none())
        .map(|(p, _)| p.name)
        .collect();
    if !missing.is_empty() {
        return Err(type_error(format!(
            "{task}() missing required argument{} {}",
            if missing.len() == 1 { "" } else { "s" },
            quoted_list(&missing),
        )));
    }

    Ok(Bound {
        task,
        params,
        slots,
    })
}

impl Bound {
    /// Deserialises parameter `index` (an omitted `Option` parameter deserialises from
    /// `null`, i.e. `None`). A value of the wrong type is a `TypeError` naming the parameter.
    pub fn arg<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, TaskError> {
        let value = self.slots[index].take().unwrap_or(Value::Null);
        T::deserialize(value).map_err(|e| {
            type_error(format!(
                "{}() argument '{}': {e}",
                self.task, self.params[index].name
            ))
        })
    }
}

/// Serialises a task's successful value.
fn encode<T: Serialize>(task_value: &T) -> Result<String, TaskError> {
    serde_json::to_string(task_value).map_err(|e| {
        TaskError::new(
            kind::ENCODE_ERROR,
            format!("the task's result cannot be encoded as JSON: {e}"),
        )
    })
}

/// Tag: the task returned a `Result`.
#[derive(Debug, Clone, Copy)]
pub struct ResultTag;
/// Tag: the task returned a plain value.
#[derive(Debug, Clone, Copy)]
pub struct ValueTag;

/// Picked by method resolution when the task returns `Result<T, E>` (autoref
/// specialisation: `(&out).__sprout_kind()` prefers this impl over [`ValueKind`]).
pub trait ResultKind {
    /// Selects [`ResultTag`].
    fn __sprout_kind(&self) -> ResultTag {
        ResultTag
    }
}
impl<T, E> ResultKind for Result<T, E> {}

/// Picked when the task returns anything else.
pub trait ValueKind {
    /// Selects [`ValueTag`].
    fn __sprout_kind(&self) -> ValueTag {
        ValueTag
    }
}
impl<T> ValueKind for &T {}

impl ResultTag {
    /// `Ok(v)` becomes v's JSON; `Err(e)` becomes a [`TaskError`].
    pub fn finish<T: Serialize, E: Into<TaskError>>(
        self,
        out: Result<T, E>,
    ) -> Result<String, TaskError> {
        match out {
            Ok(v) => encode(&v),
            Err(e) => Err(e.into()),
        }
    }
}

impl ValueTag {
    /// The value's JSON.
    pub fn finish<T: Serialize>(self, out: T) -> Result<String, TaskError> {
        encode(&out)
    }
}

/// Decodes `args` (a JSON array) and `kwargs` (a JSON object). Empty text or `null` means
/// none.
pub(crate) fn decode_call(task: &str, args: &str, kwargs: &str) -> Result<Call, TaskError> {
    fn parse(task: &str, what: &str, text: &str) -> Result<Value, TaskError> {
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(text).map_err(|e| {
            TaskError::new(
                kind::DECODE_ERROR,
                format!("{task}() {what} are not valid JSON: {e}"),
            )
        })
    }
    fn json_type(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
    let args = match parse(task, "args", args)? {
        Value::Null => Vec::new(),
        Value::Array(a) => a,
        other => {
            return Err(type_error(format!(
                "{task}() args must be a JSON array, not {}",
                json_type(&other)
            )));
        }
    };
    let kwargs = match parse(task, "kwargs", kwargs)? {
        Value::Null => Map::new(),
        Value::Object(o) => o,
        other => {
            return Err(type_error(format!(
                "{task}() kwargs must be a JSON object, not {}",
                json_type(&other)
            )));
        }
    };
    Ok(Call { args, kwargs })
}

/// Converts the SDK's error into the WIT record.
pub(crate) fn to_wit(e: TaskError) -> crate::bindings::TaskError {
    crate::bindings::TaskError {
        kind: e.kind,
        message: e.message,
        retry: e
            .retry
            .map(|r| crate::bindings::sprout::task::types::RetryRequest {
                countdown_ms: r
                    .countdown
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }),
    }
}
