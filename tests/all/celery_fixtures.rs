//! Every captured Celery 5.7 fixture (`tests/celery/fixtures/*.json`, vendored from
//! `shared/celery`; docs/PROTOCOL.md §12) against `sprout::celery`: messages decode to the
//! right [`Job`]; what we encode has the captured shape; results we write have the
//! captured keys and values (timestamps aside); the follow-ups we publish match what a
//! real Celery worker published.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use serde_json::{Map, Value, json};
use sprout::celery::{self, keys, message, result, workflow};
use sprout::model::{CeleryContext, Job};
use sprout::model::{ErrorInfo, ResultRecord, State};

/// The captured fixtures (vendored from `shared/celery/fixtures`).
fn fixtures_dir() -> PathBuf {
    crate::support::celery_dir().join("fixtures")
}

fn load(name: &str) -> Value {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} unreadable: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// (queue, raw element) of a single-message fixture.
fn raw_message(fx: &Value) -> (String, String) {
    let key = fx["redis_key"].as_str().expect("redis_key");
    (
        keys::queue_of_key(key).to_string(),
        fx["raw"].as_str().expect("raw").to_string(),
    )
}

fn decode_fixture(name: &str) -> (Value, Job, message::Incoming) {
    let fx = load(name);
    let (queue, raw) = raw_message(&fx);
    let incoming =
        celery::decode(raw.as_bytes(), Some(&queue)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let job = incoming.job.clone();
    check_common(name, &fx["message"], &fx["decoded_body"], &job, &incoming);
    (fx, job, incoming)
}

/// What every decoded message must satisfy, whatever the case.
fn check_common(name: &str, msg: &Value, body: &Value, job: &Job, incoming: &message::Incoming) {
    let h = &msg["headers"];
    assert_eq!(job.id, h["id"].as_str().unwrap(), "{name}: id");
    assert_eq!(job.task, h["task"].as_str().unwrap(), "{name}: task");
    assert_eq!(Value::Array(job.args.clone()), body[0], "{name}: args");
    assert_eq!(Value::Object(job.kwargs.clone()), body[1], "{name}: kwargs");
    assert_eq!(
        job.retries as u64,
        h["retries"].as_u64().unwrap_or(0),
        "{name}: retries"
    );
    assert_eq!(
        incoming.delivery_tag.as_deref(),
        msg["properties"]["delivery_tag"].as_str(),
        "{name}: delivery tag"
    );
    let root = h["root_id"].as_str().unwrap_or(&job.id);
    match &job.celery {
        Some(ctx) => {
            assert_eq!(ctx.root_id.as_deref(), Some(root), "{name}: root_id");
            assert_eq!(
                ctx.parent_id.as_deref(),
                h["parent_id"].as_str(),
                "{name}: parent_id"
            );
            assert_eq!(
                ctx.group_id.as_deref(),
                h["group"].as_str(),
                "{name}: group"
            );
            assert_eq!(ctx.embed, body[2], "{name}: embed verbatim");
        }
        None => {
            // Plain: nothing a workflow needs was dropped.
            assert_eq!(root, job.id, "{name}: root");
            assert!(h["parent_id"].is_null() && h["group"].is_null(), "{name}");
            assert!(
                body[2].as_object().unwrap().values().all(Value::is_null),
                "{name}"
            );
        }
    }
}

/// Encodes `job` and checks the envelope against a captured one: same keys everywhere
/// (custom headers aside), same values for everything the job determines.
fn check_encoding(name: &str, job: &Job, captured: &Value) -> Value {
    let out = celery::encode(job);
    assert_eq!(
        out.key,
        keys::queue_key(&job.queue, job.priority),
        "{name}: list key"
    );
    let ours: Value = serde_json::from_str(&out.envelope).expect("envelope is JSON");
    let keys_of = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys_of(&ours), keys_of(captured), "{name}: envelope keys");
    for k in ["content-encoding", "content-type"] {
        assert_eq!(ours[k], captured[k], "{name}: {k}");
    }
    // Python's key order, byte for byte: body, content-encoding, content-type, headers,
    // properties; and the header order of a Celery client.
    assert!(
        out.envelope.starts_with(r#"{"body": ""#),
        "{name}: {}",
        out.envelope
    );
    assert!(
        out.envelope
            .contains(r#"}, "properties": {"correlation_id": "#),
        "{name}"
    );
    assert!(
        out.envelope
            .contains(r#""headers": {"lang": "py", "task": "#),
        "{name}"
    );

    let (oh, ch) = (&ours["headers"], &captured["headers"]);
    let standard = [
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
    ];
    for k in standard {
        assert!(oh.get(k).is_some(), "{name}: header {k} missing in {oh}");
    }
    for (k, v) in ch.as_object().unwrap() {
        if !standard.contains(&k.as_str()) && k != "redelivered" {
            assert_eq!(oh.get(k), Some(v), "{name}: custom header {k}");
        }
    }
    for k in [
        "task",
        "id",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "shadow",
    ] {
        assert_eq!(oh[k], ch[k], "{name}: header {k}");
    }
    // Times: the same instant; a naive input comes back as explicit UTC.
    for k in ["eta", "expires"] {
        let instant = |v: &Value| v.as_str().map(|s| celery::isotime::parse(s).unwrap());
        assert_eq!(instant(&oh[k]), instant(&ch[k]), "{name}: header {k}");
        if let Some(t) = ch[k].as_str().filter(|t| t.ends_with("+00:00")) {
            assert_eq!(oh[k].as_str(), Some(t), "{name}: {k} written like Python");
        }
    }
    if ch["ignore_result"] == json!(true) {
        assert_eq!(oh["ignore_result"], json!(true), "{name}: ignore_result");
    }
    assert!(
        oh["argsrepr"].is_string() && oh["kwargsrepr"].is_string(),
        "{name}: reprs"
    );

    let (op, cp) = (&ours["properties"], &captured["properties"]);
    assert_eq!(
        keys_of(op)
            .into_iter()
            .filter(|k| k != "origin")
            .collect::<Vec<_>>(),
        keys_of(cp)
            .into_iter()
            .filter(|k| k != "origin")
            .collect::<Vec<_>>(),
        "{name}: property keys"
    );
    for k in [
        "correlation_id",
        "delivery_mode",
        "priority",
        "body_encoding",
    ] {
        assert_eq!(op[k], cp[k], "{name}: property {k}");
    }
    assert_eq!(op["delivery_info"]["exchange"], json!(""), "{name}");
    assert_eq!(
        op["delivery_info"]["routing_key"], cp["delivery_info"]["routing_key"],
        "{name}"
    );
    assert_eq!(op["delivery_tag"].as_str(), Some(out.delivery_tag.as_str()));
    assert_ne!(
        op["delivery_tag"], cp["delivery_tag"],
        "{name}: a fresh tag per publish"
    );
    if let Some(exp) = op.get("expiration") {
        exp.as_str()
            .unwrap()
            .parse::<u64>()
            .expect("expiration in ms");
    }
    ours
}

/// The decoded `[args, kwargs, embed]` of an envelope we wrote.
fn body_of(envelope: &Value) -> Value {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(envelope["body"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// Decode → encode → compare, for one single-message fixture.
fn roundtrip(name: &str) -> (Value, Job) {
    let (fx, job, _) = decode_fixture(name);
    let ours = check_encoding(name, &job, &fx["message"]);
    assert_eq!(body_of(&ours), fx["decoded_body"], "{name}: body");
    // And what we wrote decodes to the same job.
    let again = celery::decode(celery::encode(&job).envelope.as_bytes(), Some(&job.queue)).unwrap();
    assert_eq!(again.job, job, "{name}: decode(encode(job))");
    (fx, job)
}

const MESSAGE_FIXTURES: &[&str] = &[
    "plain",
    "countdown",
    "eta",
    "eta_naive_shadow_ignore_result_custom_header",
    "expires",
    "retries_timelimit",
    "queue_io",
    "priority",
    "link",
    "chain",
    "chain_with_options",
    "worker_sent_chain_next",
    "worker_sent_chain_last",
    "worker_sent_link_callback",
    "worker_sent_retry",
    "worker_sent_chord_body",
    "worker_sent_errback",
    "restored_after_visibility_timeout",
];
const MULTI_MESSAGE_FIXTURES: &[&str] = &["group", "chord"];
const RESULT_FIXTURES: &[&str] = &[
    "result_success",
    "result_success_extended",
    "result_started",
    "result_failure",
    "result_failure_custom_exception",
    "result_retry",
    "result_revoked_expired",
    "result_with_children",
    "result_group_member",
    "result_chord_body",
    "result_chord_failure",
    "result_chain_failure_propagated",
    "result_not_registered",
];
const OTHER_FIXTURES: &[&str] = &["unacked_entry", "group_saved_taskset_meta"];

/// The vendored copy (tests/celery) is the team's `shared/celery`, file for file, wherever
/// that directory is beside the repository (on the team's machines and CI).
#[test]
fn vendored_celery_files_match_shared() {
    let shared = crate::support::repo_root().join("../shared/celery");
    if !shared.is_dir() {
        eprintln!(
            "no {} here: the vendored copy cannot be compared",
            shared.display()
        );
        return;
    }
    let vendored = crate::support::celery_dir();
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let fixtures = |root: &Path| root.join("fixtures");
    assert_eq!(
        names(&fixtures(&vendored)),
        names(&fixtures(&shared)),
        "tests/celery/fixtures has other files than shared/celery/fixtures"
    );
    let mut files: Vec<PathBuf> = names(&fixtures(&shared))
        .into_iter()
        .map(|n| PathBuf::from("fixtures").join(n))
        .collect();
    files.push(PathBuf::from("client_check.py"));
    // The protocol contract itself, vendored as docs/PROTOCOL.md.
    assert_eq!(
        std::fs::read(crate::support::repo_root().join("docs/PROTOCOL.md")).unwrap(),
        std::fs::read(shared.join("PROTOCOL.md")).unwrap(),
        "docs/PROTOCOL.md differs from shared/celery/PROTOCOL.md"
    );
    for file in files {
        assert_eq!(
            std::fs::read(vendored.join(&file)).unwrap(),
            std::fs::read(shared.join(&file)).unwrap(),
            "tests/celery/{} differs from shared/celery (see tests/celery/README.md)",
            file.display()
        );
    }
}

#[test]
fn every_fixture_is_tested() {
    let dir = fixtures_dir();
    let mut untested = Vec::new();
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{} unreadable ({e})", dir.display()));
    for entry in entries {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let known = [
            MESSAGE_FIXTURES,
            MULTI_MESSAGE_FIXTURES,
            RESULT_FIXTURES,
            OTHER_FIXTURES,
        ]
        .iter()
        .any(|list| list.contains(&stem));
        if !known {
            untested.push(stem.to_string());
        }
    }
    assert!(untested.is_empty(), "fixtures without a test: {untested:?}");
}

#[test]
fn all_message_fixtures_decode_and_reencode() {
    for name in MESSAGE_FIXTURES {
        roundtrip(name);
    }
    for name in MULTI_MESSAGE_FIXTURES {
        let fx = load(name);
        for (i, m) in fx["messages_in_brpop_order"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let queue = keys::queue_of_key(m["redis_key"].as_str().unwrap());
            let incoming =
                celery::decode(m["raw"].as_str().unwrap().as_bytes(), Some(queue)).unwrap();
            let label = format!("{name}[{i}]");
            check_common(
                &label,
                &m["message"],
                &m["decoded_body"],
                &incoming.job,
                &incoming,
            );
            let ours = check_encoding(&label, &incoming.job, &m["message"]);
            assert_eq!(body_of(&ours), m["decoded_body"], "{label}: body");
        }
    }
}

#[test]
fn plain_send_task() {
    let (_, job) = roundtrip("plain");
    assert_eq!((job.queue.as_str(), job.priority), ("celery", 0));
    assert_eq!(job.args, vec![json!("https://example.com/feed"), json!(3)]);
    assert_eq!(job.kwargs["tags"], json!(["a", "b"]));
    assert!(job.eta.is_none() && job.expires.is_none() && job.limits.is_empty());
    assert!(
        job.celery.is_none(),
        "a plain message needs no workflow context"
    );
}

#[test]
fn countdown_eta_and_expires() {
    let (_, job) = roundtrip("countdown");
    assert_eq!(
        job.eta.unwrap().to_rfc3339(),
        "2026-11-25T21:25:49.636830+00:00"
    );
    let (_, job) = roundtrip("eta");
    assert_eq!(
        job.eta,
        Some(Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap())
    );
    let (_, job) = roundtrip("expires");
    assert_eq!(
        job.expires.unwrap().to_rfc3339(),
        "2026-11-25T21:27:19.649379+00:00"
    );
    assert!(
        job.is_expired(Utc::now()),
        "the fixture's expiry is in its past"
    );
    let (_, job) = roundtrip("chain_with_options");
    assert!(job.eta.unwrap() < job.expires.unwrap());
    assert_eq!(job.queue, "io");
}

#[test]
fn naive_eta_shadow_ignore_result_and_custom_header() {
    let (_, job) = roundtrip("eta_naive_shadow_ignore_result_custom_header");
    assert_eq!(
        job.eta,
        Some(Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()),
        "naive = UTC"
    );
    let ctx = job
        .celery
        .as_ref()
        .expect("custom headers keep the context");
    assert_eq!(ctx.extra["ignore_result"], json!(true));
    assert_eq!(ctx.extra["shadow"], json!("fetch_feed[alias]"));
    assert_eq!(ctx.extra["tenant"], json!("acme"));
    assert!(workflow::ignores_result(&job));
    // ignore_result: the stored record says so, and the Redis backend writes nothing.
    let mut rec = ResultRecord::new(&job.id, &job.task, State::Success);
    rec.result = Some(json!(1));
    let s = celery::settle(&job, rec);
    assert!(s.store[0].celery.as_ref().unwrap().ignore_result);
}

#[test]
fn timelimit_is_hard_then_soft() {
    let (_, job) = roundtrip("retries_timelimit");
    assert_eq!(job.retries, 2);
    assert_eq!(
        job.limits.time_limit,
        Some(60.0),
        "timelimit[0] is the hard limit"
    );
    assert_eq!(job.limits.soft_time_limit, Some(50.0));
}

#[test]
fn queues_and_priority_buckets() {
    let (fx, job) = roundtrip("queue_io");
    assert_eq!(job.queue, "io");
    assert_eq!(fx["redis_key"], json!("io"));
    let (fx, job) = roundtrip("priority");
    assert_eq!(job.priority, 5);
    assert_eq!(fx["redis_key"], json!("celery\u{6}\u{16}3"));
    assert_eq!(celery::encode(&job).key, "celery\u{6}\u{16}3");
}

#[test]
fn link_and_link_error() {
    let (_, job) = roundtrip("link");
    let embed = &job.celery.as_ref().unwrap().embed;
    assert_eq!(embed["callbacks"][0]["task"], json!("store_feed"));
    assert_eq!(embed["errbacks"][0]["task"], json!("on_error"));

    let mut ok = ResultRecord::new(&job.id, &job.task, State::Success);
    ok.result = Some(json!("feed"));
    let s = celery::settle(&job, ok);
    assert_eq!(s.publish.len(), 1);
    assert_eq!(s.publish[0].task, "store_feed");
    assert_eq!(s.publish[0].args, vec![json!("feed"), json!("x")]);
    assert_eq!(
        s.store[0].celery.as_ref().unwrap().children,
        vec![s.publish[0].id.clone()]
    );

    let mut failed = ResultRecord::new(&job.id, &job.task, State::Failure);
    failed.error = Some(ErrorInfo {
        kind: "ValueError".into(),
        message: "x".into(),
        traceback: None,
    });
    let s = celery::settle(&job, failed);
    assert_eq!(s.publish.len(), 1);
    assert_eq!(s.publish[0].task, "on_error");
    assert_eq!(s.publish[0].args, vec![json!(job.id)]);
    assert!(s.store[0].celery.as_ref().unwrap().children.is_empty());
}

#[test]
fn chain_as_sent_by_the_client() {
    let (fx, job) = roundtrip("chain");
    let chain = job.celery.as_ref().unwrap().embed["chain"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(chain.len(), 2);
    // The last element runs next; the client's result is the first element (last step).
    assert_eq!(chain[1]["task"], json!("mul"));
    assert_eq!(chain[0]["options"]["task_id"], fx["client_result_id"]);
    assert_eq!(
        chain[1]["options"]["task_id"],
        fx["client_result_parent_id"]
    );

    let mut ok = ResultRecord::new(&job.id, &job.task, State::Success);
    ok.result = Some(json!(4));
    let s = celery::settle(&job, ok);
    let next = &s.publish[0];
    assert_eq!(
        (next.task.as_str(), next.args.clone()),
        ("mul", vec![json!(4), json!(4)])
    );
    assert_eq!(next.id, fx["client_result_parent_id"].as_str().unwrap());
    assert_eq!(next.queue, "celery", "later steps go to the default queue");
    let ctx = next.celery.as_ref().unwrap();
    assert_eq!(ctx.parent_id.as_deref(), Some(job.id.as_str()));
    assert_eq!(ctx.root_id.as_deref(), Some(job.id.as_str()));
    assert_eq!(ctx.embed["chain"], json!([chain[0]]));
}

/// A job that, settled as `record`, should make the worker send `captured`.
fn parent(id: &str, root: &str, embed: Value) -> Job {
    let mut job = Job::new("parent", vec![], Map::new());
    job.id = id.to_string();
    job.celery = Some(CeleryContext {
        root_id: Some(root.to_string()),
        parent_id: None,
        group_id: None,
        embed,
        extra: json!({}),
    });
    job
}

/// Checks a follow-up we built against the message a Celery worker sent.
fn same_as_worker_sent(name: &str, ours: &Job) {
    let fx = load(name);
    let ours_env: Value = serde_json::from_str(&celery::encode(ours).envelope).unwrap();
    let h = &fx["message"]["headers"];
    for k in [
        "task",
        "id",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "retries",
        "eta",
        "expires",
        "timelimit",
    ] {
        if k == "group" && name == "worker_sent_errback" {
            assert!(
                ours_env["headers"][k].is_string(),
                "{name}: a fresh group id"
            );
            continue;
        }
        assert_eq!(ours_env["headers"][k], h[k], "{name}: header {k}");
    }
    assert_eq!(body_of(&ours_env), fx["decoded_body"], "{name}: body");
    assert_eq!(
        ours_env["properties"]["delivery_info"],
        fx["message"]["properties"]["delivery_info"]
    );
}

#[test]
fn worker_sent_chain_steps() {
    let next = load("worker_sent_chain_next");
    let body = &next["decoded_body"];
    let h = &next["message"]["headers"];
    let (root, next_id) = (h["root_id"].as_str().unwrap(), h["id"].as_str().unwrap());
    let mut chain = body[2]["chain"].as_array().unwrap().clone();
    chain.push(
        json!({"task": "mul", "args": [4], "kwargs": {}, "options": {"task_id": next_id,
        "reply_to": chain[0]["options"]["reply_to"]}, "subtask_type": null, "immutable": false}),
    );
    let first = parent(
        root,
        root,
        json!({"callbacks": null, "errbacks": null, "chain": chain, "chord": null}),
    );
    let mut ok = ResultRecord::new(&first.id, "add", State::Success);
    ok.result = Some(json!(4));
    let sent = celery::followups(&first, &ok);
    assert_eq!(sent.len(), 1);
    same_as_worker_sent("worker_sent_chain_next", &sent[0]);

    // The step after: immutable, and the chain list ends as [] (not null).
    let mut second = sent[0].clone();
    let mut ok = ResultRecord::new(&second.id, "mul", State::Success);
    ok.result = Some(json!(16));
    second.celery.as_mut().unwrap().extra = json!({});
    let last = celery::followups(&second, &ok);
    same_as_worker_sent("worker_sent_chain_last", &last[0]);
    assert_eq!(
        last[0].args,
        vec![json!(1), json!(1)],
        "immutable: no result prepended"
    );
}

#[test]
fn worker_sent_link_callback_and_errback() {
    let fx = load("worker_sent_link_callback");
    let h = &fx["message"]["headers"];
    let root = h["root_id"].as_str().unwrap();
    let sig = json!({"task": "add", "args": [10], "kwargs": {}, "options": {"task_id": h["id"]},
        "subtask_type": null, "immutable": false});
    let job = parent(
        root,
        root,
        json!({"callbacks": [sig], "errbacks": null, "chain": null, "chord": null}),
    );
    let mut ok = ResultRecord::new(root, "add", State::Success);
    ok.result = Some(json!(3));
    same_as_worker_sent(
        "worker_sent_link_callback",
        &celery::followups(&job, &ok)[0],
    );

    let fx = load("worker_sent_errback");
    let h = &fx["message"]["headers"];
    let failed_id = h["parent_id"].as_str().unwrap();
    let sig = json!({"task": "errback_probe", "args": ["extra"], "kwargs": {},
        "options": {"task_id": h["id"]}, "subtask_type": null, "immutable": false});
    let job = parent(
        failed_id,
        failed_id,
        json!({"callbacks": null, "errbacks": [sig], "chain": null, "chord": null}),
    );
    let mut failed = ResultRecord::new(failed_id, "fail", State::Failure);
    failed.error = Some(ErrorInfo {
        kind: "ValueError".into(),
        message: "with-errback".into(),
        traceback: None,
    });
    same_as_worker_sent("worker_sent_errback", &celery::followups(&job, &failed)[0]);
}

#[test]
fn worker_sent_retry() {
    let fx = load("worker_sent_retry");
    let h = &fx["message"]["headers"];
    let id = h["id"].as_str().unwrap();
    let mut job = parent(
        id,
        id,
        json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null}),
    );
    job.task = "retry_once".into();
    job.args = vec![json!(7)];
    let eta = sprout::celery::isotime::parse(h["eta"].as_str().unwrap()).unwrap();
    let retry = celery::retry_job(&job, Some(eta));
    same_as_worker_sent("worker_sent_retry", &retry);
}

#[test]
fn worker_sent_chord_body() {
    let fx = load("worker_sent_chord_body");
    let h = &fx["message"]["headers"];
    let gid = h["group"].as_str().unwrap();
    let last_id = h["parent_id"].as_str().unwrap();
    let body = json!({"task": "tsum", "args": [], "kwargs": {}, "options": {"task_id": h["id"],
        "group_id": gid}, "subtask_type": null, "immutable": false});
    let mut last = parent(
        last_id,
        last_id,
        json!({"callbacks": null, "errbacks": null, "chain": null, "chord": body}),
    );
    let ctx = last.celery.as_mut().unwrap();
    ctx.group_id = Some(gid.to_string());
    ctx.extra = json!({"group_index": 1});
    let part = workflow::chord_part(&last).expect("a chord part");
    assert_eq!((part.group_id.as_str(), part.group_index), (gid, 1));
    let sent = workflow::chord_body(&last.id, last_id, &part, vec![json!(2), json!(4)]).unwrap();
    same_as_worker_sent("worker_sent_chord_body", &sent);

    // The .j entry Celery's script stores for a part.
    let mut rec = ResultRecord::new(
        "e35f0cff-a8f6-449d-ac94-c16887298997",
        "add",
        State::Success,
    );
    rec.result = Some(json!(2));
    assert_eq!(
        workflow::chord_entry(&rec),
        r#"[1, "e35f0cff-a8f6-449d-ac94-c16887298997", "SUCCESS", 2]"#
    );
}

#[test]
fn restored_message_is_redelivered_and_lenient() {
    let (_, job, incoming) = decode_fixture("restored_after_visibility_timeout");
    assert!(incoming.redelivered);
    assert_eq!(job.args, vec![json!(20), json!(22)]);
    let h = &load("restored_after_visibility_timeout")["message"]["headers"];
    assert!(
        h.get("shadow").is_none() && h.get("group_index").is_none(),
        "minimal headers"
    );
}

#[test]
fn unacked_entry_shape() {
    let fx = load("unacked_entry");
    let entry: Value = serde_json::from_str(fx["raw"].as_str().unwrap()).unwrap();
    assert_eq!(entry[1], json!(""));
    assert_eq!(entry[2], json!("celery"));
    let env = entry[0].to_string();
    let incoming = celery::decode(env.as_bytes(), Some("celery")).unwrap();
    assert_eq!(incoming.delivery_tag.as_deref(), fx["field"].as_str());
    assert_eq!(message::route_of(&entry[0]), (Some("celery"), 0));
    // What the reserve script writes: the popped element verbatim inside the array.
    let ours = format!("[{}, \"\", {}]", fx["value"][0], json!("celery"));
    assert_eq!(serde_json::from_str::<Value>(&ours).unwrap(), entry);
}

// ---- results ----

/// Keys of a captured result, without the ones only `result_extended` writes.
fn result_keys(v: &Value) -> Vec<String> {
    let extended = ["name", "args", "kwargs", "worker", "retries", "queue"];
    let mut k: Vec<String> = v
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !extended.contains(&k.as_str()))
        .cloned()
        .collect();
    k.sort();
    k
}

/// Encodes `record` and compares it with a captured result: same keys (ours may add
/// `sprout`), same status, result, children, group/parent, task_id, and `date_done`
/// present exactly when captured. Returns our JSON.
fn same_result(name: &str, record: &ResultRecord) -> Value {
    same_result_shape(name, record, true)
}

/// [`same_result`], with `exact_result` false comparing only the exception's class.
fn same_result_shape(name: &str, record: &ResultRecord, exact_result: bool) -> Value {
    let fx = load(name);
    let captured = &fx["value"];
    let raw = celery::encode_meta(record);
    let ours: Value = serde_json::from_str(&raw).unwrap();
    let mut our_keys = result_keys(&ours);
    our_keys.retain(|k| k != "sprout");
    assert_eq!(our_keys, result_keys(captured), "{name}: keys");
    for k in [
        "status",
        "result",
        "children",
        "task_id",
        "group_id",
        "parent_id",
    ] {
        if k == "result" && (record.state == State::Started || !exact_result) {
            continue;
        }
        assert_eq!(ours.get(k), captured.get(k), "{name}: {k}");
    }
    assert_eq!(
        ours["date_done"].is_null(),
        captured["date_done"].is_null(),
        "{name}: date_done"
    );
    assert!(raw.starts_with(r#"{"status": "#), "{name}: status first");
    assert!(
        raw.ends_with(&format!(r#""task_id": "{}"}}"#, record.id)),
        "{name}: task_id last"
    );
    ours
}

/// Decodes a captured result into a record.
fn decoded_result(name: &str) -> ResultRecord {
    let fx = load(name);
    let id = fx["key"]
        .as_str()
        .unwrap()
        .strip_prefix("celery-task-meta-")
        .unwrap();
    result::decode_meta(id, fx["raw"].as_str().unwrap().as_bytes()).unwrap()
}

#[test]
fn success_results() {
    let rec = decoded_result("result_success");
    assert_eq!(
        (rec.state, rec.result.clone()),
        (State::Success, Some(json!(5)))
    );
    let ours = same_result("result_success", &rec);
    // Byte for byte what the worker wrote, apart from the timestamp.
    let fx = load("result_success");
    assert_eq!(ours["date_done"], fx["value"]["date_done"]);
    assert_eq!(celery::encode_meta(&rec), fx["raw"].as_str().unwrap());

    let rec = decoded_result("result_success_extended");
    assert_eq!(
        (rec.task.as_str(), rec.worker.as_deref()),
        ("add", Some("w1@vm"))
    );
    same_result("result_success_extended", &rec);
}

#[test]
fn started_result() {
    let rec = decoded_result("result_started");
    assert_eq!(rec.state, State::Started);
    assert_eq!(rec.worker.as_deref(), Some("w1@vm"));
    let ours = same_result("result_started", &rec);
    assert_eq!(ours["result"]["hostname"], json!("w1@vm"));
    assert!(ours["result"]["pid"].is_u64());
}

fn failure(id: &str, kind: &str, message: &str) -> ResultRecord {
    let mut rec = ResultRecord::new(id, "t", State::Failure);
    rec.error = Some(ErrorInfo {
        kind: kind.into(),
        message: message.into(),
        traceback: Some("tb".into()),
    });
    rec
}

#[test]
fn failure_results_raise_by_class_name() {
    let rec = decoded_result("result_failure");
    let err = rec.error.clone().unwrap();
    assert_eq!(
        (err.kind.as_str(), err.message.as_str()),
        ("ValueError", "boom")
    );
    assert!(err.traceback.unwrap().contains("ValueError: boom"));
    same_result("result_failure", &failure(&rec.id, "ValueError", "boom"));

    // A custom kind keeps its name; the module is one no client has imported.
    let rec = decoded_result("result_failure_custom_exception");
    assert_eq!(rec.error.as_ref().unwrap().kind, "tasks.WasmTrap");
    assert_eq!(rec.error.as_ref().unwrap().message, "('trap', 42)");
    let ours = same_result_shape("result_failure_custom_exception", &rec, false);
    assert_eq!(ours["result"]["exc_module"], json!("tasks"));
    assert_eq!(ours["result"]["exc_type"], json!("WasmTrap"));
    let mut ours_rec = failure(&rec.id, "WasmTrap", "trap");
    ours_rec.updated_at = rec.updated_at;
    let json: Value = serde_json::from_str(&celery::encode_meta(&ours_rec)).unwrap();
    assert_eq!(
        json["result"],
        json!({"exc_type": "WasmTrap", "exc_message": ["trap"], "exc_module": "sprout.exceptions"})
    );

    let rec = decoded_result("result_not_registered");
    assert_eq!(rec.error.as_ref().unwrap().kind, "NotRegistered");
    let mut ours = failure(&rec.id, "NotRegistered", "errback_probe");
    ours.error.as_mut().unwrap().traceback = None;
    let json = same_result("result_not_registered", &ours);
    assert!(json["traceback"].is_null());
}

#[test]
fn retry_and_revoked_results() {
    let rec = decoded_result("result_retry");
    assert_eq!(rec.state, State::Retry);
    let mut ours = ResultRecord::new(&rec.id, "retry_once", State::Retry);
    ours.error = Some(ErrorInfo {
        kind: "RuntimeError".into(),
        message: "transient".into(),
        traceback: Some("tb".into()),
    });
    let job = parent(&rec.id, &rec.id, json!(null));
    let settled = celery::settle(&job, ours);
    same_result("result_retry", &settled.store[0]);

    let rec = decoded_result("result_revoked_expired");
    assert_eq!(rec.state, State::Revoked);
    let mut ours = ResultRecord::new(&rec.id, "add", State::Revoked);
    ours.error = Some(ErrorInfo {
        kind: "TaskRevokedError".into(),
        message: "expired".into(),
        traceback: None,
    });
    same_result("result_revoked_expired", &ours);
}

#[test]
fn workflow_results() {
    // A chain's first step lists the next step as its child.
    let rec = decoded_result("result_with_children");
    let child = rec.celery.as_ref().unwrap().children.clone();
    assert_eq!(child, ["481efe77-c0cc-4a61-9fc3-edf082ba5f16"]);
    let mut ours = ResultRecord::new(&rec.id, "add", State::Success);
    ours.result = Some(json!(4));
    ours.celery = rec.celery.clone();
    same_result("result_with_children", &ours);

    // Group member and chord body carry group_id (and parent_id).
    for name in ["result_group_member", "result_chord_body"] {
        let rec = decoded_result(name);
        assert!(rec.celery.as_ref().unwrap().group_id.is_some(), "{name}");
        let mut ours = ResultRecord::new(&rec.id, "x", State::Success);
        ours.result = rec.result.clone();
        ours.celery = rec.celery.clone();
        same_result(name, &ours);
    }

    // A chord whose part failed: ChordError on the body id.
    let rec = decoded_result("result_chord_failure");
    let cause = ErrorInfo {
        kind: "ValueError".into(),
        message: "hdr".into(),
        traceback: None,
    };
    let ours = workflow::chord_error(
        &rec.id,
        "tsum",
        "1655423c-e4cc-4491-94bd-b5481316f5b9",
        &cause,
    );
    same_result("result_chord_failure", &ours);

    // A chain that failed in the middle: the last step's id holds the same FAILURE.
    let rec = decoded_result("result_chain_failure_propagated");
    let last = json!({"task": "add", "args": [5], "kwargs": {}, "options": {"task_id": rec.id}, "subtask_type": null, "immutable": false});
    let mid = parent(
        "cca8f3d3-412f-45d9-a96d-954407fc9bac",
        "f86389be-9f42-4c03-99ff-12bb9d113cb9",
        json!({"callbacks": null, "errbacks": null, "chain": [last], "chord": null}),
    );
    let settled = celery::settle(&mid, failure(&mid.id, "ValueError", "mid"));
    assert_eq!(settled.store.len(), 2);
    same_result("result_chain_failure_propagated", &settled.store[1]);
}

#[test]
fn saved_group_is_not_a_task_result() {
    let fx = load("group_saved_taskset_meta");
    let value = &fx["value"]["result"];
    assert_eq!(value[1].as_array().unwrap().len(), 2, "two members");
    let err = result::decode_meta("g", fx["raw"].as_str().unwrap().as_bytes()).unwrap_err();
    assert!(err.contains("status"), "{err}");
}
