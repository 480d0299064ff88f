//! The embedded SQLite broker: its runner for the broker conformance suite
//! ([`under_test`], expanded in `broker_conformance`), and what only the SQLite store can
//! be tested for: reopening the file, foreign and corrupt rows, stale tags, delivery
//! across two stores on one file.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::SqliteStore;
use chrono::Utc;
use sprout::broker::{Broker, BrokerError, DeliveryTag};
use sprout::model::Job;

use crate::broker_conformance::{
    BrokerUnderTest, LONG_LEASE, PriorityOrder, fetch_now, fetch_wait, fresh_queue, ids, job, tags,
};

/// A store on a fresh file; keep the directory alive as long as the store.
async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("sprout.db"))
        .await
        .unwrap();
    (dir, store)
}

/// Two stores on one file stand for two processes (a worker and `sprout send`):
/// no in-process wake-up, only the shared file.
async fn two_stores() -> (tempfile::TempDir, Arc<dyn Broker>, Arc<dyn Broker>) {
    let (dir, a) = store().await;
    let b = SqliteStore::open(a.path()).await.unwrap();
    (dir, Arc::new(a), Arc::new(b))
}

/// The SQLite broker for one property of the suite: two stores on a fresh file.
pub async fn under_test(_test: &str) -> Option<BrokerUnderTest> {
    let (dir, broker, other) = two_stores().await;
    Some(BrokerUnderTest {
        broker,
        other,
        priority: PriorityOrder::HighestFirst,
        keep: Box::new(dir),
    })
}

/// Jobs stay in the file across a reopen; the schema version is recorded.
#[tokio::test]
async fn reopen_keeps_jobs() {
    let (dir, store) = store().await;
    let queue = fresh_queue("reopen");
    let sent = job(&queue, 1);
    store.publish(std::slice::from_ref(&sent)).await.unwrap();
    let path = store.path().to_path_buf();
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(ids(&fetch_now(&store, &queue, 1).await), [sent.id]);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(dir);
}

/// A file that is not a Sprout database is refused, not modified.
#[tokio::test]
async fn foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(err.to_string().contains("not a Sprout database"), "{err}");
}

/// `connect("sqlite:PATH")` gives a broker and backend on the same file.
#[tokio::test]
async fn connect_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("url.db").display());
    let conn = sprout::connect::connect(&url).await.unwrap();
    let queue = fresh_queue("url");
    conn.broker.publish(&[job(&queue, 1)]).await.unwrap();
    assert_eq!(fetch_now(&*conn.broker, &queue, 1).await.len(), 1);
    assert!(conn.backend.get("nope").await.unwrap().is_none());
}

/// Bodies that are not job JSON come back as deliveries carrying the decode error
/// (with the id when it can be recovered), between good jobs, and can be
/// dead-lettered; they never stop fetching.
#[tokio::test]
async fn corrupt_rows_are_delivered_as_decode_errors() {
    let (_dir, store) = store().await;
    let queue = fresh_queue("corrupt");
    store.publish(&[job(&queue, 1)]).await.unwrap();
    {
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        let mut insert = conn
            .prepare("INSERT INTO jobs (queue, job_id, body) VALUES (?1, ?2, ?3)")
            .unwrap();
        let bad: [(Option<&str>, &[u8]); 4] = [
            (Some("bad-1"), b"not json at all"),
            (None, br#"{"id": "bad-2", "task": 7}"#),
            (None, b"\xff\xfe"),
            (Some("bad-4"), b""),
        ];
        for (id, body) in bad {
            insert.execute(rusqlite::params![queue, id, body]).unwrap();
        }
        // A TEXT body (wrong storage class) must not break fetch either.
        conn.execute(
            "INSERT INTO jobs (queue, job_id, body) VALUES (?1, 'bad-5', 'plain text')",
            [&queue],
        )
        .unwrap();
    }
    store.publish(&[job(&queue, 2)]).await.unwrap();

    let got = fetch_now(&store, &queue, 100).await;
    assert_eq!(got.len(), 7);
    assert!(got[0].job.is_ok() && got[6].job.is_ok());
    let errors: Vec<_> = got[1..6]
        .iter()
        .map(|d| d.job.as_ref().unwrap_err())
        .collect();
    let recovered: Vec<Option<&str>> = errors.iter().map(|e| e.id.as_deref()).collect();
    assert_eq!(
        recovered,
        [
            Some("bad-1"),
            Some("bad-2"),
            None,
            Some("bad-4"),
            Some("bad-5")
        ]
    );
    assert!(errors.iter().all(|e| !e.reason.is_empty()));

    for delivery in &got[1..6] {
        store
            .dead_letter(&delivery.tag, "undecodable")
            .await
            .unwrap();
    }
    store
        .ack(&[got[0].tag.clone(), got[6].tag.clone()])
        .await
        .unwrap();
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 5);
    assert_eq!(dead[0].id.as_deref(), Some("bad-5"));
    assert!(fetch_now(&store, &queue, 100).await.is_empty());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.iter().find(|s| s.queue == queue).unwrap().dead, 5);
}

/// A release is not a failed attempt: the next delivery has the same count.
#[tokio::test]
async fn release_does_not_count_as_delivery() {
    let (_dir, store) = store().await;
    let queue = fresh_queue("release-count");
    store.publish(&[job(&queue, 1)]).await.unwrap();
    let got = fetch_now(&store, &queue, 1).await;
    store.release(&tags(&got)).await.unwrap();
    let again = fetch_now(&store, &queue, 1).await;
    assert_eq!(again[0].delivery_count, 1);
    assert_ne!(again[0].tag, got[0].tag, "each delivery has its own tag");
}

/// After a lease expired and another worker took the job, the first worker's tag
/// settles nothing: its ack, extend, release, retry and dead-letter do not touch the
/// new delivery.
#[tokio::test]
async fn stale_tag_cannot_settle_redelivery() {
    let (_dir, store) = store().await;
    let queue = fresh_queue("stale");
    let sent = job(&queue, 1);
    store.publish(std::slice::from_ref(&sent)).await.unwrap();
    let lease = Duration::from_millis(50);
    let first = fetch_wait(&store, &queue, 1, lease, Duration::ZERO).await;
    let second = fetch_wait(&store, &queue, 1, LONG_LEASE, Duration::from_secs(2)).await;
    assert_eq!(second[0].delivery_count, 2);

    let stale = &first[0].tag;
    store.ack(std::slice::from_ref(stale)).await.unwrap();
    store
        .extend(std::slice::from_ref(stale), LONG_LEASE)
        .await
        .unwrap();
    store.release(std::slice::from_ref(stale)).await.unwrap();
    assert!(matches!(
        store.retry(stale, &sent).await,
        Err(BrokerError::UnknownDelivery(_))
    ));
    assert!(matches!(
        store.dead_letter(stale, "x").await,
        Err(BrokerError::UnknownDelivery(_))
    ));
    let garbage = DeliveryTag("garbage".into());
    store.ack(std::slice::from_ref(&garbage)).await.unwrap();
    assert!(matches!(
        store.dead_letter(&garbage, "x").await,
        Err(BrokerError::UnknownDelivery(_))
    ));

    let stats = store.stats().await.unwrap();
    let mine = stats.iter().find(|s| s.queue == queue).unwrap();
    assert_eq!((mine.ready, mine.leased, mine.dead), (0, 1, 0));
    store.ack(&tags(&second)).await.unwrap();
    assert!(
        store
            .stats()
            .await
            .unwrap()
            .iter()
            .all(|s| s.queue != queue)
    );
}

/// An idle worker gets an eta job within ~20 ms of its eta, even when another
/// process (store) published it. A `timing_` test: it runs in the quiet phase of
/// `make test`, one at a time, as its bound is in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_eta_is_delivered_promptly_across_stores() {
    let (_dir, a, b) = two_stores().await;
    let queue = fresh_queue("eta-prompt");
    let mut lateness = Vec::new();
    for n in 0..5 {
        let mut later = job(&queue, n);
        let eta = Utc::now() + chrono::Duration::milliseconds(150);
        later.eta = Some(eta);
        a.publish(&[later]).await.unwrap();
        let got = fetch_wait(&*b, &queue, 1, LONG_LEASE, Duration::from_secs(2)).await;
        let at = Utc::now();
        assert_eq!(got.len(), 1);
        assert!(at >= eta);
        lateness.push((at - eta).num_milliseconds());
        b.ack(&tags(&got)).await.unwrap();
    }
    lateness.sort_unstable();
    assert!(lateness[2] <= 20, "median lateness {lateness:?} ms");
}

/// Priorities above 9 are treated as 9; a big batch publishes in one go.
#[tokio::test]
async fn big_batch_and_priority_clamp() {
    let (_dir, store) = store().await;
    let queue = fresh_queue("batch");
    let mut jobs: Vec<Job> = (0..10_000).map(|n| job(&queue, n)).collect();
    jobs[5000].priority = 200;
    jobs[6000].priority = 9;
    store.publish(&jobs).await.unwrap();
    let head = fetch_now(&store, &queue, 2).await;
    assert_eq!(ids(&head), [jobs[5000].id.as_str(), jobs[6000].id.as_str()]);
    let mut total = head.len();
    let mut seen = HashSet::new();
    loop {
        let got = fetch_now(&store, &queue, 500).await;
        if got.is_empty() {
            break;
        }
        total += got.len();
        seen.extend(ids(&got));
        store.ack(&tags(&got)).await.unwrap();
    }
    assert_eq!((total, seen.len()), (10_000, 9_998));
}
