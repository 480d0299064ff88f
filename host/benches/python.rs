//! Python task files on the async pool (issue 15, "Speed"). Not a test: it prints
//! numbers for BENCHMARKS.md.
//!
//! ```text
//! ./tasks/build.sh target/tasks
//! ./tasks/python/build.sh target/release/sprout target/tasks/python
//! cargo bench -p sprout --bench python [-- SECTION...]
//! ```
//! Sections: `overhead` (`py.add` jobs/s and CPU per job, sequential and at -c 100),
//! `latency` (p50/p99 of `py.add` alone and beside 10 CPU hogs, and what the hogs add),
//! `parked` (memory per `py.sleep` job at 1,000 in flight: PSS and RSS), `reuse` (the
//! `overhead` numbers with instance reuse: every job asks for `jobs_per_instance` =
//! `SPROUT_BENCH_JOBS_PER_INSTANCE`, default 100, as `[limits] jobs_per_instance` in a
//! manifest would), `latency_reuse` (`latency` with that reuse).
//! `SPROUT_BENCH_PY_TASKS` overrides the Python task dir (default `target/tasks/python`),
//! `SPROUT_BENCH_TASKS` the Rust one (the hogs come from there). The end-to-end rate on
//! the embedded broker is the `worker` bench with `SPROUT_BENCH_TASK=py.add`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::model::Limits;
use sprout::pool::{AsyncPool, Pool};
use sprout::registry::Registry;
use sprout::sandbox::RunRequest;

use common::pool::job;
use common::{Sections, env_usize, runtime};

/// The built Python example tasks: `SPROUT_BENCH_PY_TASKS`, else `target/tasks/python`.
fn py_tasks_dir() -> PathBuf {
    std::env::var_os("SPROUT_BENCH_PY_TASKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tasks/python"))
}

/// A pool of `concurrency` over a sandbox of `instances` slots, with the Rust and the
/// Python example tasks loaded.
async fn setup(instances: u32, concurrency: usize) -> (Arc<dyn Pool>, Arc<Registry>) {
    let sandbox = common::pool::sandbox(instances);
    let registry = Registry::new();
    let dirs = [common::pool::tasks_dir(), py_tasks_dir()];
    let rejected = registry.load(&sandbox, &dirs, &Limits::default()).await;
    assert!(
        rejected.is_empty(),
        "{rejected:?} (build the Rust and Python tasks first: see the module docs)"
    );
    assert!(
        registry.lookup("py.add").is_some(),
        "no py.add in {}",
        py_tasks_dir().display()
    );
    (
        Arc::new(AsyncPool::new(sandbox, concurrency)),
        Arc::new(registry),
    )
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints the rate of `n` jobs run since `started` (wall) and the CPU each cost.
fn print_rate(label: &str, n: usize, started: Instant, cpu_before: Duration) {
    let secs = started.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu_before).as_secs_f64();
    println!(
        "{label:<24}{:>7.0} jobs/s  ({:.0} µs/job wall, {:.0} µs/job CPU; load {})",
        n as f64 / secs,
        secs * 1e6 / n as f64,
        cpu * 1e6 / n as f64,
        load_average()
    );
}

/// Runs `py.add(i, 1)` allowing `jobs_per_instance` jobs per instance (1: fresh each
/// time), checks the sum, and returns how long the sandbox took from instantiating (if
/// it did) to the call's return (store setup and the slot's reset are outside it).
async fn add(pool: &dyn Pool, registry: &Registry, i: usize, jobs_per_instance: u32) -> Duration {
    let e = if jobs_per_instance == 1 {
        job(pool, registry, "py.add", json!([i, 1])).await
    } else {
        let entry = registry.lookup("py.add").expect("py.add");
        let mut request = RunRequest::new(entry.export.clone(), vec![json!(i), json!(1)]);
        request.limits = entry.limits.clone();
        request.limits.jobs_per_instance = jobs_per_instance;
        pool.execute(entry, request).await
    };
    assert_eq!(
        e.outcome,
        sprout::model::Outcome::Success {
            value: json!(i + 1)
        }
    );
    e.duration
}

async fn overhead(jobs_per_instance: u32) {
    let reuse = if jobs_per_instance == 1 {
        String::new()
    } else {
        format!(", reuse {jobs_per_instance}")
    };
    let (pool, registry) = setup(200, 100).await;
    for i in 0..50 {
        add(pool.as_ref(), &registry, i, jobs_per_instance).await;
    }
    let n = env_usize("SPROUT_BENCH_JOBS", 3_000);
    let (started, cpu) = (Instant::now(), cpu_time());
    let mut in_sandbox = Duration::ZERO;
    for i in 0..n {
        in_sandbox += add(pool.as_ref(), &registry, i, jobs_per_instance).await;
    }
    print_rate(&format!("py.add sequential{reuse}:"), n, started, cpu);
    println!(
        "  of which instantiate + call: {:.0} µs/job (the rest: store setup, the slot's reset, the pool)",
        in_sandbox.as_secs_f64() * 1e6 / n as f64
    );

    let (started, cpu) = (Instant::now(), cpu_time());
    let sem = Arc::new(tokio::sync::Semaphore::new(100));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (pool, registry) = (pool.clone(), registry.clone());
        handles.push(tokio::spawn(async move {
            add(pool.as_ref(), &registry, i, jobs_per_instance).await;
            drop(permit);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    print_rate(&format!("py.add at -c 100{reuse}:"), n, started, cpu);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies of 200 `py.add` jobs submitted from another OS thread (the broker-side
/// path), 5 ms apart, each allowing `jobs_per_instance` jobs per instance, sorted.
async fn add_latencies(
    pool: &Arc<dyn Pool>,
    registry: &Arc<Registry>,
    jobs_per_instance: u32,
) -> Vec<Duration> {
    let handle = tokio::runtime::Handle::current();
    let (pool, registry) = (pool.clone(), registry.clone());
    let waits = tokio::task::spawn_blocking(move || {
        let mut waits = Vec::new();
        for i in 0..200 {
            let (pool, registry) = (pool.clone(), registry.clone());
            let submitted = Instant::now();
            waits.push(handle.spawn(async move {
                add(pool.as_ref(), &registry, i, jobs_per_instance).await;
                submitted.elapsed()
            }));
            std::thread::sleep(Duration::from_millis(5));
        }
        waits
    })
    .await
    .unwrap();
    let mut l = Vec::new();
    for w in waits {
        l.push(w.await.unwrap());
    }
    l.sort();
    l
}

fn print_latencies(label: &str, l: &[Duration]) {
    println!(
        "{label:<26} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  (load {})",
        percentile(l, 0.5).as_secs_f64() * 1e3,
        percentile(l, 0.99).as_secs_f64() * 1e3,
        l.last().unwrap().as_secs_f64() * 1e3,
        load_average()
    );
}

/// Short `py.add` jobs alone and beside CPU hogs, with `jobs_per_instance` jobs per
/// instance (1: a fresh instance each).
async fn latency(jobs_per_instance: u32) {
    let hogs = env_usize("SPROUT_BENCH_HOGS", 10);
    let (pool, registry) = setup(200, 100).await;
    for i in 0..50 {
        add(pool.as_ref(), &registry, i, jobs_per_instance).await;
    }
    let reuse = if jobs_per_instance == 1 {
        String::new()
    } else {
        format!(" (reuse {jobs_per_instance})")
    };
    let alone = add_latencies(&pool, &registry, jobs_per_instance).await;
    print_latencies(&format!("py.add alone{reuse}:"), &alone);
    let entry = registry.lookup("hog").expect("the Rust hog task");
    let hog_handles: Vec<_> = (0..hogs)
        .map(|_| {
            let (pool, entry) = (pool.clone(), entry.clone());
            tokio::spawn(async move {
                let mut request = RunRequest::new("hog", vec![]);
                request.limits = Limits {
                    fuel: u64::MAX / 2,
                    time_limit: Duration::from_secs(60),
                    ..Limits::default()
                };
                pool.execute(entry, request).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let beside = add_latencies(&pool, &registry, jobs_per_instance).await;
    print_latencies(&format!("py.add beside {hogs} hogs{reuse}:"), &beside);
    for h in hog_handles {
        h.abort();
    }
    let added =
        |p: f64| (percentile(&beside, p).as_secs_f64() - percentile(&alone, p).as_secs_f64()) * 1e3;
    println!(
        "added by {hogs} hogs: p50 {:+.3} ms, p99 {:+.3} ms",
        added(0.5),
        added(0.99)
    );
}

/// Resident memory (`VmRSS`) of this process.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Proportional set size (`Pss` in `/proc/self/smaps_rollup`): each page of the shared
/// copy-on-write memory image counts once, not once per instance mapping it.
fn pss_bytes() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

async fn parked() {
    let n = env_usize("SPROUT_BENCH_PARKED", 1_000);
    let (pool, registry) = setup(n as u32 + 16, n).await;
    let sleep = |seconds: f64| {
        let (pool, registry) = (pool.clone(), registry.clone());
        async move {
            let e = job(pool.as_ref(), &registry, "py.sleep", json!([seconds])).await;
            assert!(e.outcome.is_success(), "{:?}", e.outcome);
        }
    };
    sleep(0.0).await;
    let (rss_before, pss_before) = (rss_bytes(), pss_bytes());
    let started = Instant::now();
    let seconds = 8.0;
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(sleep(seconds))).collect();
    // Instantiating a Python guest costs a few ms of CPU: wait until all have started
    // (the process stops growing), well before the first wakes.
    let mut last = (pss_bytes(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = pss_bytes();
        if now == last.0 || started.elapsed() > Duration::from_secs_f64(seconds * 0.75) {
            break;
        }
        last = (now, Instant::now());
    }
    let ready = started.elapsed();
    let (rss_during, pss_during) = (rss_bytes(), pss_bytes());
    let still_parked = handles.iter().filter(|h| !h.is_finished()).count();
    for h in handles {
        h.await.unwrap();
    }
    let per_job = |before: u64, during: u64| {
        let grew = during.saturating_sub(before) as f64;
        (grew / (1 << 20) as f64, grew / (1 << 20) as f64 / n as f64)
    };
    let (pss_mib, pss_per) = per_job(pss_before, pss_during);
    let (rss_mib, rss_per) = per_job(rss_before, rss_during);
    println!(
        "{n} parked py.sleep jobs ({still_parked} parked when measured, {:.2} s after the first): \
         PSS +{pss_mib:.1} MiB = {pss_per:.3} MiB/job (RSS +{rss_mib:.1} MiB = {rss_per:.3} MiB/job); \
         all done in {:.2} s (sleep {seconds} s; load {})",
        ready.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

fn main() {
    let sections = Sections::from_args();
    runtime().block_on(async {
        if sections.wanted("overhead") {
            overhead(1).await;
        }
        if sections.wanted("reuse") {
            let jobs = env_usize("SPROUT_BENCH_JOBS_PER_INSTANCE", 100);
            overhead(u32::try_from(jobs).unwrap_or(u32::MAX)).await;
        }
        if sections.wanted("latency") {
            latency(1).await;
        }
        if sections.wanted("latency_reuse") {
            let jobs = env_usize("SPROUT_BENCH_JOBS_PER_INSTANCE", 100);
            latency(u32::try_from(jobs).unwrap_or(u32::MAX)).await;
        }
        if sections.wanted("parked") {
            parked().await;
        }
    });
}
