//! AMQP 0-9-1 (RabbitMQ) connection settings shared by
//! [`AmqpBroker`](crate::broker::amqp::AmqpBroker) and
//! [`RpcBackend`](crate::backend::rpc::RpcBackend), and the conversion between AMQP
//! field tables and JSON that both need at their edge.
//!
//! # URL
//! `amqp://USER:PASS@HOST:PORT/VHOST?max_priority=10&queue_type=quorum`, as Celery's
//! `broker_url` (`pyamqp://` is accepted as a synonym; a trailing `//` is the vhost `/`,
//! as in kombu). Sprout's query keys are taken out before the URL reaches the AMQP
//! client (which itself understands `heartbeat`, `frame_max`, `channel_max` and
//! `connection_timeout`):
//!
//! | key | meaning | Celery setting it must match |
//! |---|---|---|
//! | `max_priority` (0–255) | queues declared with `x-max-priority` | `task_queue_max_priority` |
//! | `queue_type` (`classic`, `quorum`) | queues declared with `x-queue-type` | `task_default_queue_type` |
//! | `max_held` | most eta/countdown messages held at once | — |
//!
//! A queue exists with the arguments of whoever declared it first: every producer and
//! worker on a queue must agree on them, or RabbitMQ refuses the declaration
//! (`PRECONDITION_FAILED`, reported naming these keys).
//!
//! `frame_max` is 4096 to [`MAX_FRAME`] bytes, and Sprout asks for [`MAX_FRAME`] when
//! the URL does not say: a message's headers travel in one frame, and the AMQP client
//! parses them recursively, so the frame size bounds how deeply nested headers can
//! arrive (the `sprout` binary's threads have the stack for the deepest that fit).

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// The largest frame Sprout negotiates (RabbitMQ's default `frame_max`): 128 KiB.
pub const MAX_FRAME: u64 = 128 * 1024;

/// How deeply a header value may nest (tables and arrays) before a message is refused:
/// as deep as the JSON Sprout reads (serde_json's limit). Celery's own headers nest a
/// few levels.
pub const MAX_HEADER_DEPTH: usize = 128;

/// Why AMQP settings are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpOptionsError {
    /// Not an AMQP URL (or a scheme this build does not support).
    #[error("unsupported AMQP URL {0:?}: expected amqp://USER:PASS@HOST:PORT/VHOST")]
    Url(String),
    /// One of Sprout's query keys has a bad value.
    #[error("AMQP URL key {0}")]
    Key(String),
}

/// How queues are declared: RabbitMQ's `x-queue-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Classic queues (no `x-queue-type` argument, as Celery declares them by default).
    #[default]
    Classic,
    /// Replicated quorum queues (`x-queue-type: quorum`, Celery's
    /// `task_default_queue_type = "quorum"`); they keep a delivery count.
    Quorum,
}

/// Settings for the AMQP broker and the `rpc://` result backend.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpOptions {
    /// The URL as given (for messages; the password is never printed).
    display: String,
    /// What the AMQP client connects to: the URL without Sprout's keys.
    uri: String,
    /// The virtual host, percent-decoded (`/` by default).
    pub vhost: String,
    /// `x-max-priority` of declared queues; `None` declares none (priorities are then
    /// ignored by RabbitMQ, as with Celery's default). Default: none.
    pub max_priority: Option<u8>,
    /// `x-queue-type` of declared queues. Default: classic.
    pub queue_type: QueueType,
    /// The most eta/countdown messages a broker holds unacknowledged while they wait
    /// (they do not take a prefetch slot: the channel's prefetch is raised by as many,
    /// as a Celery worker does). Past it, held messages count against the prefetch.
    /// Default: 10 000.
    pub max_held: usize,
    /// How long connecting may take. Default: 10 s.
    pub connect_timeout: Duration,
}

impl AmqpOptions {
    /// Parses an `amqp://` (or `pyamqp://`) URL, taking out Sprout's own query keys.
    ///
    /// # Errors
    /// [`AmqpOptionsError::Url`] for another scheme, [`AmqpOptionsError::Key`] for a bad
    /// value.
    pub fn from_url(url: &str) -> Result<AmqpOptions, AmqpOptionsError> {
        let rest = url
            .strip_prefix("amqp://")
            .or_else(|| url.strip_prefix("pyamqp://"))
            .ok_or_else(|| AmqpOptionsError::Url(redact(url)))?;
        let (base, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let mut opts = AmqpOptions {
            display: redact(url),
            uri: String::new(),
            vhost: String::new(),
            max_priority: None,
            queue_type: QueueType::Classic,
            max_held: 10_000,
            connect_timeout: Duration::from_secs(10),
        };
        let mut passed = Vec::new();
        let mut frame_max_given = false;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |why: &str| AmqpOptionsError::Key(format!("`{key}={value}`: {why}"));
            match key {
                "max_priority" | "x-max-priority" => {
                    opts.max_priority =
                        Some(value.parse::<u8>().map_err(|_| bad("expected 0 to 255"))?);
                }
                "queue_type" | "x-queue-type" => {
                    opts.queue_type = match value {
                        "classic" => QueueType::Classic,
                        "quorum" => QueueType::Quorum,
                        _ => return Err(bad("expected classic or quorum")),
                    };
                }
                "max_held" => {
                    opts.max_held = value
                        .parse::<usize>()
                        .map_err(|_| bad("expected a count"))?;
                }
                "heartbeat" | "frame_max" | "channel_max" | "connection_timeout" => {
                    let n = value
                        .parse::<u64>()
                        .map_err(|_| bad("expected a whole number"))?;
                    // AMQP 0-9-1: a frame size limit is at least 4096 bytes; more than
                    // MAX_FRAME would let deeper headers arrive than a thread can parse.
                    if key == "frame_max" && !(4096..=MAX_FRAME).contains(&n) {
                        return Err(bad(&format!("expected 4096 to {MAX_FRAME} bytes")));
                    }
                    frame_max_given |= key == "frame_max";
                    if key == "connection_timeout" {
                        opts.connect_timeout = Duration::from_millis(value.parse().unwrap_or(0));
                    }
                    passed.push(pair);
                }
                _ => return Err(bad("unknown key")),
            }
        }
        if opts.max_priority.is_some() && opts.queue_type == QueueType::Quorum {
            return Err(AmqpOptionsError::Key(
                "`max_priority` with `queue_type=quorum`: quorum queues take no \
                 x-max-priority"
                    .into(),
            ));
        }
        // kombu: the path after the host is the vhost, `//` (or nothing) is `/`.
        let (authority, path) = match base.split_once('/') {
            Some((a, p)) => (a, p),
            None => (base, ""),
        };
        if authority.is_empty() || authority.ends_with('@') {
            return Err(AmqpOptionsError::Url(redact(url)));
        }
        let vhost = match path {
            "" | "/" => "/".to_string(),
            p => percent_decode(p).ok_or_else(|| AmqpOptionsError::Url(redact(url)))?,
        };
        let mut uri = format!("amqp://{authority}/{}", percent_encode(&vhost));
        let default_frame = format!("frame_max={MAX_FRAME}");
        if !frame_max_given {
            passed.push(&default_frame);
        }
        if !passed.is_empty() {
            uri.push('?');
            uri.push_str(&passed.join("&"));
        }
        uri.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| AmqpOptionsError::Key(format!("{}: {e}", redact(url))))?;
        opts.uri = uri;
        opts.vhost = vhost;
        Ok(opts)
    }

    /// The URL the AMQP client connects to (Sprout's keys taken out; it may hold a
    /// password: not for messages).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The URL, without its password, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The queue arguments every declaration of a task queue carries.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(p) = self.max_priority {
            // py-amqp writes a Python int as a signed 32-bit 'I': the same type, so
            // RabbitMQ sees equivalent arguments whichever side declares first.
            args.insert("x-max-priority".into(), AMQPValue::LongInt(p.into()));
        }
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }

    /// Opens a connection (no retry: callers reconnect with their own backoff).
    ///
    /// # Errors
    /// The client's error, or a timeout after [`AmqpOptions::connect_timeout`].
    pub async fn connect(&self) -> Result<lapin::Connection, String> {
        let props = lapin::ConnectionProperties::default()
            .with_connection_name(format!("sprout {}", std::process::id()).into());
        match tokio::time::timeout(
            self.connect_timeout,
            lapin::Connection::connect(&self.uri, props),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("connecting to {}: {e}", self.display)),
            Err(_) => Err(format!(
                "connecting to {}: no answer within {:?}",
                self.display, self.connect_timeout
            )),
        }
    }
}

/// `amqp://user:secret@host` → `amqp://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// True when an AMQP client error means the connection or channel is gone (retrying
/// on a new connection may help), false for what the server refused (a soft error
/// such as `PRECONDITION_FAILED` or `NOT_FOUND`, which a retry would meet again).
pub fn is_connection(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::ProtocolError(_) => !e.is_amqp_soft_error(),
        K::IOError(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::MissingHeartbeatError
        | K::RuntimeShutdownError(_)
        | K::InvalidChannel(_) => true,
        _ => false,
    }
}

/// A JSON value as py-amqp writes the same Python value into a field table: ints as
/// signed 32-bit (`I`) or 64-bit, floats as doubles, strings as long strings, `None`
/// as void.
pub fn to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => match i32::try_from(i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(i),
            },
            // Past i64: as a double (Python would write a decimal; rare in headers).
            (None, Some(u), _) => AMQPValue::Double(u as f64),
            (_, _, Some(f)) => AMQPValue::Double(f),
            _ => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(table_of(map)),
    }
}

/// A JSON object as a field table (see [`to_amqp`]). Keys longer than 255 bytes cannot
/// be AMQP field names and are left out.
pub fn table_of(map: &Map<String, Value>) -> FieldTable {
    let mut table = BTreeMap::new();
    for (k, v) in map {
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            table.insert(key, to_amqp(v));
        }
    }
    FieldTable::from(table)
}

/// A field-table value as JSON. Text that is not UTF-8 and numbers JSON cannot hold
/// (NaN, infinities) are errors naming `path`: a header is never silently changed.
///
/// # Errors
/// A message naming the field whose bytes are not UTF-8, that is not a finite number, or
/// that nests deeper than [`MAX_HEADER_DEPTH`] levels.
pub fn from_amqp(value: &AMQPValue, path: &str) -> Result<Value, String> {
    value_at(value, path, 0)
}

/// [`from_amqp`] of a value `depth` levels inside a header.
fn value_at(value: &AMQPValue, path: &str, depth: usize) -> Result<Value, String> {
    if depth > MAX_HEADER_DEPTH {
        return Err(format!(
            "header `{path}` nests deeper than {MAX_HEADER_DEPTH} levels"
        ));
    }
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_string()))
            .map_err(|_| format!("header `{path}` is not UTF-8 text"))
    };
    // NaN and the infinities have no JSON form: refused, not turned into null.
    let number = |f: f64| {
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("header `{path}` is not a finite number ({f})"))
    };
    Ok(match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => number(f64::from(*f))?,
        AMQPValue::Double(f) => number(*f)?,
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => text(s.as_bytes())?,
        AMQPValue::ByteArray(b) => text(b.as_slice())?,
        AMQPValue::FieldArray(items) => Value::Array(
            items
                .as_slice()
                .iter()
                .enumerate()
                .map(|(i, v)| value_at(v, &format!("{path}[{i}]"), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        AMQPValue::FieldTable(t) => Value::Object(map_at(t, path, depth)?),
        AMQPValue::Void => Value::Null,
    })
}

/// A field table as a JSON object (see [`from_amqp`]); `path` names it in errors.
///
/// # Errors
/// As [`from_amqp`].
pub fn map_of(table: &FieldTable, path: &str) -> Result<Map<String, Value>, String> {
    map_at(table, path, 0)
}

/// [`map_of`] of a table `depth` levels inside a header.
fn map_at(table: &FieldTable, path: &str, depth: usize) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for (k, v) in table.inner() {
        let inner = if path.is_empty() {
            k.as_str().to_string()
        } else {
            format!("{path}.{}", k.as_str())
        };
        map.insert(k.as_str().to_string(), value_at(v, &inner, depth + 1)?);
    }
    Ok(map)
}

/// A long string header value.
pub fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header nested `levels` deep: tables inside tables, or arrays inside arrays.
    fn nested(levels: usize, arrays: bool) -> FieldTable {
        let mut value = AMQPValue::Boolean(true);
        for _ in 1..levels {
            value = if arrays {
                AMQPValue::FieldArray(FieldArray::from(vec![value]))
            } else {
                let mut t = FieldTable::default();
                t.insert("t".into(), value);
                AMQPValue::FieldTable(t)
            };
        }
        let mut headers = FieldTable::default();
        headers.insert("deep".into(), value);
        headers
    }

    #[test]
    fn headers_nest_at_most_max_header_depth_levels() {
        for arrays in [false, true] {
            let at_limit = map_of(&nested(MAX_HEADER_DEPTH, arrays), "").unwrap();
            let mut value = &at_limit["deep"];
            let mut levels = 1;
            while let Some(inner) = value.get("t").or_else(|| value.get(0)) {
                value = inner;
                levels += 1;
            }
            assert_eq!((levels, value), (MAX_HEADER_DEPTH, &Value::Bool(true)));
            let e = map_of(&nested(MAX_HEADER_DEPTH + 1, arrays), "").unwrap_err();
            assert!(e.contains("nests deeper than 128 levels"), "{e}");
            assert!(e.starts_with("header `deep"), "{e}");
        }
        // Far deeper: refused at the limit, without walking (or naming) the rest.
        let e = map_of(&nested(3_000, true), "").unwrap_err();
        assert!(e.len() < 1_000, "{e}");
    }

    /// RabbitMQ itself refuses a publish with such numbers (INTERNAL_ERROR), but a
    /// header is decoded as it comes, whatever the server.
    #[test]
    fn numbers_json_cannot_hold_are_refused() {
        for bad in [
            AMQPValue::Double(f64::NAN),
            AMQPValue::Double(f64::INFINITY),
            AMQPValue::Float(f32::NEG_INFINITY),
        ] {
            let mut headers = FieldTable::default();
            headers.insert("timelimit".into(), AMQPValue::FieldArray(vec![bad].into()));
            let e = map_of(&headers, "").unwrap_err();
            assert!(
                e.contains("header `timelimit[0]` is not a finite number"),
                "{e}"
            );
        }
        let mut headers = FieldTable::default();
        headers.insert("x".into(), AMQPValue::Double(1e300));
        assert_eq!(map_of(&headers, "").unwrap()["x"], 1e300);
    }

    #[test]
    fn urls() {
        let o = AmqpOptions::from_url("amqp://guest:guest@127.0.0.1:5672//").unwrap();
        assert_eq!(o.vhost, "/");
        assert_eq!(
            o.uri,
            "amqp://guest:guest@127.0.0.1:5672/%2F?frame_max=131072"
        );
        assert_eq!(o.display(), "amqp://guest:***@127.0.0.1:5672//");
        let o =
            AmqpOptions::from_url("pyamqp://u:p@h/my%2Fvh?max_priority=10&heartbeat=5").unwrap();
        assert_eq!(o.vhost, "my/vh");
        assert_eq!(o.max_priority, Some(10));
        assert_eq!(o.uri, "amqp://u:p@h/my%2Fvh?heartbeat=5&frame_max=131072");
        assert!(AmqpOptions::from_url("amqp://h/?max_priority=300").is_err());
        assert!(AmqpOptions::from_url("amqp://h/?bogus=1").is_err());
        assert!(AmqpOptions::from_url("amqp://h/?queue_type=stream").is_err());
        assert!(AmqpOptions::from_url("amqp://h/?queue_type=quorum&max_priority=3").is_err());
        assert!(AmqpOptions::from_url("redis://h/").is_err());
        // A frame size limit under AMQP's minimum would fail only at the handshake; over
        // MAX_FRAME (or none: 0), headers could nest deeper than a thread can parse.
        for refused in ["1", "4095", "0", "131073", "1048576"] {
            let e = AmqpOptions::from_url(&format!("amqp://h/?frame_max={refused}")).unwrap_err();
            assert!(e.to_string().contains("expected 4096 to 131072"), "{e}");
        }
        for fine in ["4096", "131072"] {
            let o = AmqpOptions::from_url(&format!("amqp://h/?frame_max={fine}")).unwrap();
            assert_eq!(o.uri, format!("amqp://h/%2F?frame_max={fine}"));
        }
        assert_eq!(
            AmqpOptions::from_url("amqp://h").unwrap().uri,
            "amqp://h/%2F?frame_max=131072"
        );
    }

    #[test]
    fn json_round_trip() {
        let v = serde_json::json!({"a": [1, 2.5, null, true, "x"], "big": 1u64 << 40,
            "nested": {"k": -3}});
        let t = table_of(v.as_object().unwrap());
        assert_eq!(Value::Object(map_of(&t, "").unwrap()), v);
        assert_eq!(to_amqp(&serde_json::json!(10)), AMQPValue::LongInt(10));
        let bad = AMQPValue::LongString(LongString::from(vec![0xffu8, 0xfe]));
        assert!(from_amqp(&bad, "h").unwrap_err().contains("`h`"));
    }
}
