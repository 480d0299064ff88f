//! Bounded fuzzing of the decoders at Sprout's edges, run by `make test`: the Celery
//! message decoder, the SQLite job decoder (`Job::from_json`), the Celery result-meta
//! decoder and the manifest parser. Every input either decodes or yields an error —
//! never a panic — and a decoded job survives what the worker then does with its
//! values (lowering limits, expiry, workflow follow-ups, a retry, re-encoding).
//!
//! Inputs: arbitrary bytes, real Celery messages from the fixtures with bytes flipped,
//! cut or inserted, and well-formed envelopes whose headers and signatures carry
//! hostile values (1e300, negative, huge integers, wrong types). `PROPTEST_CASES`
//! raises the number of cases per property (default 256 here) for a longer run.

use base64::Engine as _;
use chrono::Utc;
use proptest::prelude::*;
use serde_json::{Value, json};
use sprout::celery;
use sprout::manifest::Manifest;
use sprout::model::{Job, Limits, ResultRecord, State};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no files written.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The raw messages the real Celery client produced (tests/celery/fixtures).
fn fixture_messages() -> Vec<Vec<u8>> {
    let dir = crate::support::celery_dir().join("fixtures");
    let mut raws = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let fixture: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if let Some(raw) = fixture.get("raw").and_then(Value::as_str) {
                raws.push(raw.as_bytes().to_vec());
            }
        }
    }
    assert!(raws.len() >= 5, "the fixtures hold raw messages");
    raws
}

/// What the worker does with a decoded job's values, without I/O.
fn use_job(job: &Job) {
    let limits = Limits::default().lowered_by(&job.limits);
    let _ = limits.time_limit.as_secs_f64();
    let now = Utc::now();
    let _ = job.is_expired(now);
    let mut record = ResultRecord::new(job.id.clone(), job.task.clone(), State::Success);
    record.result = Some(json!(1));
    let _ = celery::settle(job, record);
    let mut failed = ResultRecord::new(job.id.clone(), job.task.clone(), State::Failure);
    failed.error = None;
    let _ = celery::settle(job, failed);
    let _ = celery::retry_job(job, Some(now));
    let _ = celery::encode(job);
    let _ = job.to_json();
}

/// A hostile JSON value: out-of-range numbers, wrong types, deep nesting.
fn hostile() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(1e300)),
        Just(json!(-1e300)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(f64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        Just(json!("soon")),
        Just(json!("2026-13-45T99:99:99")),
        Just(json!("9999-12-31T23:59:59+00:00")),
        Just(json!("-262143-01-01T00:00:00Z")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A signature (link, errback, chain step, chord body) with hostile options.
fn signature() -> impl Strategy<Value = Value> {
    let option = prop_oneof![
        Just("countdown"),
        Just("eta"),
        Just("expires"),
        Just("time_limit"),
        Just("soft_time_limit"),
        Just("priority"),
        Just("retries"),
        Just("task_id"),
        Just("queue"),
        Just("group_index"),
    ];
    (
        prop::collection::vec((option, hostile()), 0..4),
        hostile(),
        hostile(),
    )
        .prop_map(|(options, args, kwargs)| {
            let options: serde_json::Map<String, Value> = options
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            json!({"task": "echo", "args": args, "kwargs": kwargs, "options": options,
                   "subtask_type": null, "immutable": false})
        })
}

/// A well-formed kombu envelope whose headers and embedded signatures carry hostile
/// values.
fn hostile_envelope() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        Just("timelimit"),
        Just("eta"),
        Just("expires"),
        Just("retries"),
        Just("root_id"),
        Just("parent_id"),
        Just("group"),
        Just("group_index"),
        Just("argsrepr"),
        Just("ignore_result"),
        Just("id"),
        Just("task"),
    ];
    (
        prop::collection::vec((header, hostile()), 0..5),
        prop::option::of(signature()),
        prop::option::of(signature()),
        prop::option::of(prop::collection::vec(signature(), 0..3)),
        prop::option::of(signature()),
        hostile(),
    )
        .prop_map(|(headers, link, errback, chain, chord, priority)| {
            let mut h = serde_json::Map::new();
            h.insert("task".into(), json!("echo"));
            h.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
            h.insert("lang".into(), json!("py"));
            for (k, v) in headers {
                h.insert(k.to_string(), v);
            }
            let embed = json!({"callbacks": link.map(|s| vec![s]),
                               "errbacks": errback.map(|s| vec![s]),
                               "chain": chain, "chord": chord});
            let body = json!([[1], {}, embed]).to_string();
            let body = base64::engine::general_purpose::STANDARD.encode(body);
            json!({"body": body, "content-encoding": "utf-8",
                   "content-type": "application/json", "headers": h,
                   "properties": {"correlation_id": "c", "reply_to": "r",
                                  "delivery_mode": 2, "priority": priority,
                                  "body_encoding": "base64", "delivery_tag": "t",
                                  "delivery_info": {"exchange": "", "routing_key": "celery"}}})
            .to_string()
            .into_bytes()
        })
}

/// A real message with some bytes flipped, a cut, or bytes inserted.
fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    let raws = fixture_messages();
    (
        0..raws.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        prop::option::of(any::<prop::sample::Index>()),
        prop::option::of((any::<prop::sample::Index>(), any::<Vec<u8>>())),
    )
        .prop_map(move |(which, flips, cut, insert)| {
            let mut raw = raws[which].clone();
            for (at, byte) in flips {
                let i = at.index(raw.len());
                raw[i] = byte;
            }
            if let Some((at, bytes)) = insert {
                let i = at.index(raw.len() + 1);
                raw.splice(i..i, bytes);
            }
            if let Some(at) = cut {
                raw.truncate(at.index(raw.len() + 1));
            }
            raw
        })
}

/// A TOML manifest with hostile numbers in the keys that hold durations and sizes.
fn hostile_manifest() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("1e300".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("18446744073709551615".to_string()),
        Just("9223372036854775807".to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
    ];
    let key = prop_oneof![
        Just("[limits]\ntime_limit"),
        Just("[limits]\nsoft_time_limit"),
        Just("[limits]\nfuel"),
        Just("[limits]\nmemory_mib"),
        Just("[limits]\noutput_kib"),
        Just("[limits]\nlog_kib"),
        Just("[retry]\nbackoff"),
        Just("[retry]\nbackoff_max"),
        Just("[retry]\nmax_retries"),
        Just("[capabilities]\nhttp_timeout"),
        Just("[capabilities]\nhttp_max_response_kib"),
        Just("rate_limit"),
    ];
    (key, number).prop_map(|(key, n)| format!("{key} = {n}\n"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn celery_decoder_takes_any_bytes(raw in any::<Vec<u8>>()) {
        if let Ok(incoming) = celery::decode(&raw, Some("celery")) {
            use_job(&incoming.job);
        }
    }

    #[test]
    fn celery_decoder_takes_damaged_real_messages(raw in mutated_fixture()) {
        if let Ok(incoming) = celery::decode(&raw, Some("celery")) {
            use_job(&incoming.job);
        }
    }

    #[test]
    fn celery_decoder_takes_hostile_values(raw in hostile_envelope()) {
        if let Ok(incoming) = celery::decode(&raw, Some("celery")) {
            use_job(&incoming.job);
        }
    }

    #[test]
    fn sqlite_job_decoder_takes_any_bytes(raw in any::<Vec<u8>>()) {
        if let Ok(job) = Job::from_json(&raw) {
            use_job(&job);
        }
    }

    #[test]
    fn sqlite_job_decoder_takes_hostile_values(
        limits in prop::collection::btree_map(
            prop_oneof![Just("fuel"), Just("memory_bytes"), Just("time_limit"),
                        Just("soft_time_limit"), Just("output_bytes")],
            hostile(), 0..4),
        eta in hostile(),
        expires in hostile(),
        retries in hostile(),
        priority in hostile(),
    ) {
        let raw = json!({"id": "x", "task": "echo", "args": [1], "kwargs": {},
                         "limits": limits, "eta": eta, "expires": expires,
                         "retries": retries, "priority": priority}).to_string();
        if let Ok(job) = Job::from_json(raw.as_bytes()) {
            use_job(&job);
        }
    }

    #[test]
    fn result_meta_decoder_takes_any_bytes(raw in any::<Vec<u8>>()) {
        let _ = celery::decode_meta("id", &raw);
    }

    #[test]
    fn manifest_parser_takes_any_text(text in "\\PC{0,200}") {
        let _ = Manifest::parse(&text);
    }

    #[test]
    fn manifest_parser_takes_hostile_numbers(text in hostile_manifest()) {
        if let Ok(manifest) = Manifest::parse(&text) {
            let limits = manifest.limits.apply(&Limits::default());
            let _ = limits.time_limit.as_secs_f64();
            let _ = manifest.retry.backoff_for(3);
        }
    }
}
