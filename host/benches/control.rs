//! Remote-control latency on Redis (issue: remote control). Not a test: it prints
//! numbers for BENCHMARKS.md. Needs Redis at 127.0.0.1:6379 (skipped, saying so,
//! without it).
//!
//! ```text
//! ./tasks/build.sh target/tasks && cargo bench -p sprout --bench control
//! ```
//! Starts a real `sprout worker -c 2` (the binary built for this bench) on Redis
//! database 9 under a key prefix of its own (deleted at the end), then:
//! - `terminate` — `SPROUT_BENCH_ROUNDS` (default 50) times: send a hog, wait until
//!   `inspect active` shows it, publish `revoke(terminate=True)` through the pidbox and
//!   poll the result backend every 0.5 ms: the time from the control message's publish
//!   to the REVOKED record being readable (p50, p99, max).
//! - `ping` — with both slots running hogs: round trips of `ping` (publish, the
//!   worker's reply, the client's pop), p50/p99/max of 100.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sprout::broker::mailbox::Mailbox;
use sprout::broker::redis::RedisMailbox;
use sprout::celery::control::ControlRequest;
use sprout::client::Client;
use sprout::model::{Job, State};
use sprout::storage::redis::RedisOptions;

use common::{env_usize, runtime};

const WORKER: &str = "bench-control@bench";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentiles(mut xs: Vec<Duration>) -> String {
    xs.sort();
    let at = |q: f64| xs[((xs.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        xs[xs.len() - 1].as_secs_f64() * 1e3,
        xs.len()
    )
}

async fn ask(mailbox: &RedisMailbox, method: &str, args: Value) -> Option<Value> {
    let Value::Object(args) = args else {
        return None;
    };
    let request = ControlRequest::new(method, args, Some(vec![WORKER.into()]));
    let replies = mailbox
        .call(request, Duration::from_secs(2), Some(1))
        .await
        .ok()?;
    replies.into_iter().next().map(|r| r.reply)
}

async fn send_hog(client: &Client, queue: &str) -> String {
    let mut job = Job::new("hog", vec![], Map::new());
    job.queue = queue.to_string();
    client.send(job).await.expect("send")
}

async fn wait_active(mailbox: &RedisMailbox, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(Value::Array(active)) = ask(mailbox, "active", json!({})).await
            && active.iter().any(|j| j["id"] == id)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("hog {id} never became active");
}

fn main() {
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().unwrap(),
        Duration::from_millis(500),
    )
    .is_err()
    {
        eprintln!("control bench: no Redis at 127.0.0.1:6379; skipped");
        return;
    }
    let prefix = format!("sprout-bench-{}:", uuid::Uuid::new_v4().simple());
    let url = format!("redis://127.0.0.1:6379/9?global_keyprefix={prefix}");
    let queue = "bench-control";
    let tasks = tempfile::tempdir().expect("tempdir");
    let built = common::pool::tasks_dir();
    std::fs::copy(built.join("hog.wasm"), tasks.path().join("hog.wasm")).expect("hog.wasm");
    std::fs::write(
        tasks.path().join("hog.toml"),
        "[limits]\nfuel = 1_000_000_000_000_000\ntime_limit = 60.0\n",
    )
    .unwrap();
    let worker = Killed(
        Command::new(env!("CARGO_BIN_EXE_sprout"))
            .args([
                "worker", "--broker", &url, "-n", WORKER, "-Q", queue, "-c", "2",
            ])
            .arg("--tasks")
            .arg(tasks.path())
            .env("SPROUT_LOG", "warn")
            .env("SPROUT_CACHE_DIR", common::pool::cache_dir())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sprout worker"),
    );
    let rounds = env_usize("SPROUT_BENCH_ROUNDS", 50);
    runtime().block_on(async {
        let opts = RedisOptions::from_url(&url).unwrap();
        let mailbox: Arc<RedisMailbox> = RedisMailbox::new(opts).unwrap();
        let client = Client::connect(&url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while ask(&mailbox, "ping", json!({})).await.is_none() {
            assert!(Instant::now() < deadline, "the worker never answered ping");
        }

        let mut latencies = Vec::new();
        for _ in 0..rounds {
            let id = send_hog(&client, queue).await;
            wait_active(&mailbox, &id).await;
            let t0 = Instant::now();
            let call = {
                let mailbox = mailbox.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    ask(
                        &mailbox,
                        "revoke",
                        json!({"task_id": [id], "terminate": true}),
                    )
                    .await
                })
            };
            loop {
                if let Some(r) = client.result(&id).await.unwrap()
                    && r.state == State::Revoked
                {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "not revoked in 5 s");
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            latencies.push(t0.elapsed());
            call.await.unwrap();
        }
        println!(
            "revoke(terminate) → REVOKED stored, async pool -c 2: {}",
            percentiles(latencies)
        );

        let hogs = [
            send_hog(&client, queue).await,
            send_hog(&client, queue).await,
        ];
        for id in &hogs {
            wait_active(&mailbox, id).await;
        }
        let mut pings = Vec::new();
        for _ in 0..100 {
            let t0 = Instant::now();
            let reply = ask(&mailbox, "ping", json!({})).await;
            pings.push(t0.elapsed());
            assert_eq!(reply, Some(json!({"ok": "pong"})));
        }
        println!("ping with both slots running hogs: {}", percentiles(pings));
        ask(
            &mailbox,
            "revoke",
            json!({"task_id": hogs, "terminate": true}),
        )
        .await;
    });
    drop(worker);
    // Delete the bench's keys.
    if let Ok(client) = redis::Client::open("redis://127.0.0.1:6379/9")
        && let Ok(mut conn) = client.get_connection()
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}
