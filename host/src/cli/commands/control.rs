//! `sprout inspect …` and `sprout control …`: Celery's remote-control verbs, through the
//! broker's mailbox (Redis pidbox, or the SQLite file), printed as `celery inspect`
//! prints them or as JSON.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value, json};

use super::{EXIT_USAGE, ExitError};
use crate::cli::args::ControlArgs;
use sprout::celery::control::{ControlRequest, Reply};
use sprout::connect;

/// `inspect` verbs and how many arguments each takes (min, max).
const INSPECT: &[(&str, usize, usize)] = &[
    ("ping", 0, 0),
    ("active", 0, 0),
    ("reserved", 0, 0),
    ("scheduled", 0, 0),
    ("registered", 0, 0),
    ("stats", 0, 0),
    ("active_queues", 0, 0),
    ("revoked", 0, 0),
    ("conf", 0, 0),
    ("clock", 0, 0),
    ("query_task", 1, usize::MAX),
];

/// `control` verbs and how many arguments each takes (min, max).
const CONTROL: &[(&str, usize, usize)] = &[
    ("revoke", 1, usize::MAX),
    ("terminate", 2, usize::MAX),
    ("rate_limit", 2, 2),
    ("time_limit", 2, 3),
    ("enable_events", 0, 0),
    ("disable_events", 0, 0),
    ("heartbeat", 0, 0),
    ("shutdown", 0, 0),
    ("pool_grow", 0, 1),
    ("pool_shrink", 0, 1),
    ("autoscale", 2, 2),
    ("add_consumer", 1, 1),
    ("cancel_consumer", 1, 1),
];

fn usage(message: impl Into<String>) -> anyhow::Error {
    ExitError::new(EXIT_USAGE, message).into()
}

/// A count argument (`pool_grow 10`).
fn number(verb: &str, text: &str) -> anyhow::Result<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| usage(format!("{verb}: {text:?} is not a positive whole number")))
}

/// Seconds (`time_limit TASK 10 20`).
fn seconds(verb: &str, text: &str) -> anyhow::Result<Value> {
    let secs = crate::cli::args::parse_duration(text).map_err(|e| usage(format!("{verb}: {e}")))?;
    Ok(json!(secs.as_secs_f64()))
}

/// The request `verb args` stands for.
fn request(args: &ControlArgs, inspect: bool) -> anyhow::Result<ControlRequest> {
    let table = if inspect { INSPECT } else { CONTROL };
    let what = if inspect { "inspect" } else { "control" };
    let verb = args.verb.as_str();
    let Some(&(_, min, max)) = table.iter().find(|(name, _, _)| *name == verb) else {
        let known: Vec<&str> = table.iter().map(|(name, _, _)| *name).collect();
        return Err(usage(format!(
            "unknown {what} command {verb:?}; one of: {}",
            known.join(", ")
        )));
    };
    let n = args.args.len();
    if n < min || n > max {
        return Err(usage(format!(
            "{what} {verb} takes {} argument(s), got {n}",
            match (min, max) {
                (a, b) if a == b => a.to_string(),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            }
        )));
    }
    if (args.terminate || args.signal != "SIGTERM") && verb != "revoke" {
        return Err(usage("--terminate and --signal go with `control revoke`"));
    }
    let a = &args.args;
    let mut arguments = Map::new();
    match verb {
        "query_task" => {
            arguments.insert("ids".into(), json!(a));
        }
        "revoke" => {
            arguments.insert("task_id".into(), json!(a));
            arguments.insert("terminate".into(), json!(args.terminate));
            arguments.insert("signal".into(), json!(args.signal));
        }
        "terminate" => {
            arguments.insert("signal".into(), json!(a[0]));
            arguments.insert("task_id".into(), json!(a[1..]));
        }
        "rate_limit" => {
            arguments.insert("task_name".into(), json!(a[0]));
            arguments.insert("rate_limit".into(), json!(a[1]));
        }
        "time_limit" => {
            arguments.insert("task_name".into(), json!(a[0]));
            arguments.insert("soft".into(), seconds(verb, &a[1])?);
            if let Some(hard) = a.get(2) {
                arguments.insert("hard".into(), seconds(verb, hard)?);
            }
        }
        "pool_grow" | "pool_shrink" => {
            let n = a.first().map(|t| number(verb, t)).transpose()?.unwrap_or(1);
            arguments.insert("n".into(), json!(n));
        }
        "autoscale" => {
            arguments.insert("max".into(), json!(number(verb, &a[0])?));
            arguments.insert("min".into(), json!(number(verb, &a[1])?));
        }
        "add_consumer" | "cancel_consumer" => {
            arguments.insert("queue".into(), json!(a[0]));
        }
        _ => {}
    }
    let destination = (!args.destination.is_empty()).then(|| args.destination.clone());
    Ok(ControlRequest::new(verb, arguments, destination))
}

/// Runs `sprout inspect` (`inspect` true) or `sprout control`.
///
/// # Errors
/// Bad usage (exit 2), a broker that cannot be reached or has no mailbox.
pub async fn run(args: ControlArgs, inspect: bool) -> anyhow::Result<ExitCode> {
    let request = request(&args, inspect)?;
    if args.timeout.is_zero() {
        return Err(usage("--timeout must be above zero"));
    }
    let broker = connect::broker(&args.broker.broker)
        .await
        .with_context(|| format!("cannot open broker {}", args.broker.broker))?;
    let Some(mailbox) = broker.mailbox() else {
        return Err(usage(format!(
            "the broker {} has no remote control",
            args.broker.broker
        )));
    };
    let limit = (!args.destination.is_empty()).then_some(args.destination.len());
    let mut replies = mailbox
        .call(request, args.timeout, limit)
        .await
        .context("remote control")?;
    replies.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    if args.json {
        let all: Map<String, Value> = replies
            .iter()
            .map(|r| (r.hostname.clone(), r.reply.clone()))
            .collect();
        crate::outln!("{}", Value::Object(all));
    } else {
        for reply in &replies {
            print_reply(reply);
        }
        if !replies.is_empty() && inspect {
            let n = replies.len();
            crate::outln!("\n{n} node{} online.", if n == 1 { "" } else { "s" });
        }
    }
    if replies.is_empty() {
        crate::errln!("Error: No nodes replied within time constraint");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One reply as `celery inspect` prints it.
fn print_reply(reply: &Reply) {
    let error = reply.reply.get("error").and_then(Value::as_str);
    crate::outln!(
        "->  {}: {}",
        reply.hostname,
        if error.is_some() { "ERROR" } else { "OK" }
    );
    match &reply.reply {
        Value::Object(map) if map.len() == 1 && (map.contains_key("ok") || error.is_some()) => {
            let text = map.values().next().and_then(Value::as_str).unwrap_or("");
            crate::outln!("        {text}");
        }
        Value::Array(items) if items.is_empty() => crate::outln!("    - empty -"),
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(s) => crate::outln!("    * {s}"),
                    other => crate::outln!("    * {other}"),
                }
            }
        }
        Value::Null => {}
        other => {
            let text = serde_json::to_string_pretty(other).unwrap_or_default();
            for line in text.lines() {
                crate::outln!("    {line}");
            }
        }
    }
}
