//! The SQLite result backend: upsert rules, batches, reads from other handles, and the
//! `sprout status` helpers.

use std::time::Duration;

use crate::support::SqliteStore;
use chrono::Utc;
use sprout::backend::ResultBackend;
use sprout::model::{ErrorInfo, ResultRecord, State};

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("results.db"))
        .await
        .unwrap();
    (dir, store)
}

fn record(id: &str, state: State) -> ResultRecord {
    ResultRecord::new(id, "test.add", state)
}

/// A record with every field set, to check the round trip.
fn full_record(id: &str) -> ResultRecord {
    ResultRecord {
        result: Some(serde_json::json!({"sum": 3, "items": [1, "two", null]})),
        error: Some(ErrorInfo {
            kind: "ValueError".into(),
            message: "earlier attempt".into(),
            traceback: Some("wasm backtrace".into()),
        }),
        retries: 2,
        fuel_used: Some(123_456),
        duration_ms: Some(12.5),
        worker: Some("host-1".into()),
        started_at: Some(Utc::now()),
        ..record(id, State::Success)
    }
}

#[tokio::test]
async fn unknown_id_is_none() {
    let (_dir, store) = store().await;
    assert!(store.get("never-sent").await.unwrap().is_none());
    let waited = store
        .wait("never-sent", Duration::from_millis(30))
        .await
        .unwrap();
    assert!(waited.is_none());
}

#[tokio::test]
async fn record_round_trips() {
    let (_dir, store) = store().await;
    let rec = full_record("full");
    store.store(std::slice::from_ref(&rec)).await.unwrap();
    assert_eq!(store.get("full").await.unwrap(), Some(rec));
}

#[tokio::test]
async fn terminal_state_is_not_overwritten_by_non_terminal() {
    let (_dir, store) = store().await;
    store.store(&[record("a", State::Started)]).await.unwrap();
    store.store(&[record("a", State::Retry)]).await.unwrap();
    assert_eq!(store.get("a").await.unwrap().unwrap().state, State::Retry);

    store.store(&[record("a", State::Success)]).await.unwrap();
    for late in [State::Started, State::Retry, State::Pending] {
        store.store(&[record("a", late)]).await.unwrap();
        assert_eq!(store.get("a").await.unwrap().unwrap().state, State::Success);
    }

    // Within one batch the same rule applies, in order.
    let batch = [
        record("b", State::Started),
        record("b", State::Failure),
        record("b", State::Started),
    ];
    store.store(&batch).await.unwrap();
    assert_eq!(store.get("b").await.unwrap().unwrap().state, State::Failure);

    // A later terminal state replaces an earlier one (at-least-once: the last run wins).
    store.store(&[record("b", State::Success)]).await.unwrap();
    assert_eq!(store.get("b").await.unwrap().unwrap().state, State::Success);
}

#[tokio::test]
async fn batch_store_writes_every_record() {
    let (_dir, store) = store().await;
    let records: Vec<ResultRecord> = (0..1000)
        .map(|n| ResultRecord {
            result: Some(serde_json::json!(n)),
            ..record(&format!("job-{n}"), State::Success)
        })
        .collect();
    store.store(&records).await.unwrap();
    for n in [0, 499, 999] {
        let got = store.get(&format!("job-{n}")).await.unwrap().unwrap();
        assert_eq!(got.result, Some(serde_json::json!(n)));
    }
    assert_eq!(
        store.result_counts().await.unwrap(),
        [(State::Success, 1000)]
    );
}

#[tokio::test]
async fn other_handle_sees_results_and_wait_returns_terminal() {
    let (_dir, writer) = store().await;
    let reader = SqliteStore::open(writer.path()).await.unwrap();
    writer.store(&[record("w", State::Started)]).await.unwrap();
    assert_eq!(
        reader.get("w").await.unwrap().unwrap().state,
        State::Started
    );

    let waiter = tokio::spawn(async move { reader.wait("w", Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    writer.store(&[record("w", State::Failure)]).await.unwrap();
    let got = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(got.state, State::Failure);
}

#[tokio::test]
async fn recent_results_and_counts() {
    let (_dir, store) = store().await;
    let base = Utc::now();
    let states = [
        State::Success,
        State::Failure,
        State::Success,
        State::Started,
        State::Revoked,
    ];
    let records: Vec<ResultRecord> = states
        .iter()
        .enumerate()
        .map(|(n, &state)| ResultRecord {
            updated_at: base + chrono::Duration::seconds(n as i64),
            ..record(&format!("r{n}"), state)
        })
        .collect();
    store.store(&records).await.unwrap();

    let recent: Vec<String> = store
        .recent_results(3)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(recent, ["r4", "r3", "r2"]);
    assert_eq!(
        store.result_counts().await.unwrap(),
        [
            (State::Started, 1),
            (State::Success, 2),
            (State::Failure, 1),
            (State::Revoked, 1)
        ]
    );
}

#[tokio::test]
async fn corrupt_record_is_an_error_not_a_panic() {
    let (_dir, store) = store().await;
    store.store(&[record("ok", State::Success)]).await.unwrap();
    rusqlite::Connection::open(store.path())
        .unwrap()
        .execute(
            "INSERT INTO results (id, task, state, terminal, updated_at, record)
             VALUES ('bad', 't', 'SUCCESS', 1, 0, x'00')",
            [],
        )
        .unwrap();
    let err = store.get("bad").await.unwrap_err();
    assert!(
        matches!(err, sprout::backend::BackendError::Corrupt { ref id, .. } if id == "bad"),
        "{err}"
    );
    let recent = store.recent_results(10).await.unwrap();
    assert_eq!(recent.len(), 1, "the unreadable record is skipped");
}

/// `expire_results` deletes what was last updated before the cutoff (in batches, here
/// more than one) and nothing newer.
#[tokio::test]
async fn expire_results_deletes_only_old_records() {
    let (_dir, store) = store().await;
    let two_days_ago = Utc::now() - chrono::Duration::days(2);
    let old: Vec<ResultRecord> = (0..12_001)
        .map(|i| ResultRecord {
            updated_at: two_days_ago,
            ..record(&format!("old-{i}"), State::Success)
        })
        .collect();
    store.store(&old).await.unwrap();
    let fresh = [
        record("fresh", State::Success),
        record("running", State::Started),
    ];
    store.store(&fresh).await.unwrap();

    let day = Duration::from_secs(86_400);
    assert_eq!(store.expire_results(day).await.unwrap(), 12_001);
    assert!(store.get("old-0").await.unwrap().is_none());
    assert!(store.get("old-12000").await.unwrap().is_none());
    assert!(store.get("fresh").await.unwrap().is_some());
    assert!(store.get("running").await.unwrap().is_some());
    assert_eq!(store.expire_results(day).await.unwrap(), 0, "idempotent");
    let counts = store.counts().await.unwrap();
    assert_eq!(counts, vec![(State::Started, 1), (State::Success, 1)]);
}

/// A worker started with `--result-expires 2` deletes results about 2 s after they
/// were stored (not before), and at startup deletes results that expired while no
/// worker ran; with `--result-expires 0` it keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_expires_results_on_a_real_sqlite_file() {
    use crate::support::{Workdir, wait_until};
    use sprout::broker::Broker;
    use sprout::model::Job;

    let w = Workdir::new();
    let store = SqliteStore::open(w.path("sprout.db")).await.unwrap();
    let stale = ResultRecord {
        updated_at: Utc::now() - chrono::Duration::days(2),
        ..record("stale", State::Success)
    };

    // 0: never. The stale record survives a worker that ran a job.
    store.store(std::slice::from_ref(&stale)).await.unwrap();
    let job = Job::new("add", vec![1.into(), 2.into()], Default::default());
    store.publish(std::slice::from_ref(&job)).await.unwrap();
    let mut worker = w.worker(&["-c", "2", "--result-expires", "0"]);
    let r = store.wait(&job.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.map(|r| r.state), Some(State::Success));
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.signal(libc::SIGTERM);
    let (code, log) = worker.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(store.get("stale").await.unwrap().is_some(), "kept with 0");

    // 2 s: the stale record goes at startup; a new result lives about 2 s.
    let job = Job::new("add", vec![2.into(), 3.into()], Default::default());
    store.publish(std::slice::from_ref(&job)).await.unwrap();
    let mut worker = w.worker(&["-c", "2", "--result-expires", "2s"]);
    let r = store.wait(&job.id, Duration::from_secs(30)).await.unwrap();
    let stored_at = std::time::Instant::now();
    assert_eq!(r.map(|r| r.state), Some(State::Success));
    assert!(
        store.get("stale").await.unwrap().is_none(),
        "swept at startup"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        store.get(&job.id).await.unwrap().is_some(),
        "expired before its 2 s"
    );
    let gone = {
        let store = store.clone();
        let id = job.id.clone();
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Handle::current();
            wait_until(Duration::from_secs(10), || {
                rt.block_on(store.get(&id)).unwrap().is_none()
            })
        })
        .await
        .unwrap()
    };
    let lived = stored_at.elapsed();
    eprintln!("a result with --result-expires 2s was deleted after {lived:?}");
    assert!(gone, "still there after {lived:?}");
    // 2 s, plus at most one 0.5 s sweep interval, plus polling and load slack.
    assert!(lived < Duration::from_secs(6), "deleted after {lived:?}");
    worker.signal(libc::SIGTERM);
    let (code, log) = worker.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("expired"), "the sweep is logged: {log}");
}
