//! Poison-proof queues, end to end: random byte strings and malformed envelopes mixed
//! into a queue among 1,000 good jobs, a real `sprout worker` killed with `kill -9` in
//! the middle and started again. Every good job ends SUCCESS, every bad message is a
//! dead letter, nothing stays reserved, and the worker never stops by itself — on the
//! embedded SQLite broker, on Redis and on RabbitMQ (Celery's protocol; on RabbitMQ the
//! bad messages also carry hostile AMQP properties and headers).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use rand::{Rng, SeedableRng};
use serde_json::json;
use sprout::connect::{self, Connection};
use sprout::model::{Job, State};
use sprout::storage::amqp::AmqpOptions;

use crate::amqp_broker::rabbit_test;
use crate::support::{
    REDIS_ADDR, Workdir, WorkerProcess, assert_nothing_left_behind, raw, redis_test,
};

/// Good jobs per run.
const GOOD: usize = 1_000;

/// The good jobs: short sleeps, so that the kill lands while jobs are in flight.
fn good_jobs() -> Vec<Job> {
    (0..GOOD)
        .map(|_| Job::new("sleep", vec![json!(0.02)], Default::default()))
        .collect()
}

/// Bad messages: random byte strings (seeded, so a failure is reproducible) and
/// malformed envelopes of every kind the decoders know.
fn bad_messages(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bad: Vec<Vec<u8>> = (0..40)
        .map(|_| {
            let len = rng.random_range(0..300);
            (0..len).map(|_| rng.random::<u8>()).collect()
        })
        .collect();
    let body = |value: serde_json::Value| {
        base64::engine::general_purpose::STANDARD.encode(value.to_string())
    };
    let envelope = |headers: serde_json::Value, body: String, ctype: &str| {
        json!({"body": body, "content-encoding": "utf-8", "content-type": ctype,
               "headers": headers,
               "properties": {"body_encoding": "base64", "delivery_info":
                   {"exchange": "", "routing_key": "celery"}}})
        .to_string()
        .into_bytes()
    };
    let id = || uuid::Uuid::new_v4().to_string();
    bad.extend([
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"body\":".to_vec(),
        "[".repeat(10_000).into_bytes(),
        vec![b'x'; 2 << 20],
        envelope(
            json!({"task": "sleep", "id": id()}),
            "%%%".into(),
            "application/json",
        ),
        envelope(
            json!({"task": "sleep", "id": id()}),
            body(json!({"a": 1})),
            "application/json",
        ),
        envelope(
            json!({"task": "sleep", "id": id()}),
            body(json!([[1], {}, {}])),
            "application/x-python-serialize",
        ),
        envelope(
            json!({"task": 7, "id": id()}),
            body(json!([[1], {}, {}])),
            "application/json",
        ),
        envelope(
            json!({"task": "sleep", "id": id(), "timelimit": [1e300, -1]}),
            body(json!([[1], {}, {}])),
            "application/json",
        ),
        envelope(
            json!({"task": "sleep", "id": id(), "eta": "not a time"}),
            body(json!([[1], {}, {}])),
            "application/json",
        ),
    ]);
    bad
}

/// Good jobs and bad messages interleaved, as a producer bug would leave them: each step
/// is a chunk of good jobs and one bad message (either `None` once its side ran out),
/// until both ran out.
fn interleaved<'a, B>(
    good: &'a [Job],
    bad: &'a [B],
) -> impl Iterator<Item = (Option<&'a [Job]>, Option<&'a B>)> {
    let mut chunks = good.chunks(GOOD / bad.len().max(1) + 1);
    let mut bad = bad.iter();
    std::iter::from_fn(move || match (chunks.next(), bad.next()) {
        (None, None) => None,
        step => Some(step),
    })
}

/// Waits until every good job has a terminal result and every bad message is a dead
/// letter, or panics after `timeout` (or with its log when `worker` stops meanwhile).
async fn wait_until_all_ended(
    conn: &Connection,
    worker: &mut WorkerProcess,
    good: &[Job],
    bad: usize,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if !worker.is_running() {
            let (exit, log) = worker.wait(Duration::from_secs(5));
            panic!("the worker stopped by itself (exit {exit:?}):\n{log}");
        }
        let mut done = 0;
        for job in good {
            if conn
                .backend
                .get(&job.id)
                .await
                .unwrap()
                .is_some_and(|r| r.state.is_terminal())
            {
                done += 1;
            }
        }
        let dead = conn.broker.dead_letters(10_000).await.unwrap().len();
        if done == good.len() && dead >= bad {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} good jobs ended and {dead} of {bad} bad messages dead-lettered \
             within {timeout:?}",
            good.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many good jobs have a terminal result.
async fn ended(conn: &Connection, good: &[Job]) -> usize {
    let mut n = 0;
    for job in good {
        if let Some(r) = conn.backend.get(&job.id).await.unwrap()
            && r.state.is_terminal()
        {
            n += 1;
        }
    }
    n
}

/// Kills the worker with SIGKILL once some but not all good jobs ended, restarts it,
/// and checks every ending.
async fn kill_mid_run_and_check(
    w: &Workdir,
    conn: &Connection,
    good: &[Job],
    bad: usize,
    args: &[&str],
) {
    let restarted = kill_mid_run(w, conn, good, bad, args).await;
    let dead = conn.broker.dead_letters(10_000).await.unwrap();
    assert_eq!(
        dead.len(),
        bad,
        "every bad message once: {:?}",
        &dead[..dead.len().min(5)]
    );
    assert!(dead.iter().all(|d| !d.reason.is_empty()));
    assert_nothing_left_behind(conn.broker.as_ref()).await;
    stop_cleanly(restarted);
}

/// Starts a worker, kills it with SIGKILL once some but not all good jobs ended,
/// restarts it and waits until every job ended (each good one SUCCESS); returns the
/// running restarted worker.
async fn kill_mid_run(
    w: &Workdir,
    conn: &Connection,
    good: &[Job],
    bad: usize,
    args: &[&str],
) -> WorkerProcess {
    let mut worker = w.worker(args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended(conn, good).await < GOOD / 5 {
        assert!(Instant::now() < deadline, "the worker did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.signal(libc::SIGKILL);
    worker.wait(Duration::from_secs(10));
    assert!(ended(conn, good).await < GOOD, "the kill must land mid-run");

    let mut restarted = w.worker(args);
    wait_until_all_ended(conn, &mut restarted, good, bad, Duration::from_secs(120)).await;
    assert!(restarted.is_running(), "the worker never stops by itself");
    for job in good {
        let record = conn.backend.get(&job.id).await.unwrap().unwrap();
        assert_eq!(record.state, State::Success, "{record:?}");
    }
    restarted
}

/// Stops the worker with SIGTERM: it exits 0 and logged no panic.
fn stop_cleanly(mut restarted: WorkerProcess) {
    restarted.signal(libc::SIGTERM);
    let (exit, log) = restarted.wait(Duration::from_secs(30));
    assert_eq!(exit, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_with_garbage_among_good_jobs_survives_kill_9() {
    let w = Workdir::new();
    let conn = connect::connect(&w.broker()).await.unwrap();
    let good = good_jobs();
    let bad = bad_messages(11);
    // Good and bad interleaved, the way a shared file would hold them.
    {
        let db = rusqlite::Connection::open(w.path("sprout.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut insert = db
            .prepare("INSERT INTO jobs (queue, job_id, body) VALUES ('celery', NULL, ?1)")
            .unwrap();
        for (chunk, body) in interleaved(&good, &bad) {
            if let Some(chunk) = chunk {
                conn.broker.publish(chunk).await.unwrap();
            }
            if let Some(body) = body {
                insert.execute([body]).unwrap();
            }
        }
    }
    kill_mid_run_and_check(&w, &conn, &good, bad.len(), &["-c", "20", "--lease", "2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_with_garbage_among_good_jobs_survives_kill_9() {
    let Some(opts) = redis_test("redis_queue_with_garbage_among_good_jobs_survives_kill_9") else {
        return;
    };
    let w = Workdir::new();
    // A short visibility timeout: the killed worker's reservations come back in
    // seconds (the liveness heartbeat makes that the default where it has landed).
    let url = format!(
        "redis://{REDIS_ADDR}/9?global_keyprefix={}&visibility_timeout=3",
        opts.key_prefix
    );
    let conn = connect::connect(&url).await.unwrap();
    let good = good_jobs();
    let bad = bad_messages(12);
    let mut redis = raw(&opts).await;
    for (chunk, bytes) in interleaved(&good, &bad) {
        if let Some(chunk) = chunk {
            conn.broker.publish(chunk).await.unwrap();
        }
        if let Some(bytes) = bytes {
            let _: () = redis::cmd("LPUSH")
                .arg(opts.key("celery"))
                .arg(bytes.as_slice())
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }
    let args = ["-c", "20", "--broker", url.as_str(), "--lease", "3"];
    kill_mid_run_and_check(&w, &conn, &good, bad.len(), &args).await;
    let left: (i64, i64) = redis::pipe()
        .hlen(opts.key("unacked"))
        .zcard(opts.key("unacked_index"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, (0, 0), "nothing stays reserved");
}

/// How deep the nested headers of two bad AMQP messages go: about as deep as fits in
/// one 128 KiB frame (a nested table costs 7 bytes a level, an array 5). Parsing takes
/// the AMQP client ~1.5 KiB of stack a level (a worker with 2 MiB thread stacks died at
/// 2,000 levels); this test's own process parses them too, when it lists dead letters.
const DEEP_TABLE: usize = 18_500;
const DEEP_ARRAY: usize = 26_000;

/// Bad AMQP messages: the bad bodies of [`bad_messages`] with no properties, and good
/// or bad bodies under hostile properties: headers of the wrong type, text that is not
/// UTF-8, bodies a content type cannot decode, impossible times and limits, and headers
/// nested thousands of levels deep. Every body differs, so the dead letters can be told
/// apart by their bytes. (Not here: NaN or infinite numbers in headers, which RabbitMQ
/// refuses itself by closing the publisher's connection with INTERNAL_ERROR; the decoder
/// refuses them too, `storage::amqp`'s unit tests.)
fn amqp_bad_messages(seed: u64) -> Vec<(Vec<u8>, BasicProperties)> {
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
    let mut seen = HashSet::new();
    let mut bad: Vec<(Vec<u8>, BasicProperties)> = bad_messages(seed)
        .into_iter()
        .filter(|body| seen.insert(body.clone()))
        .map(|body| (body, BasicProperties::default()))
        .collect();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let celery = |extra: Vec<(&str, AMQPValue)>| {
        let mut headers = FieldTable::default();
        headers.insert("lang".into(), text("py"));
        headers.insert("task".into(), text("sleep"));
        headers.insert("id".into(), text(&uuid::Uuid::new_v4().to_string()));
        for (k, v) in extra {
            headers.insert(k.into(), v);
        }
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(headers)
    };
    // A runnable body, made unique by trailing spaces.
    let mut n = 0;
    let mut good_body = || {
        n += 1;
        format!("[[0.02], {{}}, {{}}]{}", " ".repeat(n)).into_bytes()
    };
    let mut deep_table = FieldTable::default();
    for _ in 0..DEEP_TABLE {
        let mut outer = FieldTable::default();
        outer.insert("t".into(), AMQPValue::FieldTable(deep_table));
        deep_table = outer;
    }
    let mut deep_array = AMQPValue::Void;
    for _ in 0..DEEP_ARRAY {
        deep_array = AMQPValue::FieldArray(FieldArray::from(vec![deep_array]));
    }
    bad.extend([
        (b"{\"no\": \"headers\"}".to_vec(), celery(vec![])),
        (b"not json at all".to_vec(), celery(vec![])),
        (vec![0xff, 0xfe, b'[', 0x80], celery(vec![])),
        (
            good_body(),
            celery(vec![("task", AMQPValue::LongLongInt(7))]),
        ),
        (
            good_body(),
            celery(vec![("task", AMQPValue::FieldTable(FieldTable::default()))]),
        ),
        (
            good_body(),
            celery(vec![(
                "id",
                AMQPValue::FieldArray(FieldArray::from(vec![text("a"), text("b")])),
            )]),
        ),
        (
            good_body(),
            celery(vec![(
                "task",
                AMQPValue::LongString(LongString::from(vec![0xff, 0xfe, 0x00])),
            )]),
        ),
        (
            good_body(),
            celery(vec![(
                "timelimit",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::Double(1e300),
                    AMQPValue::LongInt(-1),
                ])),
            )]),
        ),
        (good_body(), celery(vec![("eta", text("not a time"))])),
        (
            good_body(),
            celery(vec![("expires", text("yesterday-ish"))]),
        ),
        (
            good_body(),
            celery(vec![]).with_content_type("application/x-python-serialize".into()),
        ),
        (
            vec![0x80, 0x04, 0x95, 0xff],
            celery(vec![]).with_content_encoding("binary".into()),
        ),
        ("[".repeat(20_000).into_bytes(), celery(vec![])),
        (
            good_body(),
            celery(vec![("deep", AMQPValue::FieldTable(deep_table))]),
        ),
        (good_body(), celery(vec![("deep", deep_array)])),
    ]);
    bad
}

/// Publishes the messages of [`amqp_bad_messages`] to the `celery` queue of `url` as
/// raw AMQP messages, one after each chunk of `good` (published by Sprout's own broker,
/// which declares the queue), with publisher confirms. Returns their bodies. Encoding,
/// copying and dropping the deep headers takes this process's threads several MiB of
/// stack: they have 64 MiB (.cargo/config.toml).
async fn publish_interleaved(url: &str, good: &[Job], seed: u64) -> Vec<Vec<u8>> {
    let bad = amqp_bad_messages(seed);
    let broker = connect::broker(url).await.unwrap();
    let amqp = AmqpOptions::from_url(url).unwrap().connect().await.unwrap();
    let channel = amqp.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (chunk, message) in interleaved(good, &bad) {
        if let Some(chunk) = chunk {
            broker.publish(chunk).await.unwrap();
        }
        if let Some((body, properties)) = message {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    "celery".into(),
                    BasicPublishOptions::default(),
                    body,
                    properties.clone(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack(), "RabbitMQ refused a bad message");
        }
    }
    let _ = amqp.close(200, "published".into()).await;
    bad.into_iter().map(|(body, _)| body).collect()
}

/// The bodies of every dead letter on `url`, taken off the dead-letter queue.
async fn dead_bodies(url: &str) -> Vec<Vec<u8>> {
    let amqp = AmqpOptions::from_url(url).unwrap().connect().await.unwrap();
    let channel = amqp.create_channel().await.unwrap();
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get("sprout.dead".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(message.delivery.data);
    }
    let _ = amqp.close(200, "read".into()).await;
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_queue_with_garbage_among_good_jobs_survives_kill_9() {
    let test = "amqp_queue_with_garbage_among_good_jobs_survives_kill_9";
    let Some(rabbit) = rabbit_test(test) else {
        return;
    };
    let Some(redis) = redis_test(test) else {
        return;
    };
    let w = Workdir::new();
    let (url, results) = (rabbit.url(), redis.sprout_url());
    let options = connect::ConnectOptions {
        result_backend: Some(results.clone()),
        ..Default::default()
    };
    let conn = connect::connect_with(&url, &options).await.unwrap();
    let good = good_jobs();
    let bad = publish_interleaved(&url, &good, 13).await;
    let count = bad.len();
    let bad_bodies: HashSet<Vec<u8>> = bad.into_iter().collect();
    assert_eq!(bad_bodies.len(), count, "every bad body differs");

    let args = ["-c", "20", "--broker", &url, "--result-backend", &results];
    let restarted = kill_mid_run(&w, &conn, &good, count, &args).await;
    let dead = conn.broker.dead_letters(10_000).await.unwrap();
    assert!(dead.iter().all(|d| !d.reason.is_empty()), "{dead:?}");
    // RabbitMQ's dead-lettering is a confirmed publish, then an ack: a bad message the
    // kill caught between the two is dead-lettered again after the restart. So each bad
    // message at least once, and twice at most for the deliveries held at the kill.
    let bodies = dead_bodies(&url).await;
    let distinct: HashSet<Vec<u8>> = bodies.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        count,
        "every bad message is a dead letter ({} letters)",
        bodies.len()
    );
    assert!(distinct.is_subset(&bad_bodies), "only bad messages are");
    assert!(bodies.len() <= count + 20, "{} letters", bodies.len());
    let settled =
        crate::support::wait_until(Duration::from_secs(10), || rabbit.depth("celery") == (0, 0));
    assert!(
        settled,
        "left (ready, unacked): {:?}",
        rabbit.depth("celery")
    );
    stop_cleanly(restarted);
}
