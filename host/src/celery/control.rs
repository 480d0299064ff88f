//! Celery's remote control messages (kombu's "pidbox" mailbox): the wire shapes of a
//! request (`celery inspect …`, `celery control …`, `app.control.*`) and of a worker's
//! reply, as kombu 5.7 writes them (capture: `tests/celery/captures/`).
//!
//! ```text
//! client: PUBLISH <prefix>/<db>.celery.pidbox   envelope{body: base64 {"method", "arguments",
//!         "destination", "pattern", "matcher", "ticket", "reply_to": {"exchange":
//!         "reply.celery.pidbox", "routing_key": <oid>}}, headers {"clock", "expires"}}
//! worker: LPUSH <prefix><oid>.reply.celery.pidbox   envelope{body: base64 {<hostname>:
//!         <reply>}, headers {"ticket", "clock"}}  (for each queue bound to <oid> in
//!         `_kombu.binding.reply.celery.pidbox`)
//! ```
//! I/O-free: the broker modules move the bytes, the worker's control plane answers.
//! Everything read here comes from outside and is checked: a request that is not JSON,
//! has no method, or whose `expires` has passed is refused with a reason.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::keys::SEP;
use super::pyjson;

/// The fanout exchange requests are broadcast on.
pub const EXCHANGE: &str = "celery.pidbox";
/// The direct exchange replies go to (routing key: the client's oid).
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// Largest request or reply envelope accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Longest method name accepted.
const MAX_METHOD_LEN: usize = 128;

/// Where a reply goes: kombu's `reply_to` of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// Always [`REPLY_EXCHANGE`] for Celery clients.
    pub exchange: String,
    /// The client's oid; the reply queue is `<oid>.reply.celery.pidbox`.
    pub routing_key: String,
}

/// One remote-control request, the body of a pidbox message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The command: `ping`, `active`, `revoke`, `pool_grow`, …
    pub method: String,
    /// Its keyword arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Worker names it is for; `None` (null) means every worker.
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    /// A pattern worker names must match instead of `destination`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// How `pattern` matches: `glob` (Sprout supports `*` and `?`) or `pcre`.
    #[serde(default)]
    pub matcher: Option<String>,
    /// Echoed in the reply's headers; the client drops replies to other tickets.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Where to reply; `None`: no reply wanted.
    #[serde(default)]
    pub reply_to: Option<ReplyTo>,
}

/// Why a control message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Its `expires` header has passed: the client stopped waiting for replies.
    #[error("expired control message")]
    Expired,
    /// It is not a control message Sprout can read.
    #[error("invalid control message: {0}")]
    Invalid(String),
}

impl ControlRequest {
    /// A request for `method` with `arguments`, to `destination` (`None`: everyone).
    pub fn new(
        method: impl Into<String>,
        arguments: Map<String, Value>,
        destination: Option<Vec<String>>,
    ) -> Self {
        ControlRequest {
            method: method.into(),
            arguments,
            destination,
            pattern: None,
            matcher: None,
            ticket: None,
            reply_to: None,
        }
    }

    /// Whether the worker called `hostname` should act on it.
    pub fn is_for(&self, hostname: &str) -> bool {
        if let Some(dest) = &self.destination
            && !dest.is_empty()
        {
            return dest.iter().any(|d| d == hostname);
        }
        match (&self.pattern, self.matcher.as_deref()) {
            (Some(pattern), None | Some("glob")) => glob_match(pattern, hostname),
            // No regex engine here: a pcre pattern matches only itself.
            (Some(pattern), Some(_)) => pattern == hostname,
            (None, _) => true,
        }
    }
}

/// `*` and `?` glob matching (fnmatch without character classes).
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The name of a client's reply queue (`<oid>.reply.celery.pidbox`).
pub fn reply_queue(oid: &str) -> String {
    format!("{oid}.{REPLY_EXCHANGE}")
}

/// The member of `_kombu.binding.reply.celery.pidbox` that binds a client's reply queue:
/// `<oid>` SEP `""` SEP `<queue>`.
pub fn reply_binding(oid: &str) -> String {
    format!("{oid}{SEP}{SEP}{}", reply_queue(oid))
}

/// The key of the binding set of `exchange` (`_kombu.binding.<exchange>`).
pub fn binding_key(exchange: &str) -> String {
    format!("_kombu.binding.{exchange}")
}

/// The Redis pub/sub channel kombu broadcasts `exchange` on for database `db`
/// (`/0.celery.pidbox`; the deployment's key prefix goes in front).
pub fn fanout_channel(db: i64, exchange: &str) -> String {
    format!("/{db}.{exchange}")
}

/// The queues of a binding set's members whose routing key is `routing_key` (a direct
/// exchange's lookup).
pub fn bound_queues<'a>(
    members: &'a [String],
    routing_key: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    members.iter().filter_map(move |m| {
        let mut parts = m.splitn(3, SEP);
        let rk = parts.next()?;
        let _pattern = parts.next()?;
        let queue = parts.next()?;
        (rk == routing_key).then_some(queue)
    })
}

/// Reads a kombu envelope: JSON object, body (base64 when `body_encoding` says so).
fn open_envelope(raw: &[u8]) -> Result<(Map<String, Value>, Value), ControlError> {
    let invalid = |m: String| ControlError::Invalid(m);
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "{} bytes is over the {MAX_MESSAGE_BYTES}-byte limit",
            raw.len()
        )));
    }
    let envelope: Value =
        serde_json::from_slice(raw).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Value::Object(envelope) = envelope else {
        return Err(invalid("the envelope is not a JSON object".into()));
    };
    let base64 = envelope
        .get("properties")
        .and_then(|p| p.get("body_encoding"))
        .and_then(Value::as_str)
        == Some("base64");
    let body = match envelope.get("body") {
        Some(Value::String(text)) if base64 => {
            let bytes = BASE64
                .decode(text.trim())
                .map_err(|e| invalid(format!("body is not valid base64: {e}")))?;
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("body is not JSON: {e}")))?
        }
        Some(Value::String(text)) => {
            serde_json::from_str(text).map_err(|e| invalid(format!("body is not JSON: {e}")))?
        }
        Some(Value::Object(body)) => Value::Object(body.clone()),
        _ => return Err(invalid("no body".into())),
    };
    Ok((envelope, body))
}

/// Decodes a broadcast request. `now` is the current Unix time in seconds, against which
/// the `expires` header is checked.
///
/// # Errors
/// [`ControlError::Expired`] when the client no longer waits; [`ControlError::Invalid`]
/// when the bytes are not a pidbox request.
pub fn decode_request(raw: &[u8], now: f64) -> Result<ControlRequest, ControlError> {
    let (envelope, body) = open_envelope(raw)?;
    let expires = envelope
        .get("headers")
        .and_then(|h| h.get("expires"))
        .and_then(Value::as_f64);
    if expires.is_some_and(|at| at < now) {
        return Err(ControlError::Expired);
    }
    let request: ControlRequest = serde_json::from_value(body)
        .map_err(|e| ControlError::Invalid(format!("not a control request: {e}")))?;
    check_request(&request)?;
    Ok(request)
}

/// The limits a request read from outside must keep.
fn check_request(request: &ControlRequest) -> Result<(), ControlError> {
    let m = &request.method;
    if m.is_empty()
        || m.len() > MAX_METHOD_LEN
        || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ControlError::Invalid(format!(
            "bad method name {:?}",
            m.chars().take(MAX_METHOD_LEN).collect::<String>()
        )));
    }
    if let Some(reply_to) = &request.reply_to
        && (reply_to.routing_key.is_empty() || reply_to.routing_key.len() > 256)
    {
        return Err(ControlError::Invalid(
            "reply_to routing key is empty or over 256 bytes".into(),
        ));
    }
    Ok(())
}

/// A kombu envelope around `body` (base64 JSON), with `headers`, on `exchange` /
/// `routing_key`.
fn envelope(body: &Value, headers: Value, exchange: &str, routing_key: &str, mode: u8) -> Vec<u8> {
    let body = BASE64.encode(pyjson::to_vec(body));
    pyjson::to_vec(&json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    }))
}

/// Encodes a request as `celery inspect` broadcasts it; `expires` is the Unix time after
/// which workers ignore it.
pub fn encode_request(request: &ControlRequest, expires: f64, clock: u64) -> Vec<u8> {
    let body = serde_json::to_value(request).expect("a request is JSON");
    envelope(
        &body,
        json!({"clock": clock, "expires": expires}),
        EXCHANGE,
        "",
        2,
    )
}

/// Encodes a worker's reply `{hostname: reply}` to `request`.
pub fn encode_reply(
    hostname: &str,
    ticket: Option<&str>,
    routing_key: &str,
    reply: Value,
    clock: u64,
) -> Vec<u8> {
    let mut body = Map::new();
    body.insert(hostname.to_string(), reply);
    envelope(
        &Value::Object(body),
        json!({"ticket": ticket, "clock": clock}),
        REPLY_EXCHANGE,
        routing_key,
        1,
    )
}

/// One worker's reply, read back by a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The ticket of the request it answers.
    pub ticket: Option<String>,
    /// The worker's name.
    pub hostname: String,
    /// What it said.
    pub reply: Value,
}

/// Decodes a reply envelope.
///
/// # Errors
/// [`ControlError::Invalid`] when it is not a `{hostname: reply}` message.
pub fn decode_reply(raw: &[u8]) -> Result<Reply, ControlError> {
    let (envelope, body) = open_envelope(raw)?;
    let ticket = envelope
        .get("headers")
        .and_then(|h| h.get("ticket"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let Value::Object(body) = body else {
        return Err(ControlError::Invalid("a reply is a JSON object".into()));
    };
    let mut entries = body.into_iter();
    match (entries.next(), entries.next()) {
        (Some((hostname, reply)), None) => Ok(Reply {
            ticket,
            hostname,
            reply,
        }),
        _ => Err(ControlError::Invalid(
            "a reply has exactly one worker name".into(),
        )),
    }
}

/// Celery's `{"ok": text}` reply.
pub fn ok(text: impl Into<String>) -> Value {
    json!({"ok": text.into()})
}

/// Celery's `{"error": text}` reply.
pub fn error(text: impl Into<String>) -> Value {
    json!({"error": text.into()})
}

/// A Python set of strings as `repr` writes it (`{'a', 'b'}`), as in Celery's
/// `tasks {…} flagged as revoked`.
pub fn py_set(items: &[String]) -> String {
    if items.is_empty() {
        return "set()".into();
    }
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        pyjson::repr_str(item, &mut out);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ping` kombu published in `monitor_control_events.txt`.
    const PING: &str = r#"{"body": "eyJtZXRob2QiOiAicGluZyIsICJhcmd1bWVudHMiOiB7fSwgImRlc3RpbmF0aW9uIjogbnVsbCwgInBhdHRlcm4iOiBudWxsLCAibWF0Y2hlciI6IG51bGwsICJ0aWNrZXQiOiAiNzFmOTEzZTktNjhkNC00YTNiLTg4MDAtZWRlMmRjOTZhN2FkIiwgInJlcGx5X3RvIjogeyJleGNoYW5nZSI6ICJyZXBseS5jZWxlcnkucGlkYm94IiwgInJvdXRpbmdfa2V5IjogIjY2Yzc1MjdlLTI1YjctMzU4MS1iNDg5LWU1ODFlY2JhYzYzZiJ9fQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"clock": 1, "expires": 1796338278.9197912}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""}, "priority": 0, "body_encoding": "base64", "delivery_tag": "e3c896fe-117f-41ce-864d-13a0e6365b52"}}"#;

    #[test]
    fn reads_the_captured_ping() {
        let req = decode_request(PING.as_bytes(), 1796338277.0).unwrap();
        assert_eq!(req.method, "ping");
        assert_eq!(
            req.ticket.as_deref(),
            Some("71f913e9-68d4-4a3b-8800-ede2dc96a7ad")
        );
        let reply_to = req.reply_to.unwrap();
        assert_eq!(reply_to.exchange, REPLY_EXCHANGE);
        assert_eq!(reply_to.routing_key, "66c7527e-25b7-3581-b489-e581ecbac63f");
        assert_eq!(
            decode_request(PING.as_bytes(), 1796338279.0),
            Err(ControlError::Expired)
        );
    }

    #[test]
    fn reply_round_trips_and_matches_the_capture_body() {
        let raw = encode_reply("cap1@host", Some("t"), "oid", ok("pong"), 3);
        let (envelope, body) = open_envelope(&raw).unwrap();
        assert_eq!(body, json!({"cap1@host": {"ok": "pong"}}));
        assert_eq!(envelope["headers"], json!({"ticket": "t", "clock": 3}));
        let reply = decode_reply(&raw).unwrap();
        assert_eq!(reply.hostname, "cap1@host");
        assert_eq!(reply.ticket.as_deref(), Some("t"));
    }

    #[test]
    fn refuses_garbage() {
        for raw in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"body": "!!!", "properties": {"body_encoding": "base64"}}"#,
            br#"{"body": "{\"method\": \"bad name;\"}"}"#,
            br#"{"body": "{\"arguments\": {}}"}"#,
        ] {
            assert!(matches!(
                decode_request(raw, 0.0),
                Err(ControlError::Invalid(_))
            ));
        }
    }

    #[test]
    fn destinations_and_patterns() {
        let mut req = ControlRequest::new("ping", Map::new(), None);
        assert!(req.is_for("a@h"));
        req.destination = Some(vec!["b@h".into()]);
        assert!(!req.is_for("a@h"));
        req.destination = None;
        req.pattern = Some("a@*".into());
        assert!(req.is_for("a@h"));
        assert!(!req.is_for("b@h"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a?c", "abcd"));
    }

    #[test]
    fn binding_members() {
        let members = vec![reply_binding("x"), reply_binding("y")];
        assert_eq!(
            bound_queues(&members, "y").collect::<Vec<_>>(),
            vec!["y.reply.celery.pidbox"]
        );
        assert_eq!(py_set(&["a".into()]), "{'a'}");
    }
}
