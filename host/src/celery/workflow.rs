//! Workflows: what a worker publishes and stores after a job settles (docs/PROTOCOL.md §7–§8).
//!
//! | outcome | publish ([`followups`]) | store ([`settle`]) |
//! |---|---|---|
//! | SUCCESS | each `embed.callbacks` signature, then the next `embed.chain` step, with the result prepended to their args (unless immutable) | own SUCCESS with those ids as `children` |
//! | FAILURE | each `embed.errbacks` signature with the failed id prepended, as a one-off group | own FAILURE, and the same FAILURE under every remaining chain step's id |
//! | RETRY | nothing here: the retry message goes through `Broker::retry` (see [`retry_job`]) | own RETRY with itself as child |
//! | REVOKED | nothing | own REVOKED |
//!
//! Chords (§8.5) need atomic counting in the result backend, so they are
//! `ResultBackend::on_chord_part_return`; [`chord_part`], [`chord_body`] and
//! [`chord_error`] are the pure pieces the Redis backend uses.
//!
//! Not supported: nested canvases (a group or chord *inside* a chain or callback) are
//! rejected when the message is decoded; chords are completed only by a backend that
//! keeps Celery's chord keys (Redis), not by SQLite; Python-only "new style" errbacks
//! that take `(request, exc, traceback)` are always sent as messages (§8.3).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{isotime, result};
use crate::model::time;
use crate::model::{CeleryContext, DEFAULT_QUEUE, Job};
use crate::model::{CeleryResultMeta, ChordMembership, ErrorInfo, ResultRecord, State};

/// What a worker does once a job has settled: publish these jobs, then store these
/// records, then (chords) `on_chord_part_return`, then ack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settlement {
    /// Follow-up jobs to publish *before* storing (a client may read the stored result
    /// and look for its children at once).
    pub publish: Vec<Job>,
    /// The job's own record first (annotated with parent, group, children and
    /// ignore_result), then any records it implies (a failed chain's later steps).
    pub store: Vec<ResultRecord>,
}

/// The job's root id (its own id when it starts a workflow).
fn root_of(job: &Job) -> String {
    job.celery
        .as_ref()
        .and_then(|c| c.root_id.clone())
        .unwrap_or_else(|| job.id.clone())
}

fn embed_list<'a>(job: &'a Job, field: &str) -> &'a [Value] {
    job.celery
        .as_ref()
        .and_then(|c| c.embed.get(field))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Whether the message asked for no result (`ignore_result: true`).
pub fn ignores_result(job: &Job) -> bool {
    job.celery
        .as_ref()
        .and_then(|c| c.extra.get("ignore_result"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Options given as one signature or a list of them (`link=sig` or `link=[sigs]`).
fn sig_list(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Array(a)) => Value::Array(a.clone()),
        Some(one) => Value::Array(vec![one.clone()]),
    }
}

/// A signature's `countdown`, `eta` or `expires` option: seconds from `now` (a number;
/// negative is in the past, as in Celery) or an ISO-8601 timestamp, at most
/// [`time::MAX_SECONDS`] ahead.
fn time_option(
    opts: &Map<String, Value>,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    let at = match opts.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            time::offset(now, secs)
        }
        Some(Value::String(s)) => {
            let at = isotime::parse(s).map_err(|e| format!("`{key}` option: {e}"))?;
            time::instant(at, now)
        }
        Some(other) => {
            return Err(format!(
                "`{key}` option: {other} is not seconds or a timestamp"
            ));
        }
    };
    at.map(Some).map_err(|e| format!("`{key}` option: {e}"))
}

/// A signature's `time_limit` or `soft_time_limit` option, in seconds (0, like `None`, is
/// no limit, as in Celery).
fn limit_option(opts: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match opts.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(0.0) => Ok(None),
            Some(secs) => time::seconds(secs)
                .map(|_| Some(secs))
                .map_err(|e| format!("`{key}` option: {e}")),
            None => Err(format!("`{key}` option: {n} is not a number of seconds")),
        },
        Some(other) => Err(format!(
            "`{key}` option: {other} is not a number of seconds"
        )),
    }
}

/// The time options of a signature, checked: (eta, expires, time_limit,
/// soft_time_limit). `eta` wins over `countdown`, as in Celery.
type TimeOptions = (
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<f64>,
    Option<f64>,
);

fn time_options(opts: &Map<String, Value>, now: DateTime<Utc>) -> Result<TimeOptions, String> {
    let eta = time_option(opts, "eta", now)?;
    let countdown = time_option(opts, "countdown", now)?;
    Ok((
        eta.or(countdown),
        time_option(opts, "expires", now)?,
        limit_option(opts, "time_limit")?,
        limit_option(opts, "soft_time_limit")?,
    ))
}

/// Checks the time options (`countdown`, `eta`, `expires`, `time_limit`,
/// `soft_time_limit`) of every signature in a message's embed — callbacks, errbacks,
/// chain steps, the chord body, and the signatures in their own `link`, `link_error`
/// and `chord` options — so that a follow-up never fails on them after its parent ran.
/// Decoders call it: an out-of-range value makes the message a dead letter.
///
/// # Errors
/// Which signature and which option is out of range, and why.
pub fn check_embed_times(embed: &Value) -> Result<(), String> {
    let now = Utc::now();
    for field in ["callbacks", "errbacks", "chain", "chord"] {
        let sigs = match embed.get(field) {
            Some(Value::Array(sigs)) => sigs.as_slice(),
            Some(sig @ Value::Object(_)) => std::slice::from_ref(sig),
            _ => continue,
        };
        for sig in sigs {
            check_signature_times(sig, now, 0)
                .map_err(|e| format!("a signature in embed.{field}: {e}"))?;
        }
    }
    Ok(())
}

/// How deep [`check_embed_times`] follows signatures inside signatures' options.
const MAX_SIGNATURE_DEPTH: usize = 32;

fn check_signature_times(sig: &Value, now: DateTime<Utc>, depth: usize) -> Result<(), String> {
    let Some(opts) = sig.get("options").and_then(Value::as_object) else {
        return Ok(());
    };
    let task = sig.get("task").and_then(Value::as_str).unwrap_or("?");
    time_options(opts, now).map_err(|e| format!("{task}: {e}"))?;
    if depth >= MAX_SIGNATURE_DEPTH {
        return Err(format!(
            "{task}: signatures nested more than {MAX_SIGNATURE_DEPTH} deep"
        ));
    }
    for key in ["link", "link_error", "chord"] {
        if let Value::Array(nested) = sig_list(opts.get(key)) {
            for inner in &nested {
                check_signature_times(inner, now, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Builds the job a serialized signature stands for, sent as a follow-up of `parent`:
/// `args_prefix` goes in front of the signature's args unless it is immutable.
///
/// Honoured options: `task_id`, `queue` (default `celery`), `priority`, `countdown`,
/// `eta`, `expires`, `time_limit`, `soft_time_limit`, `group_id`, `group_index`,
/// `link`, `link_error`, `chord`, `ignore_result`, `shadow`, `reply_to`.
///
/// # Errors
/// The value is not a signature of a plain task, its queue is not a valid queue name
/// ([`crate::model::check_queue_name`]), or a time option is out of range
/// ([`check_embed_times`] rejects those when the message is decoded).
pub fn signature_job(sig: &Value, args_prefix: Vec<Value>, parent: &Job) -> Result<Job, String> {
    signature_job_after(sig, args_prefix, &parent.id, &root_of(parent))
}

/// [`signature_job`] for a parent known only by its id and root id.
fn signature_job_after(
    sig: &Value,
    args_prefix: Vec<Value>,
    parent_id: &str,
    root_id: &str,
) -> Result<Job, String> {
    let obj = sig.as_object().ok_or("a signature must be an object")?;
    if !obj.get("subtask_type").is_none_or(Value::is_null) {
        return Err(format!(
            "nested canvas {} is not supported",
            obj["subtask_type"]
        ));
    }
    let task = obj
        .get("task")
        .and_then(Value::as_str)
        .ok_or("a signature needs a task name")?;
    let empty = Map::new();
    let opts = obj
        .get("options")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let immutable = obj
        .get("immutable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let own_args = obj
        .get("args")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let args = if immutable {
        own_args
    } else {
        let mut args = args_prefix;
        args.extend(own_args);
        args
    };
    let kwargs = obj
        .get("kwargs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let text = |k: &str| opts.get(k).and_then(Value::as_str).map(str::to_string);

    let mut job = Job::new(task, args, kwargs);
    if let Some(id) = text("task_id") {
        job.id = id;
    }
    job.queue = text("queue").unwrap_or_else(|| DEFAULT_QUEUE.to_string());
    crate::model::check_queue_name(&job.queue).map_err(|e| format!("its `queue` option: {e}"))?;
    job.priority = opts
        .get("priority")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .clamp(0, 9) as u8;
    (
        job.eta,
        job.expires,
        job.limits.time_limit,
        job.limits.soft_time_limit,
    ) = time_options(opts, Utc::now()).map_err(|e| format!("{task}: {e}"))?;

    let mut extra = Map::new();
    for key in ["group_index", "ignore_result", "shadow", "reply_to"] {
        if let Some(v) = opts.get(key).filter(|v| !v.is_null()) {
            extra.insert(key.to_string(), v.clone());
        }
    }
    job.celery = Some(CeleryContext {
        root_id: Some(root_id.to_string()),
        parent_id: Some(parent_id.to_string()),
        group_id: text("group_id"),
        embed: json!({
            "callbacks": sig_list(opts.get("link")),
            "errbacks": sig_list(opts.get("link_error")),
            "chain": null,
            "chord": opts.get("chord").cloned().unwrap_or(Value::Null),
        }),
        extra: Value::Object(extra),
    });
    Ok(job)
}

/// The FAILURE stored under a follow-up's id (when the signature names one) that could
/// not be built, so that whoever waits on it hears why instead of waiting forever.
fn unbuildable(sig: &Value, reason: &str) -> Option<ResultRecord> {
    let id = sig.get("options")?.get("task_id")?.as_str()?;
    let task = sig.get("task").and_then(Value::as_str).unwrap_or_default();
    let mut record = ResultRecord::new(id, task, State::Failure);
    record.error = Some(ErrorInfo {
        kind: "ValueError".into(),
        message: format!("follow-up signature not sent: {reason}"),
        traceback: None,
    });
    Some(record)
}

/// Follow-ups of a settled job, and FAILUREs of the ones that could not be built.
#[derive(Default)]
struct Followups {
    publish: Vec<Job>,
    failed: Vec<ResultRecord>,
}

impl Followups {
    fn cannot_build(&mut self, parent: &Job, sig: &Value, what: &str, reason: &str) {
        tracing::warn!(task_id = %parent.id, "{what}: {reason}");
        self.failed.extend(unbuildable(sig, reason));
    }
}

/// Sends `sigs` as Celery sends several callbacks or errbacks: one signature alone, more
/// as a one-off group (a fresh group id, `group_index` 0, 1, …).
fn send_all(sigs: &[Value], prefix: &Value, parent: &Job, as_group: bool, out: &mut Followups) {
    let gid = as_group.then(|| uuid::Uuid::new_v4().to_string());
    for (i, sig) in sigs.iter().enumerate() {
        match signature_job(sig, vec![prefix.clone()], parent) {
            Ok(mut job) => {
                if let (Some(gid), Some(ctx)) = (&gid, job.celery.as_mut()) {
                    ctx.group_id = Some(gid.clone());
                    if let Some(extra) = ctx.extra.as_object_mut() {
                        extra.insert("group_index".into(), json!(i));
                    }
                }
                out.publish.push(job);
            }
            Err(e) => out.cannot_build(parent, sig, "skipping follow-up", &e),
        }
    }
}

/// The messages a worker must publish after `job` settled as `record` (see the module
/// table): callbacks and the next chain step on SUCCESS, errbacks on FAILURE, nothing
/// otherwise or for jobs without Celery context.
pub fn followups(job: &Job, record: &ResultRecord) -> Vec<Job> {
    followups_of(job, record).publish
}

fn followups_of(job: &Job, record: &ResultRecord) -> Followups {
    let mut out = Followups::default();
    if job.celery.is_none() {
        return out;
    }
    match record.state {
        State::Success => {
            let value = record.result.clone().unwrap_or(Value::Null);
            let callbacks = embed_list(job, "callbacks");
            send_all(callbacks, &value, job, callbacks.len() > 1, &mut out);
            let chain = embed_list(job, "chain");
            if let Some((next, rest)) = chain.split_last() {
                match signature_job(next, vec![value], job) {
                    Ok(mut step) => {
                        if let Some(ctx) = step.celery.as_mut() {
                            ctx.embed["chain"] = Value::Array(rest.to_vec());
                        }
                        out.publish.push(step);
                    }
                    Err(e) => {
                        // The later steps never run either: each gets the failure, so
                        // that waiting on the chain's last result raises.
                        out.cannot_build(job, next, "chain stops here", &e);
                        out.failed
                            .extend(rest.iter().filter_map(|sig| unbuildable(sig, &e)));
                    }
                }
            }
        }
        State::Failure => {
            // Errbacks are always a group, even of one (fixture worker_sent_errback).
            send_all(
                embed_list(job, "errbacks"),
                &json!(job.id),
                job,
                true,
                &mut out,
            );
        }
        State::Pending | State::Started | State::Progress | State::Retry | State::Revoked => {}
    }
    out
}

/// Everything a worker publishes and stores once `job` settled as `record`: the
/// [`followups`], the record annotated with the job's parent, group, children and
/// ignore_result, and — on FAILURE — the same failure under every remaining chain
/// step's id, so that waiting on the chain's last result raises instead of hanging.
/// A follow-up that cannot be built (a time option out of range in a message that was
/// not checked by [`check_embed_times`]) is not sent: a FAILURE (`ValueError`, with the
/// reason) is stored under its id when the signature names one.
///
/// For jobs without Celery context it returns `record` alone, so a worker can call it
/// for every job whatever the broker.
pub fn settle(job: &Job, mut record: ResultRecord) -> Settlement {
    let Followups { publish, failed } = followups_of(job, &record);
    let Some(ctx) = job.celery.as_ref() else {
        return Settlement {
            publish,
            store: vec![record],
        };
    };
    let ignore_result = ignores_result(job);
    let children = match record.state {
        State::Success => publish.iter().map(|j| j.id.clone()).collect(),
        State::Retry => vec![job.id.clone()],
        _ => Vec::new(),
    };
    let chord = chord_part(job).map(|part| ChordMembership {
        group_index: part.group_index,
        body: part.body,
        root_id: root_of(job),
    });
    record.celery = Some(CeleryResultMeta {
        parent_id: ctx.parent_id.clone(),
        group_id: chord_part(job)
            .map(|p| p.group_id)
            .or_else(|| ctx.group_id.clone()),
        children,
        ignore_result,
        chord,
    });
    let mut store = Vec::with_capacity(1);
    if record.state == State::Failure && !ignore_result {
        for sig in embed_list(job, "chain") {
            let opts = sig.get("options");
            let Some(id) = opts.and_then(|o| o.get("task_id")).and_then(Value::as_str) else {
                continue;
            };
            let mut failed = record.clone();
            failed.id = id.to_string();
            failed.task = sig
                .get("task")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            failed.celery = Some(CeleryResultMeta {
                group_id: opts
                    .and_then(|o| o.get("group_id"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                ..CeleryResultMeta::default()
            });
            store.push(failed);
        }
    }
    store.insert(0, record);
    store.extend(failed);
    Settlement { publish, store }
}

/// The message that retries `job`: the same id, args and embed, `retries + 1`, the
/// given eta, and `parent_id` = its own id (what `Task.retry` publishes, §5). Publish it
/// with `Broker::retry`, which also acks the old delivery.
pub fn retry_job(job: &Job, eta: Option<DateTime<Utc>>) -> Job {
    let mut next = job.clone();
    next.retries = job.retries.saturating_add(1);
    next.eta = eta;
    if let Some(ctx) = next.celery.as_mut() {
        ctx.parent_id = Some(job.id.clone());
        ctx.root_id.get_or_insert_with(|| job.id.clone());
        if let Some(extra) = ctx.extra.as_object_mut() {
            extra.remove("redelivered");
        }
    }
    next
}

/// A chord header part: the group it counts towards, its position, and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordPart {
    /// The chord's group id (`headers.group`, else the body's `options.group_id`).
    pub group_id: String,
    /// The part's position (`group_index`); orders the body's argument list.
    pub group_index: i64,
    /// The body signature from `embed.chord`.
    pub body: Value,
}

/// The chord part `job` is, if its embed carries a chord body.
pub fn chord_part(job: &Job) -> Option<ChordPart> {
    let ctx = job.celery.as_ref()?;
    let body = ctx.embed.get("chord").filter(|b| b.is_object())?;
    let group_id = ctx.group_id.clone().or_else(|| {
        body.get("options")?
            .get("group_id")?
            .as_str()
            .map(str::to_string)
    })?;
    let group_index = ctx
        .extra
        .get("group_index")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    Some(ChordPart {
        group_id,
        group_index,
        body: body.clone(),
    })
}

/// The chord part a stored record stands for (what [`settle`] recorded), with the
/// completing job's root id.
pub fn chord_part_of(record: &ResultRecord) -> Option<(ChordPart, &str)> {
    let meta = record.celery.as_ref()?;
    let chord = meta.chord.as_ref()?;
    let group_id = meta.group_id.clone()?;
    let part = ChordPart {
        group_id,
        group_index: chord.group_index,
        body: chord.body.clone(),
    };
    Some((part, chord.root_id.as_str()))
}

/// The JSON Celery adds to the chord's `.j` set for one finished part:
/// `[1, "<task id>", "<STATE>", <result or exception dict>]`.
pub fn chord_entry(record: &ResultRecord) -> String {
    super::pyjson::to_string(&json!([
        1,
        record.id,
        record.state.as_str(),
        result::result_value(record)
    ]))
}

/// The chord body job, once every part has succeeded: `results` (in header order)
/// prepended as one list argument, sent as a follow-up of the job that completed the
/// chord (`last_id`, in workflow `root_id`), in the chord's group.
///
/// # Errors
/// The body is not a signature of a plain task.
pub fn chord_body(
    last_id: &str,
    root_id: &str,
    part: &ChordPart,
    results: Vec<Value>,
) -> Result<Job, String> {
    let mut body = signature_job_after(&part.body, vec![Value::Array(results)], last_id, root_id)?;
    if let Some(ctx) = body.celery.as_mut() {
        ctx.group_id = Some(part.group_id.clone());
    }
    Ok(body)
}

/// The errbacks of a failed chord's body (its `link_error`), each called with the
/// body's id, as Celery does.
pub fn chord_errbacks(
    part: &ChordPart,
    failure: &ResultRecord,
    last_id: &str,
    root_id: &str,
) -> Vec<Job> {
    match signature_job_after(&part.body, Vec::new(), last_id, root_id) {
        Ok(body) => followups(&body, failure),
        Err(_) => Vec::new(),
    }
}

/// The FAILURE stored under the chord body's id when a part failed:
/// `ChordError("Dependency <id> raised ValueError('hdr')")`.
pub fn chord_error(
    body_id: &str,
    body_task: &str,
    failed_id: &str,
    err: &ErrorInfo,
) -> ResultRecord {
    let mut record = ResultRecord::new(body_id, body_task, State::Failure);
    record.error = Some(ErrorInfo {
        kind: "ChordError".into(),
        message: format!(
            "Dependency {failed_id} raised {}",
            result::exception_repr(err)
        ),
        traceback: None,
    });
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with(embed: Value) -> Job {
        let mut job = Job::new("add", vec![json!(1), json!(2)], Map::new());
        job.celery = Some(CeleryContext {
            root_id: Some("root".into()),
            parent_id: None,
            group_id: None,
            embed,
            extra: json!({}),
        });
        job
    }

    #[test]
    fn chain_step_and_callbacks() {
        let job = job_with(json!({
            "callbacks": [{"task": "log", "args": ["x"], "kwargs": {}, "options": {}, "immutable": false}],
            "chain": [
                {"task": "last", "args": [9], "kwargs": {}, "options": {"task_id": "t3"}, "immutable": true},
                {"task": "mul", "args": [4], "kwargs": {}, "options": {"task_id": "t2", "queue": "cpu", "priority": 7}},
            ],
        }));
        let mut ok = ResultRecord::new(&job.id, "add", State::Success);
        ok.result = Some(json!(3));
        let s = settle(&job, ok);
        assert_eq!(s.publish.len(), 2);
        let (cb, next) = (&s.publish[0], &s.publish[1]);
        assert_eq!(cb.args, vec![json!(3), json!("x")]);
        assert_eq!(
            (next.id.as_str(), next.queue.as_str(), next.priority),
            ("t2", "cpu", 7)
        );
        assert_eq!(next.args, vec![json!(3), json!(4)]);
        let ctx = next.celery.as_ref().unwrap();
        assert_eq!(ctx.parent_id.as_deref(), Some(job.id.as_str()));
        assert_eq!(ctx.root_id.as_deref(), Some("root"));
        assert_eq!(ctx.embed["chain"].as_array().unwrap().len(), 1);
        let links = s.store[0].celery.as_ref().unwrap();
        assert_eq!(links.children, vec![cb.id.clone(), "t2".to_string()]);
    }

    #[test]
    fn failure_propagates_down_the_chain_and_sends_errbacks() {
        let job = job_with(json!({
            "errbacks": [{"task": "on_err", "args": ["extra"], "kwargs": {}, "options": {}}],
            "chain": [{"task": "last", "args": [], "kwargs": {}, "options": {"task_id": "t3"}}],
        }));
        let mut failed = ResultRecord::new(&job.id, "add", State::Failure);
        failed.error = Some(ErrorInfo {
            kind: "ValueError".into(),
            message: "mid".into(),
            traceback: None,
        });
        let s = settle(&job, failed);
        assert_eq!(s.store.len(), 2);
        assert_eq!(s.store[1].id, "t3");
        assert_eq!(s.store[1].error.as_ref().unwrap().kind, "ValueError");
        assert_eq!(s.publish.len(), 1);
        assert_eq!(s.publish[0].args, vec![json!(job.id), json!("extra")]);
        let ctx = s.publish[0].celery.as_ref().unwrap();
        assert!(ctx.group_id.is_some());
        assert_eq!(ctx.extra["group_index"], json!(0));
    }

    /// A follow-up whose time option is out of range (in a job no decoder checked) is
    /// not sent and never panics: its id gets a FAILURE saying why.
    #[test]
    fn unbuildable_follow_ups_fail_instead_of_panicking() {
        let job = job_with(json!({
            "callbacks": [{"task": "log", "options": {"task_id": "cb", "countdown": 1e15}}],
            "chain": [
                {"task": "last", "options": {"task_id": "t3"}},
                {"task": "next", "options": {"task_id": "t2", "eta": f64::MAX}},
            ],
        }));
        assert!(check_embed_times(&job.celery.as_ref().unwrap().embed).is_err());
        let mut ok = ResultRecord::new(&job.id, "add", State::Success);
        ok.result = Some(json!(3));
        let s = settle(&job, ok);
        assert!(s.publish.is_empty(), "{:?}", s.publish);
        let failed: Vec<&str> = s.store[1..].iter().map(|r| r.id.as_str()).collect();
        assert_eq!(failed, ["cb", "t2", "t3"]);
        let error = s.store[1].error.as_ref().unwrap();
        assert!(error.message.contains("`countdown` option"), "{error:?}");
        assert_eq!(s.store[0].state, State::Success);
    }

    /// A follow-up whose `queue` option no broker takes (empty, over 255 bytes, a control
    /// character) is not published to a queue nobody can consume: its id gets a FAILURE
    /// saying why, and the rest of the settle goes on.
    #[test]
    fn follow_ups_with_an_invalid_queue_fail_with_the_reason() {
        let long = "q".repeat(256);
        for queue in ["", long.as_str(), "a\u{0}b"] {
            let job = job_with(json!({
                "callbacks": [
                    {"task": "log", "options": {"task_id": "bad", "queue": queue}},
                    {"task": "log", "options": {"task_id": "good", "queue": "logs"}},
                ],
            }));
            let mut ok = ResultRecord::new(&job.id, "add", State::Success);
            ok.result = Some(json!(3));
            let s = settle(&job, ok);
            let sent: Vec<(&str, &str)> = s
                .publish
                .iter()
                .map(|j| (j.id.as_str(), j.queue.as_str()))
                .collect();
            assert_eq!(sent, [("good", "logs")], "{queue:?}");
            let failed = s.store.iter().find(|r| r.id == "bad").expect("a FAILURE");
            assert_eq!(failed.state, State::Failure);
            let message = &failed.error.as_ref().unwrap().message;
            assert!(message.contains("`queue` option"), "{message}");
        }
    }

    #[test]
    fn retry_keeps_identity() {
        let job = job_with(json!(null));
        let next = retry_job(&job, None);
        assert_eq!(next.id, job.id);
        assert_eq!(next.retries, 1);
        assert_eq!(
            next.celery.unwrap().parent_id.as_deref(),
            Some(job.id.as_str())
        );
        let s = settle(&job, ResultRecord::new(&job.id, "add", State::Retry));
        assert!(s.publish.is_empty());
        assert_eq!(
            s.store[0].celery.as_ref().unwrap().children,
            vec![job.id.clone()]
        );
    }
}
