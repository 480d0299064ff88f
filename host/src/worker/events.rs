//! Celery's monitoring events (`sprout worker -E`), so Flower and `celery events` show
//! Sprout workers and their tasks unchanged.
//!
//! [`Events::start`] sends `worker-online` and then a `worker-heartbeat` every
//! [`HEARTBEAT_FREQ`](crate::celery::events::HEARTBEAT_FREQ) seconds (with `active`,
//! `processed`, `loadavg` and Sprout's `pools`); [`Events::stop`] flushes what is queued
//! and sends `worker-offline`. Each pool's consume loop gets a [`PoolEvents`] observer
//! ([`Events::for_pool`]) that turns the job path into task events: `task-received`,
//! `task-started`, then `task-succeeded` / `task-failed` / `task-retried` /
//! `task-revoked`, or `task-rejected` for a dead-lettered message — each with Sprout's
//! `pool`, and on the last ones the attempt's `fuel_used` and `peak_memory_bytes`.
//!
//! Task events are queued (never awaited on the job path) and sent in batches as
//! `task.multi` messages, like a Celery worker's buffered `task` group. The queue is
//! bounded ([`QUEUE_CAP`]): when the broker cannot keep up, events are dropped and
//! counted, never jobs slowed. Events are fire-and-forget, as in Celery: a receiver
//! that is not listening misses them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::observe::{JobEnd, JobObserver};
use crate::broker::events::EventSink;
use crate::celery::events::{self as wire, TaskEvent, WorkerEventKind, WorkerStatus};
use crate::model::{Execution, Job, State};

/// Most task events queued for sending; past it new events are dropped (and counted).
pub const QUEUE_CAP: usize = 100_000;
/// Most task events in one `task.multi` message.
const BATCH: usize = 1000;
/// How long [`Events::stop`] waits for queued events to go out.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Message {
    Event(Value),
    Flush(oneshot::Sender<()>),
}

/// One pool as worker events report it.
struct PoolState {
    name: String,
    kind: String,
    concurrency: usize,
    busy: Arc<AtomicU64>,
}

struct Inner {
    sink: Arc<dyn EventSink>,
    sender: wire::Sender,
    clock: AtomicU64,
    /// Jobs handed to a pool since start (Celery's `processed`).
    processed: AtomicU64,
    pools: Mutex<Vec<PoolState>>,
    queue: mpsc::Sender<Message>,
    dropped: AtomicU64,
    /// Whether task events are sent (`-E`, `enable_events`); worker events always are.
    task_events: Arc<AtomicBool>,
}

impl Inner {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn status(&self) -> WorkerStatus {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut active = 0;
        let mut described = Map::new();
        for pool in pools.iter() {
            let busy = pool.busy.load(Ordering::Relaxed);
            active += busy;
            described.insert(
                pool.name.clone(),
                json!({"kind": pool.kind, "concurrency": pool.concurrency, "busy": busy}),
            );
        }
        WorkerStatus {
            active,
            processed: self.processed.load(Ordering::Relaxed),
            loadavg: loadavg(),
            pools: described,
        }
    }

    async fn send_worker_event(&self, kind: WorkerEventKind) {
        let body = wire::worker_event(
            &self.sender,
            self.tick(),
            kind,
            &self.status(),
            wire::now_timestamp(),
        );
        let key = wire::routing_key(kind.type_name());
        if let Err(e) = self.sink.send(&key, &self.sender.hostname, &body).await {
            tracing::warn!("could not send {}: {e}", kind.type_name());
        }
    }

    fn queue_task_event(&self, uuid: &str, event: &TaskEvent<'_>, extra: &Map<String, Value>) {
        if !self.task_events.load(Ordering::Relaxed) {
            return;
        }
        let body = wire::task_event(
            &self.sender,
            self.tick(),
            uuid,
            event,
            extra,
            wire::now_timestamp(),
        );
        if self.queue.try_send(Message::Event(body)).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    "{dropped} task event(s) dropped so far: the broker does not keep up with them"
                );
            }
        }
    }
}

/// The machine's load averages, rounded to two decimals like Celery's.
fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = field
            .parse::<f64>()
            .map(|x| (x * 100.0).round() / 100.0)
            .unwrap_or(0.0);
    }
    out
}

/// A worker's event dispatcher: worker events, and the queue task events go through.
pub struct Events {
    inner: Arc<Inner>,
    publisher: JoinHandle<()>,
    heart: JoinHandle<()>,
}

impl Events {
    /// Sends `worker-online` for the worker `hostname` through `sink`, then starts the
    /// heartbeat and the task-event sender.
    ///
    /// Task events are sent only while `task_events` is on (`-E`; `enable_events` and
    /// `disable_events` turn it at run time); worker events always.
    pub async fn start(
        sink: Arc<dyn EventSink>,
        hostname: &str,
        task_events: Arc<AtomicBool>,
    ) -> Events {
        let (queue, rx) = mpsc::channel(QUEUE_CAP);
        let inner = Arc::new(Inner {
            sink,
            sender: wire::Sender::this_process(hostname),
            clock: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            pools: Mutex::new(Vec::new()),
            queue,
            dropped: AtomicU64::new(0),
            task_events,
        });
        inner.send_worker_event(WorkerEventKind::Online).await;
        let publisher = tokio::spawn(publish(inner.clone(), rx));
        let heart = tokio::spawn(heartbeat(inner.clone()));
        Events {
            inner,
            publisher,
            heart,
        }
    }

    /// The observer for one pool's consume loop (`kind`: `async`, `prefork`).
    pub fn for_pool(&self, name: &str, kind: &str, concurrency: usize) -> Arc<PoolEvents> {
        let busy = Arc::new(AtomicU64::new(0));
        self.inner
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PoolState {
                name: name.to_string(),
                kind: kind.to_string(),
                concurrency,
                busy: busy.clone(),
            });
        let mut extra = Map::new();
        extra.insert("pool".into(), json!(name));
        Arc::new(PoolEvents {
            inner: self.inner.clone(),
            busy,
            extra,
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// Task events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Stops the heartbeat, sends what is queued, then `worker-offline` — waiting at
    /// most two seconds for each, so a broker that does not answer cannot hold up the
    /// shutdown (what is left is dropped).
    pub async fn stop(self) {
        self.heart.abort();
        let (done, flushed) = oneshot::channel();
        let flush = async {
            if self.inner.queue.send(Message::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        if tokio::time::timeout(FLUSH_WAIT, flush).await.is_err() {
            tracing::warn!("task events still queued at shutdown were dropped");
        }
        self.publisher.abort();
        let offline = self.inner.send_worker_event(WorkerEventKind::Offline);
        if tokio::time::timeout(FLUSH_WAIT, offline).await.is_err() {
            tracing::warn!("could not send worker-offline in time");
        }
    }
}

/// Sends queued task events in `task.multi` batches until the dispatcher stops.
async fn publish(inner: Arc<Inner>, mut rx: mpsc::Receiver<Message>) {
    let mut buffer = Vec::with_capacity(BATCH);
    let mut warned = false;
    while rx.recv_many(&mut buffer, BATCH).await > 0 {
        let mut events = Vec::with_capacity(buffer.len());
        let mut flushes = Vec::new();
        for message in buffer.drain(..) {
            match message {
                Message::Event(event) => events.push(event),
                Message::Flush(done) => flushes.push(done),
            }
        }
        if !events.is_empty() {
            let body = Value::Array(events);
            match inner
                .sink
                .send(wire::TASK_MULTI, &inner.sender.hostname, &body)
                .await
            {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!("could not send task events (dropped): {e}");
                }
                Err(_) => {}
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Sends `worker-heartbeat` every `HEARTBEAT_FREQ` seconds.
async fn heartbeat(inner: Arc<Inner>) {
    let period = Duration::from_secs_f64(wire::HEARTBEAT_FREQ);
    loop {
        tokio::time::sleep(period).await;
        inner.send_worker_event(WorkerEventKind::Heartbeat).await;
    }
}

/// What an attempt cost, kept from `executed` until the job's end event.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    fuel_used: u64,
    peak_memory_bytes: u64,
}

/// Task events of one pool (see the module docs).
pub struct PoolEvents {
    inner: Arc<Inner>,
    busy: Arc<AtomicU64>,
    /// Sprout's fields on every task event of this pool (`pool`).
    extra: Map<String, Value>,
    /// Attempts that ran, by job id, until their end event is sent.
    attempts: Mutex<HashMap<String, Attempt>>,
}

impl PoolEvents {
    fn send(&self, uuid: &str, event: &TaskEvent<'_>) {
        self.inner.queue_task_event(uuid, event, &self.extra);
    }

    fn take_attempt(&self, id: &str) -> Option<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// The end event of an attempt, with what it cost when it ran.
    fn send_end(&self, uuid: &str, event: &TaskEvent<'_>, attempt: Option<Attempt>) {
        match attempt {
            Some(attempt) => {
                let mut extra = self.extra.clone();
                extra.insert("fuel_used".into(), json!(attempt.fuel_used));
                extra.insert("peak_memory_bytes".into(), json!(attempt.peak_memory_bytes));
                self.inner.queue_task_event(uuid, event, &extra);
            }
            None => self.send(uuid, event),
        }
    }
}

impl JobObserver for PoolEvents {
    fn received(&self, job: &Job) {
        self.send(&job.id, &TaskEvent::Received { job });
    }

    fn started(&self, job: &Job) {
        self.inner.processed.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.send(&job.id, &TaskEvent::Started);
    }

    fn executed(&self, job: &Job, execution: &Execution) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                job.id.clone(),
                Attempt {
                    fuel_used: execution.fuel_used,
                    peak_memory_bytes: execution.peak_memory_bytes,
                },
            );
    }

    fn ended(&self, end: &JobEnd<'_>) {
        match *end {
            JobEnd::Finished { job, record } => {
                let attempt = self.take_attempt(&job.id);
                let error = record.error.as_ref();
                let exception = || {
                    error
                        .map(|e| wire::exception_repr(&e.kind, &e.message))
                        .unwrap_or_default()
                };
                let traceback = || error.and_then(|e| e.traceback.clone()).unwrap_or_default();
                let event = match record.state {
                    State::Success => TaskEvent::Succeeded {
                        result: wire::result_repr(record.result.as_ref().unwrap_or(&Value::Null)),
                        runtime: record.duration_ms.unwrap_or(0.0) / 1e3,
                    },
                    State::Revoked => {
                        let expired = error.is_some_and(|e| e.message.starts_with("expired"));
                        TaskEvent::Revoked {
                            // Revoked after it started running: it was stopped.
                            terminated: attempt.is_some() && !expired,
                            signum: None,
                            expired,
                        }
                    }
                    State::Failure => TaskEvent::Failed {
                        exception: exception(),
                        traceback: traceback(),
                    },
                    _ => return,
                };
                self.send_end(&job.id, &event, attempt);
            }
            JobEnd::Retried { job, record } => {
                let attempt = self.take_attempt(&job.id);
                let error = record.error.as_ref();
                let event = TaskEvent::Retried {
                    exception: error
                        .map(|e| wire::exception_repr(&e.kind, &e.message))
                        .unwrap_or_default(),
                    traceback: error.and_then(|e| e.traceback.clone()).unwrap_or_default(),
                };
                self.send_end(&job.id, &event, attempt);
            }
            JobEnd::Requeued { job } => {
                self.take_attempt(&job.id);
            }
            JobEnd::DeadLettered { id, .. } => {
                if let Some(id) = id {
                    let attempt = self.take_attempt(id);
                    self.send_end(id, &TaskEvent::Rejected { requeue: false }, attempt);
                }
            }
        }
    }
}
