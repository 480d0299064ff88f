//! Remote control (Celery's inspect/control, kombu's pidbox) of a real `sprout worker`:
//! from the real `celery` CLI and `app.control` in Python on Redis, and from `sprout
//! inspect` / `sprout control` on Redis and on the SQLite file. A running hog is stopped
//! alone (`revoke --terminate`) while short jobs on the same worker succeed, on the async
//! and the prefork pool; revoked ids survive a restart with `--statedb`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sprout::broker::redis::RedisMailbox;
use sprout::celery::control::ControlRequest;
use sprout::client::Client;
use sprout::model::{Job, State};

use crate::celery_redis::venv;
use crate::support::{self, Workdir, WorkerProcess, redis_db_test, redis_test, wait_until};

/// A task directory with a hog that runs until stopped (a minute of wall clock, a
/// budget it never spends) and `math` (`add`) for short jobs.
fn hog_tasks(dir: &Workdir) -> std::path::PathBuf {
    let tasks = dir.path("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::copy(support::task("hog"), tasks.join("hog.wasm")).unwrap();
    std::fs::write(
        tasks.join("hog.toml"),
        "[limits]\nfuel = 1_000_000_000_000_000\ntime_limit = 60.0\n",
    )
    .unwrap();
    std::fs::copy(support::task("math"), tasks.join("math.wasm")).unwrap();
    let manifest = support::task("math").with_extension("toml");
    std::fs::copy(manifest, tasks.join("math.toml")).unwrap();
    tasks
}

fn queue(what: &str) -> String {
    format!("control-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// `sprout worker` on `broker`, named `name`, consuming `queue`.
fn worker(dir: &Workdir, broker: &str, name: &str, queue: &str, extra: &[&str]) -> WorkerProcess {
    let tasks = hog_tasks(dir);
    let mut args = vec!["--broker", broker, "-n", name, "-Q", queue];
    args.extend_from_slice(extra);
    dir.worker_logged(&tasks, &args)
}

/// `sprout inspect|control ARGS` against `broker`.
fn sprout(dir: &Workdir, broker: &str, args: &[&str]) -> Output {
    dir.sprout(args)
        .env("SPROUT_BROKER", broker)
        .output()
        .expect("run sprout")
}

/// `sprout inspect VERB --json -d NAME`, as JSON; `Value::Null` when `name` did not reply.
fn inspect_json(dir: &Workdir, broker: &str, name: &str, verb: &[&str]) -> Value {
    let mut args = vec!["inspect"];
    args.extend_from_slice(verb);
    args.extend_from_slice(&["--json", "-t", "1", "-d", name]);
    let out = sprout(dir, broker, &args);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits until `name` answers ping through `sprout inspect`.
fn wait_for_worker(dir: &Workdir, broker: &str, name: &str, log: impl Fn() -> String) {
    assert!(
        wait_until(Duration::from_secs(30), || {
            inspect_json(dir, broker, name, &["ping"])[name] == json!({"ok": "pong"})
        }),
        "worker {name} never answered ping; its log:\n{}",
        log()
    );
}

/// Sends `task(args)` to `queue`; returns the id.
async fn send(client: &Client, task: &str, args: Value, queue: &str) -> String {
    let Value::Array(args) = args else { panic!() };
    let mut job = Job::new(task, args, Default::default());
    job.queue = queue.to_string();
    client.send(job).await.unwrap()
}

/// Waits until `id` is active on `name`.
fn wait_active(dir: &Workdir, broker: &str, name: &str, id: &str) {
    assert!(
        wait_until(Duration::from_secs(15), || {
            inspect_json(dir, broker, name, &["active"])[name]
                .as_array()
                .is_some_and(|a| a.iter().any(|j| j["id"] == id))
        }),
        "job {id} never showed as active; worker log:\n{}",
        dir.worker_log()
    );
}

/// Waits up to `within` for `id`'s final state.
async fn final_state(
    client: &Client,
    id: &str,
    within: Duration,
) -> Option<sprout::model::ResultRecord> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = client.result(id).await.unwrap()
            && r.state.is_terminal()
        {
            return Some(r);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A hog terminated through `sprout control revoke --terminate` ends REVOKED within 2 s
/// with the reason, while 100 short jobs sent beside it all succeed; `inspect active`,
/// `query_task`, `revoked`, `stats` and `pool_grow` answer in Celery's shapes.
async fn terminate_through_sprout_control(
    broker: &str,
    dir: &Workdir,
    extra: &[&str],
) -> (WorkerProcess, String) {
    let q = queue("sprout");
    let name = format!("ctl-{}@test", uuid::Uuid::new_v4().simple());
    let worker = worker(dir, broker, &name, &q, extra);
    wait_for_worker(dir, broker, &name, || dir.worker_log());
    let client = Client::connect(broker).await.unwrap();

    let registered = inspect_json(dir, broker, &name, &["registered"]);
    let names = registered[&name].as_array().expect("registered list");
    assert!(
        names.contains(&json!("hog")) && names.contains(&json!("add")),
        "{registered}"
    );

    let hog = send(&client, "hog", json!([]), &q).await;
    wait_active(dir, broker, &name, &hog);
    let query = inspect_json(dir, broker, &name, &["query_task", &hog]);
    assert_eq!(query[&name][&hog][0], "active", "{query}");

    let mut shorts = Vec::new();
    for i in 0..100 {
        shorts.push(send(&client, "add", json!([i, 1]), &q).await);
    }
    let t0 = Instant::now();
    let out = sprout(
        dir,
        broker,
        &[
            "control",
            "revoke",
            "--terminate",
            &hog,
            "--json",
            "-d",
            &name,
        ],
    );
    assert!(out.status.success(), "{}", support::stderr(&out));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply[&name], json!({"ok": format!("terminate: {hog}")}));
    let record = final_state(&client, &hog, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| {
            panic!(
                "hog not REVOKED 2 s after the terminate; log:\n{}",
                dir.worker_log()
            )
        });
    eprintln!(
        "terminate → REVOKED stored (incl. the CLI's start): {:?}",
        t0.elapsed()
    );
    assert_eq!(record.state, State::Revoked);
    let error = record.error.expect("revoked with a reason");
    assert_eq!(error.kind, "TaskRevokedError");
    assert_eq!(error.message, "terminated");
    for (i, id) in shorts.iter().enumerate() {
        let r = final_state(&client, id, Duration::from_secs(30))
            .await
            .expect("short job done");
        assert_eq!(r.state, State::Success, "{r:?}");
        assert_eq!(r.result, Some(json!(i + 1)));
    }
    let revoked = inspect_json(dir, broker, &name, &["revoked"]);
    assert!(
        revoked[&name].as_array().unwrap().contains(&json!(hog)),
        "{revoked}"
    );
    let active = inspect_json(dir, broker, &name, &["active"]);
    assert_eq!(active[&name], json!([]), "{active}");
    let stats = inspect_json(dir, broker, &name, &["stats"]);
    assert_eq!(stats[&name]["total"]["add"], 100, "{stats}");
    (worker, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sprout_control_terminates_one_job_on_sqlite() {
    let dir = Workdir::new();
    let broker = dir.broker();
    let (_worker, name) = terminate_through_sprout_control(&broker, &dir, &["-c", "4"]).await;
    // pool_grow is visible in stats.
    let stats = inspect_json(&dir, &broker, &name, &["stats"]);
    assert_eq!(stats[&name]["pool"]["max-concurrency"], 4);
    let out = sprout(&dir, &broker, &["control", "pool_grow", "10", "--json"]);
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply[&name], json!({"ok": "pool will grow"}));
    let stats = inspect_json(&dir, &broker, &name, &["stats"]);
    assert_eq!(stats[&name]["pool"]["max-concurrency"], 14, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sprout_control_terminates_one_job_on_redis() {
    let Some(redis) = redis_test("sprout_control_terminates_one_job_on_redis") else {
        return;
    };
    let dir = Workdir::new();
    let (_worker, _) =
        terminate_through_sprout_control(&redis.sprout_url(), &dir, &["-c", "4"]).await;
}

/// On the prefork pool, a terminate stops only that job: two hogs share one child
/// (`--child-concurrency 2`); one is terminated, the other keeps running in the same
/// child, which is not replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefork_terminate_stops_one_job_of_a_child() {
    let dir = Workdir::new();
    let broker = dir.broker();
    let q = queue("prefork");
    let name = "prefork@test";
    let _worker = worker(
        &dir,
        &broker,
        name,
        &q,
        &["-P", "prefork", "-c", "1", "--child-concurrency", "2"],
    );
    wait_for_worker(&dir, &broker, name, || dir.worker_log());
    let client = Client::connect(&broker).await.unwrap();
    let first = send(&client, "hog", json!([]), &q).await;
    let second = send(&client, "hog", json!([]), &q).await;
    wait_active(&dir, &broker, name, &first);
    wait_active(&dir, &broker, name, &second);

    let out = sprout(&dir, &broker, &["control", "revoke", "--terminate", &first]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let record = final_state(&client, &first, Duration::from_secs(2))
        .await
        .expect("first hog REVOKED within 2 s");
    assert_eq!(record.state, State::Revoked);
    // The neighbour still runs, and no child was lost or replaced.
    std::thread::sleep(Duration::from_millis(300));
    let active = inspect_json(&dir, &broker, name, &["active"]);
    let ids: Vec<&Value> = active[name]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["id"])
        .collect();
    assert_eq!(ids, vec![&json!(second)], "{active}");
    assert!(
        client
            .result(&second)
            .await
            .unwrap()
            .is_none_or(|r| !r.state.is_terminal())
    );
    let log = dir.worker_log();
    assert!(
        !log.contains("WorkerLost") && !log.contains("killing child"),
        "{log}"
    );
    // Short jobs run beside the remaining hog.
    let short = send(&client, "add", json!([2, 3]), &q).await;
    let r = final_state(&client, &short, Duration::from_secs(10))
        .await
        .expect("short job");
    assert_eq!(r.result, Some(json!(5)));
    let out = sprout(&dir, &broker, &["control", "terminate", "KILL", &second]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let record = final_state(&client, &second, Duration::from_secs(2))
        .await
        .expect("second hog REVOKED");
    assert_eq!(record.error.unwrap().message, "terminated");
}

/// Revoked ids are kept in `--statedb` across a restart: a job revoked before it was
/// delivered, published while the worker was down, is not run by the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statedb_keeps_revoked_ids_across_restarts() {
    let dir = Workdir::new();
    let broker = dir.broker();
    let q = queue("statedb");
    let state = dir.path("worker.state").display().to_string();
    let name = "state@test";
    let id = uuid::Uuid::new_v4().to_string();
    {
        let mut w = worker(&dir, &broker, name, &q, &["--statedb", &state]);
        wait_for_worker(&dir, &broker, name, || dir.worker_log());
        let out = sprout(&dir, &broker, &["control", "revoke", &id, "--json"]);
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            reply[name],
            json!({"ok": format!("tasks {{'{id}'}} flagged as revoked")})
        );
        w.signal(libc::SIGTERM);
        w.wait(Duration::from_secs(20));
    }
    let client = Client::connect(&broker).await.unwrap();
    let mut job = Job::new("add", vec![json!(1), json!(2)], Default::default());
    job.id = id.clone();
    job.queue = q.clone();
    client.send(job).await.unwrap();
    let ran = send(&client, "add", json!([2, 2]), &q).await;
    let _w = worker(&dir, &broker, name, &q, &["--statedb", &state]);
    let record = final_state(&client, &id, Duration::from_secs(30))
        .await
        .expect("settled");
    assert_eq!(record.state, State::Revoked, "{record:?}");
    assert_eq!(record.error.unwrap().message, "revoked");
    let other = final_state(&client, &ran, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(other.state, State::Success);
    let revoked = inspect_json(&dir, &broker, name, &["revoked"]);
    assert_eq!(revoked[name], json!([id]));

    // A corrupt state file is a usage error naming it.
    std::fs::write(&state, "not json").unwrap();
    let out = dir.run(&["worker", "--statedb", &state, "-Q", &q]);
    assert_eq!(out.status.code(), Some(2), "{}", support::stderr(&out));
    assert!(support::stderr(&out).contains("worker.state"));
}

/// Usage errors of `sprout inspect` / `sprout control` exit 2 and say why; no worker
/// replying exits 1.
#[test]
fn control_cli_usage_errors() {
    let dir = Workdir::new();
    for args in [
        &["inspect", "nope"][..],
        &["control", "ping"],
        &["inspect", "query_task"],
        &["control", "revoke"],
        &["control", "pool_grow", "0"],
        &["control", "pool_grow", "x"],
        &["control", "autoscale", "1"],
        &["inspect", "active", "--terminate"],
        &["inspect", "ping", "-t", "0"],
        &["inspect", "ping", "-t", "soon"],
    ] {
        let out = dir.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            support::stderr(&out)
        );
    }
    let out = dir.run(&["inspect", "ping", "-t", "0.2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(support::stderr(&out).contains("No nodes replied"));
}

fn celery(broker: &str, args: &[&str]) -> Output {
    Command::new(venv().join("bin/celery"))
        .arg("-b")
        .arg(broker)
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run celery")
}

/// The real `celery` CLI against a Sprout worker on Redis: `inspect ping` and
/// `registered` list it, `inspect active` shows a running hog with its id, and
/// `control terminate SIGTERM <id>` makes it REVOKED within 2 s while 100 short jobs
/// succeed. With every slot busy with hogs, ping still answers — within 100 ms through
/// the same pidbox (measured with Sprout's client, which has no Python start-up cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_cli_controls_a_sprout_worker() {
    let Some(redis) = redis_db_test("celery_cli_controls_a_sprout_worker") else {
        return;
    };
    venv();
    let broker = redis.sprout_url();
    let dir = Workdir::new();
    let q = queue("celery");
    let name = "celerycli@test";
    let _worker = worker(&dir, &broker, name, &q, &["-c", "2"]);
    wait_for_worker(&dir, &broker, name, || dir.worker_log());

    let out = celery(&broker, &["inspect", "ping", "-t", "2"]);
    let text = support::stdout(&out);
    assert!(
        text.contains(&format!("->  {name}: OK")) && text.contains("pong"),
        "{text}\n{}",
        support::stderr(&out)
    );
    let out = celery(&broker, &["inspect", "registered", "-t", "2"]);
    let text = support::stdout(&out);
    assert!(text.contains("* hog") && text.contains("* add"), "{text}");

    let client = Client::connect(&broker).await.unwrap();
    let hog = send(&client, "hog", json!([]), &q).await;
    wait_active(&dir, &broker, name, &hog);
    let out = celery(&broker, &["inspect", "active", "-t", "2", "-j"]);
    let active: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", support::stdout(&out)));
    assert_eq!(active[name][0]["id"], hog, "{active}");
    assert_eq!(active[name][0]["name"], "hog", "{active}");

    let mut shorts = Vec::new();
    for i in 0..100 {
        shorts.push(send(&client, "add", json!([i, i]), &q).await);
    }
    let out = celery(
        &broker,
        &["control", "terminate", "SIGTERM", &hog, "-t", "2"],
    );
    let text = support::stdout(&out);
    assert!(
        text.contains(&format!("terminate: {hog}")),
        "{text}\n{}",
        support::stderr(&out)
    );
    let record = final_state(&client, &hog, Duration::from_secs(2))
        .await
        .expect("hog REVOKED within 2 s of the CLI's reply");
    assert_eq!(record.state, State::Revoked);
    for (i, id) in shorts.iter().enumerate() {
        let r = final_state(&client, id, Duration::from_secs(30))
            .await
            .expect("short job");
        assert_eq!(r.result, Some(json!(2 * i)), "{r:?}");
    }

    // Every slot busy with hogs: ping still answers.
    let hogs = [
        send(&client, "hog", json!([]), &q).await,
        send(&client, "hog", json!([]), &q).await,
    ];
    for h in &hogs {
        wait_active(&dir, &broker, name, h);
    }
    let out = celery(&broker, &["inspect", "ping", "-t", "2"]);
    assert!(
        support::stdout(&out).contains("pong"),
        "{}",
        support::stdout(&out)
    );
    let mailbox =
        RedisMailbox::new(sprout::storage::redis::RedisOptions::from_url(&broker).unwrap())
            .unwrap();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let request = ControlRequest::new("ping", Default::default(), Some(vec![name.into()]));
        let replies = sprout::broker::mailbox::Mailbox::call(
            &*mailbox,
            request,
            Duration::from_secs(2),
            Some(1),
        )
        .await
        .unwrap();
        times.push(t0.elapsed());
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].reply, json!({"ok": "pong"}));
    }
    times.sort();
    eprintln!("ping with every slot running a hog: {times:?}");
    assert!(
        times[2] < Duration::from_millis(100),
        "median ping {:?}",
        times[2]
    );
    let out = sprout(
        &dir,
        &broker,
        &["control", "revoke", "--terminate", &hogs[0], &hogs[1]],
    );
    assert!(out.status.success());
}

/// `app.control` from Python: ping, registered, active, query_task, revoke with
/// terminate (REVOKED within 2 s while 100 short jobs succeed), revoked, pool_grow seen
/// in stats, pool_shrink, rate_limit, time_limit, enable_events, active_queues,
/// add_consumer, and an unknown command (tests/python/control_check.py).
#[test]
fn python_app_control_against_a_sprout_worker() {
    let Some(redis) = redis_db_test("python_app_control_against_a_sprout_worker") else {
        return;
    };
    let broker = redis.sprout_url();
    let dir = Workdir::new();
    let q = queue("python");
    let name = "pyctl@test";
    let _worker = worker(&dir, &broker, name, &q, &["-c", "4"]);
    let script = support::repo_root().join("tests/python/control_check.py");
    let out = Command::new(venv().join("bin/python"))
        .arg(&script)
        .args(["--broker", &broker, "--queue", &q, "--worker", name])
        .current_dir(Path::new(&support::repo_root()).join("tests/python"))
        .output()
        .expect("run control_check.py");
    let stdout = support::stdout(&out);
    assert!(
        out.status.success() && stdout.contains("control_check: 17 passed"),
        "{stdout}\n{}\nworker log:\n{}",
        support::stderr(&out),
        dir.worker_log()
    );
}

/// Undoes redis-cli MONITOR's quoting of one argument (`\"`, `\\`, `\xNN`, `\n`, …).
fn unquote(arg: &str) -> Vec<u8> {
    let bytes = arg.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            i += 1;
            match bytes[i] {
                b'x' => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                other => out.push(other),
            }
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    out
}

/// The quoted arguments of one MONITOR line.
fn monitor_args(line: &str) -> Vec<Vec<u8>> {
    let mut args = Vec::new();
    let mut rest = line.split_once(']').map_or("", |(_, r)| r);
    while let Some(start) = rest.find('"') {
        let body = &rest[start + 1..];
        let mut end = 0;
        let b = body.as_bytes();
        while end < b.len() && b[end] != b'"' {
            end += if b[end] == b'\\' { 2 } else { 1 };
        }
        args.push(unquote(&body[..end]));
        rest = &body[(end + 1).min(body.len())..];
    }
    args
}

/// Every pidbox request and reply in the vendored captures of real Celery traffic
/// (`tests/celery/captures/`) decodes, and Sprout's own replies have the same envelope
/// as a Celery worker's.
#[test]
fn captured_pidbox_traffic_decodes() {
    let dir = support::repo_root().join("tests/celery/captures");
    let (mut requests, mut replies) = (Vec::new(), 0);
    for name in ["monitor_control_events.txt", "monitor_control_prefork.txt"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let args = monitor_args(line);
            let (Some(cmd), Some(key), Some(body)) = (args.first(), args.get(1), args.get(2))
            else {
                continue;
            };
            let key = String::from_utf8_lossy(key);
            if cmd == b"PUBLISH" && key.ends_with(".celery.pidbox") {
                let req = sprout::celery::control::decode_request(body, 0.0)
                    .unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
                assert!(req.reply_to.is_some() && req.ticket.is_some(), "{req:?}");
                requests.push(req.method);
            } else if cmd == b"LPUSH" && key.ends_with(".reply.celery.pidbox") {
                let reply = sprout::celery::control::decode_reply(body)
                    .unwrap_or_else(|e| panic!("{name}: {e}: {line}"));
                let ours = sprout::celery::control::encode_reply(
                    &reply.hostname,
                    reply.ticket.as_deref(),
                    key.trim_end_matches(".reply.celery.pidbox"),
                    reply.reply.clone(),
                    1,
                );
                let (theirs, ours): (Value, Value) = (
                    serde_json::from_slice(body).unwrap(),
                    serde_json::from_slice(&ours).unwrap(),
                );
                for field in ["content-encoding", "content-type"] {
                    assert_eq!(theirs[field], ours[field]);
                }
                let keys = |v: &Value, at: &str| -> Vec<String> {
                    v[at].as_object().unwrap().keys().cloned().collect()
                };
                assert_eq!(keys(&theirs, "properties"), keys(&ours, "properties"));
                assert_eq!(keys(&theirs, "headers"), keys(&ours, "headers"));
                assert_eq!(
                    theirs["properties"]["delivery_info"],
                    ours["properties"]["delivery_info"]
                );
                replies += 1;
            }
        }
    }
    for method in [
        "ping",
        "active",
        "revoke",
        "terminate",
        "registered",
        "stats",
        "pool_grow",
        "query_task",
    ] {
        assert!(
            requests.iter().any(|m| m == method),
            "no {method} in the captures: {requests:?}"
        );
    }
    assert!(replies >= 20, "{replies} replies");
    // Garbage from the channel is refused, never a panic.
    for raw in [&b""[..], b"\xff\xfe", b"{\"body\": 1}", b"null"] {
        assert!(sprout::celery::control::decode_request(raw, 0.0).is_err());
    }
}
