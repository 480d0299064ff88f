//! Task messages: one Redis list element (kombu envelope, protocol v2) ⇄ [`Job`].
//!
//! Decoding is strict where a wrong guess would run the wrong thing (a serializer other
//! than JSON, a protocol v1 body, a nested canvas in the embed) and lenient everywhere
//! else: only the `task` and `id` headers are required (docs/PROTOCOL.md §3), the rest default.
//! Time values from outside are checked through `model::time` — `timelimit` (seconds),
//! `eta` and `expires` (at most `MAX_SECONDS` ahead), and the time options of every
//! signature in the embed ([`workflow::check_embed_times`]): out of range is a
//! [`DecodeError`] naming the value, so the worker dead-letters the message.
//!
//! Encoding writes what a Celery 5.7 client writes, key for key, so a real Celery worker
//! accepts what `sprout send --broker redis://…` publishes.
//!
//! Mapping between headers and [`Job`]:
//!
//! | message | [`Job`] |
//! |---|---|
//! | `headers.task`, `headers.id` | `task`, `id` |
//! | body `[args, kwargs, embed]` | `args`, `kwargs`, `celery.embed` (verbatim) |
//! | `headers.retries` | `retries` |
//! | `headers.eta` / `expires` (aware or naive ISO-8601) | `eta` / `expires` (UTC) |
//! | `headers.timelimit` = `[hard, soft]` | `limits.time_limit`, `limits.soft_time_limit` |
//! | `properties.priority` (0–9, Celery's number; on Redis 0 is served first) | `priority` |
//! | `headers.root_id`, `parent_id`, `group` | `celery.root_id`, `parent_id`, `group_id` |
//! | the queue the element was popped from (else `delivery_info.routing_key`) | `queue` |
//! | every other non-null header (but `lang`, `origin`, `argsrepr`, `kwargsrepr`: logging only), and `properties.reply_to` | `celery.extra` (verbatim) |
//! | `headers.sprout` = `{max_retries, limits: {fuel, memory_bytes, output_bytes}, eta, expires}` | `max_retries`, `limits`, nanosecond `eta`/`expires` |
//!
//! The `sprout` header is Sprout's own: what Celery has no header for (and eta/expires
//! to the nanosecond, which Python's datetime cannot carry). Python workers ignore it.
//!
//! A message with no workflow context (its own root, no parent, group, callbacks, chain
//! or chord, no custom headers, `ignore_result` unset) decodes with `celery: None`, so
//! that a job Sprout publishes comes back equal to what was sent.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{isotime, keys, pyjson, workflow};
use crate::model::DecodeError;
use crate::model::time;
use crate::model::{CeleryContext, DEFAULT_QUEUE, Job, LimitOverrides};

/// A decoded list element.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The job it asks for.
    pub job: Job,
    /// `properties.delivery_tag`, the key of the message in `unacked`.
    pub delivery_tag: Option<String>,
    /// Whether a restore put it back (`headers.redelivered` or
    /// `delivery_info.redelivered`).
    pub redelivered: bool,
}

/// A job encoded for Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The list to LPUSH it to (queue and priority bucket; no key prefix).
    pub key: String,
    /// The envelope JSON.
    pub envelope: String,
    /// The fresh delivery tag in it.
    pub delivery_tag: String,
}

/// Headers that map onto [`Job`] fields; everything else goes to `celery.extra`.
const MAPPED_HEADERS: &[&str] = &[
    // Logging only, and rewritten by whoever publishes next.
    "lang",
    "origin",
    "task",
    "id",
    "root_id",
    "parent_id",
    "group",
    "retries",
    "eta",
    "expires",
    "timelimit",
    "argsrepr",
    "kwargsrepr",
    "sprout",
];

#[derive(Deserialize)]
pub(super) struct RawEnvelope {
    #[serde(default)]
    body: Value,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: Filtered<HeaderKeys>,
    #[serde(default)]
    properties: Filtered<PropertyKeys>,
}

impl RawEnvelope {
    /// An envelope put together from a message's parts (an AMQP message: the body
    /// already parsed, headers and properties as JSON objects); keys decoding does not
    /// read are dropped as when reading an envelope.
    pub(super) fn from_parts(
        body: Value,
        content_type: Option<String>,
        content_encoding: Option<String>,
        headers: Map<String, Value>,
        properties: Map<String, Value>,
    ) -> RawEnvelope {
        RawEnvelope {
            body,
            content_type,
            content_encoding,
            headers: Filtered::from_map(headers),
            properties: Filtered::from_map(properties),
        }
    }
}

/// Which keys of a JSON object are worth keeping.
pub(super) trait KeepKeys {
    fn keep(key: &str) -> bool;
}

/// Headers: all but the logging-only ones, which can be long (`argsrepr`).
#[derive(Default)]
pub(super) struct HeaderKeys;
impl KeepKeys for HeaderKeys {
    fn keep(key: &str) -> bool {
        !matches!(key, "argsrepr" | "kwargsrepr" | "lang" | "origin")
    }
}

/// Properties: the ones decoding reads.
#[derive(Default)]
pub(super) struct PropertyKeys;
impl KeepKeys for PropertyKeys {
    fn keep(key: &str) -> bool {
        matches!(
            key,
            "correlation_id"
                | "reply_to"
                | "delivery_info"
                | "priority"
                | "body_encoding"
                | "delivery_tag"
        )
    }
}

/// A JSON object read into a map without the keys `K` drops and without nulls; dropped
/// values are skipped unparsed (decoding runs once per message, ~25 000 times a second).
pub(super) struct Filtered<K> {
    map: Map<String, Value>,
    keys: std::marker::PhantomData<K>,
}

impl<K: KeepKeys> Filtered<K> {
    fn from_map(mut map: Map<String, Value>) -> Self {
        map.retain(|k, v| K::keep(k) && !v.is_null());
        Filtered {
            map,
            keys: std::marker::PhantomData,
        }
    }
}

impl<K> Default for Filtered<K> {
    fn default() -> Self {
        Filtered {
            map: Map::new(),
            keys: std::marker::PhantomData,
        }
    }
}

impl<'de, K: KeepKeys> Deserialize<'de> for Filtered<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K>(std::marker::PhantomData<K>);
        impl<'de, K: KeepKeys> serde::de::Visitor<'de> for Visit<K> {
            type Value = Filtered<K>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Filtered::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Self::Value, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<Key<'de>>()? {
                    if K::keep(&key.0) {
                        let value: Value = access.next_value()?;
                        if !value.is_null() {
                            map.insert(key.0.into_owned(), value);
                        }
                    } else {
                        access.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Filtered {
                    map,
                    keys: std::marker::PhantomData,
                })
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(Visit)
    }
}

fn fail(reason: impl Into<String>, id: &Option<String>) -> DecodeError {
    DecodeError {
        reason: reason.into(),
        id: id.clone(),
    }
}

/// Decodes one list element. `queue` is the queue it was popped from (the list key
/// without its priority suffix); without it `delivery_info.routing_key` is used.
///
/// # Errors
/// [`DecodeError`] with a reason a person can act on, and the task id when the envelope
/// names one.
pub fn decode(raw: &[u8], queue: Option<&str>) -> Result<Incoming, DecodeError> {
    let env: RawEnvelope = serde_json::from_slice(raw)
        .map_err(|e| fail(format!("not a kombu JSON envelope: {e}"), &None))?;
    decode_envelope(env, queue)
}

/// Decodes a read envelope (from Redis, or put together from an AMQP message's parts by
/// `celery::amqp`).
pub(super) fn decode_envelope(
    env: RawEnvelope,
    queue: Option<&str>,
) -> Result<Incoming, DecodeError> {
    let mut headers = env.headers.map;
    let props = env.properties.map;
    let id = headers
        .get("id")
        .and_then(Value::as_str)
        .or_else(|| props.get("correlation_id").and_then(Value::as_str))
        .map(str::to_string);

    if let Some(ct) = env.content_type.as_deref()
        && !ct.eq_ignore_ascii_case("application/json")
    {
        return Err(fail(
            format!(
                "unsupported content-type {ct:?}: Sprout accepts only application/json \
                 (Celery's default task_serializer)"
            ),
            &id,
        ));
    }
    if let Some(enc) = env.content_encoding.as_deref()
        && !enc.eq_ignore_ascii_case("utf-8")
        && !enc.eq_ignore_ascii_case("utf8")
    {
        return Err(fail(
            format!("unsupported content-encoding {enc:?}: expected utf-8"),
            &id,
        ));
    }

    let body = decode_body(&env.body, &props).map_err(|r| fail(r, &id))?;
    let (args, kwargs, embed) = split_body(body).map_err(|r| fail(r, &id))?;
    check_embed(&embed).map_err(|r| fail(r, &id))?;

    let task = match headers.get("task") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => {
            return Err(fail(
                "missing `task` header: not a Celery protocol v2 task message",
                &id,
            ));
        }
    };
    let Some(id_str) = headers
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(fail(
            "missing `id` header: not a Celery protocol v2 task message",
            &id,
        ));
    };

    let now = Utc::now();
    let time = |name: &str| -> Result<Option<chrono::DateTime<Utc>>, DecodeError> {
        match headers.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => isotime::parse(s)
                .and_then(|at| time::instant(at, now).map_err(|e| e.to_string()))
                .map(Some)
                .map_err(|e| fail(format!("bad `{name}` header: {e}"), &id)),
            Some(other) => Err(fail(
                format!("bad `{name}` header: {other} is not a string"),
                &id,
            )),
        }
    };
    let mut eta = time("eta")?;
    let mut expires = time("expires")?;
    workflow::check_embed_times(&embed).map_err(|r| fail(r, &id))?;

    let mut limits = LimitOverrides::default();
    if let Some(Value::Array(tl)) = headers.get("timelimit") {
        // Seconds, checked (model::time); 0, like null, is no limit (as in Celery).
        let limit = |v: Option<&Value>| -> Result<Option<f64>, DecodeError> {
            match v.and_then(Value::as_f64) {
                None => Ok(None),
                Some(0.0) => Ok(None),
                Some(secs) => time::seconds(secs)
                    .map(|_| Some(secs))
                    .map_err(|e| fail(format!("bad `timelimit` header: {e}"), &id)),
            }
        };
        limits.time_limit = limit(tl.first())?;
        limits.soft_time_limit = limit(tl.get(1))?;
    }
    let mut max_retries = None;
    if let Some(Value::Object(sp)) = headers.get("sprout") {
        max_retries = sp.get("max_retries").and_then(Value::as_u64).map(clamp_u32);
        // Sub-microsecond precision that ISO headers (Python's datetime) cannot carry;
        // used only while it still agrees with the header (a peer may have changed it).
        precise(&mut eta, sp.get("eta"));
        precise(&mut expires, sp.get("expires"));
        if let Some(Value::Object(l)) = sp.get("limits") {
            limits.fuel = l.get("fuel").and_then(Value::as_u64);
            limits.memory_bytes = l.get("memory_bytes").and_then(Value::as_u64);
            limits.output_bytes = l.get("output_bytes").and_then(Value::as_u64);
        }
    }

    let delivery_info = props.get("delivery_info").and_then(Value::as_object);
    let queue = queue
        .map(str::to_string)
        .or_else(|| {
            delivery_info
                .and_then(|d| d.get("routing_key"))
                .and_then(Value::as_str)
                .filter(|rk| !rk.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| DEFAULT_QUEUE.to_string());
    let priority = props
        .get("priority")
        .and_then(Value::as_i64)
        .map(|p| p.clamp(0, 9) as u8)
        .unwrap_or(0);
    let retries = headers
        .get("retries")
        .and_then(Value::as_u64)
        .map(clamp_u32)
        .unwrap_or(0);
    let redelivered = headers
        .get("redelivered")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || delivery_info
            .and_then(|d| d.get("redelivered"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let delivery_tag = props
        .get("delivery_tag")
        .and_then(Value::as_str)
        .map(str::to_string);

    let string = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let root_id = string(headers.get("root_id")).or_else(|| Some(id_str.clone()));
    let parent_id = string(headers.get("parent_id"));
    let group_id = string(headers.get("group"));

    let mut extra = Map::new();
    for (k, v) in std::mem::take(&mut headers) {
        if !MAPPED_HEADERS.contains(&k.as_str()) {
            extra.insert(k, v);
        }
    }
    if let Some(reply_to) = props.get("reply_to").filter(|v| !v.is_null()) {
        extra.insert("reply_to".into(), reply_to.clone());
    }

    let ctx = CeleryContext {
        root_id,
        parent_id,
        group_id,
        embed,
        extra: Value::Object(extra),
    };
    // This process's own oid is the default every message it publishes carries: not
    // kept, so a job comes back equal to what was sent.
    let reply_to = props
        .get("reply_to")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && *r != process_oid())
        .map(str::to_string);
    let job = Job {
        reply_to,
        celery: (!is_plain(&ctx, &id_str)).then_some(ctx),
        id: id_str,
        task,
        args,
        kwargs,
        queue,
        priority,
        retries,
        max_retries,
        eta,
        expires,
        limits,
    };
    Ok(Incoming {
        job,
        delivery_tag,
        redelivered,
    })
}

/// Replaces `at` by the precise instant in `exact` when both agree to the microsecond.
fn precise(at: &mut Option<chrono::DateTime<Utc>>, exact: Option<&Value>) {
    let Some(exact) = exact
        .and_then(Value::as_str)
        .and_then(|s| isotime::parse(s).ok())
    else {
        return;
    };
    if let Some(header) = at
        && isotime::format(exact) == isotime::format(*header)
    {
        *at = Some(exact);
    }
}

/// Whether a header (kept in `celery.extra`) is routine: every Celery message has it
/// and its value says nothing about a workflow.
fn is_routine(key: &str, value: &Value) -> bool {
    match key {
        "reply_to" | "redelivered" => true,
        "replaced_task_nesting" => value.as_u64() == Some(0),
        "stamps" => value.as_object().is_some_and(Map::is_empty),
        "ignore_result" => value == &Value::Bool(false),
        _ => false,
    }
}

/// True when a message carries no workflow context: its own root, no parent, group,
/// callbacks, chain or chord, and no headers beyond the routine ones. Such a job decodes
/// with `celery: None`, so a job published by Sprout comes back equal to what was sent.
fn is_plain(ctx: &CeleryContext, id: &str) -> bool {
    let embed_empty = match &ctx.embed {
        Value::Null => true,
        Value::Object(m) => m.values().all(Value::is_null),
        _ => false,
    };
    let extra_plain = ctx
        .extra
        .as_object()
        .is_none_or(|extra| extra.iter().all(|(k, v)| is_routine(k, v)));
    ctx.root_id.as_deref().is_none_or(|r| r == id)
        && ctx.parent_id.is_none()
        && ctx.group_id.is_none()
        && embed_empty
        && extra_plain
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn decode_body(body: &Value, props: &Map<String, Value>) -> Result<Value, String> {
    let base64 = props.get("body_encoding").and_then(Value::as_str) == Some("base64");
    match body {
        Value::String(text) if base64 => {
            let bytes = BASE64
                .decode(text.trim())
                .map_err(|e| format!("body is not valid base64: {e}"))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("body is not JSON: {e}"))
        }
        Value::String(text) => {
            serde_json::from_str(text).map_err(|e| format!("body is not JSON: {e}"))
        }
        Value::Array(_) => Ok(body.clone()),
        Value::Null => Err("message has no body".into()),
        other => Err(format!("body must be a string, found {}", kind_of(other))),
    }
}

/// A body's parts: args, kwargs, embed.
type BodyParts = (Vec<Value>, Map<String, Value>, Value);

fn split_body(body: Value) -> Result<BodyParts, String> {
    let mut parts = match body {
        Value::Array(parts) if (2..=3).contains(&parts.len()) => parts,
        Value::Object(o) if o.contains_key("task") => {
            return Err(
                "protocol v1 message (task_protocol=1): only protocol v2 is supported".into(),
            );
        }
        other => {
            return Err(format!(
                "body must be the protocol v2 array [args, kwargs, embed], found {}",
                kind_of(&other)
            ));
        }
    };
    let embed = if parts.len() == 3 {
        parts.pop().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let kwargs = match parts.pop() {
        Some(Value::Object(k)) => k,
        Some(Value::Null) => Map::new(),
        Some(other) => {
            return Err(format!(
                "kwargs must be an object, found {}",
                kind_of(&other)
            ));
        }
        None => Map::new(),
    };
    let args = match parts.pop() {
        Some(Value::Array(a)) => a,
        Some(Value::Null) => Vec::new(),
        Some(other) => return Err(format!("args must be an array, found {}", kind_of(&other))),
        None => Vec::new(),
    };
    Ok((args, kwargs, embed))
}

/// Checks the body's embed: signatures of plain tasks only (nested canvases are not
/// supported yet and fail loudly rather than run half a workflow).
fn check_embed(embed: &Value) -> Result<(), String> {
    let map = match embed {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        other => return Err(format!("embed must be an object, found {}", kind_of(other))),
    };
    for field in ["callbacks", "errbacks", "chain"] {
        match map.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Array(sigs)) => {
                for sig in sigs {
                    check_signature(sig, field)?;
                }
            }
            Some(other) => {
                return Err(format!(
                    "embed.{field} must be a list, found {}",
                    kind_of(other)
                ));
            }
        }
    }
    match map.get("chord") {
        None | Some(Value::Null) => Ok(()),
        Some(sig) => check_signature(sig, "chord"),
    }
}

fn check_signature(sig: &Value, field: &str) -> Result<(), String> {
    let Some(obj) = sig.as_object() else {
        return Err(format!(
            "embed.{field} holds {}, not a signature",
            kind_of(sig)
        ));
    };
    match obj.get("subtask_type") {
        None | Some(Value::Null) => {}
        Some(kind) => {
            return Err(format!(
                "nested canvas in embed.{field} (subtask_type {kind}): Sprout runs chains, \
                 callbacks, groups and chords of plain tasks only"
            ));
        }
    }
    match obj.get("task") {
        Some(Value::String(_)) => Ok(()),
        _ => Err(format!("a signature in embed.{field} has no task name")),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The protocol v2 headers, in the order Celery writes them.
#[derive(Serialize)]
pub(super) struct Headers<'a> {
    lang: &'a str,
    task: &'a str,
    id: &'a str,
    shadow: Value,
    eta: Option<String>,
    expires: Option<String>,
    group: Option<&'a str>,
    group_index: Value,
    retries: u32,
    timelimit: [Value; 2],
    root_id: &'a str,
    parent_id: Option<&'a str>,
    argsrepr: String,
    kwargsrepr: String,
    origin: &'a str,
    ignore_result: Value,
    replaced_task_nesting: Value,
    stamped_headers: Value,
    stamps: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    sprout: Option<Value>,
    #[serde(flatten)]
    custom: Map<String, Value>,
}

#[derive(Serialize)]
struct DeliveryInfo<'a> {
    exchange: &'a str,
    routing_key: &'a str,
}

#[derive(Serialize)]
struct Properties<'a> {
    correlation_id: &'a str,
    reply_to: &'a str,
    delivery_mode: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    delivery_info: DeliveryInfo<'a>,
    priority: u8,
    body_encoding: &'a str,
    delivery_tag: &'a str,
}

#[derive(Serialize)]
struct Envelope<'a> {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: &'a str,
    #[serde(rename = "content-type")]
    content_type: &'a str,
    headers: Headers<'a>,
    properties: Properties<'a>,
}

/// Headers the encoder writes itself; `celery.extra` entries with these names are not
/// copied as custom headers.
const WRITTEN_HEADERS: &[&str] = &[
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
    "sprout",
    // Properties and restore markers, never headers of a fresh publish.
    "reply_to",
    "redelivered",
];

/// `gen<pid>@<hostname>`, what Celery writes as `origin`.
pub fn origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| format!("gen{}@{}", std::process::id(), hostname()))
}

/// This machine's host name (for `origin` and STARTED results).
pub fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
    })
}

/// The process's `reply_to` ("oid"), stable for the process like a Celery app's: the
/// queue an `rpc://` result backend in this process reads its results from.
pub fn process_oid() -> &'static str {
    static OID: OnceLock<String> = OnceLock::new();
    OID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

fn number(x: f64) -> Value {
    // Python writes whole seconds as ints (`[60, 50]`).
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// What Celery's task message for `job` carries, broker-neutral: the headers, the
/// body's JSON bytes (`[args, kwargs, embed]`) and the `reply_to` property.
pub(super) struct Parts<'a> {
    /// The protocol v2 headers.
    pub headers: Headers<'a>,
    /// The body, JSON.
    pub body: Vec<u8>,
    /// `properties.reply_to`: the job's, else this process's oid.
    pub reply_to: &'a str,
}

/// The headers, body and reply_to of `job`'s message, as a Celery 5.7 client writes them.
pub(super) fn parts(job: &Job) -> Parts<'_> {
    let ctx = job.celery.as_ref();
    let extra = ctx.and_then(|c| c.extra.as_object());
    let from_extra = |name: &str, default: Value| -> Value {
        extra.and_then(|e| e.get(name)).cloned().unwrap_or(default)
    };

    let mut embed = match ctx.map(|c| &c.embed) {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for field in ["callbacks", "errbacks", "chain", "chord"] {
        embed.entry(field).or_insert(Value::Null);
    }
    let body = pyjson::to_vec(&(&job.args, &job.kwargs, &embed));

    let mut sprout = Map::new();
    if let Some(n) = job.max_retries {
        sprout.insert("max_retries".into(), json!(n));
    }
    let mut limits = Map::new();
    for (name, v) in [
        ("fuel", job.limits.fuel),
        ("memory_bytes", job.limits.memory_bytes),
        ("output_bytes", job.limits.output_bytes),
    ] {
        if let Some(v) = v {
            limits.insert(name.into(), json!(v));
        }
    }
    if !limits.is_empty() {
        sprout.insert("limits".into(), Value::Object(limits));
    }
    for (name, at) in [("eta", job.eta), ("expires", job.expires)] {
        if let Some(at) = at.filter(|t| t.timestamp_subsec_nanos() % 1000 != 0) {
            let exact = at.to_rfc3339_opts(SecondsFormat::Nanos, false);
            sprout.insert(name.into(), json!(exact));
        }
    }

    let custom: Map<String, Value> = extra
        .map(|e| {
            e.iter()
                .filter(|(k, _)| !WRITTEN_HEADERS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();

    let reply_to = job
        .reply_to
        .as_deref()
        .or_else(|| {
            extra
                .and_then(|e| e.get("reply_to"))
                .and_then(Value::as_str)
        })
        .unwrap_or_else(|| process_oid());
    let time_limit = job.limits.time_limit.map(number).unwrap_or(Value::Null);
    let soft_limit = job
        .limits
        .soft_time_limit
        .map(number)
        .unwrap_or(Value::Null);

    let headers = Headers {
        lang: "py",
        task: &job.task,
        id: &job.id,
        shadow: from_extra("shadow", Value::Null),
        eta: job.eta.map(isotime::format),
        expires: job.expires.map(isotime::format),
        group: ctx.and_then(|c| c.group_id.as_deref()),
        group_index: from_extra("group_index", Value::Null),
        retries: job.retries,
        timelimit: [time_limit, soft_limit],
        root_id: ctx.and_then(|c| c.root_id.as_deref()).unwrap_or(&job.id),
        parent_id: ctx.and_then(|c| c.parent_id.as_deref()),
        argsrepr: pyjson::py_repr_list(&job.args),
        kwargsrepr: pyjson::py_repr_map(&job.kwargs),
        origin: origin(),
        ignore_result: from_extra("ignore_result", Value::Null),
        replaced_task_nesting: from_extra("replaced_task_nesting", json!(0)),
        stamped_headers: from_extra("stamped_headers", Value::Null),
        stamps: from_extra("stamps", json!({})),
        sprout: (!sprout.is_empty()).then_some(Value::Object(sprout)),
        custom,
    };
    Parts {
        headers,
        body,
        reply_to,
    }
}

/// Encodes `job` as a Celery 5.7 client would publish it, with a fresh delivery tag.
pub fn encode(job: &Job) -> Outgoing {
    let Parts {
        headers,
        body,
        reply_to,
    } = parts(job);
    let now = Utc::now();
    let expiration = job
        .expires
        .map(|at| (at - now).num_milliseconds().max(0).to_string());
    let delivery_tag = uuid::Uuid::new_v4().to_string();
    let envelope = Envelope {
        body: BASE64.encode(body),
        content_encoding: "utf-8",
        content_type: "application/json",
        headers,
        properties: Properties {
            correlation_id: &job.id,
            reply_to,
            delivery_mode: 2,
            expiration,
            delivery_info: DeliveryInfo {
                exchange: "",
                routing_key: &job.queue,
            },
            priority: job.priority.min(9),
            body_encoding: "base64",
            delivery_tag: &delivery_tag,
        },
    };
    Outgoing {
        key: keys::queue_key(&job.queue, job.priority),
        envelope: pyjson::to_string(&envelope),
        delivery_tag: delivery_tag.clone(),
    }
}

/// Where a stored envelope goes back to: its routing key and its priority.
pub fn route_of(envelope: &Value) -> (Option<&str>, u8) {
    let props = envelope.get("properties");
    let rk = props
        .and_then(|p| p.get("delivery_info"))
        .and_then(|d| d.get("routing_key"))
        .and_then(Value::as_str)
        .filter(|rk| !rk.is_empty());
    let priority = props
        .and_then(|p| p.get("priority"))
        .and_then(Value::as_i64)
        .map(|p| p.clamp(0, 9) as u8)
        .unwrap_or(0);
    (rk, priority)
}

/// Marks an envelope as restored, as kombu does before putting it back:
/// `headers.redelivered = true` and `properties.delivery_info.redelivered = true`.
pub fn mark_redelivered(envelope: &mut Value) {
    if let Some(h) = envelope.get_mut("headers").and_then(Value::as_object_mut) {
        h.insert("redelivered".into(), Value::Bool(true));
    }
    if let Some(d) = envelope
        .get_mut("properties")
        .and_then(|p| p.get_mut("delivery_info"))
        .and_then(Value::as_object_mut)
    {
        d.insert("redelivered".into(), Value::Bool(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_everything_the_job_has() {
        let mut job = Job::new("add", vec![json!(1), json!("é")], Map::new());
        job.kwargs.insert("k".into(), json!([1, 2]));
        job.priority = 5;
        job.retries = 2;
        job.max_retries = Some(4);
        job.eta = Some(isotime::parse("2030-01-02T03:04:05.25+00:00").unwrap());
        job.expires = Some(isotime::parse("2030-01-03T03:04:05+00:00").unwrap());
        job.limits.time_limit = Some(60.0);
        job.limits.soft_time_limit = Some(1.5);
        job.limits.fuel = Some(1000);
        job.queue = "io".into();
        let out = encode(&job);
        assert_eq!(out.key, "io\x06\x163");
        let back = decode(out.envelope.as_bytes(), Some("io")).unwrap();
        assert_eq!(
            back.delivery_tag.as_deref(),
            Some(out.delivery_tag.as_str())
        );
        assert_eq!(back.job, job, "a plain job decodes with celery: None");
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let pickle = r#"{"body": "gAR9", "content-type": "application/x-python-serialize",
            "headers": {"task": "t", "id": "x1"}, "properties": {"body_encoding": "base64"}}"#;
        let err = decode(pickle.as_bytes(), None).unwrap_err();
        assert!(err.reason.contains("content-type"), "{}", err.reason);
        assert_eq!(err.id.as_deref(), Some("x1"));

        let nested = json!([[], {}, {"chain": [{"task": "g", "subtask_type": "group"}]}]);
        let env = json!({"body": nested.to_string(), "content-type": "application/json",
            "headers": {"task": "t", "id": "x2"}, "properties": {}});
        let err = decode(env.to_string().as_bytes(), None).unwrap_err();
        assert!(err.reason.contains("nested canvas"), "{}", err.reason);

        let no_task = json!({"body": "[[], {}, null]", "headers": {"id": "x3"}});
        let err = decode(no_task.to_string().as_bytes(), None).unwrap_err();
        assert!(err.reason.contains("task"), "{}", err.reason);
        assert!(decode(b"not json", None).unwrap_err().id.is_none());
    }

    /// Time values out of range are decode errors naming the value (dead letters), never
    /// a panic once the job runs.
    #[test]
    fn rejects_time_values_out_of_range() {
        let env = |headers: Value, embed: Value| {
            let mut h = json!({"task": "add", "id": "t1"});
            h.as_object_mut()
                .unwrap()
                .extend(headers.as_object().unwrap().clone());
            let body = json!([[1, 2], {}, embed]).to_string();
            json!({"body": body, "content-type": "application/json", "headers": h}).to_string()
        };
        let reason = |headers: Value, embed: Value| {
            let err = decode(env(headers, embed).as_bytes(), None).unwrap_err();
            assert_eq!(err.id.as_deref(), Some("t1"));
            err.reason
        };
        let r = reason(json!({"timelimit": [1e300, null]}), Value::Null);
        assert!(
            r.contains("`timelimit` header: 1e300 s is more than"),
            "{r}"
        );
        let r = reason(json!({"timelimit": [null, -1]}), Value::Null);
        assert!(r.contains("-1.0 s is negative"), "{r}");
        let r = reason(json!({"eta": "9999-01-01T00:00:00+00:00"}), Value::Null);
        assert!(
            r.contains("bad `eta` header") && r.contains("from now"),
            "{r}"
        );
        let link = json!({"callbacks": [{"task": "echo", "options": {"countdown": 1e15}}]});
        let r = reason(json!({}), link);
        assert!(
            r.contains("embed.callbacks: echo: `countdown` option"),
            "{r}"
        );
        let nested = json!({"chain": [{"task": "echo", "options": {
            "link_error": {"task": "log", "options": {"expires": "soon"}}}}]});
        let r = reason(json!({}), nested);
        assert!(r.contains("embed.chain: log: `expires` option"), "{r}");

        // 0 (like null) is no limit, as in Celery; a past expiry is fine (REVOKED).
        let ok = env(
            json!({"timelimit": [0, 2.5], "expires": "2001-01-01T00:00:00"}),
            json!({"callbacks": [{"task": "echo", "options": {"countdown": -5}}]}),
        );
        let job = decode(ok.as_bytes(), None).unwrap().job;
        assert_eq!(
            (job.limits.time_limit, job.limits.soft_time_limit),
            (None, Some(2.5))
        );
    }
}
