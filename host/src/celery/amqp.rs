//! Task messages on AMQP, as kombu's AMQP transport (py-amqp) carries them: the body is
//! the JSON bytes of `[args, kwargs, embed]` (no envelope, no base64), the protocol v2
//! headers are the message's AMQP headers, and `correlation_id` (the task id),
//! `reply_to`, `priority`, `content_type` and `content_encoding` are message properties
//! (docs/PROTOCOL.md §2). The mapping to [`Job`] is the Redis envelope's
//! ([`message`](super::message)), so both brokers decode a message alike.
//!
//! JSON ⇄ AMQP field tables is the broker's business (`storage::amqp`); this module
//! stays free of I/O and of the AMQP client's types.

use serde_json::{Map, Value, json};

use super::message::{self, Incoming, RawEnvelope};
use crate::model::{DecodeError, Job};

/// The content type Sprout publishes and accepts (Celery's default `task_serializer`).
pub const CONTENT_TYPE: &str = "application/json";
/// The content encoding Sprout publishes.
pub const CONTENT_ENCODING: &str = "utf-8";

/// A task message for AMQP.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpMessage {
    /// The exchange Celery publishes the queue's tasks to: a direct exchange named after
    /// the queue (`celery` for `celery`, as `task_default_exchange` and
    /// `task_create_missing_queues` make it).
    pub exchange: String,
    /// The routing key: the queue's name.
    pub routing_key: String,
    /// The protocol v2 headers.
    pub headers: Map<String, Value>,
    /// The body's JSON bytes.
    pub body: Vec<u8>,
    /// `correlation_id`: the task id.
    pub correlation_id: String,
    /// `reply_to`: where an `rpc://` result goes.
    pub reply_to: String,
    /// `priority` (Celery's number, 0–9; RabbitMQ serves the highest first).
    pub priority: u8,
}

/// Encodes `job` as a Celery 5 client publishes it on RabbitMQ.
pub fn encode(job: &Job) -> AmqpMessage {
    let parts = message::parts(job);
    let headers = match serde_json::to_value(&parts.headers) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    AmqpMessage {
        exchange: job.queue.clone(),
        routing_key: job.queue.clone(),
        headers,
        body: parts.body,
        correlation_id: job.id.clone(),
        reply_to: parts.reply_to.to_string(),
        priority: job.priority.min(9),
    }
}

/// The properties of a received message that decoding reads.
#[derive(Debug, Clone, Default)]
pub struct AmqpProperties<'a> {
    /// `content_type`.
    pub content_type: Option<&'a str>,
    /// `content_encoding`.
    pub content_encoding: Option<&'a str>,
    /// `correlation_id`.
    pub correlation_id: Option<&'a str>,
    /// `reply_to`.
    pub reply_to: Option<&'a str>,
    /// `priority`.
    pub priority: Option<u8>,
}

/// Decodes a message received from `queue`: its headers (already JSON), properties and
/// body bytes; `redelivered` is the delivery's flag.
///
/// # Errors
/// [`DecodeError`] with the reason and, when the headers name it, the task id: a body
/// that is not JSON, or anything [`message::decode`] rejects.
pub fn decode(
    headers: Map<String, Value>,
    props: &AmqpProperties<'_>,
    body: &[u8],
    queue: &str,
    redelivered: bool,
) -> Result<Incoming, DecodeError> {
    let id = headers
        .get("id")
        .and_then(Value::as_str)
        .or(props.correlation_id)
        .map(str::to_string);
    let body: Value = serde_json::from_slice(body).map_err(|e| DecodeError {
        reason: format!("body is not JSON: {e}"),
        id: id.clone(),
    })?;
    let mut properties = Map::new();
    if let Some(c) = props.correlation_id {
        properties.insert("correlation_id".into(), json!(c));
    }
    if let Some(r) = props.reply_to {
        properties.insert("reply_to".into(), json!(r));
    }
    if let Some(p) = props.priority {
        properties.insert("priority".into(), json!(p));
    }
    properties.insert(
        "delivery_info".into(),
        json!({"routing_key": queue, "redelivered": redelivered}),
    );
    let env = RawEnvelope::from_parts(
        body,
        props.content_type.map(str::to_string),
        props.content_encoding.map(str::to_string),
        headers,
        properties,
    );
    message::decode_envelope(env, Some(queue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::isotime;

    #[test]
    fn round_trip() {
        let mut job = Job::new("add", vec![json!(1), json!("é")], Map::new());
        job.kwargs.insert("k".into(), json!([1, 2]));
        job.priority = 5;
        job.retries = 2;
        job.max_retries = Some(4);
        job.eta = Some(isotime::parse("2030-01-02T03:04:05.25+00:00").unwrap());
        job.limits.time_limit = Some(60.0);
        job.queue = "io".into();
        let out = encode(&job);
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("io", "io")
        );
        assert_eq!(out.headers["task"], "add");
        assert_eq!(out.headers["timelimit"], json!([60, null]));
        let props = AmqpProperties {
            content_type: Some(CONTENT_TYPE),
            content_encoding: Some(CONTENT_ENCODING),
            correlation_id: Some(&out.correlation_id),
            reply_to: Some(&out.reply_to),
            priority: Some(out.priority),
        };
        let back = decode(out.headers.clone(), &props, &out.body, "io", false).unwrap();
        assert_eq!(back.job, job);
        assert!(!back.redelivered);
        assert!(
            decode(out.headers, &props, &out.body, "io", true)
                .unwrap()
                .redelivered
        );
    }

    #[test]
    fn bad_bodies_name_the_task() {
        let mut headers = Map::new();
        headers.insert("id".into(), json!("abc"));
        headers.insert("task".into(), json!("t"));
        let props = AmqpProperties::default();
        let err = decode(headers.clone(), &props, b"\xff\xfe", "q", false).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("abc"));
        assert!(err.reason.contains("not JSON"), "{}", err.reason);
        let bad_type = AmqpProperties {
            content_type: Some("application/x-python-serialize"),
            ..AmqpProperties::default()
        };
        let err = decode(headers, &bad_type, b"[[],{},{}]", "q", false).unwrap_err();
        assert!(err.reason.contains("content-type"), "{}", err.reason);
    }
}
