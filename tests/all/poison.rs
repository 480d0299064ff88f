//! Poison-proof queues, end to end: random byte strings and malformed envelopes mixed
//! into a queue among 1,000 good jobs, a real `sprout worker` killed with `kill -9` in
//! the middle and started again. Every good job ends SUCCESS, every bad message is a
//! dead letter, nothing stays reserved, and the worker never stops by itself — on the
//! embedded SQLite broker and on Redis (Celery's protocol).

use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sprout::connect::{self, Connection};
use sprout::model::{Job, State};

use crate::support::{REDIS_ADDR, Workdir, assert_nothing_left_behind, raw, redis_test};

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

/// Waits until every good job has a terminal result and every bad message is a dead
/// letter, or panics after `timeout`.
async fn wait_until_all_ended(conn: &Connection, good: &[Job], bad: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
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
    wait_until_all_ended(conn, good, bad, Duration::from_secs(120)).await;
    assert!(restarted.is_running(), "the worker never stops by itself");
    for job in good {
        let record = conn.backend.get(&job.id).await.unwrap().unwrap();
        assert_eq!(record.state, State::Success, "{record:?}");
    }
    let dead = conn.broker.dead_letters(10_000).await.unwrap();
    assert_eq!(
        dead.len(),
        bad,
        "every bad message once: {:?}",
        &dead[..dead.len().min(5)]
    );
    assert!(dead.iter().all(|d| !d.reason.is_empty()));
    assert_nothing_left_behind(conn.broker.as_ref()).await;
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
        let mut bad_rows = bad.iter();
        for chunk in good.chunks(GOOD / bad.len() + 1) {
            conn.broker.publish(chunk).await.unwrap();
            if let Some(body) = bad_rows.next() {
                insert.execute([body]).unwrap();
            }
        }
        for body in bad_rows {
            insert.execute([body]).unwrap();
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
    // Good and bad interleaved, as a producer bug would leave them.
    let mut bad_messages = bad.iter();
    let mut chunks = good.chunks(GOOD / bad.len() + 1);
    loop {
        let chunk = chunks.next();
        if let Some(chunk) = chunk {
            conn.broker.publish(chunk).await.unwrap();
        }
        let bytes = bad_messages.next();
        if let Some(bytes) = bytes {
            let _: () = redis::cmd("LPUSH")
                .arg(opts.key("celery"))
                .arg(bytes.as_slice())
                .query_async(&mut redis)
                .await
                .unwrap();
        }
        if chunk.is_none() && bytes.is_none() {
            break;
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
