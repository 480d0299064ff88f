//! The SQLite result backend: its runner for the result-backend conformance suite
//! ([`under_test`], expanded in `backend_conformance`), and what only SQLite can be
//! tested for: records kept verbatim, corrupt rows, a worker's expiry sweep on a real
//! file.

use std::sync::Arc;
use std::time::Duration;

use crate::support::SqliteStore;
use chrono::Utc;
use sprout::backend::ResultBackend;
use sprout::model::{ErrorInfo, ResultRecord, State};

use crate::backend_conformance::{BackendCaps, BackendUnderTest};

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("results.db"))
        .await
        .unwrap();
    (dir, store)
}

/// The SQLite backend for one property of the suite: two stores on a fresh file.
pub async fn under_test(_test: &str) -> Option<BackendUnderTest> {
    let (dir, one) = store().await;
    let two = SqliteStore::open(one.path()).await.unwrap();
    Some(BackendUnderTest {
        backend: Arc::new(one),
        other: Arc::new(two),
        caps: BackendCaps {
            lists_results: true,
            expires_by_sweep: true,
            success_is_final: false,
        },
        keep: Box::new(dir),
    })
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

/// SQLite keeps a record verbatim, even what Celery's result layout has no place for
/// (here: an earlier attempt's error on a SUCCESS), which the suite's round trip cannot
/// ask of every backend.
#[tokio::test]
async fn record_is_kept_verbatim() {
    let (_dir, store) = store().await;
    let rec = full_record("full");
    store.store(std::slice::from_ref(&rec)).await.unwrap();
    assert_eq!(store.get("full").await.unwrap(), Some(rec));
}

/// Writes a row under `id` whose record is not JSON, as a damaged file or another
/// program could leave it.
fn insert_unreadable(store: &SqliteStore, id: &str) {
    rusqlite::Connection::open(store.path())
        .unwrap()
        .execute(
            "INSERT INTO results (id, task, state, terminal, updated_at, record)
             VALUES (?1, 't', 'SUCCESS', 1, 0, x'00')",
            [id],
        )
        .unwrap();
}

#[tokio::test]
async fn corrupt_record_is_an_error_not_a_panic() {
    let (_dir, store) = store().await;
    store.store(&[record("ok", State::Success)]).await.unwrap();
    insert_unreadable(&store, "bad");
    let err = store.get("bad").await.unwrap_err();
    assert!(
        matches!(err, sprout::backend::BackendError::Corrupt { ref id, .. } if id == "bad"),
        "{err}"
    );
    let recent = store.recent_results(10).await.unwrap();
    assert_eq!(recent.len(), 1, "the unreadable record is skipped");
}

/// One corrupt record among many fails only its own id: `get_many` reads the others,
/// and `Client::wait_many` stops waiting on it at once (its bytes will not change) while
/// it still waits for, and returns, the rest.
#[tokio::test]
async fn a_corrupt_record_fails_only_its_own_id_in_get_many_and_wait_many() {
    let (_dir, store) = store().await;
    store.store(&[record("ok", State::Success)]).await.unwrap();
    store
        .store(&[record("running", State::Started)])
        .await
        .unwrap();
    insert_unreadable(&store, "bad");
    let ids: Vec<String> = ["ok", "bad", "missing", "running"]
        .map(String::from)
        .to_vec();
    let many = store.backend.get_many(&ids).await.unwrap();
    assert_eq!(many.len(), 4);
    assert_eq!(
        many[0].as_ref().unwrap().as_ref().unwrap().state,
        State::Success
    );
    assert!(
        matches!(&many[1], Err(sprout::backend::BackendError::Corrupt { id, .. }) if id == "bad"),
        "{:?}",
        many[1]
    );
    assert!(many[2].as_ref().unwrap().is_none());
    assert_eq!(
        many[3].as_ref().unwrap().as_ref().unwrap().state,
        State::Started
    );

    // The running job finishes while the client waits; the corrupt one does not hold
    // the wait up, nor fail it.
    let client = sprout::client::Client::new(
        Arc::new(store.broker.clone()),
        Arc::new(store.backend.clone()),
    );
    let finisher = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store
                .store(&[record("running", State::Success)])
                .await
                .unwrap();
        })
    };
    let waited = [ids[0].clone(), ids[1].clone(), ids[3].clone()];
    let got = client
        .wait_many(&waited, Duration::from_secs(10))
        .await
        .unwrap();
    finisher.await.unwrap();
    assert_eq!(
        got[0].as_ref().unwrap().as_ref().unwrap().state,
        State::Success
    );
    assert!(matches!(
        &got[1],
        Err(sprout::backend::BackendError::Corrupt { .. })
    ));
    assert_eq!(
        got[2].as_ref().unwrap().as_ref().unwrap().state,
        State::Success,
        "the wait went on for the job that had not finished"
    );
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
