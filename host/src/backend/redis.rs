//! The Redis result backend, writing what Celery's Redis backend writes (docs/PROTOCOL.md §6):
//! `celery-task-meta-<id>` with a TTL, published on the channel of the same name — a
//! Python client's `AsyncResult.get()` listens only on that channel once it has looked.
//!
//! - **store** writes a whole batch in one script call: for each record, a `GET` guard
//!   (Celery's: a stored SUCCESS is never overwritten, nor any final state by a
//!   non-final one), then `SET … EX` and `PUBLISH`. Records whose
//!   [`CeleryResultMeta::ignore_result`](crate::model::CeleryResultMeta::ignore_result) is set are not written at all.
//! - **get** reads and decodes one key; **wait** subscribes to the channel first (RESP3
//!   push on a dedicated connection) and then reads, so no state change can slip
//!   between; if subscribing fails it polls.
//! - **chords**: on [`ResultBackend::on_chord_part_return`] with the final record of a
//!   chord header job (one that `celery::settle` marked with its chord), which the
//!   worker calls after storing it,
//!   the backend keeps Celery 5.7's bookkeeping under
//!   `celery-taskset-meta-<gid>.{j,t,s,d,c}` in one script (count the part once per
//!   `task_id:group_index`, compare with `.s` + `.t`, claim `.c` with `SET NX`); the
//!   claimer publishes the body with the header results in order, or stores the body's
//!   `ChordError` FAILURE and sends the body's errbacks, then marks `.c` done. If the
//!   claimer dies before that, the claim lapses after 60 s and the redelivered part
//!   claims again. Python workers may share the chord.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{ProtocolVersion, PushKind, Script};
use serde_json::Value;
use std::sync::LazyLock;

use super::{BackendError, Lookup, Publisher, ResultBackend};
use crate::celery::{keys, result, workflow};
use crate::model::{ResultRecord, State};
use crate::storage::redis::{OptionsError, RedisOptions, is_connection};

/// How long a chord claimer may take to publish the body before another may claim.
const CHORD_CLAIM_SECS: u64 = 60;
/// How long `.c` says `done` after a chord completed (Celery: 300 s).
const CHORD_DONE_SECS: u64 = 300;

/// Store a batch: KEYS = result keys; ARGV = ttl (seconds, 0 = none), then
/// (json, final "1"/"0") per key.
static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ttl = tonumber(ARGV[1])
local n = 0
local olds = redis.call('MGET', unpack(KEYS))
-- Status per key as this batch leaves it (a batch may hold several records of one id).
local status = {}
for i, key in ipairs(KEYS) do
  local val = ARGV[2 * i]
  local final = ARGV[2 * i + 1] == '1'
  local st = status[key]
  if st == nil and olds[i] then
    st = string.match(olds[i], '"status": ?"([^"]*)"') or ''
  end
  local keep = st == 'SUCCESS' or (not final and (st == 'FAILURE' or st == 'REVOKED'))
  if not keep then
    if ttl > 0 then
      redis.call('SET', key, val, 'EX', ttl)
    else
      redis.call('SET', key, val)
    end
    redis.call('PUBLISH', key, val)
    status[key] = string.match(val, '"status": ?"([^"]*)"') or ''
    n = n + 1
  end
end
return n
"#,
    )
});

/// Count one chord part. KEYS: .j .t .s .d <taskset> .c;
/// ARGV: member id, entry, group index, expires (seconds, 0 = none), claim seconds,
/// claim token.
/// Returns {-1} (chord already done), {0} (not complete or claimed elsewhere) or
/// {1, entries in header order} (complete, and this caller holds the claim).
static CHORD_PART: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[6]) == 'done' then
  return {-1}
end
local member = ARGV[1] .. ':' .. ARGV[3]
if redis.call('SISMEMBER', KEYS[4], member) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], member)
end
local ready = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
if tonumber(ARGV[4]) > 0 then
  for i = 1, 5 do
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4]))
  end
end
local size = tonumber(redis.call('GET', KEYS[3]) or '')
if not size then
  return {0}
end
local total = size + (tonumber(redis.call('GET', KEYS[2]) or '0') or 0)
if ready < total then
  return {0}
end
if not redis.call('SET', KEYS[6], ARGV[6], 'NX', 'EX', tonumber(ARGV[5])) then
  return {0}
end
return {1, redis.call('ZRANGE', KEYS[1], 0, -1)}
"#,
    )
});

/// Finish a chord the caller claimed. KEYS: .c .j .t .s .d; ARGV: token, done seconds,
/// "1" to delete all state (success) or "0" to delete only .s (failure, like Celery).
static CHORD_DONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
else
  redis.call('DEL', KEYS[4])
end
redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
return 1
"#,
    )
});

fn backend_error(e: redis::RedisError) -> BackendError {
    if is_connection(&e) {
        BackendError::Connection(e.to_string())
    } else {
        BackendError::Other(e.to_string())
    }
}

/// A [`ResultBackend`] on Redis, wire-compatible with Celery's Redis result backend.
pub struct RedisBackend {
    conn: ConnectionManager,
    opts: RedisOptions,
}

impl From<OptionsError> for BackendError {
    fn from(e: OptionsError) -> Self {
        match e {
            OptionsError::Connection(m) => BackendError::Connection(m),
            other => BackendError::Other(other.to_string()),
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the server in `opts`; results expire after `opts.result_expires`
    /// (never when it is zero).
    ///
    /// # Errors
    /// [`BackendError::Connection`] when Redis cannot be reached.
    pub async fn connect(opts: RedisOptions) -> Result<RedisBackend, BackendError> {
        let conn = opts.connect().await?;
        Ok(RedisBackend { conn, opts })
    }

    /// Writes records (the store script).
    async fn write(&self, records: &[ResultRecord]) -> Result<(), BackendError> {
        let ttl = self.opts.result_ttl_secs();
        let wanted: Vec<&ResultRecord> = records
            .iter()
            .filter(|r| !r.celery.as_ref().is_some_and(|c| c.ignore_result))
            .collect();
        for chunk in wanted.chunks(500) {
            let mut call = STORE.prepare_invoke();
            call.arg(ttl);
            for record in chunk {
                call.key(self.result_key(&record.id));
                call.arg(result::encode_meta(record));
                call.arg(if record.state.is_terminal() { "1" } else { "0" });
            }
            call.invoke_async::<i64>(&mut self.conn.clone())
                .await
                .map_err(backend_error)?;
        }
        Ok(())
    }

    /// The key (and channel) of `id`'s result, with the key prefix.
    pub fn result_key(&self, id: &str) -> String {
        self.opts.key(&keys::result_key(id))
    }

    fn decode(&self, id: &str, raw: &[u8]) -> Result<ResultRecord, BackendError> {
        result::decode_meta(id, raw).map_err(|reason| BackendError::Corrupt {
            id: id.to_string(),
            reason,
        })
    }

    /// Waits for `id` over pub/sub. `Err` means subscribing did not work (fall back).
    async fn wait_pubsub(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Result<Option<ResultRecord>, BackendError>, redis::RedisError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let client = self.opts.client().map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "bad url", e.to_string()))
        })?;
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
        let mut sub = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let channel = self.result_key(id);
        sub.subscribe(&channel).await?;
        // Subscribed first, then read: a result stored in between is published to us.
        let mut latest = match self.get(id).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        loop {
            if latest.as_ref().is_some_and(|r| r.state.is_terminal()) {
                return Ok(Ok(latest));
            }
            let push = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Ok(Ok(latest)),
                Ok(None) => return Ok(self.get(id).await),
                Ok(Some(push)) => push,
            };
            match push.kind {
                PushKind::Message => {
                    if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                        match self.decode(id, payload) {
                            Ok(r) => latest = Some(r),
                            Err(e) => {
                                tracing::warn!(task_id = id, "unreadable published result: {e}")
                            }
                        }
                    }
                }
                PushKind::Disconnection => return Ok(self.wait_poll(id, deadline).await),
                _ => {}
            }
        }
    }

    async fn wait_poll(
        &self,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<ResultRecord>, BackendError> {
        let mut delay = Duration::from_millis(2);
        loop {
            let record = self.get(id).await?;
            if record.as_ref().is_some_and(|r| r.state.is_terminal())
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(record);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(&self, records: &[ResultRecord]) -> Result<(), BackendError> {
        self.write(records).await
    }

    async fn get(&self, id: &str) -> Result<Option<ResultRecord>, BackendError> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.result_key(id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend_error)?;
        raw.map(|raw| self.decode(id, &raw)).transpose()
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Lookup>, BackendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(ids.iter().map(|id| self.result_key(id)).collect::<Vec<_>>())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(backend_error)?;
        if raw.len() != ids.len() {
            return Err(BackendError::Other(format!(
                "MGET of {} result keys answered {} values",
                ids.len(),
                raw.len()
            )));
        }
        Ok(ids
            .iter()
            .zip(raw)
            .map(|(id, raw)| raw.map(|raw| self.decode(id, &raw)).transpose())
            .collect())
    }

    async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultRecord>, BackendError> {
        match self.wait_pubsub(id, timeout).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::debug!("result pub/sub unavailable ({e}); polling");
                self.wait_poll(id, tokio::time::Instant::now() + timeout)
                    .await
            }
        }
    }

    async fn on_chord_part_return(
        &self,
        record: &ResultRecord,
        publisher: &dyn Publisher,
    ) -> Result<(), BackendError> {
        if !record.state.is_terminal() {
            return Ok(());
        }
        match workflow::chord_part_of(record) {
            Some((part, root)) => self.chord_step(&part, root, record, publisher).await,
            None => Ok(()),
        }
    }

    fn supports_chords(&self) -> bool {
        true
    }

    fn success_is_final(&self) -> bool {
        true
    }
}

impl RedisBackend {
    /// Counts `record` (a final state of a header job of chord `part`, whose root is
    /// `root`) and, if it was the last part and this caller wins the claim, publishes the
    /// body through `publisher` or stores its `ChordError`.
    async fn chord_step(
        &self,
        part: &workflow::ChordPart,
        root: &str,
        record: &ResultRecord,
        publisher: &dyn Publisher,
    ) -> Result<(), BackendError> {
        let base = self.opts.key(&keys::taskset_key(&part.group_id));
        let key = |suffix: &str| format!("{base}{suffix}");
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires = self.opts.result_ttl_secs();
        let reply: Vec<redis::Value> = CHORD_PART
            .key(key(".j"))
            .key(key(".t"))
            .key(key(".s"))
            .key(key(".d"))
            .key(&base)
            .key(key(".c"))
            .arg(&record.id)
            .arg(workflow::chord_entry(record))
            .arg(part.group_index)
            .arg(expires)
            .arg(CHORD_CLAIM_SECS)
            .arg(&token)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend_error)?;
        let claimed = matches!(reply.first(), Some(redis::Value::Int(1)));
        if !claimed {
            return Ok(());
        }
        let entries: Vec<String> = match reply.get(1) {
            Some(v) => redis::from_redis_value(v.clone())
                .map_err(|e| BackendError::Other(e.to_string()))?,
            None => Vec::new(),
        };
        let mut results = Vec::with_capacity(entries.len());
        let mut failed = None;
        for entry in &entries {
            let parsed: Value = serde_json::from_str(entry).unwrap_or(Value::Null);
            let (tid, state, value) = (
                parsed
                    .get(1)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                parsed.get(2).and_then(Value::as_str).and_then(State::parse),
                parsed.get(3).cloned().unwrap_or(Value::Null),
            );
            match state {
                Some(State::Success) => results.push(value),
                _ if failed.is_none() => failed = Some((tid, value)),
                _ => {}
            }
        }
        let body_id = part
            .body
            .get("options")
            .and_then(|o| o.get("task_id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let body_task = part
            .body
            .get("task")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let success = failed.is_none();
        match failed {
            None => {
                let body = workflow::chord_body(&record.id, root, part, results)
                    .map_err(|e| BackendError::Other(format!("chord body: {e}")))?;
                publisher.publish(std::slice::from_ref(&body)).await?;
            }
            Some((tid, exc)) => {
                let cause = result::error_info(&exc, None);
                let body_id = body_id.unwrap_or_default();
                let failure = workflow::chord_error(&body_id, body_task, &tid, &cause);
                self.write(std::slice::from_ref(&failure)).await?;
                // The body's own errbacks hear of it, as with Celery.
                let errbacks = workflow::chord_errbacks(part, &failure, &record.id, root);
                publisher.publish(&errbacks).await?;
            }
        }
        CHORD_DONE
            .key(key(".c"))
            .key(key(".j"))
            .key(key(".t"))
            .key(key(".s"))
            .key(key(".d"))
            .arg(&token)
            .arg(CHORD_DONE_SECS)
            .arg(if success { "1" } else { "0" })
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(backend_error)?;
        Ok(())
    }
}
