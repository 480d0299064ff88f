//! Throughput of the embedded SQLite broker and result backend.
//!
//! Run: `cargo bench -p sprout --bench sqlite_broker`
//! (`SPROUT_BENCH_JOBS`, default 50000, and `SPROUT_BENCH_BATCH`, default 256, tune it).
//!
//! Three phases on a fresh file, each reported as jobs per second:
//! 1. publish: all jobs, 10 000 per `publish` call (one transaction each);
//! 2. drain: one consumer loop `fetch(batch)` → `store(batch SUCCESS records)` → `ack(batch)`
//!    over the jobs of phase 1 — the broker + backend cost a worker pays per job;
//! 3. end to end: a producer publishing 1 000 per call while two consumers drain
//!    concurrently, timed from the first publish to the last ack.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sprout::connect::{self, Connection};
use sprout::model::ResultRecord;

use common::broker::{
    LEASE, assert_drained, end_to_end, jobs, publish_all, report, success_record,
};
use common::{env_usize, runtime};

/// Fetches, stores a result for and acks jobs until `done` (shared) reaches `target`.
async fn consume(
    store: Arc<Connection>,
    queue: String,
    batch: usize,
    done: Arc<AtomicUsize>,
    target: usize,
) {
    let queues = [queue];
    while done.load(Ordering::Relaxed) < target {
        let got = store
            .broker
            .fetch(&queues, batch, LEASE, Duration::from_millis(50))
            .await
            .unwrap();
        if got.is_empty() {
            continue;
        }
        let records: Vec<ResultRecord> = got
            .iter()
            .map(|d| success_record(d.job.as_ref().unwrap()))
            .collect();
        store.backend.store(&records).await.unwrap();
        let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
        store.broker.ack(&tags).await.unwrap();
        done.fetch_add(got.len(), Ordering::Relaxed);
    }
}

async fn run(n: usize, batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
    let store = Arc::new(connect::connect(&url).await.unwrap());

    // 1. publish
    let sent = jobs("bench", n);
    let start = Instant::now();
    publish_all(store.broker.as_ref(), &sent, 10_000).await;
    report("publish (10k per call)", n, start.elapsed());

    // 2. drain: fetch + store + ack, one consumer
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    consume(store.clone(), "bench".into(), batch, done.clone(), n).await;
    report(
        &format!("fetch+store+ack, 1 consumer, batch {batch}"),
        n,
        start.elapsed(),
    );
    assert_eq!(done.load(Ordering::Relaxed), n);

    // 3. end to end: producer and two consumers at once
    let done = Arc::new(AtomicUsize::new(0));
    end_to_end(
        store.broker.clone(),
        "e2e",
        n,
        &format!("end to end: publish 1k/call, 2 consumers, batch {batch}"),
        || {
            (0..2)
                .map(|_| tokio::spawn(consume(store.clone(), "e2e".into(), batch, done.clone(), n)))
                .collect()
        },
    )
    .await;

    assert_drained(store.broker.as_ref()).await;
    let db = std::fs::metadata(dir.path().join("bench.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("database file: {:.1} MB", db as f64 / 1e6);
}

fn main() {
    let n = env_usize("SPROUT_BENCH_JOBS", 50_000);
    let batch = env_usize("SPROUT_BENCH_BATCH", 256);
    runtime().block_on(run(n, batch));
}
