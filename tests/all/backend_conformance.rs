//! The result-backend conformance suite.
//!
//! [`suite`] holds one async function per property a [`ResultBackend`] promises, written
//! against `dyn ResultBackend` handles of a [`BackendUnderTest`]. Each function uses fresh
//! job ids. Where backends legitimately differ, the runner declares it in
//! [`BackendCaps`] and the property checks the declared behaviour, both ways — nothing is
//! skipped. The list of properties exists once, in [`backend_suite!`], which expands one
//! test per property for a backend; every backend is one line at the end of this file.
//! What only one backend can be tested for stays in its own module (`results_sqlite`:
//! corrupt rows, the worker's sweep; `redis_backend`: Celery's key layout, TTL, chords).
//!
//! Adding a backend: write `async fn under_test(test: &str) -> Option<BackendUnderTest>`
//! next to its own tests (`None` when its server is not there, after saying why `test` is
//! skipped), and add `backend_suite!(name, crate::its_module::under_test);` below.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sprout::backend::ResultBackend;
use sprout::model::{ErrorInfo, ResultRecord, State};

/// One backend, fresh for one property: two handles on the same store (the second
/// stands for another process), what the backend declares it does, and what must live
/// as long as the handles.
///
/// Fresh means empty: the properties about listings (`recent`, `counts`) and about
/// `expire_results` look at the whole backend, so each property gets a backend of its
/// own (a new file, a new key prefix).
pub struct BackendUnderTest {
    /// The backend the properties store to and read from.
    pub backend: Arc<dyn ResultBackend>,
    /// A second handle on the same store.
    pub other: Arc<dyn ResultBackend>,
    /// Where this backend's behaviour is allowed to differ.
    pub caps: BackendCaps,
    /// Dropped after the handles (fields drop in order): a temp dir, a Redis scope.
    #[expect(dead_code, reason = "held for its Drop, never read")]
    pub keep: Box<dyn Any + Send>,
}

/// What a backend declares about the behaviour that differs between backends; the
/// suite checks each flag in both directions.
#[derive(Debug, Clone, Copy)]
pub struct BackendCaps {
    /// `recent` lists the newest records and `counts` counts them by state (SQLite).
    /// `false`: the backend cannot list cheaply, and both return an empty list (the
    /// trait's documented answer; Redis).
    pub lists_results: bool,
    /// `expire_results` deletes the records last updated before the cutoff (SQLite).
    /// `false`: the store expires records itself (a TTL on each key), and
    /// `expire_results` deletes nothing and returns 0 (Redis).
    pub expires_by_sweep: bool,
    /// A stored SUCCESS is never replaced, not even by a later terminal record (the
    /// guard of Celery's Redis backend). `false`: the latest terminal record wins
    /// (at-least-once: the last run's outcome; SQLite).
    pub success_is_final: bool,
}

/// A job id no other property uses.
pub fn fresh_id(what: &str) -> String {
    format!("conformance-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// A record of `id` in `state` with nothing else set.
pub fn record(id: &str, state: State) -> ResultRecord {
    ResultRecord::new(id, "test.add", state)
}

/// A SUCCESS of `id` with `value` as its result.
pub fn success(id: &str, value: serde_json::Value) -> ResultRecord {
    ResultRecord {
        result: Some(value),
        ..record(id, State::Success)
    }
}

/// Now, to the microsecond: what every backend can store (Celery's timestamps stop
/// there).
fn now_micros() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now")
}

/// The state stored for `id` (panics when there is none).
async fn state_of(backend: &dyn ResultBackend, id: &str) -> State {
    backend
        .get(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record for {id}"))
        .state
}

/// The result-backend properties, one function each.
pub mod suite {
    use std::time::Instant;

    use serde_json::json;

    use super::*;

    /// A record reads back field for field: a SUCCESS with its (nested) result and the
    /// attempt's details, a FAILURE with its error and traceback.
    pub async fn store_get_round_trip(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let started = now_micros() - chrono::Duration::milliseconds(40);
        let done = ResultRecord {
            retries: 2,
            fuel_used: Some(123_456),
            duration_ms: Some(12.5),
            worker: Some("host-1".into()),
            started_at: Some(started),
            updated_at: now_micros(),
            ..success(
                &fresh_id("round-trip"),
                json!({"sum": 3, "items": [1, "two", null], "nested": {"é": [true, 1.5]}}),
            )
        };
        let failed = ResultRecord {
            error: Some(ErrorInfo {
                kind: "ValueError".into(),
                message: "bad input: 'x'".into(),
                traceback: Some("wasm backtrace:\n  0: add".into()),
            }),
            retries: 1,
            worker: Some("host-2".into()),
            started_at: Some(started),
            updated_at: now_micros(),
            ..record(&fresh_id("round-trip-failed"), State::Failure)
        };
        backend
            .store(&[done.clone(), failed.clone()])
            .await
            .unwrap();
        assert_eq!(backend.get(&done.id).await.unwrap(), Some(done));
        assert_eq!(backend.get(&failed.id).await.unwrap(), Some(failed));
    }

    /// A task that returned `null` has a present `null` result; a record without a
    /// result (a failure) reads back without one.
    pub async fn null_result_is_not_no_result(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let null = success(&fresh_id("null"), serde_json::Value::Null);
        let failed = ResultRecord {
            error: Some(ErrorInfo {
                kind: "ValueError".into(),
                message: "no result".into(),
                traceback: None,
            }),
            ..record(&fresh_id("none"), State::Failure)
        };
        backend
            .store(&[null.clone(), failed.clone()])
            .await
            .unwrap();
        let got = backend.get(&null.id).await.unwrap().unwrap();
        assert_eq!(got.result, Some(serde_json::Value::Null));
        let got = backend.get(&failed.id).await.unwrap().unwrap();
        assert_eq!(got.result, None);
    }

    /// An id the backend never saw is `None` (PENDING), for `get` and for a `wait` that
    /// times out.
    pub async fn unknown_id_is_none(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let id = fresh_id("never-sent");
        assert!(backend.get(&id).await.unwrap().is_none());
        let waited = backend.wait(&id, Duration::from_millis(30)).await.unwrap();
        assert!(waited.is_none());
    }

    /// A terminal state is never overwritten by a non-terminal one (a late STARTED must
    /// not hide a SUCCESS); non-terminal states replace each other. Within one batch the
    /// records apply in order, under the same rule.
    pub async fn terminal_not_overwritten_by_non_terminal(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let a = fresh_id("terminal");
        backend.store(&[record(&a, State::Started)]).await.unwrap();
        backend.store(&[record(&a, State::Retry)]).await.unwrap();
        assert_eq!(state_of(backend, &a).await, State::Retry);

        backend.store(&[success(&a, json!(1))]).await.unwrap();
        for late in [State::Started, State::Retry, State::Pending] {
            backend.store(&[record(&a, late)]).await.unwrap();
            let got = backend.get(&a).await.unwrap().unwrap();
            assert_eq!((got.state, got.result), (State::Success, Some(json!(1))));
        }

        let b = fresh_id("terminal-batch");
        let failed = ResultRecord {
            error: Some(ErrorInfo {
                kind: "ValueError".into(),
                message: "x".into(),
                traceback: None,
            }),
            ..record(&b, State::Failure)
        };
        let batch = [
            record(&b, State::Started),
            failed,
            record(&b, State::Started),
        ];
        backend.store(&batch).await.unwrap();
        assert_eq!(state_of(backend, &b).await, State::Failure);
    }

    /// A later terminal record after FAILURE replaces it (a redelivered run succeeded).
    /// After SUCCESS, a later terminal record replaces it too, unless the backend keeps
    /// SUCCESS final ([`BackendCaps::success_is_final`]), also within one batch.
    pub async fn later_terminal_state(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let failed = |id: &str| ResultRecord {
            error: Some(ErrorInfo {
                kind: "ValueError".into(),
                message: "a duplicate run failed".into(),
                traceback: None,
            }),
            ..record(id, State::Failure)
        };

        let a = fresh_id("fail-then-succeed");
        backend.store(&[failed(&a)]).await.unwrap();
        backend.store(&[success(&a, json!(3))]).await.unwrap();
        let got = backend.get(&a).await.unwrap().unwrap();
        assert_eq!((got.state, got.result), (State::Success, Some(json!(3))));

        let b = fresh_id("succeed-then-more");
        backend.store(&[success(&b, json!(1))]).await.unwrap();
        backend.store(&[failed(&b)]).await.unwrap();
        let after_failure = backend.get(&b).await.unwrap().unwrap();
        backend.store(&[success(&b, json!(2))]).await.unwrap();
        let after_success = backend.get(&b).await.unwrap().unwrap();
        let c = fresh_id("succeed-then-more-batch");
        backend
            .store(&[success(&c, json!(1)), failed(&c), success(&c, json!(2))])
            .await
            .unwrap();
        let batch = backend.get(&c).await.unwrap().unwrap();

        assert_eq!(
            backend.success_is_final(),
            t.caps.success_is_final,
            "the backend says what the runner declares"
        );
        if t.caps.success_is_final {
            assert_eq!(after_failure.state, State::Success, "SUCCESS is final");
            assert_eq!(
                after_success.result,
                Some(json!(1)),
                "the first SUCCESS stays"
            );
            assert_eq!(
                batch.result,
                Some(json!(1)),
                "the first SUCCESS of a batch stays"
            );
        } else {
            assert_eq!(after_failure.state, State::Failure, "the last run wins");
            assert_eq!(after_success.result, Some(json!(2)), "the last run wins");
            assert_eq!(
                batch.result,
                Some(json!(2)),
                "the last record of a batch wins"
            );
        }
    }

    /// One `store` of a thousand records writes every one of them.
    pub async fn batch_store_writes_every_record(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let batch = fresh_id("batch");
        let records: Vec<ResultRecord> = (0..1000)
            .map(|n| success(&format!("{batch}-{n}"), json!(n)))
            .collect();
        backend.store(&records).await.unwrap();
        for (n, sent) in records.iter().enumerate() {
            let got = backend.get(&sent.id).await.unwrap();
            assert_eq!(got.and_then(|r| r.result), Some(json!(n)), "{}", sent.id);
        }
        if t.caps.lists_results {
            assert_eq!(backend.counts().await.unwrap(), [(State::Success, 1000)]);
        }
    }

    /// `get_many` answers each id as `get` does, in the order asked (ids out of order,
    /// repeated, unknown, and in mixed states), on either handle; no ids, no records.
    pub async fn get_many_reads_each_in_order(t: &BackendUnderTest) {
        let batch = fresh_id("many");
        let records: Vec<ResultRecord> = (0..300)
            .map(|n| {
                let id = format!("{batch}-{n}");
                match n % 3 {
                    0 => success(&id, json!(n)),
                    1 => record(&id, State::Started),
                    _ => record(&id, State::Failure),
                }
            })
            .collect();
        t.backend.store(&records).await.unwrap();
        let mut ids: Vec<String> = (0..300).rev().map(|n| format!("{batch}-{n}")).collect();
        ids.insert(7, format!("{batch}-unknown"));
        ids.push(format!("{batch}-5"));
        for handle in [&t.backend, &t.other] {
            let many: Vec<Option<ResultRecord>> = handle
                .get_many(&ids)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.expect("no record here is corrupt"))
                .collect();
            assert_eq!(many.len(), ids.len());
            for (id, got) in ids.iter().zip(&many) {
                let one = handle.get(id).await.unwrap();
                assert_eq!(
                    got.as_ref().map(|r| (&r.id, r.state, &r.result)),
                    one.as_ref().map(|r| (&r.id, r.state, &r.result)),
                    "{id}"
                );
            }
            assert!(many[7].is_none(), "an unknown id is None");
            let states: Vec<Option<State>> = many[..3]
                .iter()
                .map(|r| r.as_ref().map(|r| r.state))
                .collect();
            assert_eq!(
                states,
                [
                    Some(State::Failure),
                    Some(State::Started),
                    Some(State::Success)
                ],
                "299, 298, 297"
            );
            assert_eq!(
                many[2].as_ref().and_then(|r| r.result.clone()),
                Some(json!(297))
            );
            assert!(handle.get_many(&[]).await.unwrap().is_empty());
        }
    }

    /// What one handle stores, another handle on the same store reads, both ways, as
    /// soon as `store` returns.
    pub async fn other_handle_sees_results(t: &BackendUnderTest) {
        let (one, two) = (&*t.backend, &*t.other);
        let id = fresh_id("other-handle");
        one.store(&[record(&id, State::Started)]).await.unwrap();
        assert_eq!(state_of(two, &id).await, State::Started);
        two.store(&[success(&id, json!("done"))]).await.unwrap();
        let got = one.get(&id).await.unwrap().unwrap();
        assert_eq!(
            (got.state, got.result),
            (State::Success, Some(json!("done")))
        );
    }

    /// A `wait` (on another handle) is not ended by a non-terminal state, and returns
    /// the terminal record soon after it is stored.
    pub async fn wait_returns_on_terminal(t: &BackendUnderTest) {
        let id = fresh_id("wait");
        let writer = {
            let (backend, id) = (t.backend.clone(), id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                backend.store(&[record(&id, State::Started)]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                backend.store(&[success(&id, json!("done"))]).await.unwrap();
                Instant::now()
            })
        };
        let got = t.other.wait(&id, Duration::from_secs(5)).await.unwrap();
        let woke = Instant::now();
        let stored = writer.await.unwrap();
        let got = got.expect("a record");
        assert_eq!(
            (got.state, got.result),
            (State::Success, Some(json!("done")))
        );
        let lag = woke.saturating_duration_since(stored);
        assert!(
            lag < Duration::from_millis(200),
            "wait noticed the result after {lag:?}"
        );
    }

    /// A `wait` that times out returns the latest record: `None` for an unknown id, the
    /// non-terminal state otherwise; it takes about the timeout, not much longer.
    pub async fn wait_times_out_with_latest(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let timeout = Duration::from_millis(150);
        let id = fresh_id("wait-timeout");
        for stored in [None, Some(State::Started)] {
            if let Some(state) = stored {
                backend.store(&[record(&id, state)]).await.unwrap();
            }
            let start = Instant::now();
            let got = backend.wait(&id, timeout).await.unwrap();
            let took = start.elapsed();
            assert_eq!(got.map(|r| r.state), stored);
            assert!(
                took >= timeout && took < timeout + Duration::from_secs(1),
                "waited {took:?}"
            );
        }
    }

    /// `recent` lists the newest records first (by `updated_at`) and `counts` counts them
    /// per state, in [`State`] order — or both are empty, for a backend that cannot list
    /// ([`BackendCaps::lists_results`]).
    pub async fn recent_and_counts(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let base = Utc::now();
        let states = [
            State::Success,
            State::Failure,
            State::Success,
            State::Started,
            State::Revoked,
        ];
        let ids: Vec<String> = (0..states.len())
            .map(|n| fresh_id(&format!("recent-{n}")))
            .collect();
        let records: Vec<ResultRecord> = states
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(n, (&state, id))| ResultRecord {
                updated_at: base + chrono::Duration::seconds(n as i64),
                ..record(id, state)
            })
            .collect();
        backend.store(&records).await.unwrap();

        let recent: Vec<String> = backend
            .recent(3)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        let counts = backend.counts().await.unwrap();
        if t.caps.lists_results {
            assert_eq!(recent, [&*ids[4], &*ids[3], &*ids[2]]);
            assert_eq!(
                counts,
                [
                    (State::Started, 1),
                    (State::Success, 2),
                    (State::Failure, 1),
                    (State::Revoked, 1)
                ]
            );
        } else {
            assert!(recent.is_empty(), "{recent:?}");
            assert!(counts.is_empty(), "{counts:?}");
        }
    }

    /// `expire_results` deletes every record last updated before the cutoff (however
    /// many: here more than one of SQLite's delete batches), keeps newer ones whatever
    /// their state, and is idempotent — or, for a backend whose store expires records
    /// itself ([`BackendCaps::expires_by_sweep`]), deletes nothing and returns 0.
    pub async fn expire_results(t: &BackendUnderTest) {
        let backend = &*t.backend;
        let two_days_ago = Utc::now() - chrono::Duration::days(2);
        let old_batch = fresh_id("old");
        let old: Vec<ResultRecord> = (0..12_001)
            .map(|n| ResultRecord {
                updated_at: two_days_ago,
                ..record(&format!("{old_batch}-{n}"), State::Success)
            })
            .collect();
        backend.store(&old).await.unwrap();
        let fresh = [
            record(&fresh_id("fresh"), State::Success),
            record(&fresh_id("running"), State::Started),
        ];
        backend.store(&fresh).await.unwrap();

        let day = Duration::from_secs(86_400);
        let deleted = backend.expire_results(day).await.unwrap();
        let mut old_kept = 0;
        for r in [&old[0], &old[6_000], &old[12_000]] {
            old_kept += usize::from(backend.get(&r.id).await.unwrap().is_some());
        }
        for r in &fresh {
            assert!(backend.get(&r.id).await.unwrap().is_some(), "{} kept", r.id);
        }
        if t.caps.expires_by_sweep {
            assert_eq!(deleted, 12_001);
            assert_eq!(old_kept, 0, "old records deleted");
            assert_eq!(backend.expire_results(day).await.unwrap(), 0, "idempotent");
        } else {
            assert_eq!(deleted, 0, "the store expires records itself");
            assert_eq!(old_kept, 3, "nothing deleted");
        }
        if t.caps.lists_results {
            let expected = if t.caps.expires_by_sweep {
                vec![(State::Started, 1), (State::Success, 1)]
            } else {
                vec![(State::Started, 1), (State::Success, 12_002)]
            };
            assert_eq!(backend.counts().await.unwrap(), expected);
        }
    }
}

/// Expands the suite for one backend: `backend_suite!(name, make)` is a module `name`
/// with one `#[tokio::test]` per property of [`suite`], each on a fresh backend from
/// `make(test_name).await` (`None`: skipped, `make` said why). The list of properties is
/// here and nowhere else.
macro_rules! backend_suite {
    ($name:ident, $make:path) => {
        backend_suite!(
            @expand $name, $make,
            store_get_round_trip,
            null_result_is_not_no_result,
            unknown_id_is_none,
            terminal_not_overwritten_by_non_terminal,
            later_terminal_state,
            batch_store_writes_every_record,
            get_many_reads_each_in_order,
            other_handle_sees_results,
            wait_returns_on_terminal,
            wait_times_out_with_latest,
            recent_and_counts,
            expire_results,
        );
    };
    (@expand $name:ident, $make:path, $($property:ident),* $(,)?) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    let test = concat!(module_path!(), "::", stringify!($property));
                    let Some(under_test) = $make(test).await else {
                        return;
                    };
                    $crate::backend_conformance::suite::$property(&under_test).await;
                }
            )*
        }
    };
}

backend_suite!(sqlite, crate::results_sqlite::under_test);
backend_suite!(redis, crate::redis_backend::under_test);
backend_suite!(rpc, crate::amqp_broker::backend_under_test);
