//! The broker conformance suite.
//!
//! [`suite`] holds one async function per property a [`Broker`] promises, written against
//! `&dyn Broker` (or two `Arc<dyn Broker>` handles on the same backing store). Each
//! function makes its own fresh queue names, so one broker instance can run them all, in
//! any order, even concurrently. [`sqlite`] runs the suite against the embedded broker,
//! plus the properties only the SQLite store can be tested for (corrupt rows, reopening
//! the file). The Redis and RabbitMQ brokers add a module that calls the same functions.

use std::time::Duration;

use sprout::broker::{Broker, Delivery, DeliveryTag};
use sprout::model::Job;

/// A lease long enough that it never expires during a test.
pub const LONG_LEASE: Duration = Duration::from_secs(60);

/// A fresh queue name, so properties never see each other's jobs.
pub fn fresh_queue(what: &str) -> String {
    format!("conformance-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Job number `n` on `queue` (the number is its only argument).
pub fn job(queue: &str, n: usize) -> Job {
    let mut job = Job::new(
        "test.echo",
        vec![serde_json::json!(n)],
        serde_json::Map::new(),
    );
    job.queue = queue.to_owned();
    job
}

/// `job(queue, n)` with a priority.
pub fn job_with_priority(queue: &str, n: usize, priority: u8) -> Job {
    let mut job = job(queue, n);
    job.priority = priority;
    job
}

/// One fetch attempt on one queue with a long lease.
pub async fn fetch_now(broker: &dyn Broker, queue: &str, max: usize) -> Vec<Delivery> {
    fetch_wait(broker, queue, max, LONG_LEASE, Duration::ZERO).await
}

/// A fetch on one queue.
pub async fn fetch_wait(
    broker: &dyn Broker,
    queue: &str,
    max: usize,
    lease: Duration,
    wait: Duration,
) -> Vec<Delivery> {
    broker
        .fetch(&[queue.to_owned()], max, lease, wait)
        .await
        .expect("fetch")
}

/// The decoded job of a delivery (panics on a decode error).
pub fn job_of(delivery: &Delivery) -> &Job {
    delivery.job.as_ref().expect("delivery decodes")
}

/// The job ids of deliveries, in order.
pub fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| job_of(d).id.clone()).collect()
}

/// The tags of deliveries.
pub fn tags(deliveries: &[Delivery]) -> Vec<DeliveryTag> {
    deliveries.iter().map(|d| d.tag.clone()).collect()
}

/// The broker properties, one function each.
pub mod suite {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use chrono::Utc;
    use sprout::broker::Broker;

    use super::*;

    /// Published jobs come back unchanged, once, with delivery_count 1; acked jobs never
    /// come back, not even after their lease would have expired.
    pub async fn publish_fetch_ack(broker: &dyn Broker) {
        let queue = fresh_queue("ack");
        let mut jobs: Vec<Job> = (0..3).map(|n| job(&queue, n)).collect();
        jobs[1]
            .kwargs
            .insert("x".into(), serde_json::json!({"nested": [1, 2]}));
        broker.publish(&jobs).await.unwrap();

        let lease = Duration::from_millis(300);
        let got = fetch_wait(broker, &queue, 10, lease, Duration::ZERO).await;
        assert_eq!(got.len(), 3);
        for (delivery, sent) in got.iter().zip(&jobs) {
            assert_eq!(job_of(delivery), sent);
            assert_eq!(delivery.queue, queue);
            assert_eq!(delivery.delivery_count, 1);
        }
        assert!(
            fetch_now(broker, &queue, 10).await.is_empty(),
            "leased jobs are invisible"
        );

        broker.ack(&tags(&got)).await.unwrap();
        tokio::time::sleep(lease + Duration::from_millis(100)).await;
        assert!(
            fetch_now(broker, &queue, 10).await.is_empty(),
            "acked jobs are gone"
        );
    }

    /// Jobs of one priority come out in the order they were published, across publish
    /// calls and across fetch batches.
    pub async fn fifo_within_priority(broker: &dyn Broker) {
        let queue = fresh_queue("fifo");
        let jobs: Vec<Job> = (0..30).map(|n| job(&queue, n)).collect();
        broker.publish(&jobs[..10]).await.unwrap();
        for j in &jobs[10..20] {
            broker.publish(std::slice::from_ref(j)).await.unwrap();
        }
        broker.publish(&jobs[20..]).await.unwrap();

        let mut seen = Vec::new();
        loop {
            let got = fetch_now(broker, &queue, 7).await;
            if got.is_empty() {
                break;
            }
            seen.extend(ids(&got));
            broker.ack(&tags(&got)).await.unwrap();
        }
        let sent: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        assert_eq!(seen, sent);
    }

    /// Higher priority first; FIFO among equals.
    pub async fn priority_order(broker: &dyn Broker) {
        let queue = fresh_queue("priority");
        let priorities = [0u8, 5, 9, 5, 0, 9, 3];
        let jobs: Vec<Job> = priorities
            .iter()
            .enumerate()
            .map(|(n, &p)| job_with_priority(&queue, n, p))
            .collect();
        broker.publish(&jobs).await.unwrap();

        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&n| (std::cmp::Reverse(priorities[n]), n));
        let expected: Vec<String> = order.iter().map(|&n| jobs[n].id.clone()).collect();

        let mut seen = ids(&fetch_now(broker, &queue, 3).await);
        seen.extend(ids(&fetch_now(broker, &queue, 10).await));
        assert_eq!(seen, expected);
    }

    /// A job whose lease expires without an ack (its worker died) is delivered again
    /// with delivery_count 2.
    pub async fn lease_expiry_redelivers(broker: &dyn Broker) {
        let queue = fresh_queue("lease");
        let sent = job(&queue, 1);
        broker.publish(std::slice::from_ref(&sent)).await.unwrap();

        let lease = Duration::from_millis(200);
        let first = fetch_wait(broker, &queue, 1, lease, Duration::ZERO).await;
        assert_eq!(ids(&first), [sent.id.as_str()]);
        assert!(fetch_now(broker, &queue, 1).await.is_empty());

        let again = fetch_wait(broker, &queue, 1, LONG_LEASE, Duration::from_secs(3)).await;
        assert_eq!(
            ids(&again),
            [sent.id.as_str()],
            "redelivered after the lease"
        );
        assert_eq!(again[0].delivery_count, 2);
        assert_eq!(job_of(&again[0]), &sent);
        broker.ack(&tags(&again)).await.unwrap();
        assert!(fetch_now(broker, &queue, 1).await.is_empty());
    }

    /// Extending a lease keeps the job from being delivered again.
    pub async fn extend_prevents_redelivery(broker: &dyn Broker) {
        let queue = fresh_queue("extend");
        broker.publish(&[job(&queue, 1)]).await.unwrap();
        let lease = Duration::from_millis(250);
        let got = fetch_wait(broker, &queue, 1, lease, Duration::ZERO).await;
        assert_eq!(got.len(), 1);

        tokio::time::sleep(Duration::from_millis(100)).await;
        broker
            .extend(&tags(&got), Duration::from_secs(5))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            fetch_now(broker, &queue, 1).await.is_empty(),
            "an extended lease must not expire at the original time"
        );
        broker.ack(&tags(&got)).await.unwrap();
    }

    /// A released job is delivered again at once, unchanged.
    pub async fn release_redelivers_at_once(broker: &dyn Broker) {
        let queue = fresh_queue("release");
        let sent = job(&queue, 1);
        broker.publish(std::slice::from_ref(&sent)).await.unwrap();
        let got = fetch_now(broker, &queue, 1).await;
        broker.release(&tags(&got)).await.unwrap();

        let again = fetch_now(broker, &queue, 1).await;
        assert_eq!(again.len(), 1, "released jobs are fetchable immediately");
        assert_eq!(job_of(&again[0]), &sent);
        broker.ack(&tags(&again)).await.unwrap();
    }

    /// A job with an eta is not delivered before it, and is delivered promptly after it
    /// to a fetcher that is waiting; ready jobs next to it are not held up.
    pub async fn eta_not_early_and_on_time(broker: &dyn Broker) {
        let queue = fresh_queue("eta");
        let mut later = job(&queue, 1);
        let eta = Utc::now() + chrono::Duration::milliseconds(400);
        later.eta = Some(eta);
        let now = job(&queue, 2);
        broker.publish(&[later.clone(), now.clone()]).await.unwrap();

        let got = fetch_now(broker, &queue, 10).await;
        assert_eq!(ids(&got), [now.id.as_str()], "only the ready job");
        broker.ack(&tags(&got)).await.unwrap();

        let got = fetch_wait(broker, &queue, 10, LONG_LEASE, Duration::from_secs(3)).await;
        let delivered_at = Utc::now();
        assert_eq!(ids(&got), [later.id.as_str()]);
        assert!(
            delivered_at >= eta,
            "delivered {} early",
            eta - delivered_at
        );
        let late = (delivered_at - eta).num_milliseconds();
        assert!(late < 150, "delivered {late} ms after its eta");
        broker.ack(&tags(&got)).await.unwrap();
    }

    /// `retry` replaces the delivery by the new job: the old one is gone, the new one
    /// waits for its eta and comes back as a first delivery.
    pub async fn retry_replaces_atomically(broker: &dyn Broker) {
        let queue = fresh_queue("retry");
        let sent = job(&queue, 1);
        broker.publish(std::slice::from_ref(&sent)).await.unwrap();
        let lease = Duration::from_millis(300);
        let got = fetch_wait(broker, &queue, 1, lease, Duration::ZERO).await;

        let mut next = sent.clone();
        next.retries += 1;
        next.eta = Some(Utc::now() + chrono::Duration::milliseconds(200));
        broker.retry(&got[0].tag, &next).await.unwrap();
        assert!(
            fetch_now(broker, &queue, 10).await.is_empty(),
            "retry waits for its eta"
        );

        let again = fetch_wait(broker, &queue, 10, LONG_LEASE, Duration::from_secs(3)).await;
        assert_eq!(again.len(), 1, "exactly one copy after a retry");
        assert_eq!(job_of(&again[0]), &next);
        assert_eq!(again[0].delivery_count, 1);
        broker.ack(&tags(&again)).await.unwrap();

        // The old delivery's lease would have run out by now: it must not come back.
        tokio::time::sleep(lease).await;
        assert!(fetch_now(broker, &queue, 10).await.is_empty());
    }

    /// Dead-lettered jobs leave the queue, are listed with their reason, and are counted;
    /// stats count ready, scheduled and leased jobs.
    pub async fn dead_letter_and_stats(broker: &dyn Broker) {
        let queue = fresh_queue("dead");
        let poison = job(&queue, 1);
        let running = job(&queue, 2);
        let waiting = job(&queue, 3);
        let mut scheduled = job(&queue, 4);
        scheduled.eta = Some(Utc::now() + chrono::Duration::hours(1));
        broker
            .publish(&[poison.clone(), running.clone(), waiting.clone(), scheduled])
            .await
            .unwrap();

        let before = Utc::now() - chrono::Duration::seconds(1);
        let got = fetch_now(broker, &queue, 1).await;
        assert_eq!(ids(&got), [poison.id.as_str()]);
        broker.dead_letter(&got[0].tag, "poisoned").await.unwrap();
        let held = fetch_now(broker, &queue, 1).await;
        assert_eq!(ids(&held), [running.id.as_str()]);

        let stats = broker.stats().await.unwrap();
        let mine = stats
            .iter()
            .find(|s| s.queue == queue)
            .expect("queue in stats");
        assert_eq!(
            (mine.ready, mine.scheduled, mine.leased, mine.dead),
            (1, 1, 1, 1)
        );

        let dead = broker.dead_letters(100).await.unwrap();
        let entry = dead
            .iter()
            .find(|d| d.queue == queue)
            .expect("dead letter listed");
        assert_eq!(entry.id.as_deref(), Some(poison.id.as_str()));
        assert_eq!(entry.reason, "poisoned");
        assert!(entry.at >= before && entry.at <= Utc::now() + chrono::Duration::seconds(1));

        // The dead letter never comes back; the waiting job still does.
        let rest = fetch_now(broker, &queue, 10).await;
        assert_eq!(ids(&rest), [waiting.id.as_str()]);
        broker.ack(&tags(&rest)).await.unwrap();
        broker.ack(&tags(&held)).await.unwrap();
        broker.purge(&queue).await.unwrap();
    }

    /// The most recent dead letters come first.
    pub async fn dead_letters_newest_first(broker: &dyn Broker) {
        let queue = fresh_queue("dead-order");
        broker
            .publish(&[job(&queue, 1), job(&queue, 2)])
            .await
            .unwrap();
        for reason in ["first", "second"] {
            let got = fetch_now(broker, &queue, 1).await;
            broker.dead_letter(&got[0].tag, reason).await.unwrap();
        }
        let reasons: Vec<String> = broker
            .dead_letters(1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.queue == queue)
            .map(|d| d.reason)
            .collect();
        assert_eq!(reasons, ["second", "first"]);
        assert_eq!(broker.dead_letters(1).await.unwrap().len(), 1);
    }

    /// Purge removes ready and scheduled jobs of one queue, not other queues' jobs, and
    /// not jobs a worker holds (which can still be acked).
    pub async fn purge_removes_waiting(broker: &dyn Broker) {
        let queue = fresh_queue("purge");
        let other = fresh_queue("purge-other");
        let mut jobs: Vec<Job> = (0..5).map(|n| job(&queue, n)).collect();
        jobs[4].eta = Some(Utc::now() + chrono::Duration::hours(1));
        broker.publish(&jobs).await.unwrap();
        broker.publish(&[job(&other, 9)]).await.unwrap();
        let held = fetch_now(broker, &queue, 1).await;

        assert_eq!(broker.purge(&queue).await.unwrap(), 4);
        assert!(fetch_now(broker, &queue, 10).await.is_empty());
        assert_eq!(
            fetch_now(broker, &other, 10).await.len(),
            1,
            "other queues untouched"
        );
        broker.ack(&tags(&held)).await.unwrap();
        assert_eq!(broker.purge(&queue).await.unwrap(), 0);
    }

    /// With nothing ready, fetch waits about `wait`; with a zero wait it returns at once.
    pub async fn empty_fetch_waits(broker: &dyn Broker) {
        let queue = fresh_queue("empty");
        let start = Instant::now();
        assert!(fetch_now(broker, &queue, 10).await.is_empty());
        assert!(start.elapsed() < Duration::from_millis(500));

        let start = Instant::now();
        let wait = Duration::from_millis(150);
        assert!(
            fetch_wait(broker, &queue, 10, LONG_LEASE, wait)
                .await
                .is_empty()
        );
        let took = start.elapsed();
        assert!(
            took >= wait && took < wait + Duration::from_secs(1),
            "waited {took:?}"
        );
    }

    /// A waiting fetch returns soon after a job is published (from another handle).
    pub async fn waiting_fetch_sees_publish(publisher: Arc<dyn Broker>, fetcher: Arc<dyn Broker>) {
        let queue = fresh_queue("wake");
        let sent = job(&queue, 1);
        let publish = {
            let sent = sent.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                publisher.publish(&[sent]).await.unwrap();
                Instant::now()
            })
        };
        let got = fetch_wait(&*fetcher, &queue, 10, LONG_LEASE, Duration::from_secs(5)).await;
        let fetched = Instant::now();
        let published = publish.await.unwrap();
        assert_eq!(ids(&got), [sent.id]);
        let lag = fetched.saturating_duration_since(published);
        assert!(
            lag < Duration::from_millis(200),
            "fetch noticed the publish after {lag:?}"
        );
        fetcher.ack(&tags(&got)).await.unwrap();
    }

    /// Several fetchers on two handles of one store, racing over many jobs: every job is
    /// delivered exactly once (no duplicates, no loss).
    pub async fn concurrent_fetchers_never_share(
        a: Arc<dyn Broker>,
        b: Arc<dyn Broker>,
        jobs: usize,
    ) {
        let queue = fresh_queue("race");
        let sent: Vec<Job> = (0..jobs).map(|n| job(&queue, n)).collect();
        for chunk in sent.chunks(500) {
            a.publish(chunk).await.unwrap();
        }
        let done = Arc::new(AtomicUsize::new(0));
        let mut fetchers = Vec::new();
        for broker in [a.clone(), b.clone(), a, b] {
            let (queue, done) = (queue.clone(), done.clone());
            fetchers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while done.load(Ordering::SeqCst) < jobs && Instant::now() < deadline {
                    let got =
                        fetch_wait(&*broker, &queue, 16, LONG_LEASE, Duration::from_millis(20))
                            .await;
                    done.fetch_add(got.len(), Ordering::SeqCst);
                    seen.extend(ids(&got));
                    broker.ack(&tags(&got)).await.unwrap();
                }
                seen
            }));
        }
        let mut all = Vec::new();
        let mut per_fetcher = Vec::new();
        for fetcher in fetchers {
            let seen = fetcher.await.unwrap();
            per_fetcher.push(seen.len());
            all.extend(seen);
        }
        let unique: HashSet<&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "a job was delivered twice");
        let expected: HashSet<&String> = sent.iter().map(|j| &j.id).collect();
        assert_eq!(unique, expected, "jobs were lost");
        assert!(
            per_fetcher.iter().filter(|&&n| n > 0).count() >= 2,
            "{per_fetcher:?}"
        );
    }

    /// A fetch over several queues takes the best priority first, then the oldest.
    pub async fn multi_queue_fetch(broker: &dyn Broker) {
        let (q1, q2) = (fresh_queue("multi-1"), fresh_queue("multi-2"));
        let a = job_with_priority(&q1, 1, 0);
        let b = job_with_priority(&q2, 2, 0);
        let c = job_with_priority(&q2, 3, 5);
        broker
            .publish(&[a.clone(), b.clone(), c.clone()])
            .await
            .unwrap();
        let got = broker
            .fetch(&[q1.clone(), q2.clone()], 10, LONG_LEASE, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(ids(&got), [c.id, a.id, b.id]);
        let queues: Vec<&str> = got.iter().map(|d| d.queue.as_str()).collect();
        assert_eq!(queues, [q2.as_str(), q1.as_str(), q2.as_str()]);
        broker.ack(&tags(&got)).await.unwrap();
    }
}

/// The suite against the embedded SQLite broker, plus SQLite-only properties.
mod sqlite {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::support::SqliteStore;
    use chrono::Utc;
    use sprout::broker::{Broker, BrokerError};

    use super::*;

    /// A store on a fresh file; keep the directory alive as long as the store.
    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("sub/dir/sprout.db"))
            .await
            .unwrap();
        (dir, store)
    }

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_dir, store) = store().await;
                suite::$name(&store).await;
            }
        )*};
    }

    conformance!(
        publish_fetch_ack,
        fifo_within_priority,
        priority_order,
        lease_expiry_redelivers,
        extend_prevents_redelivery,
        release_redelivers_at_once,
        eta_not_early_and_on_time,
        retry_replaces_atomically,
        dead_letter_and_stats,
        dead_letters_newest_first,
        purge_removes_waiting,
        empty_fetch_waits,
        multi_queue_fetch,
    );

    /// Two stores on one file stand for two processes (a worker and `sprout send`):
    /// no in-process wake-up, only the shared file.
    async fn two_stores() -> (tempfile::TempDir, Arc<dyn Broker>, Arc<dyn Broker>) {
        let (dir, a) = store().await;
        let b = SqliteStore::open(a.path()).await.unwrap();
        (dir, Arc::new(a), Arc::new(b))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_fetch_sees_publish_same_store() {
        let (_dir, store) = store().await;
        let store: Arc<dyn Broker> = Arc::new(store);
        suite::waiting_fetch_sees_publish(store.clone(), store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_fetch_sees_publish_other_store() {
        let (_dir, a, b) = two_stores().await;
        suite::waiting_fetch_sees_publish(a, b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_fetchers_never_share() {
        let (_dir, a, b) = two_stores().await;
        suite::concurrent_fetchers_never_share(a, b, 3000).await;
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
        assert_eq!(version, 1);
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
    /// process (store) published it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eta_is_delivered_promptly_across_stores() {
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
}
