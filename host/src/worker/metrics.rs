//! Prometheus metrics of a worker (`sprout worker --metrics-addr 127.0.0.1:9808`):
//! `GET /metrics` in the OpenMetrics text format, built by the `prometheus-client`
//! crate (not by hand).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `sprout_jobs_total` | counter | task, outcome | deliveries ended: `success`, `failure`, `revoked`, `retry`, `dead_letter` |
//! | `sprout_retries_total` | counter | task | attempts that failed and run again |
//! | `sprout_dead_letters_total` | counter | task | messages dead-lettered (`task=""`: undecodable) |
//! | `sprout_revocations_total` | counter | task | jobs ended REVOKED (expired, revoked, terminated) |
//! | `sprout_job_runtime_seconds` | histogram | task | wall time of each attempt in the pool |
//! | `sprout_job_fuel` | histogram | task | fuel each attempt used |
//! | `sprout_job_peak_memory_bytes` | histogram | task | largest linear memory of each attempt |
//! | `sprout_pool_slots` | gauge | pool, kind | concurrency of each pool |
//! | `sprout_pool_slots_busy` | gauge | pool, kind | jobs running in each pool now |
//! | `sprout_jobs_reserved` | gauge | pool | jobs the worker holds (waiting, running, settling) |
//! | `sprout_jobs_waiting_eta` | gauge | pool | of those, jobs waiting for their eta |
//! | `sprout_broker_errors_total` | counter | op, kind | failed round trips (`fetch`/`settle`; `connection`/`other`) |
//! | `sprout_broker_reconnects_total` | counter | | round trips that went through again after connection failures |
//! | `sprout_task_compiles_total` | counter | | task files compiled |
//! | `sprout_task_compile_seconds_total` | counter | | time spent compiling them |
//! | `sprout_task_cache_hits_total` | counter | cache | loads served by the `artifact` (disk) or `memory` cache |
//!
//! Each pool's consume loop gets a [`PoolMetrics`] observer ([`Metrics::for_pool`]);
//! updating a metric is an atomic add under a read lock, so the job path does not wait
//! on scrapes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::observe::{BrokerOp, JobEnd, JobObserver};
use crate::model::{Execution, Job, State};
use crate::sandbox::Sandbox;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Most scrape connections served at once; more wait for one to close.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    task: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolName {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    op: &'static str,
    kind: &'static str,
}

type HistogramFamily = Family<TaskLabels, Histogram, fn() -> Histogram>;

/// Seconds: 1 ms to 5 min.
fn runtime_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ])
}

/// Fuel: 10³ to 10¹² units, a decade per bucket.
fn fuel_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e3, 10.0, 10))
}

/// Bytes: 64 KiB (one wasm page) to 4 GiB, ×4 per bucket.
fn memory_histogram() -> Histogram {
    Histogram::new(exponential_buckets(65_536.0, 4.0, 9))
}

/// The families every pool's observer writes to (cheap to clone: each is an `Arc`).
#[derive(Clone)]
struct Families {
    jobs: Family<OutcomeLabels, Counter>,
    retries: Family<TaskLabels, Counter>,
    dead_letters: Family<TaskLabels, Counter>,
    revocations: Family<TaskLabels, Counter>,
    runtime: HistogramFamily,
    fuel: HistogramFamily,
    memory: HistogramFamily,
    slots: Family<PoolLabels, Gauge>,
    busy: Family<PoolLabels, Gauge>,
    reserved: Family<PoolName, Gauge>,
    waiting_eta: Family<PoolName, Gauge>,
    broker_errors: Family<ErrorLabels, Counter>,
    reconnects: Counter,
}

/// Reads the sandbox's load counters at each scrape.
struct LoadCollector(Sandbox);

impl std::fmt::Debug for LoadCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadCollector")
    }
}

impl Collector for LoadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.load_stats();
        let compiles = ConstCounter::new(stats.compiles);
        compiles.encode(encoder.encode_descriptor(
            "sprout_task_compiles",
            "Task files compiled",
            None,
            compiles.metric_type(),
        )?)?;
        let seconds = ConstCounter::new(stats.compile_seconds);
        seconds.encode(encoder.encode_descriptor(
            "sprout_task_compile_seconds",
            "Seconds spent compiling task files",
            None,
            seconds.metric_type(),
        )?)?;
        let kind = ConstCounter::new(0u64).metric_type();
        let mut hits = encoder.encode_descriptor(
            "sprout_task_cache_hits",
            "Task-file loads served by a cache instead of a compile",
            None,
            kind,
        )?;
        for (cache, n) in [
            ("artifact", stats.artifact_hits),
            ("memory", stats.memory_hits),
        ] {
            let labels = [("cache", cache)];
            ConstCounter::new(n).encode(hits.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A worker's metrics registry (see the module docs).
pub struct Metrics {
    registry: Registry,
    families: Families,
}

impl Metrics {
    /// A registry with every metric; compile time and cache hits are read from
    /// `sandbox` (the worker's, which loads the task files) when given.
    pub fn new(sandbox: Option<Sandbox>) -> Arc<Metrics> {
        let families = Families {
            jobs: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            revocations: Family::default(),
            runtime: Family::new_with_constructor(runtime_histogram),
            fuel: Family::new_with_constructor(fuel_histogram),
            memory: Family::new_with_constructor(memory_histogram),
            slots: Family::default(),
            busy: Family::default(),
            reserved: Family::default(),
            waiting_eta: Family::default(),
            broker_errors: Family::default(),
            reconnects: Counter::default(),
        };
        let mut registry = Registry::default();
        let f = families.clone();
        registry.register(
            "sprout_jobs",
            "Deliveries ended, by task and outcome (success, failure, revoked, retry, dead_letter)",
            f.jobs,
        );
        registry.register(
            "sprout_retries",
            "Attempts that failed and run again",
            f.retries,
        );
        registry.register(
            "sprout_dead_letters",
            "Messages dead-lettered (task \"\" when the message did not decode)",
            f.dead_letters,
        );
        registry.register(
            "sprout_revocations",
            "Jobs that ended REVOKED (expired, revoked or terminated)",
            f.revocations,
        );
        registry.register(
            "sprout_job_runtime_seconds",
            "Wall time of each attempt in the pool",
            f.runtime,
        );
        registry.register("sprout_job_fuel", "Fuel each attempt used", f.fuel);
        registry.register(
            "sprout_job_peak_memory_bytes",
            "Largest linear memory of each attempt",
            f.memory,
        );
        registry.register("sprout_pool_slots", "Concurrency of each pool", f.slots);
        registry.register(
            "sprout_pool_slots_busy",
            "Jobs running in each pool now",
            f.busy,
        );
        registry.register(
            "sprout_jobs_reserved",
            "Jobs the worker holds now (waiting for a slot or their eta, running, settling)",
            f.reserved,
        );
        registry.register(
            "sprout_jobs_waiting_eta",
            "Reserved jobs waiting for their eta",
            f.waiting_eta,
        );
        registry.register(
            "sprout_broker_errors",
            "Failed broker/backend round trips, by operation and kind (connection, other)",
            f.broker_errors,
        );
        registry.register(
            "sprout_broker_reconnects",
            "Round trips that went through again after connection failures",
            f.reconnects,
        );
        if let Some(sandbox) = sandbox {
            registry.register_collector(Box::new(LoadCollector(sandbox)));
        }
        Arc::new(Metrics { registry, families })
    }

    /// The observer for one pool's consume loop; records the pool's size.
    pub fn for_pool(&self, name: &str, kind: &str, concurrency: usize) -> Arc<PoolMetrics> {
        let labels = PoolLabels {
            pool: name.to_string(),
            kind: kind.to_string(),
        };
        let slots = i64::try_from(concurrency).unwrap_or(i64::MAX);
        self.families.slots.get_or_create(&labels).set(slots);
        let _ = self.families.busy.get_or_create(&labels);
        let pool = PoolName {
            pool: name.to_string(),
        };
        let _ = self.families.reserved.get_or_create(&pool);
        let _ = self.families.waiting_eta.get_or_create(&pool);
        Arc::new(PoolMetrics {
            families: self.families.clone(),
            labels,
            pool,
        })
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        out
    }

    /// The answer to one HTTP request: `GET`/`HEAD /metrics`; 404 elsewhere, 405 for
    /// other methods.
    fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, text: &'static str| {
            let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
            *response.status_mut() = status;
            response
        };
        if request.uri().path() != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "not found: try /metrics\n");
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            response.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET, HEAD"),
            );
            return response;
        }
        let mut response = Response::new(Full::new(Bytes::from(self.render())));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(CONTENT_TYPE),
        );
        response
    }

    /// Serves `/metrics` on `addr` (port 0: any free port) until the returned task is
    /// aborted; returns the address it listens on.
    ///
    /// # Errors
    /// The listener could not be bound (address in use, not local, no permission).
    pub async fn serve(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let metrics = self.clone();
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let server = tokio::spawn(async move {
            loop {
                let Ok(permit) = connections.clone().acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!("metrics server: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let response = metrics.respond(&request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!("metrics server: connection ended: {e}");
                    }
                    drop(permit);
                });
            }
        });
        Ok((local, server))
    }
}

/// The metrics observer of one pool (see the module docs).
pub struct PoolMetrics {
    families: Families,
    labels: PoolLabels,
    pool: PoolName,
}

impl PoolMetrics {
    fn task(task: &str) -> TaskLabels {
        TaskLabels {
            task: task.to_string(),
        }
    }

    fn count_job(&self, task: &str, outcome: &'static str) {
        let labels = OutcomeLabels {
            task: task.to_string(),
            outcome,
        };
        self.families.jobs.get_or_create(&labels).inc();
    }
}

impl JobObserver for PoolMetrics {
    fn received(&self, _job: &Job) {
        self.families.reserved.get_or_create(&self.pool).inc();
    }

    fn eta_wait(&self, _job: &Job, waiting: bool) {
        let gauge = self.families.waiting_eta.get_or_create(&self.pool);
        if waiting {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    fn started(&self, _job: &Job) {
        self.families.busy.get_or_create(&self.labels).inc();
    }

    fn stopped(&self, _job: &Job) {
        self.families.busy.get_or_create(&self.labels).dec();
    }

    fn executed(&self, job: &Job, execution: &Execution) {
        self.families.busy.get_or_create(&self.labels).dec();
        let task = Self::task(&job.task);
        let f = &self.families;
        f.runtime
            .get_or_create(&task)
            .observe(execution.duration.as_secs_f64());
        f.fuel
            .get_or_create(&task)
            .observe(execution.fuel_used as f64);
        f.memory
            .get_or_create(&task)
            .observe(execution.peak_memory_bytes as f64);
    }

    fn ended(&self, end: &JobEnd<'_>) {
        let f = &self.families;
        let task = end.task();
        match end {
            JobEnd::Finished { record, .. } => {
                let outcome = match record.state {
                    State::Success => "success",
                    State::Revoked => {
                        f.revocations.get_or_create(&Self::task(task)).inc();
                        "revoked"
                    }
                    _ => "failure",
                };
                self.count_job(task, outcome);
            }
            JobEnd::Retried { .. } => {
                f.retries.get_or_create(&Self::task(task)).inc();
                self.count_job(task, "retry");
            }
            JobEnd::Requeued { .. } => {}
            JobEnd::DeadLettered { .. } => {
                f.dead_letters.get_or_create(&Self::task(task)).inc();
                self.count_job(task, "dead_letter");
            }
        }
        // A message that never decoded was never `received`.
        let was_received = !matches!(end, JobEnd::DeadLettered { job: None, .. });
        if was_received {
            f.reserved.get_or_create(&self.pool).dec();
        }
    }

    fn broker_error(&self, op: BrokerOp, connection: bool) {
        let labels = ErrorLabels {
            op: op.name(),
            kind: if connection { "connection" } else { "other" },
        };
        self.families.broker_errors.get_or_create(&labels).inc();
    }

    fn reconnected(&self) {
        self.families.reconnects.inc();
    }
}
