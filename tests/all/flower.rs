//! Real Flower (PyPI `flower`, pinned in `tests/python/setup_venv.sh`) watching a real
//! `sprout worker -E` on Redis: its HTTP API lists the worker (from the worker's
//! events) and shows a task's received/started/succeeded states with its runtime.
//!
//! Flower takes no key prefix, so the test borrows a whole Redis database
//! ([`redis_db_test`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sprout::connect;
use sprout::model::{Job, State};

use crate::celery_redis::venv;
use crate::events::events_worker;
use crate::metrics::try_http;
use crate::support::{Workdir, redis_db_test, wait_until};

/// A Flower process, killed on drop.
struct Flower {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Flower {
    fn start(broker: &str, log: PathBuf) -> Flower {
        // A free port (Flower cannot report one it picked itself).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(venv().join("bin/celery"))
            .args([
                "--broker",
                broker,
                "flower",
                "--address=127.0.0.1",
                &format!("--port={port}"),
                // Inspect calls go unanswered until a worker speaks the control protocol:
                // keep Flower's start-up wait for them short.
                "--inspect_timeout=500",
            ])
            // Its API without authentication: it listens on loopback, for this test only.
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start flower");
        Flower {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` as JSON, if Flower answers 200.
    fn get(&self, path: &str) -> Option<Value> {
        // Flower may not listen yet: a refused connection is "not yet".
        let (status, _, body) = try_http(&self.addr, "GET", path).ok()?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }
}

impl Drop for Flower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn flower_lists_the_sprout_worker_and_its_tasks_with_runtime() {
    let Some(scope) = redis_db_test("flower_lists_the_sprout_worker_and_its_tasks_with_runtime")
    else {
        return;
    };
    let url = scope.sprout_url();
    let wd = Workdir::new();
    let flower = Flower::start(&url, wd.path("flower.log"));
    assert!(
        wait_until(Duration::from_secs(60), || flower
            .get("/api/workers?status=true")
            .is_some()),
        "Flower did not come up: {}",
        flower.log()
    );
    let queue = "celery";
    let worker_log = wd.path("worker.log");
    let _worker = events_worker(&url, queue, "flower@test", &worker_log, &[]);
    let worker_log = || std::fs::read_to_string(wd.path("worker.log")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || {
            flower
                .get("/api/workers?status=true")
                .is_some_and(|w| w["flower@test"] == json!(true))
        }),
        "Flower does not see the worker alive: {:?}\nflower: {}\nworker: {}",
        flower.get("/api/workers?status=true"),
        flower.log(),
        worker_log()
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let conn = rt.block_on(connect::connect(&url)).expect("connect");
    let mut job = Job::new("add", vec![json!(20), json!(22)], serde_json::Map::new());
    job.queue = queue.into();
    let mut failing = Job::new("fail", vec![json!("from flower")], serde_json::Map::new());
    failing.queue = queue.into();
    rt.block_on(conn.broker.publish(&[job.clone(), failing.clone()]))
        .expect("publish");
    let done = wait_until(Duration::from_secs(30), || {
        rt.block_on(conn.backend.get(&job.id))
            .ok()
            .flatten()
            .is_some_and(|r| r.state == State::Success)
    });
    assert!(done, "the job did not run: {}", worker_log());

    let mut task = Value::Null;
    assert!(
        wait_until(Duration::from_secs(15), || {
            task = flower
                .get(&format!("/api/task/info/{}", job.id))
                .unwrap_or(Value::Null);
            task["state"] == "SUCCESS"
        }),
        "Flower's view of the task: {task}\nflower: {}",
        flower.log()
    );
    assert_eq!(task["name"], "add");
    assert_eq!(task["worker"], "flower@test");
    assert_eq!(task["result"], "42");
    assert_eq!(task["args"], "[20, 22]");
    for state in ["received", "started", "succeeded"] {
        assert!(
            task[state].as_f64().is_some_and(|t| t > 1.7e9),
            "{state}: {task}"
        );
    }
    assert!(task["runtime"].as_f64().is_some_and(|r| r > 0.0), "{task}");

    let tasks = flower.get("/api/tasks").expect("/api/tasks");
    assert_eq!(tasks[&job.id]["state"], "SUCCESS", "{tasks}");
    assert!(
        wait_until(Duration::from_secs(15), || {
            flower
                .get(&format!("/api/task/info/{}", failing.id))
                .is_some_and(|t| t["state"] == "FAILURE")
        }),
        "the failure did not reach Flower"
    );
    let failed = flower
        .get(&format!("/api/task/info/{}", failing.id))
        .unwrap();
    assert_eq!(failed["exception"], "ValueError('from flower')", "{failed}");
}

/// Flower's remote-control views on a Sprout worker: `/api/workers` (inspect) lists it
/// with its registered tasks, and `POST /api/task/revoke/<id>?terminate=true` stops a
/// running job (a 30 s `sleep`; the example `hog` runs out of fuel too soon), which ends
/// REVOKED within 2 s.
///
/// NOT YET RUNNABLE: Flower drives these through Celery's remote-control protocol
/// (pidbox), which the `control` branch is building; it had not landed on main when this
/// test was written. Remove the `ignore` once it has.
#[test]
fn flower_inspects_the_worker_and_terminates_a_running_job() {
    let Some(scope) = redis_db_test("flower_inspects_the_worker_and_terminates_a_running_job")
    else {
        return;
    };
    let url = scope.sprout_url();
    let wd = Workdir::new();
    let flower = Flower::start(&url, wd.path("flower.log"));
    let worker_log = wd.path("worker.log");
    let _worker = events_worker(&url, "celery", "control@test", &worker_log, &[]);
    let worker_log = || std::fs::read_to_string(wd.path("worker.log")).unwrap_or_default();
    let mut workers = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            workers = flower.get("/api/workers?refresh=1").unwrap_or(Value::Null);
            workers["control@test"]["registered"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("sleep")))
        }),
        "Flower's /api/workers: {workers}\nflower: {}\nworker: {}",
        flower.log(),
        worker_log()
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let conn = rt.block_on(connect::connect(&url)).expect("connect");
    let hog = Job::new("sleep", vec![json!(30)], serde_json::Map::new());
    rt.block_on(conn.broker.publish(std::slice::from_ref(&hog)))
        .expect("publish");
    assert!(
        wait_until(Duration::from_secs(30), || {
            flower
                .get(&format!("/api/task/info/{}", hog.id))
                .is_some_and(|t| t["state"] == "STARTED")
        }),
        "the job did not start: {}",
        worker_log()
    );
    let (status, _, body) = try_http(
        &flower.addr,
        "POST",
        &format!("/api/task/revoke/{}?terminate=true", hog.id),
    )
    .expect("revoke through Flower");
    assert_eq!(status, 200, "{body}");
    let revoked = wait_until(Duration::from_secs(2), || {
        rt.block_on(conn.backend.get(&hog.id))
            .ok()
            .flatten()
            .is_some_and(|r| r.state == State::Revoked)
    });
    assert!(
        revoked,
        "the job was not REVOKED within 2 s: {}",
        worker_log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            flower
                .get(&format!("/api/task/info/{}", hog.id))
                .is_some_and(|t| t["state"] == "REVOKED")
        }),
        "Flower did not see the revocation"
    );
}
