//! Sandbox and async-pool benchmarks (issue: sandbox runtime). Not a test: it prints
//! numbers for BENCHMARKS.md.
//!
//! ```text
//! ./tasks/build.sh target/tasks && cargo bench -p sprout --bench sandbox [-- SECTION...]
//! ```
//! Sections: `overhead` (echo jobs/s sequential and at -c 1000), `latency` (p50/p99 of
//! short jobs beside 2, 10 and 100 hogs), `parked` (memory per sleeping job at 10k: PSS and
//! RSS; how busy the runtime's threads are while they wait, and fib(30) beside them vs alone),
//! `fib` (fib(30) and a 1M-element sort in the sandbox vs the same source natively).
//! The preemption compared comes from `SPROUT_BENCH_PREEMPTION` etc. (benches/common/pool.rs). `SPROUT_BENCH_TASKS` overrides the task dir.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::model::Limits;
use sprout::pool::{AsyncPool, Pool};
use sprout::registry::Registry;
use sprout::sandbox::RunRequest;

use common::pool::job;
use common::{Sections, runtime};

async fn setup(
    instances: u32,
    concurrency: usize,
    limits: Limits,
) -> (Arc<dyn Pool>, Arc<Registry>) {
    let sandbox = common::pool::sandbox(instances);
    let registry = common::pool::registry(&sandbox, &limits).await;
    (
        Arc::new(AsyncPool::new(sandbox, concurrency)),
        Arc::new(registry),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints the rate of `n` jobs run since `started`, and the time per job.
fn print_rate(label: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label:<22}{:>8.0} jobs/s  ({:.1} µs/job)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

async fn overhead() {
    let (pool, registry) = setup(1100, 1000, Limits::default()).await;
    for _ in 0..200 {
        job(pool.as_ref(), &registry, "echo", json!([1])).await;
    }
    let n = 20_000;
    let started = Instant::now();
    for i in 0..n {
        let e = job(pool.as_ref(), &registry, "echo", json!([i])).await;
        assert!(e.outcome.is_success());
    }
    print_rate("echo sequential:", n, started);

    let n = 100_000;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(1000));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (pool, registry) = (pool.clone(), registry.clone());
        handles.push(tokio::spawn(async move {
            let e = job(pool.as_ref(), &registry, "echo", json!([i])).await;
            drop(permit);
            e.outcome.is_success()
        }));
    }
    for h in handles {
        assert!(h.await.unwrap());
    }
    print_rate("echo at -c 1000:", n, started);
}

async fn latency() {
    for hogs in [2usize, 10, 100] {
        // Hogs with a budget that outlasts the measurement, stopped by their time limit.
        let limits = Limits {
            time_limit: Duration::from_secs(30),
            ..Limits::default()
        };
        let (pool, registry) = setup(1100, 1000, limits).await;
        let entry = registry.lookup("hog").unwrap();
        let mut hog_handles = Vec::new();
        for _ in 0..hogs {
            let (pool, entry) = (pool.clone(), entry.clone());
            hog_handles.push(tokio::spawn(async move {
                let mut request = RunRequest::new("hog", vec![]);
                request.limits = Limits {
                    fuel: u64::MAX / 2,
                    time_limit: Duration::from_secs(30),
                    ..Limits::default()
                };
                pool.execute(entry, request).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Submit from another OS thread (the broker-side path), 5 ms apart.
        let handle = tokio::runtime::Handle::current();
        let (pool2, registry2) = (pool.clone(), registry.clone());
        let latencies = tokio::task::spawn_blocking(move || {
            let mut waits = Vec::new();
            for i in 0..200 {
                let (pool, registry) = (pool2.clone(), registry2.clone());
                let submitted = Instant::now();
                waits.push(handle.spawn(async move {
                    let e = job(pool.as_ref(), &registry, "echo", json!([i])).await;
                    assert!(e.outcome.is_success());
                    submitted.elapsed()
                }));
                std::thread::sleep(Duration::from_millis(5));
            }
            waits
        })
        .await
        .unwrap();
        let mut l = Vec::new();
        for w in latencies {
            l.push(w.await.unwrap());
        }
        l.sort();
        println!(
            "short jobs beside {hogs:>3} hogs: p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
            percentile(&l, 0.5).as_secs_f64() * 1e3,
            percentile(&l, 0.99).as_secs_f64() * 1e3,
            l.last().unwrap().as_secs_f64() * 1e3
        );
        for h in hog_handles {
            h.abort();
        }
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Proportional set size (`Pss` in `/proc/self/smaps_rollup`): resident memory with each
/// shared page divided among its mappings. RSS counts a page of the guests' shared
/// copy-on-write memory image once per instance mapping it; PSS counts it once.
fn pss_bytes() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The best of three fib(30) on `pool`.
async fn fib30(pool: &dyn Pool, registry: &Registry) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let e = job(pool, registry, "fib", json!([30])).await;
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
        best = best.min(started.elapsed());
    }
    best
}

/// How long the runtime's worker threads have been busy (not parked), summed.
fn runtime_busy() -> Duration {
    let metrics = tokio::runtime::Handle::current().metrics();
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum()
}

async fn parked() {
    let n = 10_000;
    // One slot more than the sleepers take, for a CPU job beside them.
    let (pool, registry) = setup(n as u32 + 100, n + 1, Limits::default()).await;
    job(pool.as_ref(), &registry, "sleep", json!([0.0])).await;
    let fib_alone = fib30(pool.as_ref(), &registry).await;
    let (rss_before, pss_before) = (rss_bytes(), pss_bytes());
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (pool, registry) = (pool.clone(), registry.clone());
            tokio::spawn(async move { job(pool.as_ref(), &registry, "sleep", json!([4.0])).await })
        })
        .collect();
    // What the parked guests cost the jobs beside them. Once every guest is parked the
    // runtime's threads go quiet (instantiating 10,000 takes 0.1–2.5 s, with the load):
    // wait for a quiet 100 ms (at most until 2.5 s), then time 300 ms of their wait and
    // fib(30) beside them, all before the 3 s mark.
    let busy_in = |span: Duration| async move {
        let (before, started) = (runtime_busy(), Instant::now());
        tokio::time::sleep(span).await;
        (runtime_busy() - before, started.elapsed())
    };
    let settled = loop {
        let (busy, span) = busy_in(Duration::from_millis(100)).await;
        if busy.as_secs_f64() < 0.05 * span.as_secs_f64() {
            break true;
        }
        if started.elapsed() > Duration::from_millis(2500) {
            break false;
        }
    };
    let (busy, window) = busy_in(Duration::from_millis(300)).await;
    let fib_beside = fib30(pool.as_ref(), &registry).await;
    let still_parked = handles.iter().filter(|h| !h.is_finished()).count();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let (rss_during, pss_during) = (rss_bytes(), pss_bytes());
    for h in handles {
        let e = h.await.unwrap();
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
    }
    let per_job = |before: u64, during: u64| {
        let grew = during.saturating_sub(before) as f64;
        (grew / (1 << 20) as f64, grew / 1024.0 / n as f64)
    };
    let (pss_mib, pss_kib) = per_job(pss_before, pss_during);
    let (rss_mib, rss_kib) = per_job(rss_before, rss_during);
    println!(
        "{n} parked sleep jobs: PSS +{pss_mib:.1} MiB = {pss_kib:.1} KiB/job \
         (RSS +{rss_mib:.1} MiB = {rss_kib:.1} KiB/job, counting the shared memory image per instance); \
         all done in {:.2} s (sleep 4 s)",
        started.elapsed().as_secs_f64()
    );
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    println!(
        "while parked{}: {workers} runtime threads busy {:.1} ms of {:.0} ms ({:.2}%); \
         fib(30) {:.2} ms alone, {:.2} ms beside them ({:.2}x; {still_parked} still parked)",
        if settled {
            ""
        } else {
            " (still starting at 2.5 s)"
        },
        busy.as_secs_f64() * 1e3,
        window.as_secs_f64() * 1e3,
        100.0 * busy.as_secs_f64() / (window.as_secs_f64() * workers as f64),
        fib_alone.as_secs_f64() * 1e3,
        fib_beside.as_secs_f64() * 1e3,
        fib_beside.as_secs_f64() / fib_alone.as_secs_f64()
    );
}

/// The same source as the guest's `slow_fib` (tasks/fib/src/lib.rs), compiled natively:
/// wrapping add, never inlined; the caller passes the input through `black_box`.
#[inline(never)]
fn native_fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        native_fib(n - 1).wrapping_add(native_fib(n - 2))
    }
}

/// The same source as the guest's `pseudo_random_sort` (tasks/fib/src/lib.rs).
#[inline(never)]
fn native_sort(n: u32, seed: u32) -> u64 {
    let mut x = seed.max(1);
    let mut v: Vec<u32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect();
    v.sort_unstable();
    v.iter().enumerate().fold(0u64, |acc, (i, &x)| {
        acc.wrapping_add(i as u64 * u64::from(x))
    })
}

/// The preemption in force, for the report line.
fn preemption_label(sandbox: &sprout::sandbox::Sandbox) -> String {
    let s = sandbox.settings();
    match s.preemption {
        sprout::sandbox::Preemption::Fuel => format!("fuel, slice {}", s.fuel_slice),
        sprout::sandbox::Preemption::Epoch => format!("epoch, tick {:?}", s.epoch_tick),
    }
}

/// Median of 7 runs of one CPU task in the sandbox against the same source natively.
async fn versus_native(
    pool: &dyn Pool,
    registry: &Registry,
    what: &str,
    task: &str,
    args: serde_json::Value,
    native: impl Fn() -> u64,
) {
    let want = native();
    job(pool, registry, task, args.clone()).await;
    let runs = 7;
    let (mut wasm, mut wasm_cpu) = (Vec::new(), Vec::new());
    let mut fuel = 0;
    for _ in 0..runs {
        // The job runs inline on this thread (a pool of 1 runs it in the caller's task,
        // and `block_on` polls that here), so this thread's CPU time is the job's.
        let cpu = thread_cpu();
        let e = job(pool, registry, task, args.clone()).await;
        wasm_cpu.push(thread_cpu() - cpu);
        assert_eq!(
            e.outcome,
            sprout::model::Outcome::Success { value: json!(want) }
        );
        wasm.push(e.duration);
        fuel = e.fuel_used;
    }
    let (mut native_runs, mut native_cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (t, cpu) = (Instant::now(), thread_cpu());
        assert_eq!(std::hint::black_box(native()), want);
        native_cpu.push(thread_cpu() - cpu);
        native_runs.push(t.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (w, n) = (median(&mut wasm), median(&mut native_runs));
    let (wc, nc) = (median(&mut wasm_cpu), median(&mut native_cpu));
    println!(
        "{what}: wall: wasm {w:.2} ms, native {n:.2} ms → {:.2}×; thread CPU: wasm {wc:.2} ms, \
         native {nc:.2} ms → {:.2}× (medians of {runs}; fuel_used {fuel})",
        w / n,
        wc / nc
    );
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

async fn fib() {
    let sandbox = common::pool::sandbox(16);
    println!("preemption: {}", preemption_label(&sandbox));
    let registry = common::pool::registry(&sandbox, &Limits::default()).await;
    let pool = AsyncPool::new(sandbox, 1);
    versus_native(&pool, &registry, "fib(30)", "fib", json!([30]), || {
        native_fib(std::hint::black_box(30))
    })
    .await;
    versus_native(
        &pool,
        &registry,
        "sort(1M)",
        "sort",
        json!([1_000_000, 12345]),
        || native_sort(std::hint::black_box(1_000_000), std::hint::black_box(12345)),
    )
    .await;
}

fn main() {
    let sections = Sections::from_args();
    runtime().block_on(async {
        if sections.wanted("overhead") {
            overhead().await;
        }
        if sections.wanted("latency") {
            latency().await;
        }
        if sections.wanted("parked") {
            parked().await;
        }
        if sections.wanted("fib") {
            fib().await;
        }
    });
}
