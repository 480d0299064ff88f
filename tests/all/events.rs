//! Celery monitoring events (`sprout worker -E`) on Redis, checked against what a real
//! Celery 5.7 `-E` worker sends (`tests/celery/events/celery-5.7-worker-events.jsonl`,
//! captured with `tests/celery/events/{capapp,drive,sub}.py`): the same channels, the
//! same envelope, the same fields per event type, plus Sprout's own (`pool`,
//! `fuel_used`, `peak_memory_bytes`, `pools`).
//!
//! A real `sprout worker -E` runs ok, failing, retried, expired and undecodable jobs;
//! a plain Redis subscriber (what Flower's receiver does: `PSUBSCRIBE
//! <prefix>/<db>.celeryev/*`) records every message.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sprout::connect;
use sprout::model::Job;

use crate::support::{
    Workdir, WorkerProcess, cache_dir, redis_test, sprout_bin, tasks_dir, wait_until,
};

/// Sprout's own fields on task events.
const SPROUT_TASK_FIELDS: [&str; 3] = ["pool", "fuel_used", "peak_memory_bytes"];
/// Sprout's own field on worker events.
const SPROUT_WORKER_FIELDS: [&str; 1] = ["pools"];

/// One message seen on the `celeryev` channels.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub channel: String,
    pub envelope: Value,
    pub event: Value,
}

/// Records every event message published on channels matching a pattern, from a
/// thread, until dropped.
pub(crate) struct Listener {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Subscribes (returns once the subscription is in place).
    pub fn start(db_url: &str, pattern: &str) -> Listener {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let client = redis::Client::open(db_url).expect("redis url");
        let mut conn = client.get_connection().expect("connect to Redis");
        let pattern = pattern.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let seen = seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut pubsub = conn.as_pubsub();
                pubsub.psubscribe(&pattern).expect("psubscribe");
                pubsub
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("read timeout");
                ready_tx.send(()).expect("ready");
                while !stop.load(Ordering::Relaxed) {
                    let Ok(msg) = pubsub.get_message() else {
                        continue;
                    };
                    let channel = msg.get_channel_name().to_string();
                    let payload: String = msg.get_payload().expect("text payload");
                    let envelope: Value = serde_json::from_str(&payload).expect("JSON envelope");
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(envelope["body"].as_str().expect("body"))
                        .expect("base64 body");
                    let body: Value = serde_json::from_slice(&raw).expect("JSON body");
                    let events = match body {
                        Value::Array(events) => events,
                        one => vec![one],
                    };
                    let mut seen = seen.lock().unwrap();
                    for event in events {
                        seen.push(Seen {
                            channel: channel.clone(),
                            envelope: envelope.clone(),
                            event,
                        });
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscribed");
        Listener {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The events of `type_` (for task `uuid`, if given) seen so far.
    pub fn events(&self, type_: &str, uuid: Option<&str>) -> Vec<Value> {
        self.seen()
            .into_iter()
            .map(|s| s.event)
            .filter(|e| e["type"] == type_ && uuid.is_none_or(|u| e["uuid"] == u))
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The field names a real Celery 5.7 worker sent per event type.
fn celery_fields() -> HashMap<String, BTreeSet<String>> {
    let path =
        crate::support::repo_root().join("tests/celery/events/celery-5.7-worker-events.jsonl");
    let text = std::fs::read_to_string(&path).expect("events fixture");
    let mut fields = HashMap::new();
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).expect("fixture line");
        let events = match &record["body"] {
            Value::Array(events) => events.clone(),
            one => vec![one.clone()],
        };
        for event in events {
            let keys: BTreeSet<String> = event.as_object().unwrap().keys().cloned().collect();
            fields.insert(event["type"].as_str().unwrap().to_string(), keys);
        }
    }
    fields
}

fn keys_without(event: &Value, extra: &[&str]) -> BTreeSet<String> {
    event
        .as_object()
        .expect("an event object")
        .keys()
        .filter(|k| !extra.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// `sprout worker -E` on `url` consuming `queue`, logging into `log`.
pub(crate) fn events_worker(
    url: &str,
    queue: &str,
    name: &str,
    log: &Path,
    extra: &[&str],
) -> WorkerProcess {
    let tasks = tasks_dir().display().to_string();
    let mut args = vec![
        "worker", "-E", "--broker", url, "--tasks", &tasks, "-Q", queue, "-n", name, "-c", "4",
    ];
    args.extend_from_slice(extra);
    let child = Command::new(sprout_bin())
        .args(&args)
        .env("SPROUT_CACHE_DIR", cache_dir())
        .env("SPROUT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn worker");
    WorkerProcess::new(child)
}

fn job(task: &str, args: Value, queue: &str) -> Job {
    let Value::Array(args) = args else {
        panic!("args must be an array")
    };
    let mut job = Job::new(task, args, serde_json::Map::new());
    job.queue = queue.to_string();
    job
}

#[test]
fn worker_and_task_events_on_redis_have_celerys_shapes() {
    let Some(scope) = redis_test("worker_and_task_events_on_redis_have_celerys_shapes") else {
        return;
    };
    let url = scope.sprout_url();
    let prefix = sprout::broker::redis::events::channel_prefix(&scope).expect("channel prefix");
    let db_url = scope.url.clone();
    let listener = Listener::start(&db_url, &format!("{prefix}*"));
    let wd = Workdir::new();
    let log = wd.path("worker.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let queue = format!("events-{}", uuid::Uuid::new_v4().simple());
    let mut worker = events_worker(&url, &queue, "events@test", &log, &[]);
    assert!(
        wait_until(Duration::from_secs(60), || !listener
            .events("worker-online", None)
            .is_empty()),
        "no worker-online: {}",
        read_log()
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let conn = rt.block_on(connect::connect(&url)).expect("connect");
    let ok = job("add", json!([2, 3]), &queue);
    let failing = job("fail", json!(["bad input"]), &queue);
    let flaky = job("flaky", json!([1]), &queue);
    let mut expired = job("add", json!([1, 1]), &queue);
    expired.expires = Some(chrono::Utc::now() - chrono::Duration::seconds(5));
    rt.block_on(conn.broker.publish(&[
        ok.clone(),
        failing.clone(),
        flaky.clone(),
        expired.clone(),
    ]))
    .expect("publish");
    // A message whose body is not base64 JSON, but whose headers name its id.
    let garbage_id = uuid::Uuid::new_v4().to_string();
    let garbage = json!({
        "body": "%%% not base64 %%%",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "add", "id": garbage_id},
        "properties": {"body_encoding": "base64", "delivery_tag": uuid::Uuid::new_v4().to_string(),
                       "delivery_info": {"exchange": "", "routing_key": queue}},
    });
    let mut raw = redis::Client::open(db_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(scope.key(&queue))
        .arg(garbage.to_string())
        .query(&mut raw)
        .unwrap();

    let ended = |uuid: &str, type_: &str| !listener.events(type_, Some(uuid)).is_empty();
    assert!(
        wait_until(Duration::from_secs(30), || {
            ended(&ok.id, "task-succeeded")
                && ended(&failing.id, "task-failed")
                && ended(&flaky.id, "task-retried")
                && listener.events("task-succeeded", Some(&flaky.id)).len() == 1
                && ended(&expired.id, "task-revoked")
                && ended(&garbage_id, "task-rejected")
                && !listener.events("worker-heartbeat", None).is_empty()
        }),
        "missing events; seen: {:#?}\nworker log: {}",
        listener.seen().iter().map(|s| &s.event).collect::<Vec<_>>(),
        read_log()
    );
    worker.signal(libc::SIGTERM);
    let (code, _) = worker.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", read_log());
    assert!(
        wait_until(Duration::from_secs(5), || !listener
            .events("worker-offline", None)
            .is_empty()),
        "no worker-offline"
    );

    // Every message: kombu's envelope on the celeryev exchange, its routing key the
    // channel's tail; every event: Celery's fields for its type (and Sprout's).
    let celery = celery_fields();
    let seen = listener.seen();
    let mut clocks = BTreeSet::new();
    for s in &seen {
        let key = s
            .channel
            .strip_prefix(&prefix)
            .expect("channel under the prefix");
        let props = &s.envelope["properties"];
        assert_eq!(props["delivery_info"]["exchange"], "celeryev", "{s:?}");
        assert_eq!(props["delivery_info"]["routing_key"], key, "{s:?}");
        assert_eq!(props["body_encoding"], "base64");
        assert_eq!(s.envelope["content-type"], "application/json");
        assert_eq!(s.envelope["headers"]["hostname"], "events@test");
        let type_ = s.event["type"].as_str().expect("type");
        if type_.starts_with("task-") {
            assert_eq!(key, "task.multi", "task events go batched");
        } else {
            assert_eq!(key, type_.replace('-', "."));
        }
        let extra: &[&str] = if type_.starts_with("task-") {
            &SPROUT_TASK_FIELDS
        } else {
            &SPROUT_WORKER_FIELDS
        };
        let want = celery
            .get(type_)
            .unwrap_or_else(|| panic!("Celery sent no {type_}"));
        assert_eq!(
            &keys_without(&s.event, extra),
            want,
            "fields of {type_}: {}",
            s.event
        );
        assert_eq!(s.event["hostname"], "events@test");
        assert_eq!(s.event["pid"], json!(worker_pid(&seen)));
        assert!(
            clocks.insert(s.event["clock"].as_u64().expect("clock")),
            "clock repeats: {s:?}"
        );
        assert!(s.event["timestamp"].as_f64().expect("timestamp") > 1.7e9);
    }

    let one = |type_: &str, uuid: &str| {
        let events = listener.events(type_, Some(uuid));
        assert_eq!(events.len(), 1, "{type_} of {uuid}: {events:?}");
        events.into_iter().next().unwrap()
    };
    let received = one("task-received", &ok.id);
    assert_eq!(received["name"], "add");
    assert_eq!(received["args"], "[2, 3]");
    assert_eq!(received["kwargs"], "{}");
    assert_eq!(received["root_id"], ok.id.as_str());
    assert_eq!(received["retries"], 0);
    assert_eq!(received["pool"], "async");
    one("task-started", &ok.id);
    let succeeded = one("task-succeeded", &ok.id);
    assert_eq!(succeeded["result"], "5");
    assert!(succeeded["runtime"].as_f64().unwrap() > 0.0, "{succeeded}");
    assert!(succeeded["fuel_used"].as_u64().unwrap() > 0, "{succeeded}");
    assert!(
        succeeded["peak_memory_bytes"].as_u64().unwrap() >= 65536,
        "{succeeded}"
    );
    let failed = one("task-failed", &failing.id);
    assert_eq!(failed["exception"], "ValueError('bad input')");
    assert!(failed["traceback"].is_string());
    let retried = one("task-retried", &flaky.id);
    assert!(
        retried["exception"]
            .as_str()
            .unwrap()
            .starts_with("Retry('flaky: attempt 1"),
        "{retried}"
    );
    assert_eq!(one("task-succeeded", &flaky.id)["result"], "1");
    let revoked = one("task-revoked", &expired.id);
    assert_eq!(
        (&revoked["expired"], &revoked["terminated"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(revoked["signum"], Value::Null);
    assert_eq!(one("task-rejected", &garbage_id)["requeue"], false);

    let heartbeat = listener.events("worker-heartbeat", None).remove(0);
    assert_eq!(heartbeat["sw_ident"], "sprout");
    assert_eq!(heartbeat["freq"], 2.0);
    assert_eq!(heartbeat["loadavg"].as_array().unwrap().len(), 3);
    assert_eq!(heartbeat["pools"]["async"]["concurrency"], 4);
    let offline = listener.events("worker-offline", None).remove(0);
    assert_eq!(offline["active"], 0);
    // Celery's `processed`: jobs handed to the pool (the expired one never was).
    assert_eq!(offline["processed"], 4, "{offline}");
}

/// The pid every event of one worker carries.
fn worker_pid(seen: &[Seen]) -> u64 {
    seen[0].event["pid"].as_u64().expect("pid")
}

/// On the embedded SQLite broker `-E` sends nothing (no subscriber could get it) and
/// says so; jobs run as ever.
#[test]
fn task_events_on_sqlite_are_refused_with_a_warning_and_jobs_still_run() {
    let wd = Workdir::new();
    let mut worker = wd.worker_logged(tasks_dir(), &["-E", "--max-jobs", "1"]);
    let sent = wd.run(&["send", "add", "[2, 3]", "--wait"]);
    assert!(sent.status.success(), "{}", crate::support::stderr(&sent));
    assert_eq!(crate::support::stdout(&sent), "5");
    let (code, _) = worker.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert!(
        wd.worker_log().contains("no events are sent"),
        "{}",
        wd.worker_log()
    );
}
