//! Epoch preemption (`EngineSettings::preemption = Epoch`), the opt-in alternative to
//! fuel: the same outcome suite passes (a hog is stopped at its budget as `OutOfFuel`,
//! with `fuel_used` equal to the budget; time, memory and output limits as under fuel),
//! and spinning guests yield at each tick so short jobs get through beside them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::model::Outcome;
use sprout::pool::{AsyncPool, Pool};
use sprout::sandbox::{EngineSettings, Preemption, RunRequest, Sandbox};

use crate::outcomes::{job_limits_suite, no_limits, outcome_suite, run_job};
use crate::support;

fn epoch_sandbox(instances: u32) -> Sandbox {
    let settings = EngineSettings {
        max_instances: instances,
        preemption: Preemption::Epoch,
        ..EngineSettings::default()
    };
    Sandbox::new(settings, Some(&support::cache_dir())).expect("sandbox")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pool_outcomes_under_epoch_preemption() {
    let sandbox = epoch_sandbox(64);
    let registry = support::registry(&sandbox).await;
    let pool: Arc<dyn Pool> = Arc::new(AsyncPool::new(sandbox, 16));
    outcome_suite(pool.clone(), &registry).await;
    job_limits_suite(pool.clone(), &registry).await;

    // The budget is guest time at 20 fuel/ns: fib(25) fits in the default budget and
    // reports what it used; 1 million fuel (50 µs) does not cover fib(30) (~3 ms).
    let e = run_job(pool.as_ref(), &registry, "fib", json!([25]), no_limits()).await;
    assert_eq!(
        e.outcome,
        Outcome::Success {
            value: json!(75025)
        }
    );
    assert!(
        e.fuel_used > 0 && e.fuel_used < 10_000_000_000,
        "{}",
        e.fuel_used
    );
    let small = crate::outcomes::asking(|l| l.fuel = Some(1_000_000));
    let e = run_job(pool.as_ref(), &registry, "fib", json!([30]), small).await;
    assert_eq!(e.outcome, Outcome::OutOfFuel { budget: 1_000_000 });
    assert_eq!(e.fuel_used, 1_000_000);
}

/// Beside 4 guests spinning until their 3 s time limit on the 2 runtime threads, 20
/// short jobs in a row each finish in well under a second: the spinners yield at every
/// tick. A spinner that did not would hold its thread for the whole 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_epoch_preemption_lets_short_jobs_past_spinning_guests() {
    let _timed = support::TIMED.lock().await;
    let sandbox = epoch_sandbox(64);
    let hog = sandbox.load_file(&support::task("hog")).await.unwrap();
    let echo = sandbox.load_file(&support::task("echo")).await.unwrap();
    let spinners = support::spawn_hogs(&sandbox, &hog, 4, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let e = sandbox
            .run(&echo, RunRequest::new("echo", vec![json!(i)]))
            .await;
        assert!(e.outcome.is_success(), "{:?}", e.outcome);
        slowest = slowest.max(started.elapsed());
    }
    let spinning = spinners.iter().all(|s| !s.is_finished());
    for s in spinners {
        let outcome = s.await.unwrap();
        assert!(
            matches!(outcome, Outcome::TimeLimit { .. }),
            "the spinner ran until its time limit: {outcome:?}"
        );
    }
    eprintln!("epoch: slowest of 20 short jobs beside 4 spinning guests: {slowest:?}");
    assert!(spinning, "the spinners ran while the short jobs did");
    assert!(
        slowest < Duration::from_millis(1000),
        "a short job waited {slowest:?} beside spinning guests"
    );
}

/// `--preemption epoch` reaches the engine of `sprout run` and of a worker's prefork
/// children: the budget is then counted in CPU time (`fuel_used` of the same fib(25)
/// varies and differs from fuel's exact count), a small budget still stops a guest as
/// OutOfFuel, and the banner says which mode runs. Bad values and `--epoch-tick`
/// without epoch are usage errors (exit 2) naming the flag.
#[test]
fn the_cli_chooses_epoch_preemption_and_checks_its_flags() {
    let dir = support::Workdir::new();
    let fib = support::task("fib").display().to_string();
    let fuel_used = |extra: &[&str]| -> u64 {
        let mut args = vec!["run", fib.as_str(), "fib", "[25]", "--json"];
        args.extend_from_slice(extra);
        let out = dir.run(&args);
        assert!(out.status.success(), "{}", support::stderr(&out));
        let execution: serde_json::Value =
            serde_json::from_str(&support::stdout(&out)).expect("--json prints the execution");
        assert_eq!(execution["outcome"]["value"], json!(75025), "{execution}");
        execution["fuel_used"].as_u64().expect("fuel_used")
    };
    let counted = fuel_used(&[]);
    assert_eq!(
        counted,
        fuel_used(&["--preemption", "fuel"]),
        "fuel is exact"
    );
    let timed: Vec<u64> = (0..3)
        .map(|_| fuel_used(&["--preemption", "epoch", "--epoch-tick", "200us"]))
        .collect();
    assert!(
        timed.iter().all(|&t| t > 0 && t != counted),
        "epoch counts CPU time, not instructions: {timed:?} vs fuel's {counted}"
    );

    let out = dir.run(&[
        "run",
        &fib,
        "fib",
        "[32]",
        "--fuel",
        "1000000",
        "--preemption",
        "epoch",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", support::stderr(&out));
    assert!(
        support::stderr(&out).contains("OutOfFuel"),
        "{}",
        support::stderr(&out)
    );

    for (args, names) in [
        (vec!["--preemption", "time"], "fuel or epoch"),
        (vec!["--preemption", "epoch", "--epoch-tick", "5us"], "5us"),
        (vec!["--preemption", "epoch", "--epoch-tick", "2s"], "2s"),
        (vec!["--epoch-tick", "1ms"], "--preemption epoch"),
    ] {
        let mut all = vec!["run", fib.as_str(), "fib", "[5]"];
        all.extend(args.iter().copied());
        let out = dir.run(&all);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            support::stderr(&out)
        );
        assert!(
            support::stderr(&out).contains(names),
            "{args:?}: {}",
            support::stderr(&out)
        );
    }

    // A worker's prefork children run under the parent's mode (the same compiled
    // artifacts: a child with another engine config could not load them).
    let _worker = dir.worker_logged(
        support::tasks_dir(),
        &["-P", "prefork", "-c", "1", "--preemption", "epoch"],
    );
    let out = dir.run(&["send", "fib", "[25]", "--wait", "--timeout", "60"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        support::stderr(&out),
        dir.worker_log()
    );
    assert_eq!(support::stdout(&out), "75025");
    assert!(
        dir.worker_log().contains("preemption:  epoch (tick 50µs)"),
        "{}",
        dir.worker_log()
    );
}
