//! The broker conformance suite against the Redis broker, plus what only Redis has:
//! Celery's priority order, kombu's `unacked` layout, restores shared with Python
//! workers, held eta messages.
//!
//! Needs Redis at 127.0.0.1:6379 (tests print a note and pass without it). Every test
//! uses database 9 and its own key prefix, so tests never see each other's keys.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use sprout::broker::redis::RedisBroker;
use sprout::broker::{Broker, DeliveryTag};
use sprout::celery::keys;
use sprout::storage::redis::RedisOptions;

use crate::broker_conformance::{
    LONG_LEASE, fetch_now, fetch_wait, fresh_queue, ids, job, job_of, job_with_priority, suite,
    tags,
};

/// Where the tests find Redis.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// Whether Redis answers at [`REDIS_ADDR`]; prints why a test is skipped when not.
pub fn redis_up(test: &str) -> bool {
    let addr = REDIS_ADDR.parse().unwrap();
    let up = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
    if !up {
        eprintln!("skipping {test}: no Redis at {REDIS_ADDR}");
    }
    up
}

/// Options for one test: db 9, a fresh key prefix.
fn test_options() -> RedisOptions {
    let prefix = format!("sprout-test-{}:", uuid::Uuid::new_v4().simple());
    RedisOptions::from_url(&format!("redis://{REDIS_ADDR}/9?global_keyprefix={prefix}")).unwrap()
}

/// [`test_options`] for `test` when Redis is up; `None` (after saying why `test` is
/// skipped) when not.
pub fn redis_test(test: &str) -> Option<RedisOptions> {
    redis_up(test).then(test_options)
}

/// A raw connection to the test database.
pub async fn raw(opts: &RedisOptions) -> redis::aio::MultiplexedConnection {
    opts.client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes every key under the test's prefix.
pub async fn cleanup(opts: &RedisOptions) {
    let mut conn = raw(opts).await;
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", opts.key_prefix))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !found.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(found).query_async(&mut conn).await;
    }
}

/// Deletes every key under the test's prefix when dropped, so that a test cleans up
/// even when it fails (a blocking connection: drop may run inside or outside a runtime).
pub struct CleanupOnDrop(pub RedisOptions);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if self.0.key_prefix.is_empty() {
            return; // never every key of the database
        }
        let Some(mut conn) = self.0.client().ok().and_then(|c| c.get_connection().ok()) else {
            return;
        };
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0.key_prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !found.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(found).query(&mut conn);
        }
    }
}

/// How many messages wait in `queue`'s list and how many are reserved (`unacked`).
async fn queued_and_reserved(
    conn: &mut redis::aio::MultiplexedConnection,
    opts: &RedisOptions,
    queue: &str,
) -> (i64, i64) {
    redis::pipe()
        .llen(opts.key(queue))
        .hlen(opts.key("unacked"))
        .query_async(conn)
        .await
        .unwrap()
}

/// An `unacked_index` score whose reservation expired ten seconds ago: the next sweep
/// takes it.
fn stale_score(opts: &RedisOptions) -> f64 {
    Utc::now().timestamp() as f64 - opts.visibility_timeout.as_secs_f64() - 10.0
}

async fn broker(opts: &RedisOptions) -> RedisBroker {
    RedisBroker::connect(opts.clone())
        .await
        .expect("connect to Redis")
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(opts) = redis_test(stringify!($name)) else {
                return;
            };
            suite::$name(&broker(&opts).await).await;
            cleanup(&opts).await;
        }
    )*};
}

// `priority_order` and `multi_queue_fetch` assume AMQP's order (9 first); on Redis,
// Celery serves 0 first (PROTOCOL.md §4): see `celery_priority_order` below.
conformance!(
    publish_fetch_ack,
    fifo_within_priority,
    lease_expiry_redelivers,
    extend_prevents_redelivery,
    release_redelivers_at_once,
    eta_not_early_and_on_time,
    retry_replaces_atomically,
    dead_letter_and_stats,
    dead_letters_newest_first,
    purge_removes_waiting,
    empty_fetch_waits,
);

/// Two brokers on one keyspace stand for two processes.
async fn two_brokers(opts: &RedisOptions) -> (Arc<dyn Broker>, Arc<dyn Broker>) {
    (Arc::new(broker(opts).await), Arc::new(broker(opts).await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_fetch_sees_publish() {
    let Some(opts) = redis_test("waiting_fetch_sees_publish") else {
        return;
    };
    let (a, b) = two_brokers(&opts).await;
    suite::waiting_fetch_sees_publish(a, b).await;
    cleanup(&opts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetchers_never_share() {
    let Some(opts) = redis_test("concurrent_fetchers_never_share") else {
        return;
    };
    let (a, b) = two_brokers(&opts).await;
    suite::concurrent_fetchers_never_share(a, b, 3000).await;
    cleanup(&opts).await;
}

/// On Redis, Celery's priority 0 is served first and 9 last; FIFO within a bucket, and
/// priorities share buckets 0, 3, 6, 9.
#[tokio::test]
async fn celery_priority_order() {
    let Some(opts) = redis_test("celery_priority_order") else {
        return;
    };
    let b = broker(&opts).await;
    let queue = fresh_queue("priority");
    let priorities = [0u8, 5, 9, 5, 0, 9, 3, 2];
    let jobs: Vec<_> = priorities
        .iter()
        .enumerate()
        .map(|(n, &p)| job_with_priority(&queue, n, p))
        .collect();
    b.publish(&jobs).await.unwrap();
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&n| (keys::priority_step(priorities[n]), n));
    let expected: Vec<String> = order.iter().map(|&n| jobs[n].id.clone()).collect();
    let mut seen = ids(&fetch_now(&b, &queue, 3).await);
    seen.extend(ids(&fetch_now(&b, &queue, 10).await));
    assert_eq!(seen, expected);

    // Several queues: bucket first, then queue (in a rotating order, like kombu).
    let (q1, q2) = (fresh_queue("multi-1"), fresh_queue("multi-2"));
    let (a, bb, c) = (
        job_with_priority(&q1, 1, 0),
        job_with_priority(&q2, 2, 0),
        job_with_priority(&q2, 3, 5),
    );
    b.publish(&[c.clone(), a.clone(), bb.clone()])
        .await
        .unwrap();
    let got = b
        .fetch(&[q1.clone(), q2.clone()], 10, LONG_LEASE, Duration::ZERO)
        .await
        .unwrap();
    let got_ids = ids(&got);
    assert_eq!(got_ids.len(), 3);
    assert_eq!(got_ids[2], c.id, "priority 5 after both priority-0 jobs");
    for d in &got {
        assert_eq!(d.queue, job_of(d).queue);
    }
    cleanup(&opts).await;
}

/// A fetched message is reserved exactly as kombu reserves it: `unacked[tag]` is
/// `[envelope, "", queue]` and `unacked_index[tag]` expires `lease` from now.
#[tokio::test]
async fn reservations_use_kombu_layout() {
    let Some(opts) = redis_test("reservations_use_kombu_layout") else {
        return;
    };
    let b = broker(&opts).await;
    let queue = fresh_queue("layout");
    let sent = job(&queue, 7);
    b.publish(std::slice::from_ref(&sent)).await.unwrap();
    let mut conn = raw(&opts).await;
    let pushed: Vec<String> = redis::cmd("LRANGE")
        .arg(opts.key(&queue))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pushed.len(), 1);

    let lease = Duration::from_secs(30);
    let got = fetch_wait(&b, &queue, 1, lease, Duration::ZERO).await;
    let tag = &got[0].tag.0;
    let entry: String = redis::cmd("HGET")
        .arg(opts.key("unacked"))
        .arg(tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry: Value = serde_json::from_str(&entry).unwrap();
    let envelope: Value = serde_json::from_str(&pushed[0]).unwrap();
    assert_eq!(entry, json!([envelope, "", queue]));
    assert_eq!(
        envelope["properties"]["delivery_tag"].as_str(),
        Some(tag.as_str())
    );
    let score: f64 = redis::cmd("ZSCORE")
        .arg(opts.key("unacked_index"))
        .arg(tag)
        .query_async(&mut conn)
        .await
        .unwrap();
    let expires = score + opts.visibility_timeout.as_secs_f64();
    let now = Utc::now().timestamp_micros() as f64 / 1e6;
    assert!(
        (expires - (now + 30.0)).abs() < 2.0,
        "lease encoded in the score"
    );

    b.ack(&tags(&got)).await.unwrap();
    let left: (i64, i64) = redis::pipe()
        .hlen(opts.key("unacked"))
        .zcard(opts.key("unacked_index"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, (0, 0));
    cleanup(&opts).await;
}

/// What a Python client LPUSHes is fetched and decoded; an entry a dead Python worker
/// left in `unacked` (old score) is restored by our sweep, marked redelivered, and
/// delivered next.
#[tokio::test]
async fn python_messages_and_python_reservations() {
    let Some(opts) = redis_test("python_messages_and_python_reservations") else {
        return;
    };
    let b = broker(&opts).await;
    let fixtures = crate::support::celery_dir().join("fixtures");
    let plain: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("plain.json")).unwrap())
            .unwrap();
    let raw_msg = plain["raw"].as_str().unwrap();
    let queue = fresh_queue("py");
    let mut conn = raw(&opts).await;
    let _: () = redis::cmd("LPUSH")
        .arg(opts.key(&queue))
        .arg(raw_msg)
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = fetch_now(&b, &queue, 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(job_of(&got[0]).task, "fetch_feed");
    assert_eq!(
        got[0].tag.0,
        plain["message"]["properties"]["delivery_tag"]
            .as_str()
            .unwrap()
    );
    b.ack(&tags(&got)).await.unwrap();

    // A reservation a crashed Celery worker left behind, an hour and more ago.
    let restored: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("unacked_entry.json")).unwrap(),
    )
    .unwrap();
    let mut envelope = restored["value"][0].clone();
    envelope["properties"]["delivery_info"]["routing_key"] = json!(queue);
    let tag = "left-by-python";
    let entry = json!([envelope, "", queue]).to_string();
    let old = stale_score(&opts);
    let _: () = redis::pipe()
        .hset(opts.key("unacked"), tag, entry)
        .zadd(opts.key("unacked_index"), tag, old)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.sweep().await.unwrap(), 1);
    let again = fetch_now(&b, &queue, 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_count, 2, "marked redelivered");
    assert_eq!(job_of(&again[0]).args, vec![json!(2), json!(3)]);
    b.ack(&tags(&again)).await.unwrap();
    cleanup(&opts).await;
}

/// A worker that dies holding a reservation: another process gets the job back after
/// the lease, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_worker_reservation_comes_back_once() {
    let Some(opts) = redis_test("crashed_worker_reservation_comes_back_once") else {
        return;
    };
    let queue = fresh_queue("crash");
    let sent = job(&queue, 1);
    {
        let dying = broker(&opts).await;
        dying.publish(std::slice::from_ref(&sent)).await.unwrap();
        let got = fetch_wait(
            &dying,
            &queue,
            1,
            Duration::from_millis(300),
            Duration::ZERO,
        )
        .await;
        assert_eq!(got.len(), 1);
    }
    let (b1, b2) = (broker(&opts).await, broker(&opts).await);
    let (x, y) = tokio::join!(
        fetch_wait(&b1, &queue, 10, LONG_LEASE, Duration::from_secs(3)),
        fetch_wait(&b2, &queue, 10, LONG_LEASE, Duration::from_secs(3)),
    );
    let mut all = ids(&x);
    all.extend(ids(&y));
    assert_eq!(
        all,
        std::slice::from_ref(&sent.id),
        "exactly one redelivery"
    );
    cleanup(&opts).await;
}

/// eta messages wait reserved in `unacked` (not in the list), and `shutdown` puts them
/// back like a Celery worker's warm shutdown.
#[tokio::test]
async fn held_eta_messages_go_back_on_shutdown() {
    let Some(opts) = redis_test("held_eta_messages_go_back_on_shutdown") else {
        return;
    };
    let b = broker(&opts).await;
    let queue = fresh_queue("held");
    let mut later = job(&queue, 1);
    later.eta = Some(Utc::now() + chrono::Duration::hours(1));
    b.publish(std::slice::from_ref(&later)).await.unwrap();
    assert!(fetch_now(&b, &queue, 10).await.is_empty());
    assert_eq!(b.held(), 1);
    let mut conn = raw(&opts).await;
    let (len, unacked) = queued_and_reserved(&mut conn, &opts, &queue).await;
    assert_eq!((len, unacked), (0, 1));
    let stats = b.stats().await.unwrap();
    let mine = stats.iter().find(|s| s.queue == queue).unwrap();
    assert_eq!((mine.ready, mine.scheduled, mine.leased), (0, 1, 0));

    b.shutdown().await.unwrap();
    let (len, unacked) = queued_and_reserved(&mut conn, &opts, &queue).await;
    assert_eq!((len, unacked), (1, 0));
    // Another worker picks it up, still waiting for its eta.
    let other = broker(&opts).await;
    assert!(fetch_now(&other, &queue, 10).await.is_empty());
    assert_eq!(other.held(), 1);
    cleanup(&opts).await;
}

/// Dead letters store a FAILURE for the job (when nothing else is stored), so a
/// waiting client raises instead of waiting forever.
#[tokio::test]
async fn dead_letter_writes_a_failure_result() {
    let Some(opts) = redis_test("dead_letter_writes_a_failure_result") else {
        return;
    };
    let conn = sprout::connect::connect(&format!(
        "redis://{REDIS_ADDR}/9?global_keyprefix={}",
        opts.key_prefix
    ))
    .await
    .unwrap();
    let queue = fresh_queue("dead-result");
    let sent = job(&queue, 1);
    conn.broker
        .publish(std::slice::from_ref(&sent))
        .await
        .unwrap();
    let got = fetch_now(&*conn.broker, &queue, 1).await;
    conn.broker
        .dead_letter(&got[0].tag, "undecodable: test")
        .await
        .unwrap();
    let record = conn.backend.get(&sent.id).await.unwrap().expect("a result");
    assert_eq!(record.state, sprout::model::State::Failure);
    let err = record.error.unwrap();
    assert_eq!(
        (err.kind.as_str(), err.message.as_str()),
        ("DeadLettered", "undecodable: test")
    );
    assert!(matches!(
        conn.broker.dead_letter(&got[0].tag, "again").await,
        Err(sprout::broker::BrokerError::UnknownDelivery(_))
    ));
    assert!(matches!(
        conn.broker.retry(&DeliveryTag("nope".into()), &sent).await,
        Err(sprout::broker::BrokerError::UnknownDelivery(_))
    ));
    cleanup(&opts).await;
}

/// A TCP proxy to Redis whose connections the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(REDIS_ADDR).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    /// Drops every open connection (new ones still work).
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Connections that drop mid-stream: operations fail with a connection error or
/// succeed after the client reconnects, and every job is still delivered — none lost,
/// none left reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_dropped_connections() {
    let Some(opts) = redis_test("survives_dropped_connections") else {
        return;
    };
    let proxy = Proxy::start().await;
    let mut via_proxy = opts.clone();
    via_proxy.url = format!("redis://{}/9", proxy.addr);
    via_proxy.sweep_interval = Duration::from_millis(200);
    let b = broker(&via_proxy).await;
    let queue = fresh_queue("drops");
    let sent: Vec<_> = (0..300).map(|n| job(&queue, n)).collect();
    b.publish(&sent).await.unwrap();

    let mut seen = std::collections::HashSet::new();
    let mut errors = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    while seen.len() < sent.len() && std::time::Instant::now() < deadline {
        round += 1;
        if round % 3 == 0 {
            proxy.cut();
        }
        let got = match b
            .fetch(
                std::slice::from_ref(&queue),
                20,
                Duration::from_secs(1),
                Duration::from_millis(100),
            )
            .await
        {
            Ok(got) => got,
            Err(e) => {
                assert!(e.is_connection_error(), "{e}");
                errors += 1;
                continue;
            }
        };
        seen.extend(ids(&got));
        if let Err(e) = b.ack(&tags(&got)).await {
            assert!(e.is_connection_error(), "{e}");
            errors += 1;
        }
    }
    assert_eq!(
        seen.len(),
        sent.len(),
        "every job delivered ({errors} connection errors)"
    );
    assert!(errors > 0, "the proxy did cut connections");
    // Whatever was reserved when a reply got lost comes back and is acked; nothing stays.
    let settle = std::time::Instant::now() + Duration::from_secs(10);
    let mut conn = raw(&opts).await;
    loop {
        if let Ok(got) = b
            .fetch(
                std::slice::from_ref(&queue),
                100,
                LONG_LEASE,
                Duration::from_millis(100),
            )
            .await
        {
            let _ = b.ack(&tags(&got)).await;
        }
        let (len, unacked) = queued_and_reserved(&mut conn, &opts, &queue).await;
        if (len, unacked) == (0, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < settle,
            "left: {len} queued, {unacked} reserved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cleanup(&opts).await;
}

/// The sweep drops index entries without a message and dead-letters entries it cannot
/// read, instead of finding them again every round.
#[tokio::test]
async fn sweep_cleans_orphans_and_unreadable_entries() {
    let Some(opts) = redis_test("sweep_cleans_orphans_and_unreadable_entries") else {
        return;
    };
    let b = broker(&opts).await;
    let mut conn = raw(&opts).await;
    let old = stale_score(&opts);
    let _: () = redis::pipe()
        .zadd(opts.key("unacked_index"), "orphan", old)
        .zadd(opts.key("unacked_index"), "garbled", old)
        .hset(opts.key("unacked"), "garbled", "not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.sweep().await.unwrap(), 0);
    let (index, hash): (i64, i64) = redis::pipe()
        .zcard(opts.key("unacked_index"))
        .hlen(opts.key("unacked"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((index, hash), (0, 0));
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "unreadable unacked entry");
    cleanup(&opts).await;
}

/// A held eta message's reservation is renewed while it waits, even when its broker
/// does not fetch: another worker's sweep never takes it, and it runs once, on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_eta_reservations_are_renewed() {
    let Some(mut opts) = redis_test("held_eta_reservations_are_renewed") else {
        return;
    };
    opts.visibility_timeout = Duration::from_secs(2);
    opts.sweep_interval = Duration::from_millis(100);
    let (holder, other) = (broker(&opts).await, broker(&opts).await);
    let queue = fresh_queue("renew");
    let mut later = job(&queue, 1);
    let eta = Utc::now() + chrono::Duration::milliseconds(3500);
    later.eta = Some(eta);
    holder.publish(std::slice::from_ref(&later)).await.unwrap();
    assert!(fetch_now(&holder, &queue, 1).await.is_empty());
    assert_eq!(holder.held(), 1);

    // The other worker sweeps every 100 ms for longer than the visibility timeout.
    let stolen = fetch_wait(&other, &queue, 1, LONG_LEASE, Duration::from_secs(3)).await;
    assert!(
        stolen.is_empty(),
        "a held message was taken by another worker"
    );
    assert_eq!(other.held(), 0);

    let got = fetch_wait(&holder, &queue, 1, LONG_LEASE, Duration::from_secs(3)).await;
    assert_eq!(ids(&got), std::slice::from_ref(&later.id));
    assert!(Utc::now() >= eta);
    holder.ack(&tags(&got)).await.unwrap();
    assert!(
        fetch_wait(&other, &queue, 1, LONG_LEASE, Duration::from_millis(300))
            .await
            .is_empty()
    );
    cleanup(&opts).await;
}
