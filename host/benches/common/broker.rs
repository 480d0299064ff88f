//! Helpers of the broker benches (`sqlite_broker`, `redis_broker`): the jobs they
//! publish, the result a consumer stores for each, publishing, and the report line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sprout::broker::Broker;
use sprout::model::Job;
use sprout::model::{ResultRecord, State};
use tokio::task::JoinHandle;

/// The lease a bench consumer takes on what it fetches.
pub const LEASE: Duration = Duration::from_secs(60);

/// `n` jobs `bench.add(i, 2)` on `queue`.
pub fn jobs(queue: &str, n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let mut job = Job::new(
                "bench.add",
                vec![i.into(), 2.into()],
                serde_json::Map::new(),
            );
            job.queue = queue.to_owned();
            job
        })
        .collect()
}

/// The SUCCESS record a bench consumer stores for `job`.
pub fn success_record(job: &Job) -> ResultRecord {
    let mut rec = ResultRecord::new(job.id.clone(), job.task.clone(), State::Success);
    rec.result = Some(serde_json::json!(job.args.len()));
    rec.duration_ms = Some(0.1);
    rec.fuel_used = Some(1000);
    rec
}

/// Publishes `jobs` on `broker`, `per_call` jobs per `publish` call.
pub async fn publish_all<B: Broker + ?Sized>(broker: &B, jobs: &[Job], per_call: usize) {
    for chunk in jobs.chunks(per_call) {
        broker.publish(chunk).await.unwrap();
    }
}

/// Spawns a producer that publishes `jobs` on `broker`, `per_call` jobs per call.
pub fn spawn_producer<B: Broker + ?Sized + 'static>(
    broker: Arc<B>,
    jobs: Vec<Job>,
    per_call: usize,
) -> JoinHandle<()> {
    tokio::spawn(async move { publish_all(broker.as_ref(), &jobs, per_call).await })
}

/// Prints one result line: `n` jobs handled in `took`, and the rate.
pub fn report(what: &str, n: usize, took: Duration) {
    let rate = n as f64 / took.as_secs_f64();
    println!(
        "{what:<48} {n:>7} jobs in {:>7.1} ms = {rate:>9.0} jobs/s",
        took.as_secs_f64() * 1e3
    );
}

/// The end-to-end phase: a producer publishes `n` fresh jobs on `queue`, 1 000 per call,
/// while the consumers that `spawn_consumers` starts drain them; timed from the first
/// publish to the last ack and reported as `label`.
pub async fn end_to_end<B: Broker + ?Sized + 'static>(
    broker: Arc<B>,
    queue: &str,
    n: usize,
    label: &str,
    spawn_consumers: impl FnOnce() -> Vec<JoinHandle<()>>,
) {
    let sent = jobs(queue, n);
    let start = Instant::now();
    let producer = spawn_producer(broker, sent, 1_000);
    let consumers = spawn_consumers();
    producer.await.unwrap();
    for consumer in consumers {
        consumer.await.unwrap();
    }
    report(label, n, start.elapsed());
}

/// Asserts that `broker` holds no job: none ready, leased or scheduled.
pub async fn assert_drained<B: Broker + ?Sized>(broker: &B) {
    let stats = broker.stats().await.unwrap();
    assert!(
        stats.iter().all(|s| s.ready + s.leased + s.scheduled == 0),
        "{stats:?}"
    );
}
