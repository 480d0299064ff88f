//! Results: [`ResultRecord`] ⇄ the `celery-task-meta-<id>` JSON (docs/PROTOCOL.md §6).
//!
//! What we write is what a Celery 5.7 worker with default settings writes, field for
//! field and in the same order: `status`, `result`, `traceback`, `children`,
//! `date_done`, `group_id`/`parent_id` when known, then `task_id` last (the client's
//! pub/sub handler needs it). One addition: a `sprout` object (task name, worker,
//! retries, fuel used, duration) when the record has any of those, which Python clients
//! ignore and `sprout result` reads back.
//!
//! Failures are stored as Celery's exception dict `{"exc_type", "exc_message",
//! "exc_module"}` so that `AsyncResult.get()` raises a class of the same name:
//! builtin names (`ValueError`, `KeyError`, …) map to `builtins` and raise the real
//! class; Celery's and billiard's own names map to their modules; every other kind
//! (`OutOfFuel`, `WasmTrap`, …) gets module `sprout.exceptions`, which no client has
//! imported, so the client synthesizes an exception class with that exact name.
//! A dotted kind (`myapp.errors.QuotaExceeded`) names its module itself.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{isotime, message, pyjson};
use crate::model::{CeleryResultMeta, ErrorInfo, Progress, ResultRecord, State};

/// The module Sprout's own error kinds are reported in.
pub const SPROUT_EXC_MODULE: &str = "sprout.exceptions";

/// Python's builtin exception classes that are safe to rebuild from one message
/// argument (no `SystemExit`/`KeyboardInterrupt`, no multi-argument Unicode errors).
const BUILTIN_EXCEPTIONS: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "EOFError",
    "Exception",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "ImportError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "NotADirectoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "ProcessLookupError",
    "RecursionError",
    "ReferenceError",
    "RuntimeError",
    "StopIteration",
    "SystemError",
    "TimeoutError",
    "TypeError",
    "UnboundLocalError",
    "UnicodeError",
    "ValueError",
    "ZeroDivisionError",
];

const CELERY_EXCEPTIONS: &[&str] = &[
    "ChordError",
    "NotRegistered",
    "TaskRevokedError",
    "MaxRetriesExceededError",
    "Retry",
    "Reject",
    "Ignore",
    "InvalidTaskError",
    "QueueNotFound",
    "SecurityError",
];

const BILLIARD_EXCEPTIONS: &[&str] = &[
    "TimeLimitExceeded",
    "SoftTimeLimitExceeded",
    "WorkerLostError",
    "Terminated",
];

/// Splits an error kind into Celery's `(exc_module, exc_type)`.
pub fn exception_class(kind: &str) -> (&str, &str) {
    if let Some((module, name)) = kind.rsplit_once('.')
        && !module.is_empty()
        && !name.is_empty()
    {
        return (module, name);
    }
    let module = if BUILTIN_EXCEPTIONS.contains(&kind) {
        "builtins"
    } else if CELERY_EXCEPTIONS.contains(&kind) {
        "celery.exceptions"
    } else if BILLIARD_EXCEPTIONS.contains(&kind) {
        "billiard.exceptions"
    } else {
        SPROUT_EXC_MODULE
    };
    (module, kind)
}

/// Celery's exception dict for an error: `{"exc_type", "exc_message": [message],
/// "exc_module"}`. Time limits carry their seconds as a number, like billiard's.
pub fn exception(err: &ErrorInfo) -> Value {
    let (module, name) = exception_class(&err.kind);
    let arg = match name {
        "TimeLimitExceeded" | "SoftTimeLimitExceeded" => err
            .message
            .trim()
            .trim_end_matches('s')
            .parse::<f64>()
            .map(|s| {
                if s.fract() == 0.0 {
                    json!(s as i64)
                } else {
                    json!(s)
                }
            })
            .unwrap_or_else(|_| json!(err.message)),
        _ => json!(err.message),
    };
    json!({"exc_type": name, "exc_message": [arg], "exc_module": module})
}

/// Reads an exception dict (or whatever a peer stored instead) back into an [`ErrorInfo`].
pub fn error_info(exc: &Value, traceback: Option<String>) -> ErrorInfo {
    let Some(obj) = exc.as_object() else {
        return ErrorInfo {
            kind: "Exception".into(),
            message: match exc {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            traceback,
        };
    };
    let name = obj
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let kind = match obj.get("exc_module").and_then(Value::as_str) {
        None | Some("builtins" | "celery.exceptions" | "billiard.exceptions") => name.to_string(),
        Some(SPROUT_EXC_MODULE) => name.to_string(),
        Some(module) => format!("{module}.{name}"),
    };
    let message = match obj.get("exc_message") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(args)) if args.len() == 1 => match &args[0] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        Some(Value::Array(args)) if args.is_empty() => String::new(),
        Some(Value::Array(args)) => {
            // str() of a multi-argument exception is the tuple's repr.
            let inner: Vec<String> = args.iter().map(pyjson::py_repr).collect();
            format!("({})", inner.join(", "))
        }
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    ErrorInfo {
        kind,
        message,
        traceback,
    }
}

/// Python's `repr()` of the exception an [`ErrorInfo`] stands for: `ValueError('hdr')`.
pub fn exception_repr(err: &ErrorInfo) -> String {
    let (_, name) = exception_class(&err.kind);
    let mut arg = String::new();
    pyjson::repr_str(&err.message, &mut arg);
    format!("{name}({arg})")
}

/// A result tuple `[[id, null], null]` as Celery lists children.
fn result_tuple(id: &str) -> Value {
    json!([[id, null], null])
}

#[derive(Serialize)]
struct Meta<'a> {
    status: &'a str,
    result: Value,
    traceback: Option<&'a str>,
    children: Vec<Value>,
    date_done: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sprout: Option<Value>,
    task_id: &'a str,
}

/// The value Celery stores as `result` for this record.
pub fn result_value(record: &ResultRecord) -> Value {
    match record.state {
        State::Success => record.result.clone().unwrap_or(Value::Null),
        State::Failure | State::Retry | State::Revoked => match &record.error {
            Some(err) => exception(err),
            None => exception(&ErrorInfo {
                kind: "Exception".into(),
                message: String::new(),
                traceback: None,
            }),
        },
        State::Started => json!({
            "pid": std::process::id(),
            "hostname": record.worker.as_deref().unwrap_or_else(|| message::hostname()),
        }),
        // Celery's custom-state convention, what `AsyncResult.info` shows.
        State::Progress => match record.progress {
            Some(p) => json!({ "current": p.current, "total": p.total }),
            None => record.result.clone().unwrap_or(Value::Null),
        },
        State::Pending => record.result.clone().unwrap_or(Value::Null),
    }
}

/// Encodes a record as the JSON stored under `celery-task-meta-<id>` and published on
/// the channel of the same name.
pub fn encode_meta(record: &ResultRecord) -> String {
    let links = record.celery.as_ref();
    let mut children: Vec<Value> = links
        .map(|l| l.children.iter().map(|c| result_tuple(c)).collect())
        .unwrap_or_default();
    if record.state == State::Retry && children.is_empty() {
        // The retry message is the task's own child (same id).
        children.push(result_tuple(&record.id));
    }
    let mut sprout = Map::new();
    if !record.task.is_empty() {
        sprout.insert("task".into(), json!(record.task));
    }
    if let Some(w) = &record.worker {
        sprout.insert("worker".into(), json!(w));
    }
    if record.retries > 0 {
        sprout.insert("retries".into(), json!(record.retries));
    }
    if let Some(f) = record.fuel_used {
        sprout.insert("fuel_used".into(), json!(f));
    }
    if let Some(d) = record.duration_ms {
        sprout.insert("duration_ms".into(), json!(d));
    }
    if let Some(s) = record.started_at {
        sprout.insert("started_at".into(), json!(isotime::format(s)));
    }
    if let Some(log) = record.log.as_deref().filter(|l| !l.is_empty()) {
        sprout.insert("log".into(), json!(log));
    }
    let meta = Meta {
        status: record.state.as_str(),
        result: result_value(record),
        traceback: record.error.as_ref().and_then(|e| e.traceback.as_deref()),
        children,
        date_done: record
            .state
            .is_terminal()
            .then(|| isotime::format(record.updated_at)),
        group_id: links.and_then(|l| l.group_id.as_deref()),
        parent_id: links.and_then(|l| l.parent_id.as_deref()),
        sprout: (!sprout.is_empty()).then_some(Value::Object(sprout)),
        task_id: &record.id,
    };
    pyjson::to_string(&meta)
}

/// Ids named in a `children` list: `[[id, null], null]` results and
/// `[[gid, null], [...]]` group results.
fn child_ids(children: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(items)) = children else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|c| {
            c.get(0)
                .and_then(|head| head.get(0))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
        .collect()
}

/// Decodes a stored `celery-task-meta-<id>` value (written by Sprout or by Celery).
///
/// `PROGRESS` reads as [`State::Progress`], its `{"current", "total"}` meta as
/// [`ResultRecord::progress`]; other custom states have no [`State`]: they read as
/// `Started` with the custom `result` kept.
///
/// # Errors
/// The bytes are not a JSON object with a `status`.
pub fn decode_meta(id: &str, raw: &[u8]) -> Result<ResultRecord, String> {
    let meta: Map<String, Value> =
        serde_json::from_slice(raw).map_err(|e| format!("not a JSON object: {e}"))?;
    let status = meta
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| "no `status` field".to_string())?;
    let state = State::parse(status).unwrap_or(State::Started);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let sprout = meta.get("sprout").and_then(Value::as_object);
    let from_sprout = |k: &str| sprout.and_then(|s| s.get(k));
    let result = meta.get("result").cloned().unwrap_or(Value::Null);
    let traceback = text(meta.get("traceback"));

    let task = text(from_sprout("task"))
        .or_else(|| text(meta.get("name")))
        .unwrap_or_default();
    let mut record = ResultRecord::new(
        text(meta.get("task_id")).unwrap_or(id.to_string()),
        task,
        state,
    );
    match state {
        State::Failure | State::Retry | State::Revoked => {
            record.error = Some(error_info(&result, traceback));
        }
        State::Progress => {
            record.progress = match (
                result.get("current").and_then(Value::as_u64),
                result.get("total").and_then(Value::as_u64),
            ) {
                (Some(current), Some(total)) => Some(Progress { current, total }),
                _ => None,
            };
            record.result = Some(result);
        }
        State::Started if status == "STARTED" => {
            record.worker = text(result.get("hostname"));
            record.result = (!result.is_null()).then_some(result);
        }
        _ => record.result = Some(result),
    }
    record.worker = text(from_sprout("worker"))
        .or(text(meta.get("worker")))
        .or(record.worker);
    record.retries = from_sprout("retries")
        .or(meta.get("retries"))
        .and_then(Value::as_u64)
        .map(|r| u32::try_from(r).unwrap_or(u32::MAX))
        .unwrap_or(0);
    record.fuel_used = from_sprout("fuel_used").and_then(Value::as_u64);
    record.duration_ms = from_sprout("duration_ms").and_then(Value::as_f64);
    record.started_at = text(from_sprout("started_at")).and_then(|s| isotime::parse(&s).ok());
    record.log = text(from_sprout("log"));
    let date_done: Option<DateTime<Utc>> =
        text(meta.get("date_done")).and_then(|s| isotime::parse(&s).ok());
    if let Some(at) = date_done {
        record.updated_at = at;
    }
    let links = CeleryResultMeta {
        parent_id: text(meta.get("parent_id")),
        group_id: text(meta.get("group_id")),
        children: child_ids(meta.get("children")),
        ..CeleryResultMeta::default()
    };
    if links != CeleryResultMeta::default() {
        record.celery = Some(links);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_modules() {
        assert_eq!(exception_class("ValueError"), ("builtins", "ValueError"));
        assert_eq!(
            exception_class("NotRegistered"),
            ("celery.exceptions", "NotRegistered")
        );
        assert_eq!(
            exception_class("TimeLimitExceeded"),
            ("billiard.exceptions", "TimeLimitExceeded")
        );
        assert_eq!(
            exception_class("OutOfFuel"),
            (SPROUT_EXC_MODULE, "OutOfFuel")
        );
        assert_eq!(exception_class("app.errors.Quota"), ("app.errors", "Quota"));
        let tl = ErrorInfo {
            kind: "TimeLimitExceeded".into(),
            message: "60".into(),
            traceback: None,
        };
        assert_eq!(exception(&tl)["exc_message"], json!([60]));
        let e = ErrorInfo {
            kind: "ValueError".into(),
            message: "hdr".into(),
            traceback: None,
        };
        assert_eq!(exception_repr(&e), "ValueError('hdr')");
    }

    #[test]
    fn multi_arg_exceptions_read_like_python_str() {
        let exc =
            json!({"exc_type": "WasmTrap", "exc_message": ["trap", 42], "exc_module": "tasks"});
        let info = error_info(&exc, None);
        assert_eq!(info.kind, "tasks.WasmTrap");
        assert_eq!(info.message, "('trap', 42)");
    }
}
