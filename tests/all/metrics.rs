//! `sprout worker --metrics-addr`: a real worker's `/metrics`, scraped over HTTP before
//! and after a known batch of jobs, moves by exactly the right amounts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use sprout::connect;
use sprout::model::{Job, State};

use crate::support::{Workdir, tasks_dir, wait_until};

/// One HTTP/1.1 exchange: `(status, headers, body)`.
pub(crate) fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    try_http(addr, method, path).unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// [`http`], or why the exchange failed (not listening yet, a bad answer).
pub(crate) fn try_http(
    addr: &str,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let bad = || std::io::Error::other(format!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, head.to_string(), body.to_string()))
}

/// `series{labels}` → value, from OpenMetrics text.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The metrics address a worker logged.
fn metrics_addr(log: &str) -> Option<String> {
    let at = log.find("serving metrics on http://")? + "serving metrics on http://".len();
    let rest = &log[at..];
    Some(rest[..rest.find("/metrics")?].to_string())
}

fn scrape(addr: &str) -> HashMap<String, f64> {
    let (status, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "not OpenMetrics text: {body}");
    parse(&body)
}

fn job(task: &str, args: Value) -> Job {
    let Value::Array(args) = args else {
        panic!("args must be an array")
    };
    Job::new(task, args, serde_json::Map::new())
}

#[test]
fn metrics_advance_by_exactly_the_jobs_run() {
    let wd = Workdir::new();
    let mut worker = wd.worker_logged(tasks_dir(), &["-c", "8", "--metrics-addr", "127.0.0.1:0"]);
    let mut addr = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            addr = metrics_addr(&wd.worker_log());
            addr.is_some()
        }),
        "no metrics address logged: {}",
        wd.worker_log()
    );
    let addr = addr.unwrap();
    let before = scrape(&addr);
    let get = |m: &HashMap<String, f64>, series: &str| m.get(series).copied().unwrap_or(0.0);
    assert_eq!(
        get(&before, r#"sprout_pool_slots{pool="async",kind="async"}"#),
        8.0,
        "{before:?}"
    );
    assert!(
        get(&before, "sprout_task_compiles_total")
            + get(&before, r#"sprout_task_cache_hits_total{cache="artifact"}"#)
            >= 1.0,
        "loading the task files is counted: {before:?}"
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let conn = rt
        .block_on(connect::connect(&wd.broker()))
        .expect("connect");
    let mut jobs: Vec<Job> = (0..100).map(|i| job("add", json!([i, 1]))).collect();
    jobs.extend((0..3).map(|_| job("fail", json!(["no"]))));
    jobs.push(job("flaky", json!([1])));
    let mut expired = job("add", json!([0, 0]));
    expired.expires = Some(chrono::Utc::now() - chrono::Duration::seconds(5));
    jobs.push(expired);
    rt.block_on(conn.broker.publish(&jobs)).expect("publish");
    let finished = || {
        rt.block_on(async {
            let mut n = 0;
            for j in &jobs {
                if let Ok(Some(r)) = conn.backend.get(&j.id).await
                    && r.state.is_terminal()
                {
                    n += 1;
                }
            }
            n
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || finished() == jobs.len()),
        "{} of {} jobs finished: {}",
        finished(),
        jobs.len(),
        wd.worker_log()
    );
    let fuel: u64 = rt.block_on(async {
        let mut sum = 0;
        for j in &jobs[..100] {
            let r = conn.backend.get(&j.id).await.unwrap().unwrap();
            assert_eq!(r.state, State::Success);
            sum += r.fuel_used.expect("fuel recorded");
        }
        sum
    });
    // The settle that made the results visible was counted before it was written.
    let after = scrape(&addr);
    let delta = |series: &str| get(&after, series) - get(&before, series);
    assert_eq!(
        delta(r#"sprout_jobs_total{task="add",outcome="success"}"#),
        100.0
    );
    assert_eq!(
        delta(r#"sprout_jobs_total{task="add",outcome="revoked"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"sprout_jobs_total{task="fail",outcome="failure"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"sprout_jobs_total{task="flaky",outcome="retry"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"sprout_jobs_total{task="flaky",outcome="success"}"#),
        1.0
    );
    assert_eq!(delta(r#"sprout_retries_total{task="flaky"}"#), 1.0);
    assert_eq!(delta(r#"sprout_revocations_total{task="add"}"#), 1.0);
    // Histograms: one observation per attempt that ran (the expired job never did).
    assert_eq!(
        delta(r#"sprout_job_runtime_seconds_count{task="add"}"#),
        100.0
    );
    assert_eq!(delta(r#"sprout_job_fuel_count{task="add"}"#), 100.0);
    assert_eq!(delta(r#"sprout_job_fuel_sum{task="add"}"#), fuel as f64);
    assert_eq!(
        delta(r#"sprout_job_peak_memory_bytes_count{task="fail"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"sprout_job_runtime_seconds_count{task="flaky"}"#),
        2.0
    );
    assert!(delta(r#"sprout_job_runtime_seconds_sum{task="add"}"#) > 0.0);
    assert_eq!(
        get(&after, r#"sprout_job_fuel_bucket{le="+Inf",task="add"}"#),
        get(&after, r#"sprout_job_fuel_count{task="add"}"#)
    );
    // Nothing held any more.
    assert_eq!(
        get(
            &after,
            r#"sprout_pool_slots_busy{pool="async",kind="async"}"#
        ),
        0.0
    );
    assert_eq!(get(&after, r#"sprout_jobs_reserved{pool="async"}"#), 0.0);
    assert_eq!(get(&after, r#"sprout_jobs_waiting_eta{pool="async"}"#), 0.0);
    assert_eq!(
        get(
            &after,
            r#"sprout_broker_errors_total{op="fetch",kind="connection"}"#
        ),
        0.0
    );

    // Only GET/HEAD /metrics.
    assert_eq!(http(&addr, "GET", "/").0, 404);
    assert_eq!(http(&addr, "POST", "/metrics").0, 405);
    assert_eq!(http(&addr, "HEAD", "/metrics").0, 200);
    worker.signal(libc::SIGTERM);
    let (code, _) = worker.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", wd.worker_log());
}

/// A bad `--metrics-addr` is a usage error; a taken one stops the start with the reason.
#[test]
fn metrics_addr_is_checked() {
    let wd = Workdir::new();
    let out = wd.run(&[
        "worker",
        "--metrics-addr",
        "localhost:notaport",
        "--max-jobs",
        "1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        crate::support::stderr(&out)
    );
    assert!(crate::support::stderr(&out).contains("--metrics-addr"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let tasks = tasks_dir().display().to_string();
    let out = wd.run(&[
        "worker",
        "--tasks",
        &tasks,
        "--metrics-addr",
        &addr,
        "--max-jobs",
        "1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        crate::support::stderr(&out)
    );
    assert!(
        crate::support::stderr(&out).contains("cannot serve metrics on"),
        "{}",
        crate::support::stderr(&out)
    );
}
