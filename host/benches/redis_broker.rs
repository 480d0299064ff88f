//! Throughput of the Redis broker and result backend (Celery protocol v2 on the wire).
//!
//! Run: `cargo bench -p sprout --bench redis_broker` with Redis at 127.0.0.1:6379
//! (`SPROUT_BENCH_JOBS`, default 50000; `SPROUT_BENCH_BATCH`, default 256;
//! `SPROUT_BENCH_CONSUMERS`, default 2; `SPROUT_BENCH_REDIS`, default
//! `redis://127.0.0.1:6379/9`). Keys live under a fresh prefix and are deleted after.
//!
//! First the codec alone (encode/decode per message), then phases matching
//! `sqlite_broker`, each reported as jobs per second:
//! 1. publish: all jobs as Celery messages (the encoder), 10 000 per `publish` call;
//! 2. drain: one consumer loop `fetch(batch)` → `store(batch SUCCESS records)` →
//!    `ack(batch)` — the broker + backend cost a worker pays per job (reserve script,
//!    decode, result encode, store script with SET+PUBLISH, ack MULTI);
//! 3. the same drain with several consumers on one connection (pipelined round trips);
//! 4. end to end: a producer publishing 1 000 per call while the consumers drain.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sprout::backend::ResultBackend;
use sprout::backend::redis::RedisBackend;
use sprout::broker::Broker;
use sprout::broker::redis::RedisBroker;
use sprout::celery;
use sprout::storage::redis::RedisOptions;
use tokio::task::JoinHandle;

use common::broker::{
    LEASE, assert_drained, end_to_end, jobs, publish_all, report, success_record,
};
use common::{env_usize, runtime};

/// Fetches, stores a result for and acks jobs until `done` reaches `target`.
async fn consume(
    broker: Arc<RedisBroker>,
    backend: Arc<RedisBackend>,
    queue: String,
    batch: usize,
    done: Arc<AtomicUsize>,
    target: usize,
) {
    let queues = [queue];
    while done.load(Ordering::Relaxed) < target {
        let t = Instant::now();
        let got = broker
            .fetch(&queues, batch, LEASE, Duration::from_millis(50))
            .await
            .unwrap();
        if got.is_empty() {
            continue;
        }
        let t = add_phase(0, t);
        let mut records = Vec::with_capacity(got.len());
        for d in &got {
            let job = d.job.as_ref().unwrap();
            records.extend(celery::settle(job, success_record(job)).store);
        }
        let t = add_phase(1, t);
        backend.store(&records).await.unwrap();
        let t = add_phase(2, t);
        let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
        broker.ack(&tags).await.unwrap();
        add_phase(3, t);
        done.fetch_add(got.len(), Ordering::Relaxed);
    }
}

/// Nanoseconds spent in fetch, building results, store and ack (all consumers).
static PHASES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn add_phase(i: usize, since: Instant) -> Instant {
    PHASES[i].fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Instant::now()
}

/// Spawns `consumers` consumers of `queue` that together handle `target` jobs.
fn spawn_consumers(
    broker: &Arc<RedisBroker>,
    backend: &Arc<RedisBackend>,
    queue: &str,
    batch: usize,
    target: usize,
    consumers: usize,
) -> Vec<JoinHandle<()>> {
    let done = Arc::new(AtomicUsize::new(0));
    (0..consumers)
        .map(|_| {
            tokio::spawn(consume(
                broker.clone(),
                backend.clone(),
                queue.to_string(),
                batch,
                done.clone(),
                target,
            ))
        })
        .collect()
}

async fn drain(
    label: &str,
    broker: &Arc<RedisBroker>,
    backend: &Arc<RedisBackend>,
    queue: &str,
    n: usize,
    batch: usize,
    consumers: usize,
) {
    for p in &PHASES {
        p.store(0, Ordering::Relaxed);
    }
    let start = Instant::now();
    let tasks = spawn_consumers(broker, backend, queue, batch, n, consumers);
    for t in tasks {
        t.await.unwrap();
    }
    report(&format!("{label}, batch {batch}"), n, start.elapsed());
    let per_job = |i: usize| PHASES[i].load(Ordering::Relaxed) as f64 / n as f64 / 1e3;
    println!(
        "    summed over consumers, per job: fetch {:.1} µs, settle {:.1} µs, store {:.1} µs, ack {:.1} µs",
        per_job(0),
        per_job(1),
        per_job(2),
        per_job(3)
    );
}

async fn run(url: &str, n: usize, batch: usize, consumers: usize) {
    let prefix = format!("sprout-bench-{}:", uuid::Uuid::new_v4().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    let opts = RedisOptions::from_url(&format!("{url}{sep}global_keyprefix={prefix}")).unwrap();
    let broker = Arc::new(RedisBroker::connect(opts.clone()).await.unwrap());
    let backend = Arc::new(RedisBackend::connect(opts.clone()).await.unwrap());

    let sent = jobs("bench", n);
    // 0. the codec alone (client side, no Redis)
    let start = Instant::now();
    let encoded: Vec<_> = sent.iter().map(celery::encode).collect();
    let enc = start.elapsed();
    let start = Instant::now();
    for out in &encoded {
        celery::decode(out.envelope.as_bytes(), Some("bench")).unwrap();
    }
    let dec = start.elapsed();
    println!(
        "codec: encode {:.2} µs, decode {:.2} µs per message ({} bytes)",
        enc.as_secs_f64() * 1e6 / n as f64,
        dec.as_secs_f64() * 1e6 / n as f64,
        encoded[0].envelope.len()
    );
    drop(encoded);

    let start = Instant::now();
    publish_all(broker.as_ref(), &sent, 10_000).await;
    report("publish (10k per call)", n, start.elapsed());
    drain(
        "fetch+store+ack, 1 consumer",
        &broker,
        &backend,
        "bench",
        n,
        batch,
        1,
    )
    .await;

    publish_all(broker.as_ref(), &jobs("bench2", n), 10_000).await;
    let label = format!("fetch+store+ack, {consumers} consumers");
    drain(&label, &broker, &backend, "bench2", n, batch, consumers).await;

    end_to_end(
        broker.clone(),
        "e2e",
        n,
        &format!("end to end: publish 1k/call, {consumers} consumers, batch {batch}"),
        || spawn_consumers(&broker, &backend, "e2e", batch, n, consumers),
    )
    .await;

    assert_drained(broker.as_ref()).await;

    // Clean up the prefix (results included).
    let mut conn = opts
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

fn main() {
    let url =
        std::env::var("SPROUT_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".into());
    let addr = "127.0.0.1:6379".parse().unwrap();
    if url.contains("127.0.0.1:6379")
        && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    {
        println!("skipping redis_broker bench: no Redis at 127.0.0.1:6379");
        return;
    }
    let n = env_usize("SPROUT_BENCH_JOBS", 50_000);
    let batch = env_usize("SPROUT_BENCH_BATCH", 256);
    let consumers = env_usize("SPROUT_BENCH_CONSUMERS", 2);
    runtime().block_on(run(&url, n, batch, consumers));
}
