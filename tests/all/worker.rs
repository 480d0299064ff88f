//! The worker end to end: the real `sprout worker` binary on real SQLite files, jobs
//! sent from this (another) process.

use std::time::{Duration, Instant};

use crate::support::SqliteStore;
use chrono::Utc;
use serde_json::json;
use sprout::backend::ResultBackend;
use sprout::broker::Broker;
use sprout::model::Job;
use sprout::model::State;

use crate::support::{
    Workdir, assert_nothing_left_behind, dead_letters_at_least, stdout, wait_until,
};

async fn store(dir: &Workdir) -> SqliteStore {
    SqliteStore::open(dir.path("sprout.db"))
        .await
        .expect("open broker")
}

fn job(task: &str, args: serde_json::Value) -> Job {
    Job::new(
        task,
        args.as_array().cloned().unwrap_or_default(),
        Default::default(),
    )
}

async fn count_terminal(store: &SqliteStore) -> u64 {
    store
        .result_counts()
        .await
        .unwrap()
        .iter()
        .filter(|(state, _)| state.is_terminal())
        .map(|(_, n)| n)
        .sum()
}

async fn wait_terminal(store: &SqliteStore, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = count_terminal(store).await;
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} jobs finished within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_from_another_process_all_correct() {
    let dir = Workdir::new();
    let store = store(&dir).await;
    let jobs: Vec<Job> = (0..10_000).map(|i| job("add", json!([i, 2 * i]))).collect();
    store.publish(&jobs).await.unwrap();
    let _worker = dir.worker(&["-c", "100"]);
    wait_terminal(&store, 10_000, Duration::from_secs(120)).await;
    for (i, job) in jobs.iter().enumerate() {
        let record = store.get(&job.id).await.unwrap().expect("a result");
        assert_eq!(record.state, State::Success, "{record:?}");
        assert_eq!(record.result, Some(json!(3 * i)), "job {i}");
        assert!(record.fuel_used.unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flight_loses_nothing() {
    let dir = Workdir::new();
    let store = store(&dir).await;
    let jobs: Vec<Job> = (0..2000).map(|_| job("sleep", json!([0.3]))).collect();
    store.publish(&jobs).await.unwrap();
    let mut worker = dir.worker(&["-c", "500", "--lease", "2"]);
    // Wait until jobs are running and some have finished, then kill -9.
    wait_terminal(&store, 200, Duration::from_secs(30)).await;
    worker.signal(libc::SIGKILL);
    worker.wait(Duration::from_secs(5));
    let done_before = count_terminal(&store).await;
    assert!(done_before < 2000, "the kill must land mid-run");
    let _restarted = dir.worker(&["-c", "500", "--lease", "2"]);
    wait_terminal(&store, 2000, Duration::from_secs(60)).await;
    for job in &jobs {
        let record = store
            .get(&job.id)
            .await
            .unwrap()
            .expect("every job has a result");
        assert_eq!(record.state, State::Success);
    }
    assert_nothing_left_behind(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_expiry_and_eta() {
    let dir = Workdir::new();
    let store = store(&dir).await;
    let flaky = job("flaky", json!([2]));
    let mut hog = job("hog", json!([]));
    hog.max_retries = Some(3);
    let mut expired = job("add", json!([1, 1]));
    expired.expires = Some(Utc::now() - chrono::Duration::seconds(1));
    let unknown = job("no.such.task", json!([]));
    store
        .publish(&[flaky.clone(), hog.clone(), expired.clone(), unknown.clone()])
        .await
        .unwrap();
    let _worker = dir.worker(&["-c", "4", "--unknown-task-grace", "0"]);

    let r = store
        .wait(&flaky.id, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.state, r.retries, r.result.clone()),
        (State::Success, 2, Some(json!(2))),
        "{r:?}"
    );
    let r = store
        .wait(&hog.id, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, State::Failure);
    assert_eq!(r.retries, 0, "running out of fuel is not retried");
    assert_eq!(r.error.unwrap().kind, "OutOfFuel");
    let r = store
        .wait(&expired.id, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, State::Revoked);
    assert!(r.fuel_used.is_none(), "an expired job never runs");
    let r = store
        .wait(&unknown.id, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, State::Failure);
    assert_eq!(r.error.unwrap().kind, "NotRegistered");

    // An eta job on an idle worker runs no earlier than its eta, and within 100 ms of it.
    let mut later = job("add", json!([2, 2]));
    let eta = Utc::now() + chrono::Duration::milliseconds(1500);
    later.eta = Some(eta);
    store.publish(std::slice::from_ref(&later)).await.unwrap();
    let r = store
        .wait(&later.id, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let started = r.started_at.expect("started_at");
    let late = (started - eta).num_milliseconds();
    eprintln!("eta job started {late} ms after its eta");
    assert!(started >= eta, "ran {} ms early", -late);
    assert!(late <= 100, "ran {late} ms late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_messages_are_dead_lettered_and_nothing_else_is_lost() {
    let dir = Workdir::new();
    let store = store(&dir).await;
    let good: Vec<Job> = (0..50).map(|i| job("add", json!([i, 1]))).collect();
    store.publish(&good[..25]).await.unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path("sprout.db")).unwrap();
        conn.execute(
            "INSERT INTO jobs (queue, job_id, body) VALUES ('celery', 'corrupt-1', x'7b6e6f74206a736f6e')",
            [],
        )
        .unwrap();
    }
    store.publish(&good[25..]).await.unwrap();
    let _worker = dir.worker(&["-c", "8"]);
    wait_terminal(&store, 51, Duration::from_secs(30)).await;
    for (i, j) in good.iter().enumerate() {
        let r = store.get(&j.id).await.unwrap().unwrap();
        assert_eq!(r.result, Some(json!(i + 1)));
    }
    let corrupt = store
        .get("corrupt-1")
        .await
        .unwrap()
        .expect("a failure record for the corrupt job");
    assert_eq!(corrupt.state, State::Failure);
    let dead = dead_letters_at_least(&store, 1).await;
    let out = dir.run(&["status"]);
    let status = stdout(&out);
    assert!(
        status.contains("DEAD LETTERS") && status.contains("corrupt-1"),
        "{status}"
    );
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("expected")
            || dead[0].reason.contains("JSON")
            || !dead[0].reason.is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish_and_keeps_the_queue() {
    let dir = Workdir::new();
    let store = store(&dir).await;
    let running: Vec<Job> = (0..50).map(|_| job("sleep", json!([1.0]))).collect();
    store.publish(&running).await.unwrap();
    let mut worker = dir.worker(&["-c", "50"]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = futures_lite_block(store.stats()).unwrap();
            s.iter().map(|q| q.leased).sum::<u64>() == 50
        }),
        "50 jobs running"
    );
    // Jobs sent now wait in the queue: the worker has no free slot.
    let waiting: Vec<Job> = (0..20).map(|i| job("add", json!([i, 0]))).collect();
    store.publish(&waiting).await.unwrap();
    worker.signal(libc::SIGTERM);
    let (code, log) = worker.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("for 50 running job(s)"), "{log}");
    for j in &running {
        assert_eq!(
            store.get(&j.id).await.unwrap().unwrap().state,
            State::Success
        );
    }
    for j in &waiting {
        assert!(
            store.get(&j.id).await.unwrap().is_none(),
            "a queued job must not have run"
        );
    }
    let ready: u64 = store.stats().await.unwrap().iter().map(|q| q.ready).sum();
    assert_eq!(ready, 20, "the queue is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_is_a_cold_shutdown_and_jobs_come_back() {
    let dir = Workdir::new();
    let store = store(&dir).await;
    let jobs: Vec<Job> = (0..20).map(|_| job("sleep", json!([3.0]))).collect();
    store.publish(&jobs).await.unwrap();
    let mut worker = dir.worker(&["-c", "20"]);
    assert!(wait_until(Duration::from_secs(20), || {
        futures_lite_block(store.stats())
            .unwrap()
            .iter()
            .map(|q| q.leased)
            .sum::<u64>()
            == 20
    }));
    worker.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    worker.signal(libc::SIGTERM);
    let started = Instant::now();
    let (code, log) = worker.wait(Duration::from_secs(5));
    assert_eq!(code, Some(1), "cold shutdown exits non-zero: {log}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cold shutdown is immediate"
    );
    assert_eq!(count_terminal(&store).await, 0, "no job finished");
    let ready: u64 = store.stats().await.unwrap().iter().map(|q| q.ready).sum();
    assert_eq!(ready, 20, "interrupted jobs are released for redelivery");
    let _restarted = dir.worker(&["-c", "20"]);
    wait_terminal(&store, 20, Duration::from_secs(30)).await;
    for j in &jobs {
        assert_eq!(
            store.get(&j.id).await.unwrap().unwrap().state,
            State::Success
        );
    }
}

/// Blocks on a future from sync code inside a multi-thread runtime test.
fn futures_lite_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}
