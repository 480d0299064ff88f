//! The AMQP broker and the `rpc://` result backend on a real RabbitMQ, and interop with
//! real Python Celery over RabbitMQ.
//!
//! Needs RabbitMQ at 127.0.0.1:5672 (guest/guest) and `rabbitmqctl` (run as root):
//! each test gets a virtual host of its own ([`RabbitScope`]: `rabbitmqctl add_vhost`
//! and `set_permissions`), deleted when the test ends, also when it fails. Without
//! them the tests are skipped with a note on stderr.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sprout::backend::ResultBackend;
use sprout::backend::rpc::RpcBackend;
use sprout::broker::Broker;
use sprout::broker::amqp::AmqpBroker;
use sprout::model::{Job, State};
use sprout::storage::amqp::AmqpOptions;

use crate::backend_conformance::{BackendCaps, BackendUnderTest};
use crate::broker_conformance::{
    BrokerUnderTest, LONG_LEASE, PriorityOrder, fetch_now, fetch_wait, fresh_queue, ids, job, tags,
};
use crate::celery_redis::{
    check, client_check, python_worker_with, queue, send, sprout_worker_with, venv,
};
use crate::support::{self, RedisScope, Workdir, redis_db_test, repo_root};

/// Where the tests find RabbitMQ.
pub const RABBIT_ADDR: &str = "127.0.0.1:5672";

/// A virtual host lent to one test, deleted (with everything in it) when dropped — at
/// the end of the test or while a failed assertion unwinds.
pub struct RabbitScope {
    vhost: String,
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A fresh virtual host for `test`; `None` (after saying why `test` is skipped) when
/// RabbitMQ or `rabbitmqctl` is not there.
pub fn rabbit_test(test: &str) -> Option<RabbitScope> {
    let addr = RABBIT_ADDR.parse().expect("socket address");
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
        eprintln!("skipping {test}: no RabbitMQ at {RABBIT_ADDR}");
        return None;
    }
    let vhost = format!("sprout-test-{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = rabbitmqctl(&["add_vhost", &vhost]) {
        eprintln!("skipping {test}: cannot create a RabbitMQ vhost: {e}");
        return None;
    }
    let scope = RabbitScope { vhost };
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        &scope.vhost,
        "guest",
        ".*",
        ".*",
        ".*",
    ])
    .expect("grant guest the test vhost");
    Some(scope)
}

impl RabbitScope {
    /// The broker URL of the vhost (Sprout's keys may follow after `?`).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{RABBIT_ADDR}/{}", self.vhost)
    }

    /// The vhost's name.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Closes every client connection to the vhost, as a network failure or a broker
    /// restart would.
    pub fn close_connections(&self) {
        rabbitmqctl(&[
            "close_all_connections",
            "--vhost",
            &self.vhost,
            "sprout test: connection closed on purpose",
        ])
        .expect("close connections");
    }

    /// `(ready, unacknowledged)` messages of `queue`.
    pub fn depth(&self, queue: &str) -> (u64, u64) {
        let out = Command::new("rabbitmqctl")
            .args(["list_queues", "-q", "--no-table-headers", "-p", &self.vhost])
            .args(["name", "messages_ready", "messages_unacknowledged"])
            .output()
            .expect("rabbitmqctl list_queues");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[0] == queue)
                    .then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
            })
            .next()
            .unwrap_or((0, 0))
    }
}

impl Drop for RabbitScope {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.vhost]) {
            eprintln!(
                "warning: could not delete the test vhost {}: {e}",
                self.vhost
            );
        }
    }
}

async fn amqp(url: &str) -> AmqpBroker {
    AmqpBroker::connect(AmqpOptions::from_url(url).expect("AMQP URL"))
        .await
        .expect("connect to RabbitMQ")
}

/// The broker suite's runner: two brokers (two connections) on one vhost, with
/// priority queues (`max_priority=10`: RabbitMQ serves the highest first).
pub async fn under_test(test: &str) -> Option<BrokerUnderTest> {
    let scope = rabbit_test(test)?;
    let url = format!("{}?max_priority=10", scope.url());
    let (one, two) = (amqp(&url).await, amqp(&url).await);
    Some(BrokerUnderTest {
        broker: Arc::new(one),
        other: Arc::new(two),
        priority: PriorityOrder::HighestFirst,
        keep: Box::new(scope),
    })
}

/// The backend suite's runner for `rpc://`: results sent to this process's reply queue,
/// read by every handle of the process.
pub async fn backend_under_test(test: &str) -> Option<BackendUnderTest> {
    let scope = rabbit_test(test)?;
    let opts = AmqpOptions::from_url(&scope.url()).expect("AMQP URL");
    let one = RpcBackend::connect(opts.clone(), None).await.expect("rpc");
    let two = RpcBackend::connect(opts, None).await.expect("rpc");
    Some(BackendUnderTest {
        backend: Arc::new(one),
        other: Arc::new(two),
        caps: BackendCaps {
            lists_results: false,
            expires_by_sweep: false,
            success_is_final: false,
        },
        keep: Box::new(scope),
    })
}

/// A delivery taken from a connection that then drops is redelivered (flag set) to the
/// next fetch; acking the stale delivery afterwards is a harmless no-op, never an ack
/// of some other message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_loss_redelivers_and_never_acks_twice() {
    let Some(scope) = rabbit_test("connection_loss_redelivers_and_never_acks_twice") else {
        return;
    };
    let broker = amqp(&scope.url()).await;
    let q = fresh_queue("drop");
    let sent: Vec<Job> = (0..3).map(|n| job(&q, n)).collect();
    broker.publish(&sent).await.unwrap();
    let first = fetch_now(&broker, &q, 1).await;
    assert_eq!(ids(&first), [sent[0].id.as_str()]);

    scope.close_connections();
    // The next calls reconnect (the worker's loop retries connection errors).
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.len() < 3 && Instant::now() < deadline {
        match broker
            .fetch(
                std::slice::from_ref(&q),
                10,
                LONG_LEASE,
                Duration::from_millis(200),
            )
            .await
        {
            Ok(got) => again.extend(got),
            Err(e) => {
                assert!(e.is_connection_error(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let got: HashSet<String> = ids(&again).into_iter().collect();
    let want: HashSet<String> = sent.iter().map(|j| j.id.clone()).collect();
    assert_eq!(got, want, "every message comes back on the new connection");
    let first_again = again
        .iter()
        .find(|d| d.job.as_ref().unwrap().id == sent[0].id)
        .unwrap();
    assert_eq!(first_again.delivery_count, 2, "flagged redelivered");

    // The stale tag: nothing happens (acking it on the new channel would close it).
    broker.ack(&tags(&first)).await.unwrap();
    broker.ack(&tags(&again)).await.unwrap();
    assert!(fetch_now(&broker, &q, 10).await.is_empty());
    assert_eq!(scope.depth(&q), (0, 0), "nothing left, nothing unacked");
}

/// Sprout declares queues exactly as Celery (kombu over py-amqp) does: whichever side
/// declares first, the other's declaration is accepted, for classic, priority and
/// quorum queues; and a mismatch is refused with a message naming the URL keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_agree_with_kombu() {
    let Some(scope) = rabbit_test("declarations_agree_with_kombu") else {
        return;
    };
    venv();
    let kombu_declare = |queue: &str, args: &str| {
        let script = format!(
            "from kombu import Connection, Exchange, Queue\n\
             with Connection({url:?}) as c:\n    \
             q = Queue({queue:?}, Exchange({queue:?}, type='direct'), routing_key={queue:?}, \
             queue_arguments={args})\n    q(c.default_channel).declare()\n",
            url = scope.url(),
        );
        let out = Command::new(venv().join("bin/python"))
            .args(["-c", &script])
            .output()
            .expect("run python");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (key, args) in [
        ("", "None"),
        ("?max_priority=10", "{'x-max-priority': 10}"),
        ("?queue_type=quorum", "{'x-queue-type': 'quorum'}"),
    ] {
        let url = format!("{}{key}", scope.url());
        // Python first, then Sprout.
        let q = fresh_queue("py-first");
        let (ok, err) = kombu_declare(&q, args);
        assert!(ok, "kombu: {err}");
        let broker = amqp(&url).await;
        broker
            .publish(&[job(&q, 1)])
            .await
            .expect("Sprout after kombu");
        // Sprout first, then Python.
        let q = fresh_queue("sprout-first");
        broker.publish(&[job(&q, 1)]).await.unwrap();
        let (ok, err) = kombu_declare(&q, args);
        assert!(ok, "kombu after Sprout ({key}): {err}");
    }
    // A queue first declared with a priority, then by Sprout without: refused, clearly.
    let q = fresh_queue("mismatch");
    assert!(kombu_declare(&q, "{'x-max-priority': 10}").0);
    let err = amqp(&scope.url())
        .await
        .publish(&[job(&q, 1)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_priority"), "{err}");
}

/// A real Celery client (py-amqp) against the real Sprout worker on RabbitMQ, results
/// in Redis: every scenario of `client_check.py` and the canvases; then with `rpc://`
/// results, the scenarios that need no stored results.
#[test]
fn celery_client_against_sprout_worker_on_rabbitmq() {
    let Some(redis) = redis_db_test("celery_client_against_sprout_worker_on_rabbitmq") else {
        return;
    };
    let Some(rabbit) = rabbit_test("celery_client_against_sprout_worker_on_rabbitmq") else {
        return;
    };
    venv();
    let broker = rabbit.url();
    let results = redis.sprout_url();
    let q = queue("amqp-client");
    let worker = sprout_worker_with(&broker, &q, &["--result-backend", &results]);
    let with_backend = |n: usize, args: &[&str]| {
        let mut all = vec!["--backend", results.as_str()];
        all.extend_from_slice(args);
        check(&broker, &q, n, &all);
    };
    with_backend(20, &["--task", "add", "--args", "[2, 3]", "--vary"]);
    with_backend(
        5,
        &["--task", "echo", "--args", r#"[{"a": [1, "é", null]}]"#],
    );
    with_backend(
        3,
        &[
            "--task",
            "fail",
            "--args",
            r#"["boom"]"#,
            "--expect-error",
            "ValueError",
        ],
    );
    with_backend(3, &["--chain", "add:[1, 2]", "add:[3]", "mul:[2]"]);
    with_backend(
        2,
        &[
            "--chain",
            "add:[1, 1]",
            r#"fail!:["mid"]"#,
            "add:[5]",
            "--expect-error",
            "ValueError",
        ],
    );
    with_backend(
        1,
        &["--task", "no_such_task", "--expect-error", "NotRegistered"],
    );
    let out = Command::new(venv().join("bin/python"))
        .arg(repo_root().join("tests/python/canvas_check.py"))
        .args([broker.as_str(), q.as_str()])
        .env("SPROUT_TEST_RESULTS", &results)
        .output()
        .expect("run canvas_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l.trim() == "4 passed, 0 failed"),
        "canvas_check.py:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(worker);

    // rpc://: results as messages to the client's reply queue.
    let q = queue("amqp-rpc");
    let _worker = sprout_worker_with(&broker, &q, &["--result-backend", "rpc://"]);
    let rpc = |n: usize, args: &[&str]| {
        let mut all = vec!["--backend", "rpc://"];
        all.extend_from_slice(args);
        check(&broker, &q, n, &all);
    };
    rpc(20, &["--task", "add", "--args", "[2, 3]", "--vary"]);
    rpc(
        5,
        &["--task", "echo", "--args", r#"[{"a": [1, "é", null]}]"#],
    );
    rpc(
        3,
        &[
            "--task",
            "fail",
            "--args",
            r#"["boom"]"#,
            "--expect-error",
            "ValueError",
        ],
    );
    rpc(
        1,
        &["--task", "no_such_task", "--expect-error", "NotRegistered"],
    );
    let _ = client_check;
}

/// What `sprout send --broker amqp://…` publishes, a real Celery worker (solo pool)
/// runs; `sprout send --wait` reads the results from Redis, and over `rpc://`.
#[test]
fn sprout_send_to_celery_worker_on_rabbitmq() {
    let Some(redis) = redis_db_test("sprout_send_to_celery_worker_on_rabbitmq") else {
        return;
    };
    let Some(rabbit) = rabbit_test("sprout_send_to_celery_worker_on_rabbitmq") else {
        return;
    };
    venv();
    let broker = rabbit.url();
    let results = redis.sprout_url();
    let q = queue("amqp-send");
    let _worker = python_worker_with(&broker, &q, &[("SPROUT_TEST_RESULTS", &results)]);
    let send_to = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--result-backend", &results]);
        send(&broker, &q, &all)
    };
    let out = send_to(&["add", "[2, 3]"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "5");
    let out = send_to(&["echo", r#"[{"k": [1, "é"]}]"#]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"k":[1,"é"]}"#
    );
    let start = Instant::now();
    let out = send_to(&["add", "[1, 1]", "--countdown", "1.5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "ran before its eta"
    );
    let out = send_to(&["fail", r#"["nope"]"#]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("ValueError: nope"),
        "{stderr}"
    );
}

/// A Python Celery worker and a Sprout worker consume the same RabbitMQ queue side by
/// side: every job is done once (results in Redis), neither logs an error.
#[test]
fn python_and_sprout_workers_share_a_queue() {
    let Some(redis) = redis_db_test("python_and_sprout_workers_share_a_queue") else {
        return;
    };
    let Some(rabbit) = rabbit_test("python_and_sprout_workers_share_a_queue") else {
        return;
    };
    venv();
    let broker = rabbit.url();
    let results = redis.sprout_url();
    let q = queue("amqp-shared");
    let python = python_worker_with(&broker, &q, &[("SPROUT_TEST_RESULTS", &results)]);
    let sprout = sprout_worker_with(&broker, &q, &["--result-backend", &results]);
    check(
        &broker,
        &q,
        200,
        &[
            "--backend",
            &results,
            "--task",
            "add",
            "--args",
            "[2, 3]",
            "--vary",
        ],
    );
    drop(sprout);
    drop(python);
    for name in [format!("py-{q}"), q.clone()] {
        let log = std::fs::read_to_string(crate::celery_redis::log_path(&name)).unwrap_or_default();
        for bad in ["ERROR", "PRECONDITION_FAILED", "Traceback", "panicked"] {
            assert!(!log.contains(bad), "{name} logged {bad}:\n{log}");
        }
    }
}

/// Connections closed under load (`rabbitmqctl close_all_connections` on the test
/// vhost, three times while 6000 jobs drain): every job ends with its result, the
/// queue ends empty with nothing unacknowledged, and the worker never acked a delivery
/// on the wrong channel (RabbitMQ would close it with PRECONDITION_FAILED).
#[test]
fn connections_closed_under_load_lose_nothing() {
    let Some(redis) = redis_db_test("connections_closed_under_load_lose_nothing") else {
        return;
    };
    let Some(rabbit) = rabbit_test("connections_closed_under_load_lose_nothing") else {
        return;
    };
    const JOBS: usize = 6000;
    let broker = rabbit.url();
    let results = redis.sprout_url();
    let q = queue("amqp-close");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let jobs: Vec<Job> = (0..JOBS)
        .map(|n| {
            let mut j = Job::new("add", vec![n.into(), 1.into()], Default::default());
            j.queue = q.clone();
            j
        })
        .collect();
    rt.block_on(async {
        let producer = amqp(&broker).await;
        for chunk in jobs.chunks(500) {
            producer.publish(chunk).await.unwrap();
        }
    });
    let mut worker = sprout_worker_with(&broker, &q, &["--result-backend", &results]);
    let backend = rt.block_on(async {
        sprout::connect::backend(&results, None)
            .await
            .expect("redis backend")
    });
    let done = |backend: &Arc<dyn ResultBackend>| -> usize {
        rt.block_on(async {
            let mut n = 0;
            for j in &jobs {
                if backend
                    .get(&j.id)
                    .await
                    .unwrap()
                    .is_some_and(|r| r.state == State::Success)
                {
                    n += 1;
                }
            }
            n
        })
    };
    for round in 0..3 {
        let start = Instant::now();
        while done(&backend) < JOBS * (round + 1) / 4 && start.elapsed() < Duration::from_secs(60) {
            assert!(worker.is_running(), "the worker exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        rabbit.close_connections();
    }
    let start = Instant::now();
    while done(&backend) < JOBS && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(done(&backend), JOBS, "every job has its result");
    for j in jobs.iter().step_by(97) {
        let r = rt.block_on(backend.get(&j.id)).unwrap().unwrap();
        assert_eq!(
            r.result,
            Some(serde_json::json!(j.args[0].as_u64().unwrap() + 1))
        );
    }
    let settled =
        crate::support::wait_until(Duration::from_secs(10), || rabbit.depth(&q) == (0, 0));
    assert!(
        settled,
        "queue left with {:?} (ready, unacked)",
        rabbit.depth(&q)
    );
    drop(worker);
    let log = std::fs::read_to_string(crate::celery_redis::log_path(&q)).unwrap_or_default();
    assert!(
        log.contains("reconnecting"),
        "the worker saw the connections close:\n{log}"
    );
    for bad in ["PRECONDITION_FAILED", "unknown delivery tag", "panicked"] {
        assert!(!log.contains(bad), "worker logged {bad}:\n{log}");
    }
    let _: &RedisScope = &redis;
}

/// A zero-wait fetch sees what was published just before, and `fetch_wait` returns
/// early when something arrives (the AMQP broker is push-based).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_sees_fresh_publishes() {
    let Some(scope) = rabbit_test("push_consumer_sees_fresh_publishes") else {
        return;
    };
    let broker = amqp(&scope.url()).await;
    let q = fresh_queue("fresh");
    // Subscribed first (an empty fetch), then published: still seen at once.
    assert!(fetch_now(&broker, &q, 10).await.is_empty());
    for n in 0..20 {
        let j = job(&q, n);
        broker.publish(std::slice::from_ref(&j)).await.unwrap();
        let got = fetch_wait(&broker, &q, 10, LONG_LEASE, Duration::ZERO).await;
        assert_eq!(ids(&got), [j.id.as_str()]);
        broker.ack(&tags(&got)).await.unwrap();
    }
}

/// `sprout status` on a vhost where nothing was declared yet: "(no queues)" and exit 0,
/// without an error in the log (learning that `celery` does not exist closes a channel,
/// which the AMQP client would otherwise log at ERROR); with `--log` naming lapin, its
/// log is back.
#[test]
fn status_of_an_empty_vhost_is_no_queues_without_errors() {
    let Some(rabbit) = rabbit_test("status_of_an_empty_vhost_is_no_queues_without_errors") else {
        return;
    };
    let dir = Workdir::new();
    let broker = rabbit.url();
    let out = dir.run(&["status", "--broker", &broker]);
    let (stdout, stderr) = (support::stdout(&out), support::stderr(&out));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("(no queues)"), "{stdout}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let out = dir.run(&["--log", "info,lapin=error", "status", "--broker", &broker]);
    let stderr = support::stderr(&out);
    assert!(
        out.status.success() && stderr.contains("NOT_FOUND"),
        "{stderr}"
    );
}
