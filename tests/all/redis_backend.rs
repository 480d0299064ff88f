//! The Redis result backend: its runner for the result-backend conformance suite
//! ([`under_test`], expanded in `backend_conformance`: Celery's SUCCESS guard, no
//! listing, TTL instead of a sweep), and what only Redis has: the key and JSON Celery
//! clients read, its TTL, `ignore_result`, chord completion with Celery 5.7's
//! bookkeeping keys, the worker's `--result-expires` as the TTL.
//!
//! Needs Redis at 127.0.0.1:6379 (tests print a note and pass without it). Every test
//! has its own key prefix ([`redis_test`]), deleted when the test ends, also when it fails.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sprout::backend::redis::RedisBackend;
use sprout::backend::{BackendError, ResultBackend};
use sprout::broker::Broker;
use sprout::broker::redis::RedisBroker;
use sprout::celery;
use sprout::model::{CeleryContext, Job};
use sprout::model::{ErrorInfo, ResultRecord, State};
use sprout::storage::redis::RedisOptions;
use sprout::worker::BrokerPublisher;

use crate::backend_conformance::{BackendCaps, BackendUnderTest};
use crate::broker_conformance::{fetch_now, fresh_queue, job_of};
use crate::support::{Workdir, raw, redis_test};

/// The Redis backend for one property of the suite: two connections on a fresh key
/// prefix, deleted when the property ends.
pub async fn under_test(test: &str) -> Option<BackendUnderTest> {
    let scope = redis_test(test)?;
    let one = RedisBackend::connect(scope.clone()).await.unwrap();
    let two = RedisBackend::connect(scope.clone()).await.unwrap();
    Some(BackendUnderTest {
        backend: Arc::new(one),
        other: Arc::new(two),
        caps: BackendCaps {
            lists_results: false,
            expires_by_sweep: false,
            success_is_final: true,
        },
        keep: Box::new(scope),
    })
}

fn success(id: &str, value: Value) -> ResultRecord {
    let mut r = ResultRecord::new(id, "add", State::Success);
    r.result = Some(value);
    r
}

/// A result is stored under the key Celery reads, as the JSON it reads, with the TTL of
/// `result_expires` (a day by default).
#[tokio::test]
async fn store_writes_the_key_celery_reads() {
    let Some(opts) = redis_test("store_writes_the_key_celery_reads") else {
        return;
    };
    let backend = RedisBackend::connect(opts.clone()).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut rec = success(&id, json!({"sum": 5}));
    rec.fuel_used = Some(1234);
    rec.worker = Some("w1".into());
    backend.store(std::slice::from_ref(&rec)).await.unwrap();

    let mut conn = raw(&opts).await;
    let key = opts.key(&format!("celery-task-meta-{id}"));
    let (stored, ttl): (String, i64) = redis::pipe()
        .get(&key)
        .ttl(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "ttl {ttl}");
    let meta: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(meta["status"], json!("SUCCESS"));
    assert_eq!(meta["result"], json!({"sum": 5}));
    assert_eq!(meta["task_id"], json!(id));
    assert_eq!(meta["children"], json!([]));
    assert_eq!(meta["sprout"]["fuel_used"], json!(1234));
    assert_eq!(meta["sprout"]["worker"], json!("w1"));
}

/// A result key holding what no Celery backend writes fails only its own id in
/// `get_many` (one `MGET`): the others are still read.
#[tokio::test]
async fn get_many_fails_only_the_id_whose_key_is_garbage() {
    let Some(opts) = redis_test("get_many_fails_only_the_id_whose_key_is_garbage") else {
        return;
    };
    let backend = RedisBackend::connect(opts.clone()).await.unwrap();
    let ok = uuid::Uuid::new_v4().to_string();
    let bad = uuid::Uuid::new_v4().to_string();
    let missing = uuid::Uuid::new_v4().to_string();
    backend.store(&[success(&ok, json!(1))]).await.unwrap();
    let mut conn = raw(&opts).await;
    let _: () = redis::cmd("SET")
        .arg(opts.key(&format!("celery-task-meta-{bad}")))
        .arg(b"\xff{not json".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    let many = backend
        .get_many(&[ok.clone(), bad.clone(), missing])
        .await
        .unwrap();
    assert_eq!(
        many[0].as_ref().unwrap().as_ref().unwrap().result,
        Some(json!(1))
    );
    assert!(
        matches!(&many[1], Err(BackendError::Corrupt { id, .. }) if *id == bad),
        "{:?}",
        many[1]
    );
    assert!(many[2].as_ref().unwrap().is_none());
}

#[tokio::test]
async fn ignore_result_stores_nothing() {
    let Some(opts) = redis_test("ignore_result_stores_nothing") else {
        return;
    };
    let backend = RedisBackend::connect(opts.clone()).await.unwrap();
    let mut job = Job::new("add", vec![json!(1)], Default::default());
    job.celery = Some(CeleryContext {
        extra: json!({"ignore_result": true}),
        ..Default::default()
    });
    let s = celery::settle(&job, success(&job.id, json!(1)));
    backend.store(&s.store).await.unwrap();
    assert!(backend.get(&job.id).await.unwrap().is_none());
}

/// `record` of chord header job `job` as the worker stores it: marked with its chord.
fn as_stored(job: &Job, record: &ResultRecord) -> ResultRecord {
    sprout::celery::settle(job, record.clone()).store.remove(0)
}

/// Chord bodies published on `broker`, as the worker hands the backend its broker.
fn publisher(broker: &Arc<RedisBroker>) -> BrokerPublisher {
    BrokerPublisher::new(broker.clone())
}

/// The chord of docs/PROTOCOL.md §8.5: the client sets `.s`; parts finishing in any order
/// complete it once, and the body gets the results in header order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_completes_once_in_header_order() {
    let Some(opts) = redis_test("chord_completes_once_in_header_order") else {
        return;
    };
    let backend = RedisBackend::connect(opts.clone()).await.unwrap();
    let broker = Arc::new(RedisBroker::connect(opts.clone()).await.unwrap());
    let gid = uuid::Uuid::new_v4().to_string();
    let body_id = uuid::Uuid::new_v4().to_string();
    let queue = fresh_queue("chord");
    let mut conn = raw(&opts).await;
    let _: () = redis::cmd("SET")
        .arg(opts.key(&format!("celery-taskset-meta-{gid}.s")))
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let body = json!({"task": "tsum", "args": [], "kwargs": {}, "options":
        {"task_id": body_id, "group_id": gid, "queue": queue}, "subtask_type": null, "immutable": false});
    let part = |i: usize| {
        let mut job = Job::new("add", vec![json!(i)], Default::default());
        job.celery = Some(CeleryContext {
            root_id: Some(job.id.clone()),
            group_id: Some(gid.clone()),
            embed: json!({"callbacks": null, "errbacks": null, "chain": null, "chord": body}),
            extra: json!({"group_index": i}),
            ..Default::default()
        });
        job
    };
    let parts: Vec<Job> = (0..3).map(part).collect();
    for i in [2usize, 0, 1] {
        let rec = success(&parts[i].id, json!(i * 10));
        backend.store(std::slice::from_ref(&rec)).await.unwrap();
        backend
            .on_chord_part_return(&as_stored(&parts[i], &rec), &publisher(&broker))
            .await
            .unwrap();
        // A redelivered duplicate of a part counts once.
        backend
            .on_chord_part_return(&as_stored(&parts[i], &rec), &publisher(&broker))
            .await
            .unwrap();
    }
    let got = fetch_now(&*broker, &queue, 10).await;
    assert_eq!(got.len(), 1, "the body, once");
    let body_job = job_of(&got[0]);
    assert_eq!(body_job.id, body_id);
    assert_eq!(body_job.args, vec![json!([0, 10, 20])]);
    assert_eq!(
        body_job.celery.as_ref().unwrap().group_id.as_deref(),
        Some(gid.as_str())
    );
    // Late parts after completion do nothing.
    backend
        .on_chord_part_return(
            &as_stored(&parts[0], &success(&parts[0].id, json!(0))),
            &publisher(&broker),
        )
        .await
        .unwrap();
    assert!(fetch_now(&*broker, &queue, 10).await.is_empty());
    broker.ack(&[got[0].tag.clone()]).await.unwrap();
}

/// A failed part: the body is not sent; its id gets Celery's ChordError.
#[tokio::test]
async fn chord_with_a_failed_part_fails_the_body() {
    let Some(opts) = redis_test("chord_with_a_failed_part_fails_the_body") else {
        return;
    };
    let backend = RedisBackend::connect(opts.clone()).await.unwrap();
    let broker = Arc::new(RedisBroker::connect(opts.clone()).await.unwrap());
    let (gid, body_id) = ("g-fail", "body-fail");
    let mut conn = raw(&opts).await;
    let _: () = redis::cmd("SET")
        .arg(opts.key(&format!("celery-taskset-meta-{gid}.s")))
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();
    let body = json!({"task": "tsum", "args": [], "kwargs": {}, "options": {"task_id": body_id, "group_id": gid}});
    let mut parts = Vec::new();
    for i in 0..2 {
        let mut job = Job::new("add", vec![], Default::default());
        job.id = format!("part-{i}");
        job.celery = Some(CeleryContext {
            group_id: Some(gid.into()),
            embed: json!({"chord": body}),
            extra: json!({"group_index": i}),
            ..Default::default()
        });
        parts.push(job);
    }
    backend
        .on_chord_part_return(
            &as_stored(&parts[0], &success("part-0", json!(2))),
            &publisher(&broker),
        )
        .await
        .unwrap();
    let mut failed = ResultRecord::new("part-1", "fail", State::Failure);
    failed.error = Some(ErrorInfo {
        kind: "ValueError".into(),
        message: "hdr".into(),
        traceback: None,
    });
    backend
        .on_chord_part_return(&as_stored(&parts[1], &failed), &publisher(&broker))
        .await
        .unwrap();
    let rec = backend.get(body_id).await.unwrap().expect("body result");
    assert_eq!(rec.state, State::Failure);
    let err = rec.error.unwrap();
    assert_eq!(err.kind, "ChordError");
    assert_eq!(err.message, "Dependency part-1 raised ValueError('hdr')");
    assert!(
        fetch_now(&*broker, "celery", 10).await.is_empty(),
        "no body sent"
    );
}

/// Runs one `add(2, 3)` job through a real `sprout worker --broker URL ARGS --max-jobs 1`
/// and returns the result key's TTL (`-1`: none).
async fn ttl_after_one_job(opts: &RedisOptions, url: &str, args: &[&str]) -> i64 {
    let broker = RedisBroker::connect(opts.clone()).await.unwrap();
    let queue = fresh_queue("result-expires");
    let mut job = Job::new("add", vec![json!(2), json!(3)], Default::default());
    job.queue = queue.clone();
    broker.publish(std::slice::from_ref(&job)).await.unwrap();
    let w = Workdir::new();
    let mut all = vec!["--broker", url, "-Q", &queue, "-c", "1", "--max-jobs", "1"];
    all.extend_from_slice(args);
    let (code, log) = w.worker(&all).wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "worker log:\n{log}");
    let backend = RedisBackend::connect(opts.clone()).await.unwrap();
    let stored = backend
        .get(&job.id)
        .await
        .unwrap()
        .expect("a stored result");
    assert_eq!(stored.result, Some(json!(5)));
    let ttl: i64 = redis::cmd("TTL")
        .arg(backend.result_key(&job.id))
        .query_async(&mut raw(opts).await)
        .await
        .unwrap();
    ttl
}

/// `sprout worker --result-expires` is the TTL of the results it stores on Redis (`0`:
/// none); the URL's `result_expires` key may say the same, not something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_result_expires_is_the_redis_result_ttl() {
    let Some(opts) = redis_test("worker_result_expires_is_the_redis_result_ttl") else {
        return;
    };
    let url = opts.sprout_url();

    let ttl = ttl_after_one_job(&opts, &url, &["--result-expires", "10m"]).await;
    assert!((590..=600).contains(&ttl), "ttl {ttl}, want about 600");
    let ttl = ttl_after_one_job(&opts, &url, &["--result-expires", "0"]).await;
    assert_eq!(ttl, -1, "--result-expires 0 keeps results forever");
    // The URL's key alone, and the two agreeing.
    let with_key = format!("{url}&result_expires=300");
    let ttl = ttl_after_one_job(&opts, &with_key, &[]).await;
    assert!((290..=300).contains(&ttl), "ttl {ttl}, want about 300");
    let ttl = ttl_after_one_job(&opts, &with_key, &["--result-expires", "5m"]).await;
    assert!((290..=300).contains(&ttl), "ttl {ttl}, want about 300");
    // Disagreeing: the worker refuses to start.
    let w = Workdir::new();
    let (code, log) = w
        .worker(&["--broker", &with_key, "--result-expires", "10m"])
        .wait(Duration::from_secs(60));
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("result_expires=300 s") && log.contains("--result-expires"),
        "{log}"
    );
}
