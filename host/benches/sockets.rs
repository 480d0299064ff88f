//! Guest TCP sockets (issue: guest TCP sockets). Not a test: it prints numbers for
//! BENCHMARKS.md. Needs Redis at 127.0.0.1:6379 (db 9, keys `sprout-bench-sockets:*`,
//! deleted at the end) and PostgreSQL at 127.0.0.1:5432 (user postgres, db test, trust).
//!
//! ```text
//! ./tasks/build.sh target/tasks && cargo bench --workspace --bench sockets [-- SECTION...]
//! ```
//! Sections: `redis` (INCR round trips/s from guests, sequential and at -c 1000, vs the
//! same `redis` crate natively, and PING jobs/s), `pg` (`SELECT 1` jobs/s sequential and
//! at -c 50), `readers` (1,000 guests blocked 1 s in socket reads beside 4 CPU hogs: wall
//! time and the p50/p99 of short jobs meanwhile). `SPROUT_BENCH_TASKS` overrides the
//! task dir.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sprout::model::{Capabilities, Outcome};
use sprout::sandbox::{RunRequest, Sandbox, TaskModule};
use tokio::io::AsyncWriteExt;

use common::{Sections, runtime};

const REDIS_URL: &str = "redis://127.0.0.1:6379/9";
const KEY_PREFIX: &str = "sprout-bench-sockets:";

fn caps(hosts: &[&str]) -> Arc<Capabilities> {
    Arc::new(Capabilities {
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..Capabilities::default()
    })
}

async fn load(sandbox: &Sandbox, name: &str) -> Arc<TaskModule> {
    let path = common::pool::tasks_dir().join(format!("{name}.wasm"));
    sandbox.load_file(&path).await.unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run ./tasks/build.sh target/tasks)",
            path.display()
        )
    })
}

async fn run(
    sandbox: &Sandbox,
    module: &TaskModule,
    task: &str,
    args: Value,
    capabilities: &Arc<Capabilities>,
) -> Value {
    let mut request = RunRequest::new(task, args.as_array().cloned().unwrap_or_default());
    request.capabilities = capabilities.clone();
    match sandbox.run(module, request).await.outcome {
        Outcome::Success { value } => value,
        other => panic!("{task}: {other:?}"),
    }
}

fn rate(label: &str, n: usize, took: Duration, unit: &str) {
    println!(
        "{label:<46}{:>10.0} {unit}/s  ({:.1} µs each, {n} in {took:.2?})",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / n as f64
    );
}

async fn redis_section(sandbox: &Sandbox) {
    let module = load(sandbox, "redis_client").await;
    let grant = caps(&["tcp://127.0.0.1:6379"]);
    let key = format!("{KEY_PREFIX}guest");

    // Sequential: one guest, one connection, N INCRs.
    let n = 20_000;
    run(
        sandbox,
        &module,
        "redis_incr",
        json!([REDIS_URL, key, 100]),
        &grant,
    )
    .await;
    let started = Instant::now();
    run(
        sandbox,
        &module,
        "redis_incr",
        json!([REDIS_URL, key, n]),
        &grant,
    )
    .await;
    rate(
        "guest INCR, sequential (1 job)",
        n,
        started.elapsed(),
        "round trips",
    );

    // Native, the same crate (blocking API) on one connection.
    let native_key = format!("{KEY_PREFIX}native");
    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let _: i64 = redis::cmd("INCR").arg(&native_key).query(&mut con).unwrap();
    }
    rate(
        "native INCR, sequential (1 connection)",
        n,
        started.elapsed(),
        "round trips",
    );

    // -c 1000: 1000 guests at once, each its own connection and 20 INCRs.
    let (c, per) = (1000, 20);
    let started = Instant::now();
    let handles: Vec<_> = (0..c)
        .map(|i| {
            let (sandbox, module, grant) = (sandbox.clone(), module.clone(), grant.clone());
            let key = format!("{KEY_PREFIX}guest{}", i % 50);
            tokio::spawn(async move {
                run(
                    &sandbox,
                    &module,
                    "redis_incr",
                    json!([REDIS_URL, key, per]),
                    &grant,
                )
                .await
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    rate(
        &format!("guest INCR, -c {c} ({per} per job, connect incl.)"),
        c * per,
        started.elapsed(),
        "round trips",
    );

    // Native -c 1000: 1000 threads, the blocking client, same work.
    let started = Instant::now();
    let threads: Vec<_> = (0..c)
        .map(|i| {
            std::thread::spawn(move || {
                let key = format!("{KEY_PREFIX}native{}", i % 50);
                let mut con = redis::Client::open(REDIS_URL)
                    .unwrap()
                    .get_connection()
                    .unwrap();
                for _ in 0..per {
                    let _: i64 = redis::cmd("INCR").arg(&key).query(&mut con).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rate(
        &format!("native INCR, -c {c} threads ({per} per thread)"),
        c * per,
        started.elapsed(),
        "round trips",
    );

    // Whole jobs: connect + PING + close, sequential and at -c 1000.
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        run(sandbox, &module, "redis_ping", json!([REDIS_URL]), &grant).await;
    }
    rate("redis_ping jobs, sequential", n, started.elapsed(), "jobs");
    let n = 5000;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(1000));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (sandbox, module, grant) = (sandbox.clone(), module.clone(), grant.clone());
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                run(&sandbox, &module, "redis_ping", json!([REDIS_URL]), &grant).await
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    rate("redis_ping jobs, -c 1000", n, started.elapsed(), "jobs");

    // Clean up the bench's keys.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{KEY_PREFIX}*"))
        .query(&mut con)
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(&keys).query(&mut con).unwrap();
    }
}

async fn pg_section(sandbox: &Sandbox) {
    let module = load(sandbox, "pg_query").await;
    let grant = caps(&["tcp://127.0.0.1:5432"]);
    let args = json!(["127.0.0.1:5432", "postgres", "test", "SELECT 1"]);
    for _ in 0..20 {
        run(sandbox, &module, "pg_query", args.clone(), &grant).await;
    }
    let n = 500;
    let started = Instant::now();
    for _ in 0..n {
        run(sandbox, &module, "pg_query", args.clone(), &grant).await;
    }
    rate(
        "pg_query SELECT 1 jobs, sequential",
        n,
        started.elapsed(),
        "jobs",
    );
    // PostgreSQL's default max_connections is 100: stay well under it.
    let (n, c) = (2000, 50);
    let sem = Arc::new(tokio::sync::Semaphore::new(c));
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (sandbox, module, grant, args) =
                (sandbox.clone(), module.clone(), grant.clone(), args.clone());
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                run(&sandbox, &module, "pg_query", args, &grant).await
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    rate(
        &format!("pg_query SELECT 1 jobs, -c {c}"),
        n,
        started.elapsed(),
        "jobs",
    );
}

async fn readers_section(sandbox: &Sandbox) {
    // A server that answers each connection after 1 s.
    let listener = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(4096).unwrap()
    };
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = stream.write_all(b"ready\n").await;
                let mut buf = [0u8; 64];
                while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await, Ok(n) if n > 0)
                {
                }
            });
        }
    });
    let net = load(sandbox, "net").await;
    let hog = load(sandbox, "hog").await;
    let echo = load(sandbox, "echo").await;
    let grant = caps(&[&format!("tcp://{addr}")]);
    for round in 0..3 {
        let hogs: Vec<_> = (0..4)
            .map(|_| {
                let (sandbox, hog) = (sandbox.clone(), hog.clone());
                tokio::spawn(async move {
                    let mut req = RunRequest::new("hog", vec![]);
                    req.limits.fuel = u64::MAX / 2;
                    req.limits.time_limit = Duration::from_secs(4);
                    sandbox.run(&hog, req).await.outcome
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let readers: Vec<_> = (0..1000)
            .map(|_| {
                let (sandbox, net, grant) = (sandbox.clone(), net.clone(), grant.clone());
                tokio::spawn(async move {
                    run(
                        &sandbox,
                        &net,
                        "tcp_hold",
                        json!([addr.to_string(), 1]),
                        &grant,
                    )
                    .await
                })
            })
            .collect();
        let mut short = Vec::new();
        while readers.iter().any(|r| !r.is_finished()) {
            let t = Instant::now();
            let outcome = sandbox
                .run(&echo, RunRequest::new("echo", vec![json!("hi")]))
                .await
                .outcome;
            assert!(outcome.is_success());
            short.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for r in readers {
            r.await.unwrap();
        }
        let wall = started.elapsed();
        for h in hogs {
            h.await.unwrap();
        }
        short.sort();
        let p = |q: f64| short[((short.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "readers round {round}: 1000 x 1 s socket reads beside 4 hogs: {wall:.2?} wall; \
             {} short echo jobs meanwhile: p50 {:.2?} p99 {:.2?} max {:.2?}",
            short.len(),
            p(0.5),
            p(0.99),
            short[short.len() - 1]
        );
    }
}

fn main() {
    let sections = Sections::from_args();
    runtime().block_on(async {
        let sandbox = common::pool::sandbox(1200);
        if sections.wanted("redis") {
            redis_section(&sandbox).await;
        }
        if sections.wanted("pg") {
            pg_section(&sandbox).await;
        }
        if sections.wanted("readers") {
            readers_section(&sandbox).await;
        }
    });
}
