//! The broker conformance suite.
//!
//! [`suite`] holds one async function per property a [`Broker`] promises, written against
//! `dyn Broker` handles of a [`BrokerUnderTest`]. Each function makes its own fresh queue
//! names, so the properties can run in any order, even concurrently. The list of
//! properties exists once, in [`broker_suite!`], which expands one test per property for
//! a broker; every broker is one line at the end of this file. What only one broker can
//! be tested for stays in its own module (`sqlite_broker`, `redis_broker`).
//!
//! Adding a broker: write `async fn under_test(test: &str) -> Option<BrokerUnderTest>`
//! next to its own tests (`None` when its server is not there, after saying why `test` is
//! skipped), and add `broker_suite!(name, crate::its_module::under_test);` below.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use sprout::broker::{Broker, Delivery, DeliveryTag};
use sprout::model::Job;

/// One broker, fresh for one property: two handles on the same backing store (the
/// second stands for another process), what the broker's priority order is, and what
/// must live as long as the handles.
pub struct BrokerUnderTest {
    /// The broker the properties publish to and fetch from.
    pub broker: Arc<dyn Broker>,
    /// A second handle on the same store, for the properties about two processes.
    pub other: Arc<dyn Broker>,
    /// Which priority comes first.
    pub priority: PriorityOrder,
    /// Dropped after the handles (fields drop in order): a temp dir, a Redis scope.
    #[expect(dead_code, reason = "held for its Drop, never read")]
    pub keep: Box<dyn Any + Send>,
}

/// Which priorities a broker serves first: a behaviour the suite checks in both forms,
/// as the runner declares it (not a property it leaves out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityOrder {
    /// AMQP's order: 9 first, 0 last, each priority on its own; over 9 counts as 9;
    /// across queues, the best priority first, then the oldest job.
    HighestFirst,
    /// Celery on Redis (docs/PROTOCOL.md §4): 0 first; priorities share the buckets 0-2, 3-5,
    /// 6-8 and 9, FIFO within one; across queues, bucket first, then the queues in a
    /// rotating order (kombu's).
    CeleryRedis,
}

impl PriorityOrder {
    /// Where `priority` is served: lower ranks first.
    pub fn rank(self, priority: u8) -> u8 {
        let p = priority.min(9);
        match self {
            PriorityOrder::HighestFirst => 9 - p,
            PriorityOrder::CeleryRedis => p / 3 * 3,
        }
    }
}

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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use chrono::Utc;

    use super::*;

    /// Published jobs come back unchanged, once, with delivery_count 1; acked jobs never
    /// come back, not even after their lease would have expired.
    pub async fn publish_fetch_ack(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn fifo_within_priority(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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

    /// Jobs come out in the broker's priority order ([`PriorityOrder`]), FIFO among
    /// jobs of one rank.
    pub async fn priority_order(t: &BrokerUnderTest) {
        let broker = &*t.broker;
        let queue = fresh_queue("priority");
        let priorities = [0u8, 5, 9, 5, 0, 9, 3, 2];
        let jobs: Vec<Job> = priorities
            .iter()
            .enumerate()
            .map(|(n, &p)| job_with_priority(&queue, n, p))
            .collect();
        broker.publish(&jobs).await.unwrap();

        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&n| (t.priority.rank(priorities[n]), n));
        let expected: Vec<String> = order.iter().map(|&n| jobs[n].id.clone()).collect();

        let mut seen = ids(&fetch_now(broker, &queue, 3).await);
        seen.extend(ids(&fetch_now(broker, &queue, 10).await));
        assert_eq!(seen, expected, "{:?}", t.priority);
    }

    /// A job whose lease expires without an ack (its worker died) is delivered again
    /// with delivery_count 2.
    pub async fn lease_expiry_redelivers(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn extend_prevents_redelivery(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn release_redelivers_at_once(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn eta_not_early_and_on_time(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn retry_replaces_atomically(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn dead_letter_and_stats(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn dead_letters_newest_first(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn purge_removes_waiting(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
    pub async fn empty_fetch_waits(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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

    /// A waiting fetch returns soon after a job is published, by the same handle or by
    /// another one (another process).
    pub async fn waiting_fetch_sees_publish(t: &BrokerUnderTest) {
        for (publisher, fetcher) in [(&t.broker, &t.broker), (&t.broker, &t.other)] {
            let queue = fresh_queue("wake");
            let sent = job(&queue, 1);
            let publish = {
                let (sent, publisher) = (sent.clone(), publisher.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    publisher.publish(&[sent]).await.unwrap();
                    Instant::now()
                })
            };
            let got = fetch_wait(&**fetcher, &queue, 10, LONG_LEASE, Duration::from_secs(5)).await;
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
    }

    /// Several fetchers on two handles of one store, racing over many jobs: every job is
    /// delivered exactly once (no duplicates, no loss).
    pub async fn concurrent_fetchers_never_share(t: &BrokerUnderTest) {
        const JOBS: usize = 3000;
        let (a, b) = (t.broker.clone(), t.other.clone());
        let queue = fresh_queue("race");
        let sent: Vec<Job> = (0..JOBS).map(|n| job(&queue, n)).collect();
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
                while done.load(Ordering::SeqCst) < JOBS && Instant::now() < deadline {
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

    /// A fetch over several queues takes the best-ranked priority first ([`PriorityOrder`]);
    /// among equals, the oldest job (`HighestFirst`) or the queues in turn
    /// (`CeleryRedis`). Each delivery names the queue its job came from.
    pub async fn multi_queue_fetch(t: &BrokerUnderTest) {
        let broker = &*t.broker;
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
        let got_ids = ids(&got);
        match t.priority {
            PriorityOrder::HighestFirst => {
                assert_eq!(got_ids, [c.id, a.id, b.id]);
                let queues: Vec<&str> = got.iter().map(|d| d.queue.as_str()).collect();
                assert_eq!(queues, [q2.as_str(), q1.as_str(), q2.as_str()]);
            }
            PriorityOrder::CeleryRedis => {
                assert_eq!(got_ids.len(), 3);
                assert_eq!(got_ids[2], c.id, "priority 5 after both priority-0 jobs");
                let first: HashSet<&String> = got_ids[..2].iter().collect();
                assert_eq!(first, HashSet::from([&a.id, &b.id]));
            }
        }
        for d in &got {
            assert_eq!(d.queue, job_of(d).queue);
        }
        broker.ack(&tags(&got)).await.unwrap();
    }
}

/// Expands the suite for one broker: `broker_suite!(name, make)` is a module `name`
/// with one `#[tokio::test]` per property of [`suite`], each on a fresh broker from
/// `make(test_name).await` (`None`: skipped, `make` said why). The list of properties is
/// here and nowhere else.
macro_rules! broker_suite {
    ($name:ident, $make:path) => {
        broker_suite!(
            @expand $name, $make,
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
            waiting_fetch_sees_publish,
            concurrent_fetchers_never_share,
            multi_queue_fetch,
        );
    };
    (@expand $name:ident, $make:path, $($property:ident),* $(,)?) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    let test = concat!(module_path!(), "::", stringify!($property));
                    let Some(under_test) = $make(test).await else {
                        return;
                    };
                    $crate::broker_conformance::suite::$property(&under_test).await;
                }
            )*
        }
    };
}

broker_suite!(sqlite, crate::sqlite_broker::under_test);
broker_suite!(redis, crate::redis_broker::under_test);
broker_suite!(amqp, crate::amqp_broker::under_test);
