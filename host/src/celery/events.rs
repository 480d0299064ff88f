//! Celery's monitoring events (`celery worker -E`): the wire shapes Flower, `celery
//! events` and any `app.events.Receiver` read.
//!
//! What a Celery 5.7 worker sends (captured from a real one:
//! `tests/celery/events/celery-5.7-worker-events.jsonl`):
//!
//! - on the topic exchange `celeryev`, one kombu envelope per message (body base64 JSON,
//!   like a task message), with the header `hostname`;
//! - worker events one per message, routing key `worker.online`, `worker.heartbeat`
//!   (every [`HEARTBEAT_FREQ`] s), `worker.offline`; fields `hostname utcoffset pid clock
//!   freq active processed loadavg sw_ident sw_ver sw_sys timestamp type`;
//! - task events batched: the body is a JSON **list** of events, routing key
//!   `task.multi` (Celery buffers the `task` group); each event carries `hostname
//!   utcoffset pid clock uuid timestamp type` and its own fields ([`TaskEvent`]).
//!
//! On Redis kombu sends the exchange as pub/sub: `PUBLISH /<db>.celeryev/<routing key>`
//! (with the deployment's key prefix in front); that is the broker's business
//! (`crate::broker::redis::events`). Here: the bodies and the envelope, I/O-free.
//!
//! Sprout adds its own fields, which Celery's receivers keep as they are: on
//! `task-succeeded`, `task-failed` and `task-retried` `fuel_used` and
//! `peak_memory_bytes` (the attempt's), on every task event of a worker with several
//! pools nothing more; on worker events `pools` (name → kind, concurrency, busy).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::pyjson;
use crate::model::Job;

/// The exchange Celery's events go to.
pub const EXCHANGE: &str = "celeryev";
/// Routing key of a batch of task events.
pub const TASK_MULTI: &str = "task.multi";
/// How often a worker sends `worker-heartbeat`, in seconds (Celery's default; receivers
/// count a worker offline after missing a couple of them).
pub const HEARTBEAT_FREQ: f64 = 2.0;
/// What Sprout calls itself in `sw_ident` (Celery: `py-celery`).
pub const SW_IDENT: &str = "sprout";

/// Who sends events: the fields every event starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct Sender {
    /// The worker's name (`-n`), e.g. `sprout@host`.
    pub hostname: String,
    /// The worker process id.
    pub pid: u32,
    /// Hours west of UTC, as Celery's `utcoffset()` (0 on a UTC machine).
    pub utcoffset: f64,
}

impl Sender {
    /// This process, named `hostname`, with the machine's UTC offset.
    pub fn this_process(hostname: &str) -> Sender {
        let east = chrono::Local::now().offset().local_minus_utc();
        Sender {
            hostname: hostname.to_string(),
            pid: std::process::id(),
            utcoffset: f64::from(-east.div_euclid(3600)),
        }
    }
}

/// The worker events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEventKind {
    /// `worker-online`: the worker started consuming.
    Online,
    /// `worker-heartbeat`: sent every [`HEARTBEAT_FREQ`] seconds.
    Heartbeat,
    /// `worker-offline`: the worker is stopping.
    Offline,
}

impl WorkerEventKind {
    /// The event's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            WorkerEventKind::Online => "worker-online",
            WorkerEventKind::Heartbeat => "worker-heartbeat",
            WorkerEventKind::Offline => "worker-offline",
        }
    }
}

/// What a worker event reports about the worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerStatus {
    /// Jobs running or reserved now.
    pub active: u64,
    /// Jobs received since the worker started.
    pub processed: u64,
    /// The machine's load averages (1, 5, 15 minutes).
    pub loadavg: [f64; 3],
    /// Sprout's pools: name → `{"kind", "concurrency", "busy"}` (Sprout's own field).
    pub pools: Map<String, Value>,
}

/// A task event's own fields (the common ones are added by [`task_event`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent<'a> {
    /// `task-received`: the worker took the message.
    Received {
        /// `name`, `args`/`kwargs` (Python reprs), `root_id`, `parent_id`, `retries`,
        /// `eta`, `expires`, from the job.
        job: &'a Job,
    },
    /// `task-started`: the task begins to run.
    Started,
    /// `task-succeeded`.
    Succeeded {
        /// The result's Python repr (cut like Celery's `resultrepr_maxsize`).
        result: String,
        /// Seconds the task ran.
        runtime: f64,
    },
    /// `task-failed`.
    Failed {
        /// The exception's repr, `Kind('message')`.
        exception: String,
        /// Traceback text (Sprout: the guest's backtrace and logs, may be empty).
        traceback: String,
    },
    /// `task-retried`: the attempt failed and the task runs again.
    Retried {
        /// The exception's repr.
        exception: String,
        /// Traceback text.
        traceback: String,
    },
    /// `task-revoked`.
    Revoked {
        /// Stopped while running.
        terminated: bool,
        /// The signal, when terminated by one (Sprout stops instances without signals:
        /// `None` unless a client named one).
        signum: Option<i64>,
        /// Revoked because its `expires` passed.
        expired: bool,
    },
    /// `task-rejected`: the message was refused (Sprout: dead-lettered).
    Rejected {
        /// Whether it was put back (Sprout never requeues a rejected message).
        requeue: bool,
    },
}

impl TaskEvent<'_> {
    /// The event's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            TaskEvent::Received { .. } => "task-received",
            TaskEvent::Started => "task-started",
            TaskEvent::Succeeded { .. } => "task-succeeded",
            TaskEvent::Failed { .. } => "task-failed",
            TaskEvent::Retried { .. } => "task-retried",
            TaskEvent::Revoked { .. } => "task-revoked",
            TaskEvent::Rejected { .. } => "task-rejected",
        }
    }
}

/// Seconds since the epoch, as Python's `time.time()`.
pub fn now_timestamp() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The fields every event starts with, in Celery's order.
fn common(sender: &Sender, clock: u64) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("hostname".into(), json!(sender.hostname));
    fields.insert("utcoffset".into(), json!(sender.utcoffset));
    fields.insert("pid".into(), json!(sender.pid));
    fields.insert("clock".into(), json!(clock));
    fields
}

/// A worker event's body.
pub fn worker_event(
    sender: &Sender,
    clock: u64,
    kind: WorkerEventKind,
    status: &WorkerStatus,
    timestamp: f64,
) -> Value {
    let mut fields = common(sender, clock);
    fields.insert("freq".into(), json!(HEARTBEAT_FREQ));
    fields.insert("active".into(), json!(status.active));
    fields.insert("processed".into(), json!(status.processed));
    fields.insert("loadavg".into(), json!(status.loadavg));
    fields.insert("sw_ident".into(), json!(SW_IDENT));
    fields.insert("sw_ver".into(), json!(env!("CARGO_PKG_VERSION")));
    fields.insert("sw_sys".into(), json!(sw_sys()));
    if !status.pools.is_empty() {
        fields.insert("pools".into(), Value::Object(status.pools.clone()));
    }
    fields.insert("timestamp".into(), json!(timestamp));
    fields.insert("type".into(), json!(kind.type_name()));
    Value::Object(fields)
}

/// `platform.system()`: `Linux`, `Darwin`, ...
fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// A task event's body (one element of a `task.multi` list). `extra` are Sprout's own
/// fields (fuel, memory), written before `timestamp` and `type`.
pub fn task_event(
    sender: &Sender,
    clock: u64,
    uuid: &str,
    event: &TaskEvent<'_>,
    extra: &Map<String, Value>,
    timestamp: f64,
) -> Value {
    let mut fields = common(sender, clock);
    fields.insert("uuid".into(), json!(uuid));
    match event {
        TaskEvent::Received { job } => {
            let ctx = job.celery.as_ref();
            let header = |name: &str| {
                ctx.and_then(|c| c.extra.get(name))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            fields.insert("name".into(), json!(job.task));
            fields.insert(
                "args".into(),
                json!(header("argsrepr").unwrap_or_else(|| pyjson::py_repr_list(&job.args))),
            );
            fields.insert(
                "kwargs".into(),
                json!(header("kwargsrepr").unwrap_or_else(|| pyjson::py_repr_map(&job.kwargs))),
            );
            let root = ctx
                .and_then(|c| c.root_id.clone())
                .unwrap_or(job.id.clone());
            fields.insert("root_id".into(), json!(root));
            fields.insert(
                "parent_id".into(),
                json!(ctx.and_then(|c| c.parent_id.clone())),
            );
            fields.insert("retries".into(), json!(job.retries));
            fields.insert("eta".into(), json!(job.eta.map(super::isotime::format)));
            fields.insert(
                "expires".into(),
                json!(job.expires.map(super::isotime::format)),
            );
        }
        TaskEvent::Started => {}
        TaskEvent::Succeeded { result, runtime } => {
            fields.insert("result".into(), json!(result));
            fields.insert("runtime".into(), json!(runtime));
        }
        TaskEvent::Failed {
            exception,
            traceback,
        }
        | TaskEvent::Retried {
            exception,
            traceback,
        } => {
            fields.insert("exception".into(), json!(exception));
            fields.insert("traceback".into(), json!(traceback));
        }
        TaskEvent::Revoked {
            terminated,
            signum,
            expired,
        } => {
            fields.insert("terminated".into(), json!(terminated));
            fields.insert("signum".into(), json!(signum));
            fields.insert("expired".into(), json!(expired));
        }
        TaskEvent::Rejected { requeue } => {
            fields.insert("requeue".into(), json!(requeue));
        }
    }
    for (k, v) in extra {
        fields.entry(k.clone()).or_insert_with(|| v.clone());
    }
    fields.insert("timestamp".into(), json!(timestamp));
    fields.insert("type".into(), json!(event.type_name()));
    Value::Object(fields)
}

/// An exception's repr as Celery writes it in events: `Kind('message')`.
pub fn exception_repr(kind: &str, message: &str) -> String {
    let mut out = String::with_capacity(kind.len() + message.len() + 4);
    out.push_str(kind);
    out.push('(');
    pyjson::repr_str(message, &mut out);
    out.push(')');
    out
}

/// A result's repr, as in `task-succeeded` (Python's repr, cut at 1024 characters).
pub fn result_repr(value: &Value) -> String {
    pyjson::py_repr(value)
}

/// The routing key of a worker event (`worker-heartbeat` → `worker.heartbeat`).
pub fn routing_key(type_name: &str) -> String {
    type_name.replacen('-', ".", 1)
}

/// The kombu envelope of an event message (body: one event, or a list for
/// `task.multi`), as Celery's `EventDispatcher` publishes it.
pub fn envelope(body: &Value, routing_key: &str, hostname: &str) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(pyjson::to_vec(body));
    let envelope = json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": EXCHANGE, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    });
    pyjson::to_string(&envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender {
            hostname: "cap1@host".into(),
            pid: 9886,
            utcoffset: 0.0,
        }
    }

    /// Field for field (names, values, types) what Celery 5.7 sent in the capture.
    #[test]
    fn shapes_match_celery() {
        let status = WorkerStatus {
            active: 1,
            processed: 2,
            loadavg: [1.8, 0.83, 0.58],
            pools: Map::new(),
        };
        let hb = worker_event(
            &sender(),
            22,
            WorkerEventKind::Heartbeat,
            &status,
            1796338295.1736035,
        );
        // Python reads the fields by name: compare them as JSON values (serde_json's
        // map keeps its keys sorted, Celery's dict its insertion order).
        let parsed = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        let mut hb = parsed(pyjson::to_string(&hb));
        assert!(hb["sw_ver"].as_str().is_some_and(|v| !v.is_empty()), "{hb}");
        hb.as_object_mut().unwrap().remove("sw_ver");
        assert_eq!(
            hb,
            parsed(
                r#"{"hostname": "cap1@host", "utcoffset": 0.0, "pid": 9886, "clock": 22, "freq": 2.0, "active": 1, "processed": 2, "loadavg": [1.8, 0.83, 0.58], "sw_ident": "sprout", "sw_sys": "Linux", "timestamp": 1796338295.1736035, "type": "worker-heartbeat"}"#
                    .into()
            )
        );
        let ok = task_event(
            &sender(),
            8,
            "67023f6c",
            &TaskEvent::Succeeded {
                result: "5".into(),
                runtime: 0.25,
            },
            &Map::new(),
            1796338279.8115249,
        );
        assert_eq!(
            parsed(pyjson::to_string(&ok)),
            parsed(r#"{"hostname": "cap1@host", "utcoffset": 0.0, "pid": 9886, "clock": 8, "uuid": "67023f6c", "result": "5", "runtime": 0.25, "timestamp": 1796338279.8115249, "type": "task-succeeded"}"#.into())
        );
        let revoked = task_event(
            &sender(),
            20,
            "f1",
            &TaskEvent::Revoked {
                terminated: false,
                signum: None,
                expired: true,
            },
            &Map::new(),
            1.5,
        );
        assert_eq!(
            parsed(pyjson::to_string(&revoked)),
            parsed(r#"{"hostname": "cap1@host", "utcoffset": 0.0, "pid": 9886, "clock": 20, "uuid": "f1", "terminated": false, "signum": null, "expired": true, "timestamp": 1.5, "type": "task-revoked"}"#.into())
        );
        assert_eq!(
            exception_repr("ValueError", "bad input"),
            "ValueError('bad input')"
        );
        assert_eq!(routing_key("worker-heartbeat"), "worker.heartbeat");
    }

    #[test]
    fn envelope_round_trips() {
        let body = json!([{"uuid": "x", "type": "task-started"}]);
        let env: Value = serde_json::from_str(&envelope(&body, TASK_MULTI, "w@h")).unwrap();
        assert_eq!(env["headers"]["hostname"], "w@h");
        assert_eq!(env["properties"]["delivery_info"]["exchange"], "celeryev");
        assert_eq!(
            env["properties"]["delivery_info"]["routing_key"],
            "task.multi"
        );
        let raw = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap(), body);
    }
}
