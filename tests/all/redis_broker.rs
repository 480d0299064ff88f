//! The Redis broker: its runner for the broker conformance suite ([`under_test`],
//! expanded in `broker_conformance`, with Celery's priority order), and what only Redis
//! has: kombu's `unacked` layout, restores shared with Python workers, held eta
//! messages, dropped connections.
//!
//! Needs Redis at 127.0.0.1:6379 (tests print a note and pass without it). Every test
//! has its own key prefix ([`redis_test`]), deleted when the test ends, also when it fails.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use sprout::broker::redis::RedisBroker;
use sprout::broker::{Broker, BrokerError, DeliveryTag};
use sprout::storage::redis::RedisOptions;

use crate::broker_conformance::{
    BrokerUnderTest, LONG_LEASE, PriorityOrder, fetch_now, fetch_wait, fresh_queue, ids, job,
    job_of, tags,
};
use crate::support::{REDIS_ADDR, raw, redis_test};

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

/// The Redis broker for one property of the suite: two brokers (two processes) on a
/// fresh key prefix, deleted when the property ends.
pub async fn under_test(test: &str) -> Option<BrokerUnderTest> {
    let scope = redis_test(test)?;
    let (one, two) = (broker(&scope).await, broker(&scope).await);
    Some(BrokerUnderTest {
        broker: Arc::new(one),
        other: Arc::new(two),
        priority: PriorityOrder::CeleryRedis,
        keep: Box::new(scope),
    })
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
}

/// A key prefix where nothing was ever published (a fresh Redis, before the first
/// worker or client): `stats` is no queues, not an error (Redis refuses the empty
/// pipeline of queue lengths it once sent), and `sprout status` says so with exit 0.
#[tokio::test]
async fn stats_of_a_broker_with_nothing_yet_are_empty() {
    let Some(opts) = redis_test("stats_of_a_broker_with_nothing_yet_are_empty") else {
        return;
    };
    let b = broker(&opts).await;
    assert!(b.stats().await.unwrap().is_empty());
    assert!(b.dead_letters(10).await.unwrap().is_empty());
    let url = format!(
        "redis://{REDIS_ADDR}/{}?global_keyprefix={}",
        crate::support::REDIS_PREFIX_DB,
        opts.key_prefix
    );
    let out = std::process::Command::new(crate::support::sprout_bin())
        .args(["status", "--broker", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
}

/// Dead letters store a FAILURE for the job (when nothing else is stored), so a
/// waiting client raises instead of waiting forever.
#[tokio::test]
async fn dead_letter_writes_a_failure_result() {
    let Some(opts) = redis_test("dead_letter_writes_a_failure_result") else {
        return;
    };
    let conn = sprout::connect::connect(&opts.sprout_url()).await.unwrap();
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
}

/// A TCP proxy to Redis whose connections the test can cut, or whose next reply to a
/// given request it can swallow (the request reaches Redis, the answer never comes
/// back, and the connection drops).
struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    swallow: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let swallow: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let cuts = cut.clone();
        let armed = swallow.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                let armed = armed.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(REDIS_ADDR).await else {
                        return;
                    };
                    tokio::select! {
                        _ = relay(client, upstream, armed) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, swallow }
    }

    /// `opts` with its connections going through this proxy.
    fn route(&self, opts: &RedisOptions) -> RedisOptions {
        let mut via_proxy = opts.clone();
        via_proxy.url = format!("redis://{}/{}", self.addr, crate::support::REDIS_PREFIX_DB);
        via_proxy
    }

    /// Drops every open connection (new ones still work).
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Lets the next request that contains `marker` reach Redis, swallows the reply and
    /// drops that connection.
    fn swallow_reply_to(&self, marker: impl Into<Vec<u8>>) {
        *self.swallow.lock().unwrap() = Some(marker.into());
    }
}

/// Copies bytes both ways until either side closes, or until a request holding the
/// armed marker went upstream: then nothing more goes back and the connection ends
/// once Redis had time to run it.
async fn relay(
    mut client: tokio::net::TcpStream,
    mut upstream: tokio::net::TcpStream,
    armed: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let muted = Arc::new(AtomicBool::new(false));
    let (mut from_client, mut to_client) = client.split();
    let (mut from_redis, mut to_redis) = upstream.split();
    let requests = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_client.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let chunk = &buf[..n];
            let hit = {
                let mut armed = armed.lock().unwrap();
                let hit = armed
                    .as_ref()
                    .is_some_and(|m| chunk.windows(m.len()).any(|w| w == m.as_slice()));
                if hit {
                    *armed = None;
                }
                hit
            };
            if hit {
                muted.store(true, Ordering::SeqCst);
            }
            if to_redis.write_all(chunk).await.is_err() {
                return;
            }
            if hit {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
        }
    };
    let replies = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_redis.read(&mut buf).await.unwrap_or(0);
            if n == 0 || muted.load(Ordering::SeqCst) {
                return std::future::pending::<()>().await;
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = requests => {}
        () = replies => {}
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
    let mut via_proxy = proxy.route(&opts);
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
}

/// A fetch whose reply is lost after Redis ran it (the connection dropped in between)
/// strands nothing: the next fetch puts back what it reserved at once, not after its
/// lease, also on a live worker's broker, whose reservations no other sweep takes while
/// it lives. Only what that fetch reserved comes back, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_whose_reply_is_lost_puts_its_reservations_back() {
    let Some(opts) = redis_test("a_fetch_whose_reply_is_lost_puts_its_reservations_back") else {
        return;
    };
    let proxy = Proxy::start().await;
    let via_proxy = proxy.route(&opts);
    let mut conn = raw(&opts).await;
    for live in [true, false] {
        let b = broker(&via_proxy).await;
        if live {
            b.go_live(Duration::from_secs(60)).await.unwrap();
        }
        let queue = fresh_queue("lost-reply");
        let sent: Vec<_> = (0..5).map(|n| job(&queue, n)).collect();
        b.publish(&sent).await.unwrap();
        let one = std::slice::from_ref(&queue);
        // A reservation this broker got an answer for, still running: never put back.
        let running = b.fetch(one, 1, LONG_LEASE, Duration::ZERO).await.unwrap();
        assert_eq!(running.len(), 1);
        proxy.swallow_reply_to("sprout.tag_seq");
        let lost = b.fetch(one, 3, LONG_LEASE, Duration::ZERO).await;
        assert!(
            lost.as_ref().is_err_and(|e| e.is_connection_error()),
            "live={live}: the fetch lost its reply: {lost:?}"
        );
        assert_eq!(
            queued_and_reserved(&mut conn, &opts, &queue).await,
            (1, 4),
            "live={live}: Redis ran the lost fetch (three more reserved)"
        );
        let again = b.fetch(one, 10, LONG_LEASE, Duration::ZERO).await.unwrap();
        assert_eq!(
            again.len(),
            4,
            "live={live}: the three lost and the last one"
        );
        assert_eq!(
            again.iter().filter(|d| d.delivery_count == 2).count(),
            3,
            "live={live}: the three put back are marked redelivered"
        );
        let mut all = ids(&running);
        all.extend(ids(&again));
        all.sort();
        let mut expected: Vec<String> = sent.iter().map(|j| j.id.clone()).collect();
        expected.sort();
        assert_eq!(all, expected, "live={live}: each job exactly once");
        b.ack(&tags(&running)).await.unwrap();
        b.ack(&tags(&again)).await.unwrap();
        assert_eq!(
            queued_and_reserved(&mut conn, &opts, &queue).await,
            (0, 0),
            "live={live}"
        );
        // Receipts stay until their lease ends, or until the broker shuts down.
        let receipts = || {
            let mut conn = conn.clone();
            let pattern = opts.key("sprout.receipt.*");
            async move {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                keys
            }
        };
        assert!(!receipts().await.is_empty(), "live={live}");
        b.shutdown().await.unwrap();
        assert_eq!(receipts().await, Vec::<String>::new(), "live={live}");
        b.sign_off().await.unwrap();
    }
}

/// An ack, a retry or a dead-letter whose reply is lost after Redis ran it (the
/// connection dropped in between) fails with a connection error, and the settle path's
/// second try ends it once: an ack again is a no-op, a retry or dead-letter again is an
/// unknown delivery (which the settle path skips). Nothing is duplicated: the retried
/// job waits once, the dead letter exists once, nothing stays reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_whose_reply_is_lost_take_effect_once() {
    let Some(opts) = redis_test("settles_whose_reply_is_lost_take_effect_once") else {
        return;
    };
    let proxy = Proxy::start().await;
    let b = broker(&proxy.route(&opts)).await;
    b.go_live(Duration::from_secs(60)).await.unwrap();
    let mut conn = raw(&opts).await;
    let queue = fresh_queue("lost-settle");
    let sent: Vec<_> = (0..3).map(|n| job(&queue, n)).collect();
    b.publish(&sent).await.unwrap();
    let got = b
        .fetch(std::slice::from_ref(&queue), 3, LONG_LEASE, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    // The reply to the next request naming `tag` is lost (the ack's and the retry's
    // single round trip).
    let lose_reply = |tag: &DeliveryTag| proxy.swallow_reply_to(tag.0.as_bytes());
    let lost = |what: &str, result: Result<(), BrokerError>| {
        assert!(
            result.as_ref().is_err_and(|e| e.is_connection_error()),
            "the {what} lost its reply: {result:?}"
        );
    };
    let unknown = |what: &str, result: Result<(), BrokerError>| {
        assert!(
            matches!(result, Err(BrokerError::UnknownDelivery(_))),
            "the {what} tried again is an unknown delivery: {result:?}"
        );
    };

    let acked = &got[0].tag;
    lose_reply(acked);
    lost("ack", b.ack(std::slice::from_ref(acked)).await);
    b.ack(std::slice::from_ref(acked)).await.unwrap();

    let retried = &got[1];
    let mut next = retried.job.as_ref().unwrap().clone();
    next.retries += 1;
    lose_reply(&retried.tag);
    lost("retry", b.retry(&retried.tag, &next).await);
    unknown("retry", b.retry(&retried.tag, &next).await);

    // The dead-letter reads the entry first, then writes it with the reason: the reply
    // to the write is the one lost.
    let dead = &got[2];
    let reason = "dead on purpose after a lost reply";
    proxy.swallow_reply_to(reason.as_bytes());
    lost("dead-letter", b.dead_letter(&dead.tag, reason).await);
    unknown("dead-letter", b.dead_letter(&dead.tag, reason).await);

    assert_eq!(
        queued_and_reserved(&mut conn, &opts, &queue).await,
        (1, 0),
        "the retried job waits once; nothing stays reserved"
    );
    let again = b
        .fetch(std::slice::from_ref(&queue), 10, LONG_LEASE, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(ids(&again), vec![next.id.clone()]);
    assert_eq!(again[0].job.as_ref().unwrap().retries, 1);
    b.ack(&tags(&again)).await.unwrap();
    let letters = b.dead_letters(100).await.unwrap();
    let ours: Vec<_> = letters
        .iter()
        .filter(|d| d.id.as_deref() == Some(sent[2].id.as_str()))
        .collect();
    assert_eq!(ours.len(), 1, "one dead letter: {letters:?}");
    assert_eq!(ours[0].reason, reason);
    assert_eq!(queued_and_reserved(&mut conn, &opts, &queue).await, (0, 0));
    b.sign_off().await.unwrap();
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
}

/// Bytes that are not what Sprout expects — not UTF-8, not JSON, JSON of the wrong
/// shape, a truncated envelope whose tail still looks like one, a delivery tag that is
/// not plain text — come back as decode errors between the good jobs, in one fetch,
/// and are dead-lettered; nothing stays reserved and the good jobs are delivered.
#[tokio::test]
async fn garbage_bytes_are_decode_errors_that_dead_letter() {
    let Some(opts) = redis_test("garbage_bytes_are_decode_errors_that_dead_letter") else {
        return;
    };
    let b = broker(&opts).await;
    let queue = fresh_queue("garbage");
    let good = job(&queue, 1);
    b.publish(std::slice::from_ref(&good)).await.unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00, 0x80, b'{'],
        b"not json at all".to_vec(),
        b"[1, 2, 3]".to_vec(),
        b"{\"body\": 5}".to_vec(),
        b"runcated\", \"properties\": {\"delivery_tag\": \"cut-off\"}}".to_vec(),
        b"{\"properties\": {\"delivery_tag\": \"\xff\xfe\"}}".to_vec(),
        "{".repeat(100_000).into_bytes(),
    ];
    let mut conn = raw(&opts).await;
    for bytes in &garbage {
        let _: () = redis::cmd("LPUSH")
            .arg(opts.key(&queue))
            .arg(bytes.as_slice())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let last = job(&queue, 2);
    b.publish(std::slice::from_ref(&last)).await.unwrap();
    // `sprout status` reads the queues with the garbage in them.
    let stats = b.stats().await.unwrap();
    let depth = stats.iter().find(|q| q.queue == queue).map(|q| q.ready);
    assert_eq!(depth, Some(garbage.len() as u64 + 2), "{stats:?}");

    let got = fetch_now(&b, &queue, 100).await;
    assert_eq!(
        got.len(),
        garbage.len() + 2,
        "every message is delivered once"
    );
    let (bad, ok): (Vec<_>, Vec<_>) = got.iter().partition(|d| d.job.is_err());
    assert_eq!(bad.len(), garbage.len());
    let ok_ids: Vec<&str> = ok.iter().map(|d| job_of(d).id.as_str()).collect();
    assert_eq!(ok_ids, [good.id.as_str(), last.id.as_str()]);
    for delivery in &bad {
        let reason = &delivery.job.as_ref().unwrap_err().reason;
        b.dead_letter(&delivery.tag, reason).await.unwrap();
    }
    let ok_tags: Vec<DeliveryTag> = ok.iter().map(|d| d.tag.clone()).collect();
    b.ack(&ok_tags).await.unwrap();
    assert_eq!(queued_and_reserved(&mut conn, &opts, &queue).await, (0, 0));
    assert_eq!(b.dead_letters(100).await.unwrap().len(), garbage.len());
    assert!(fetch_now(&b, &queue, 10).await.is_empty());

    // A reservation whose entry is not UTF-8, left by someone else long ago: the sweep
    // still works, and buries it with its bytes kept (base64) instead of failing.
    let _: () = redis::pipe()
        .hset(opts.key("unacked"), "odd-entry", &[0xffu8, 0x00, 0x81][..])
        .zadd(opts.key("unacked_index"), "odd-entry", stale_score(&opts))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.sweep().await.unwrap(), 0);
    let dead = b.dead_letters(100).await.unwrap();
    assert_eq!(dead.len(), garbage.len() + 1);
    assert_eq!(dead[0].reason, "unreadable unacked entry");
    assert_eq!(queued_and_reserved(&mut conn, &opts, &queue).await, (0, 0));
}
