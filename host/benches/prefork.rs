//! Prefork pool benchmarks (issue: prefork pool). Not a test: it prints numbers for
//! BENCHMARKS.md.
//!
//! ```text
//! ./tasks/build.sh target/tasks && cargo bench -p sprout --bench prefork [-- SECTION...]
//! ```
//! Sections:
//! - `cpu` — wall time of 40 × fib(30): native Rust on 1 and 2 threads, the async pool
//!   at -c 2, the prefork pool at -c 1 and -c 2 (median and best of `SPROUT_BENCH_ROUNDS`,
//!   default 5); and the speed-up of prefork -c 2 over -c 1 beside native code's on 2
//!   threads over 1 (the ratio of each round's times; the test
//!   `prefork::timing_two_children_use_both_cores` only checks the children run at once).
//! - `dispatch` — per-job cost of echo run one after another (p50, p99, mean) on the
//!   async pool and the prefork pool, both -c 1, alternating between them: the
//!   difference is prefork's round trip (frame encode, two pipe hops, decode).
//!
//! `SPROUT_BENCH_TASKS` overrides the task dir. Children are the `sprout` binary built
//! for this bench (`CARGO_BIN_EXE_sprout`).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::model::Limits;
use sprout::pool::{AsyncPool, Pool, PreforkConfig, PreforkPool};
use sprout::registry::Registry;
use sprout::sandbox::Sandbox;

use common::pool::{cache_dir, job};
use common::{Sections, env_usize, runtime};

const JOBS: usize = 40;
const FIB_N: u32 = 30;

fn rounds() -> usize {
    env_usize("SPROUT_BENCH_ROUNDS", 5)
}

async fn setup() -> (Sandbox, Arc<Registry>) {
    let sandbox = common::pool::sandbox(64);
    let registry = common::pool::registry(&sandbox, &Limits::default()).await;
    (sandbox, Arc::new(registry))
}

async fn prefork(sandbox: &Sandbox, processes: usize) -> Arc<PreforkPool> {
    let mut config = PreforkConfig::new(env!("CARGO_BIN_EXE_sprout"), processes);
    config.settings = sandbox.settings().clone();
    config.cache_dir = Some(cache_dir());
    config.log_filter = Some("warn".into());
    Arc::new(PreforkPool::start(config).await.expect("prefork pool"))
}

#[inline(never)]
fn native_fib(n: u32) -> u64 {
    let n = black_box(n);
    if n < 2 {
        u64::from(n)
    } else {
        native_fib(n - 1).wrapping_add(native_fib(n - 2))
    }
}

/// 40 × fib(30) natively on `threads` threads.
fn native(threads: usize) -> Duration {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                (t..JOBS)
                    .step_by(threads)
                    .map(|_| native_fib(FIB_N))
                    .sum::<u64>()
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 832_040 * JOBS as u64);
    started.elapsed()
}

/// 40 × fib(30) submitted at once to `pool`.
async fn pooled(pool: Arc<dyn Pool>, registry: &Arc<Registry>) -> Duration {
    let started = Instant::now();
    let jobs: Vec<_> = (0..JOBS)
        .map(|_| {
            let (pool, registry) = (pool.clone(), registry.clone());
            tokio::spawn(async move { job(pool.as_ref(), &registry, "fib", json!([FIB_N])).await })
        })
        .collect();
    for j in jobs {
        let e = j.await.unwrap();
        assert_eq!(
            e.outcome,
            sprout::model::Outcome::Success {
                value: json!(832_040)
            }
        );
    }
    started.elapsed()
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "median {:7.1} ms   best {:7.1} ms",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    )
}

async fn cpu(sandbox: &Sandbox, registry: &Arc<Registry>) {
    println!("\n## 40 x fib({FIB_N}), wall time ({} rounds)", rounds());
    let mut results: Vec<(&str, Vec<Duration>)> = vec![
        ("native, 1 thread", vec![]),
        ("native, 2 threads", vec![]),
        ("async pool -c 2", vec![]),
        ("prefork -c 1", vec![]),
        ("prefork -c 2", vec![]),
    ];
    let async_pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox.clone(), 2));
    let prefork1 = prefork(sandbox, 1).await;
    let prefork2 = prefork(sandbox, 2).await;
    // Warm up: every child loads fib before the clock starts.
    for pool in [
        &async_pool,
        &(prefork1.clone() as Arc<dyn Pool>),
        &(prefork2.clone() as Arc<dyn Pool>),
    ] {
        for _ in 0..4 {
            job(pool.as_ref(), registry, "fib", json!([5])).await;
        }
    }
    for _ in 0..rounds() {
        // Interleaved, so a noisy neighbour hurts every variant alike.
        results[0].1.push(native(1));
        results[1].1.push(native(2));
        results[2]
            .1
            .push(pooled(async_pool.clone(), registry).await);
        results[3].1.push(pooled(prefork1.clone(), registry).await);
        results[4].1.push(pooled(prefork2.clone(), registry).await);
    }
    // Speed-ups as ratios of the same round's times (both sides saw the same machine):
    // what `-c 2` buys over `-c 1`, beside what native code gets from a second thread.
    let speedup = |one: usize, two: usize| {
        let mut ratios: Vec<f64> = (results[two].1.iter().zip(&results[one].1))
            .map(|(two, one)| two.as_secs_f64() / one.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        format!(
            "median {:5.2}x     best {:5.2}x",
            ratios[ratios.len() / 2],
            ratios[0]
        )
    };
    let (prefork_speedup, native_speedup) = (speedup(3, 4), speedup(0, 1));
    for (name, times) in &mut results {
        println!("{name:<20} {}", summary(times));
    }
    println!("prefork -c 2 / -c 1  {prefork_speedup}   (per round; 0.5x = both cores)");
    println!("native 2 / 1 thread  {native_speedup}   (what the machine gave)");
    prefork1.close().await;
    prefork2.close().await;
}

async fn dispatch(sandbox: &Sandbox, registry: &Arc<Registry>) {
    const N: usize = 3000;
    println!("\n## dispatch: {N} sequential echo jobs per pool, interleaved, per job");
    let async_pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox.clone(), 1));
    let prefork = prefork(sandbox, 1).await;
    let pools: [(&str, Arc<dyn Pool>); 2] = [
        ("async pool -c 1", async_pool),
        ("prefork -c 1", prefork.clone()),
    ];
    for (_, pool) in &pools {
        for _ in 0..200 {
            job(pool.as_ref(), registry, "echo", json!([1])).await;
        }
    }
    // One job on each pool in turn: a noisy neighbour (the machine is shared) weighs on
    // both pools alike, and each pair's difference is prefork's round trip.
    let mut times = [Vec::with_capacity(N), Vec::with_capacity(N)];
    let mut extra = Vec::with_capacity(N);
    for i in 0..N {
        let mut pair = [Duration::ZERO; 2];
        for (p, (_, pool)) in pools.iter().enumerate() {
            let started = Instant::now();
            let e = job(pool.as_ref(), registry, "echo", json!([i])).await;
            pair[p] = started.elapsed();
            assert!(e.outcome.is_success());
            times[p].push(pair[p]);
        }
        extra.push(pair[1].as_secs_f64() - pair[0].as_secs_f64());
    }
    let mut means = Vec::new();
    for ((name, _), times) in pools.iter().zip(&mut times) {
        let mean = times.iter().sum::<Duration>() / N as u32;
        times.sort();
        println!(
            "{name:<20} p50 {:6.1} µs   p99 {:6.1} µs   mean {:6.1} µs",
            times[N / 2].as_secs_f64() * 1e6,
            times[N * 99 / 100].as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6
        );
        means.push(mean);
    }
    extra.sort_by(f64::total_cmp);
    println!(
        "prefork round trip: +{:.1} µs per job (median of the pairs' differences), \
         +{:.1} µs (difference of the means)",
        extra[N / 2] * 1e6,
        (means[1].as_secs_f64() - means[0].as_secs_f64()) * 1e6
    );
    prefork.close().await;
}

fn main() {
    let sections = Sections::from_args();
    runtime().block_on(async {
        let (sandbox, registry) = setup().await;
        if sections.wanted("cpu") {
            cpu(&sandbox, &registry).await;
        }
        if sections.wanted("dispatch") {
            dispatch(&sandbox, &registry).await;
        }
    });
}
