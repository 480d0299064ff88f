//! The control plane: answers Celery's remote-control commands (`celery inspect …`,
//! `celery control …`, `app.control.*`, `sprout inspect|control …`) for every pool of
//! one worker process.
//!
//! It runs **beside the job path**, on a thread of its own with its own small runtime
//! ([`ControlPlane::serve`]): a worker whose every slot runs a CPU hog, or whose
//! runtime is busy settling thousands of jobs, still answers `ping` at once.
//!
//! What it knows: the jobs the process holds ([`Jobs`]: reserved, scheduled, active,
//! each with its own stop signal), the revoked ids ([`Revoked`], persisted with
//! `--statedb`), the pools and their queues, and per-task counters. Each consume loop
//! attaches its pool ([`ControlPlane::attach`]) and reads its queue list from the plane
//! before every fetch, so `add_consumer` / `cancel_consumer` apply at the next fetch.
//!
//! Commands and replies follow Celery 5.7's `celery.worker.control` (reply shapes,
//! `{"ok": …}` / `{"error": …}` texts). Where Sprout differs, it says so in the reply:
//! the signal of a terminate is checked but every signal stops the job the same way (at
//! its next fuel slice; nothing else in the process is touched).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, oneshot, watch};

use super::active::{Jobs, Stage, Stop};
use super::revoked::Revoked;
use crate::broker::mailbox::Mailbox;
use crate::celery::control::{self, ControlRequest};
use crate::model::Limits;
use crate::pool::Pool;
use crate::rate_limit::RateLimit;
use crate::registry::{Registry, TaskEntry};

/// Signals `terminate` accepts (by name, with or without `SIG`, or by number).
const SIGNALS: &[(&str, i64)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("TERM", 15),
];

/// A pool as the control plane sees it.
struct Attached {
    name: String,
    pool: Arc<dyn Pool>,
    queues: Arc<RwLock<Vec<String>>>,
    reservations: Arc<Semaphore>,
    prefetch: usize,
}

/// A consume loop's link to the plane: its current queue list.
#[derive(Clone)]
pub(crate) struct PoolLink {
    queues: Arc<RwLock<Vec<String>>>,
}

impl PoolLink {
    /// The queues to fetch from now.
    pub(crate) fn queues(&self) -> Vec<String> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Per-task settings changed by remote control (`rate_limit`, `time_limit`).
#[derive(Debug, Clone, Default)]
struct TaskOverride {
    /// `Some(None)`: the rate limit was removed.
    rate_limit: Option<Option<RateLimit>>,
    time_limit: Option<Duration>,
    soft_time_limit: Option<Option<Duration>>,
}

/// One worker process's control plane. See the [module docs](self).
pub struct ControlPlane {
    hostname: String,
    started: Instant,
    pub(crate) jobs: Jobs,
    revoked: Revoked,
    pools: Mutex<Vec<Attached>>,
    registry: Mutex<Option<Arc<Registry>>>,
    totals: Mutex<BTreeMap<String, u64>>,
    overrides: RwLock<HashMap<String, TaskOverride>>,
    has_overrides: AtomicBool,
    events: Arc<AtomicBool>,
    clock: AtomicU64,
    shutdown: watch::Sender<bool>,
    broker_info: Mutex<Value>,
}

/// Stops the control thread when dropped.
pub struct ControlHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ControlPlane {
    /// The plane of the worker called `hostname`, remembering revoked ids in `revoked`.
    pub fn new(hostname: impl Into<String>, revoked: Revoked) -> Arc<ControlPlane> {
        Arc::new(ControlPlane {
            hostname: hostname.into(),
            started: Instant::now(),
            jobs: Jobs::default(),
            revoked,
            pools: Mutex::default(),
            registry: Mutex::default(),
            totals: Mutex::default(),
            overrides: RwLock::default(),
            has_overrides: AtomicBool::new(false),
            events: Arc::new(AtomicBool::new(false)),
            clock: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
            broker_info: Mutex::new(Value::Null),
        })
    }

    /// The worker's name in replies.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Sets what `inspect stats` says about the broker (`{"transport": "redis", …}`).
    pub fn set_broker_info(&self, info: Value) {
        *lock(&self.broker_info) = info;
    }

    /// Whether task events are on (`enable_events` / `disable_events`; starts off).
    pub fn events_enabled(&self) -> bool {
        self.events.load(Ordering::Relaxed)
    }

    /// The switch [`ControlPlane::set_events`] and `enable_events` / `disable_events`
    /// turn: the event sender reads it before each task event.
    pub fn events_switch(&self) -> Arc<AtomicBool> {
        self.events.clone()
    }

    /// Turns task events on or off (the worker's `-E`).
    pub fn set_events(&self, on: bool) {
        self.events.store(on, Ordering::Relaxed);
    }

    /// Resolves once a remote `shutdown` was received.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|asked| *asked).await;
    }

    /// Whether job `id` is revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.contains(id)
    }

    /// Revokes `ids` (terminating running ones when `terminate` is given, with it as the
    /// reason); returns the ids of the running jobs it stopped.
    pub fn revoke(&self, ids: &[String], terminate: Option<&str>) -> Vec<String> {
        if let Err(e) = self.revoked.add(ids) {
            tracing::error!("remote control: {e}; the revoke holds until restart only");
        }
        let stop = match terminate {
            Some(reason) => Stop::Terminate(reason.to_string()),
            None => Stop::Revoke("revoked".into()),
        };
        let running = self.jobs.stop(ids, &stop);
        if terminate.is_some() {
            running
        } else {
            Vec::new()
        }
    }

    /// Attaches a consume loop's pool (named `name`, fetching `queues`, holding at most
    /// `reservations` permits, `prefetch` per slot) and the registry it runs.
    pub(crate) fn attach(
        &self,
        name: &str,
        pool: Arc<dyn Pool>,
        queues: Vec<String>,
        reservations: Arc<Semaphore>,
        prefetch: usize,
        registry: Arc<Registry>,
    ) -> PoolLink {
        let queues = Arc::new(RwLock::new(queues));
        lock(&self.pools).push(Attached {
            name: name.to_string(),
            pool,
            queues: queues.clone(),
            reservations,
            prefetch: prefetch.max(1),
        });
        lock(&self.registry).get_or_insert(registry);
        PoolLink { queues }
    }

    /// Counts a finished job of `task` (for `inspect stats`' `total`).
    pub(crate) fn count(&self, task: &str) {
        *lock(&self.totals).entry(task.to_string()).or_default() += 1;
    }

    /// `entry` with the rate and time limits remote control set for its task, if any.
    pub(crate) fn adjust(&self, entry: Arc<TaskEntry>) -> Arc<TaskEntry> {
        if !self.has_overrides.load(Ordering::Relaxed) {
            return entry;
        }
        let over = self
            .overrides
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&entry.name)
            .cloned();
        let Some(over) = over else { return entry };
        let mut manifest = (*entry.manifest).clone();
        if let Some(rate) = over.rate_limit {
            manifest.rate_limit = rate;
        }
        let mut limits: Limits = entry.limits.clone();
        if let Some(hard) = over.time_limit {
            limits.time_limit = hard;
        }
        if let Some(soft) = over.soft_time_limit {
            limits.soft_time_limit = soft;
        }
        Arc::new(TaskEntry {
            name: entry.name.clone(),
            export: entry.export.clone(),
            file: entry.file.clone(),
            module: entry.module.clone(),
            manifest: Arc::new(manifest),
            limits,
            capabilities: entry.capabilities.clone(),
        })
    }

    /// Starts answering requests from `mailbox` on a thread of its own; stops when the
    /// handle is dropped.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn serve(self: &Arc<Self>, mailbox: Arc<dyn Mailbox>) -> std::io::Result<ControlHandle> {
        let (stop, stopped) = oneshot::channel::<()>();
        let plane = self.clone();
        let thread = std::thread::Builder::new()
            .name("sprout-control".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("remote control: cannot start its runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        _ = plane.listen(mailbox) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(ControlHandle {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Listens (re-listening with backoff when the mailbox fails) and answers.
    async fn listen(&self, mailbox: Arc<dyn Mailbox>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut requests = match mailbox.listen().await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!("remote control: cannot listen ({e}); retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            while let Some(request) = requests.recv().await {
                if !request.is_for(&self.hostname) {
                    continue;
                }
                tracing::debug!(method = %request.method, "remote control");
                let Some(reply) = self.handle(&request) else {
                    continue;
                };
                if let Err(e) = mailbox.reply(&request, &self.hostname, reply).await {
                    tracing::warn!("remote control: cannot reply to {}: {e}", request.method);
                }
            }
        }
    }

    /// Answers one request; `None`: no reply (as Celery's `shutdown`).
    pub fn handle(&self, request: &ControlRequest) -> Option<Value> {
        self.clock.fetch_add(1, Ordering::Relaxed);
        let args = &request.arguments;
        let host = self.hostname.as_str();
        Some(match request.method.as_str() {
            "ping" => control::ok("pong"),
            "active" => Value::Array(self.jobs.list(Stage::Active, host)),
            "reserved" => Value::Array(self.jobs.list(Stage::Reserved, host)),
            "scheduled" => Value::Array(self.jobs.list(Stage::Scheduled, host)),
            "registered" | "registered_tasks" => self.registered(),
            "stats" => self.stats(),
            "active_queues" => self.active_queues(),
            "revoked" => json!(self.revoked.list()),
            "conf" => self.conf(),
            "clock" => json!({"clock": self.clock.load(Ordering::Relaxed)}),
            "query_task" => Value::Object(self.jobs.query(&ids(args.get("ids")), host)),
            "revoke" => {
                let terminate = args.get("terminate").is_some_and(truthy);
                self.revoke_reply(args.get("task_id"), terminate, args.get("signal"))
            }
            "terminate" => self.revoke_reply(args.get("task_id"), true, args.get("signal")),
            "rate_limit" => self.rate_limit(args),
            "time_limit" => self.time_limit(args),
            "enable_events" => self.toggle_events(true),
            "disable_events" => self.toggle_events(false),
            "heartbeat" => Value::Null,
            "shutdown" => {
                tracing::warn!("remote control: shutdown requested");
                self.shutdown.send_replace(true);
                return None;
            }
            "pool_grow" => self.resize(count_arg(args.get("n")), "pool will grow"),
            "pool_shrink" => self.resize(count_arg(args.get("n")).map(|n| -n), "pool will shrink"),
            "autoscale" => self.autoscale(args),
            "add_consumer" => self.add_consumer(args),
            "cancel_consumer" => self.cancel_consumer(args),
            // Celery 5.7 answers an unknown command with the KeyError's repr.
            other => {
                let mut name = String::new();
                crate::celery::pyjson::repr_str(other, &mut name);
                control::error(format!("KeyError({name})"))
            }
        })
    }

    fn registered(&self) -> Value {
        let names: Vec<String> = lock(&self.registry)
            .as_ref()
            .map(|r| r.snapshot().keys().cloned().collect())
            .unwrap_or_default();
        json!(names)
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Vec<Attached>> {
        lock(&self.pools)
    }

    fn stats(&self) -> Value {
        let pools = self.pools();
        let concurrency: usize = pools.iter().map(|p| p.pool.concurrency()).sum();
        let prefetch: usize = pools
            .iter()
            .map(|p| p.pool.concurrency() * p.prefetch)
            .sum();
        let kinds: BTreeSet<String> = pools.iter().map(|p| p.pool.kind().to_string()).collect();
        let detail: Vec<Value> = pools
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "kind": p.pool.kind().to_string(),
                    "max-concurrency": p.pool.concurrency(),
                    "queues": *p.queues.read().unwrap_or_else(|e| e.into_inner()),
                })
            })
            .collect();
        json!({
            "total": *lock(&self.totals),
            "pid": std::process::id(),
            "clock": self.clock.load(Ordering::Relaxed).to_string(),
            "uptime": self.started.elapsed().as_secs(),
            "pool": {
                "implementation": format!("sprout:{}", kinds.into_iter().collect::<Vec<_>>().join("+")),
                "max-concurrency": concurrency,
                "processes": [std::process::id()],
                "max-tasks-per-child": null,
                "put-guarded-by-semaphore": false,
                "timeouts": [null, null],
                "pools": detail,
            },
            "broker": *lock(&self.broker_info),
            "prefetch_count": prefetch,
            "rusage": rusage(),
            "sprout": {
                "active": self.jobs.count(Stage::Active),
                "reserved": self.jobs.count(Stage::Reserved),
                "scheduled": self.jobs.count(Stage::Scheduled),
                "revoked": self.revoked.list().len(),
                "events": self.events_enabled(),
            },
        })
    }

    fn active_queues(&self) -> Value {
        let mut names = BTreeSet::new();
        for p in self.pools().iter() {
            names.extend(p.queues.read().unwrap_or_else(|e| e.into_inner()).clone());
        }
        Value::Array(names.into_iter().map(|q| queue_info(&q)).collect())
    }

    fn conf(&self) -> Value {
        let pools = self.pools();
        json!({
            "worker_concurrency": pools.iter().map(|p| p.pool.concurrency()).sum::<usize>(),
            "worker_prefetch_multiplier": pools.first().map(|p| p.prefetch),
            "worker_send_task_events": self.events_enabled(),
            "worker_state_db": null,
            "task_acks_late": true,
            "worker_revokes_max": super::revoked::MAX_REVOKED,
            "worker_revoke_expires": super::revoked::REVOKE_EXPIRES.as_secs(),
            "task_queues": pools.iter().flat_map(|p| p.queues.read().unwrap_or_else(|e| e.into_inner()).clone()).collect::<Vec<_>>(),
        })
    }

    fn revoke_reply(
        &self,
        task_id: Option<&Value>,
        terminate: bool,
        signal: Option<&Value>,
    ) -> Value {
        let ids = ids(task_id);
        if ids.is_empty() {
            return control::error("no task id given");
        }
        let signal = if terminate {
            match parse_signal(signal) {
                Ok(name) => Some(name),
                Err(e) => return control::error(e),
            }
        } else {
            None
        };
        // Celery stores `TaskRevokedError('terminated')` whatever the signal.
        let stopped = self.revoke(&ids, signal.as_ref().map(|_| "terminated"));
        tracing::info!(
            "remote control: revoked {}{}",
            ids.join(", "),
            signal
                .map(|s| format!(" (terminate, {s})"))
                .unwrap_or_default()
        );
        if !stopped.is_empty() {
            control::ok(format!("terminate: {}", stopped.join(", ")))
        } else {
            control::ok(format!(
                "tasks {} flagged as revoked",
                control::py_set(&ids)
            ))
        }
    }

    fn task_exists(&self, name: &str) -> bool {
        lock(&self.registry)
            .as_ref()
            .is_some_and(|r| r.lookup(name).is_some())
    }

    fn set_override(&self, task: &str, change: impl FnOnce(&mut TaskOverride)) {
        let mut overrides = self.overrides.write().unwrap_or_else(|e| e.into_inner());
        change(overrides.entry(task.to_string()).or_default());
        self.has_overrides.store(true, Ordering::Relaxed);
    }

    fn rate_limit(&self, args: &Map<String, Value>) -> Value {
        let Some(task) = args.get("task_name").and_then(Value::as_str) else {
            return control::error("task_name is required");
        };
        if !self.task_exists(task) {
            return control::error(format!("unknown task {task}"));
        }
        let rate = match args.get("rate_limit") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => None,
            Some(Value::String(s)) if s.trim() == "0" || s.is_empty() => None,
            Some(Value::Number(n)) => match format!("{n}/s").parse::<RateLimit>() {
                Ok(r) => Some(r),
                Err(e) => return control::error(format!("invalid rate limit {n}: {e}")),
            },
            Some(Value::String(s)) => match s.parse::<RateLimit>() {
                Ok(r) => Some(r),
                Err(e) => return control::error(format!("invalid rate limit {s:?}: {e}")),
            },
            Some(other) => return control::error(format!("invalid rate limit {other}")),
        };
        self.set_override(task, |o| o.rate_limit = Some(rate));
        match rate {
            Some(_) => control::ok("new rate limit set successfully"),
            None => control::ok("rate limit disabled successfully"),
        }
    }

    fn time_limit(&self, args: &Map<String, Value>) -> Value {
        let Some(task) = args.get("task_name").and_then(Value::as_str) else {
            return control::error("task_name is required");
        };
        if !self.task_exists(task) {
            return control::error(format!("unknown task {task}"));
        }
        let secs = |key: &str| -> Result<Option<Duration>, String> {
            match args.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let s = v.as_f64().ok_or_else(|| format!("{key} must be seconds"))?;
                    crate::model::time::seconds(s)
                        .map(Some)
                        .map_err(|e| format!("{key}: {e}"))
                }
            }
        };
        let (soft, hard) = match (secs("soft"), secs("hard")) {
            (Ok(s), Ok(h)) => (s, h),
            (Err(e), _) | (_, Err(e)) => return control::error(e),
        };
        self.set_override(task, |o| {
            if hard.is_some() {
                o.time_limit = hard;
            }
            o.soft_time_limit = Some(soft);
        });
        control::ok("time limits set successfully")
    }

    fn toggle_events(&self, on: bool) -> Value {
        let was = self.events.swap(on, Ordering::Relaxed);
        match (on, was) {
            (true, false) => control::ok("task events enabled"),
            (true, true) => control::ok("task events already enabled"),
            (false, true) => control::ok("task events disabled"),
            (false, false) => control::ok("task events already disabled"),
        }
    }

    /// Grows (or shrinks, `delta < 0`) the async pools by `delta` slots: the first pool
    /// that can take the change does, with its reservations.
    fn resize(&self, delta: Result<i64, String>, done: &str) -> Value {
        let delta = match delta {
            Ok(d) => d,
            Err(e) => return control::error(e),
        };
        let pools = self.pools();
        let mut why = Vec::new();
        for p in pools.iter() {
            match p.pool.resize(delta) {
                Ok(now) => {
                    let slots = usize::try_from(delta.unsigned_abs()).unwrap_or(usize::MAX);
                    let permits = slots.saturating_mul(p.prefetch);
                    if delta > 0 {
                        p.reservations.add_permits(permits);
                    } else {
                        let reservations = p.reservations.clone();
                        let n = u32::try_from(permits).unwrap_or(u32::MAX);
                        tokio::spawn(async move {
                            if let Ok(permits) = reservations.acquire_many_owned(n).await {
                                permits.forget();
                            }
                        });
                    }
                    tracing::info!("remote control: pool {} now runs {now} at once", p.name);
                    return control::ok(done);
                }
                Err(e) => why.push(format!("pool {}: {e}", p.name)),
            }
        }
        control::error(if why.is_empty() {
            "no pool to resize".into()
        } else {
            why.join("; ")
        })
    }

    fn autoscale(&self, args: &Map<String, Value>) -> Value {
        let max = args.get("max").and_then(Value::as_u64);
        let min = args.get("min").and_then(Value::as_u64);
        let (Some(max), Some(min)) = (max, min) else {
            return control::error("autoscale needs max and min");
        };
        if max < min || max == 0 {
            return control::error(format!("invalid autoscale max={max} min={min}"));
        }
        // Sprout does not scale by load: the async pool is set to `max` slots.
        let now = self
            .pools()
            .first()
            .map(|p| p.pool.concurrency())
            .unwrap_or(0) as i64;
        let delta = i64::try_from(max).unwrap_or(i64::MAX) - now;
        if delta != 0 {
            let reply = self.resize(Ok(delta), "");
            if reply.get("error").is_some() {
                return reply;
            }
        }
        control::ok(format!("autoscale now max={max} min={min}"))
    }

    fn add_consumer(&self, args: &Map<String, Value>) -> Value {
        let Some(queue) = args.get("queue").and_then(Value::as_str) else {
            return control::error("queue is required");
        };
        if let Err(e) = crate::model::check_queue_name(queue) {
            return control::error(format!("invalid queue name: {e}"));
        }
        let pools = self.pools();
        if pools.iter().any(|p| {
            p.queues
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|q| q == queue)
        }) {
            return control::ok(format!("already consuming from '{queue}'"));
        }
        let Some(first) = pools.first() else {
            return control::error("no pool to consume with");
        };
        first
            .queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(queue.to_string());
        control::ok(format!("add consumer {queue}"))
    }

    fn cancel_consumer(&self, args: &Map<String, Value>) -> Value {
        let Some(queue) = args.get("queue").and_then(Value::as_str) else {
            return control::error("queue is required");
        };
        for p in self.pools().iter() {
            let mut queues = p.queues.write().unwrap_or_else(|e| e.into_inner());
            queues.retain(|q| q != queue);
        }
        control::ok(format!("no longer consuming from {queue}"))
    }
}

/// A Celery queue declaration as `active_queues` reports it.
fn queue_info(name: &str) -> Value {
    json!({
        "name": name,
        "exchange": {"name": name, "type": "direct", "arguments": null, "durable": true,
                     "passive": false, "auto_delete": false, "delivery_mode": null,
                     "no_declare": false},
        "routing_key": name,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

/// Python truthiness of a JSON argument.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A task id or a list of them (Celery's `maybe_list`); anything else is no id.
fn ids(v: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    out.retain(|id| !id.is_empty() && id.len() <= 255);
    out.dedup();
    out
}

/// `n` of `pool_grow` / `pool_shrink`: a positive count, 1 when absent.
fn count_arg(v: Option<&Value>) -> Result<i64, String> {
    match v {
        None | Some(Value::Null) => Ok(1),
        Some(v) => {
            let n = v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| format!("n must be a whole number, got {v}"))?;
            if (1..=100_000).contains(&n) {
                Ok(n)
            } else {
                Err(format!("n must be between 1 and 100000, got {n}"))
            }
        }
    }
}

/// The signal of a terminate, as its name (`SIGTERM` when none is given).
fn parse_signal(v: Option<&Value>) -> Result<String, String> {
    let text = match v {
        None | Some(Value::Null) => return Ok("SIGTERM".into()),
        Some(Value::String(s)) => s.trim().to_ascii_uppercase(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("invalid signal {other}")),
    };
    let bare = text.strip_prefix("SIG").unwrap_or(&text);
    SIGNALS
        .iter()
        .find(|(name, num)| *name == bare || num.to_string() == bare)
        .map(|(name, _)| format!("SIG{name}"))
        .ok_or_else(|| format!("invalid signal {text:?}"))
}

/// `getrusage(RUSAGE_SELF)` as Celery's `stats` reports it.
fn rusage() -> Value {
    // SAFETY: getrusage writes the struct it is given; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage of this process.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Value::Null;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    json!({
        "utime": secs(ru.ru_utime), "stime": secs(ru.ru_stime), "maxrss": ru.ru_maxrss,
        "ixrss": ru.ru_ixrss, "idrss": ru.ru_idrss, "isrss": ru.ru_isrss,
        "minflt": ru.ru_minflt, "majflt": ru.ru_majflt, "nswap": ru.ru_nswap,
        "inblock": ru.ru_inblock, "oublock": ru.ru_oublock, "msgsnd": ru.ru_msgsnd,
        "msgrcv": ru.ru_msgrcv, "nsignals": ru.ru_nsignals, "nvcsw": ru.ru_nvcsw,
        "nivcsw": ru.ru_nivcsw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_arguments() {
        assert_eq!(parse_signal(None).unwrap(), "SIGTERM");
        assert_eq!(parse_signal(Some(&json!("term"))).unwrap(), "SIGTERM");
        assert_eq!(parse_signal(Some(&json!(9))).unwrap(), "SIGKILL");
        assert!(parse_signal(Some(&json!("SIGNOPE"))).is_err());
        assert_eq!(ids(Some(&json!(["a", "b", 3]))), vec!["a", "b"]);
        assert_eq!(ids(Some(&json!("a"))), vec!["a"]);
        assert!(count_arg(Some(&json!(0))).is_err());
        assert_eq!(count_arg(Some(&json!("10"))).unwrap(), 10);
    }

    #[test]
    fn answers_without_pools() {
        let plane = ControlPlane::new("w@h", Revoked::default());
        let ask = |method: &str, args: Value| {
            let Value::Object(args) = args else { panic!() };
            plane.handle(&ControlRequest::new(method, args, None))
        };
        assert_eq!(ask("ping", json!({})), Some(json!({"ok": "pong"})));
        assert_eq!(
            ask("revoke", json!({"task_id": "x"})),
            Some(json!({"ok": "tasks {'x'} flagged as revoked"}))
        );
        assert_eq!(ask("revoked", json!({})), Some(json!(["x"])));
        assert!(plane.is_revoked("x"));
        assert_eq!(
            ask("nope", json!({})),
            Some(json!({"error": "KeyError('nope')"}))
        );
        assert_eq!(ask("shutdown", json!({})), None);
        assert!(
            ask("pool_grow", json!({"n": 1}))
                .unwrap()
                .get("error")
                .is_some()
        );
    }
}
