//! The Lua scripts that make each broker step atomic on the Redis server.
//!
//! Every script names all keys it touches in `KEYS` and never blocks. They run with
//! `EVALSHA` (loaded on first use by the `redis` crate's `Script`).

use std::sync::LazyLock;

use redis::Script;

/// A script compiled (hashed) on first use from its Lua source.
macro_rules! lua {
    ($source:literal) => {
        LazyLock::new(|| Script::new($source))
    };
}

/// Reserve: pop up to `max` messages from the list keys in order and record each in
/// `unacked` (`[envelope, "", routing_key]`) and `unacked_index` (score) in the same
/// atomic step, so a crash can never lose a popped message: it is either still in its
/// list or already in `unacked`, where the visibility sweep finds it.
///
/// When an owner is given (a live broker's identity) each tag is also recorded in
/// `sprout.reserved_by` (tag → owner), for the liveness sweep ([`RESTORE_DEAD`]);
/// without one, any stale tag there is removed.
///
/// The tags reserved are also written to a receipt (a list, replaced by each call and
/// expiring after the given time), from which a caller whose reply was lost can find
/// what it reserved (`receipts`).
///
/// KEYS: `unacked`, `unacked_index`, tag sequence, `sprout.reserved_by`, receipt, then
/// the list keys.
/// ARGV: max, score, owner ("" = none), receipt lifetime in ms, then the routing key
/// (queue name) of each list key.
/// Returns a flat array: (list index from 1, envelope, delivery tag) per message.
///
/// The delivery tag is read from the envelope's end, where every Celery 5 producer
/// (and Sprout) writes `"delivery_tag": "…"}}`; other layouts are decoded with cjson,
/// and a message without a tag gets `sprout-<n>`.
pub static RESERVE: LazyLock<Script> = lua!(
    r#"
local max = tonumber(ARGV[1])
local score = ARGV[2]
local out = {}
local owner = ARGV[3]
local fields = {}
local scores = {}
local owned = {}
local tags = {}
local n = 0
redis.call('DEL', KEYS[5])
-- One variadic HSET and ZADD per 500 messages: a redis.call costs about a microsecond.
local function flush()
  if #fields > 0 then
    redis.call('HSET', KEYS[1], unpack(fields))
    redis.call('ZADD', KEYS[2], unpack(scores))
    if owner ~= '' then
      redis.call('HSET', KEYS[4], unpack(owned))
    else
      redis.call('HDEL', KEYS[4], unpack(owned))
    end
    redis.call('RPUSH', KEYS[5], unpack(tags))
    fields = {}
    scores = {}
    owned = {}
    tags = {}
  end
end
for i = 6, #KEYS do
  if n >= max then break end
  local items = redis.call('RPOP', KEYS[i], max - n)
  if items then
    local rk = cjson.encode(ARGV[i - 1])
    for _, raw in ipairs(items) do
      -- Only the tail is searched: matching the whole envelope costs ~14 us a message.
      local tag = string.match(string.sub(raw, -200), '"delivery_tag": ?"([^"\\]+)"}}%s*$')
      -- A fast tail match is trusted only on what starts like a JSON object.
      local valid = tag ~= nil and string.match(raw, '^%s*{') ~= nil
      if not valid then
        tag = nil
        local ok, env = pcall(cjson.decode, raw)
        valid = ok and type(env) == 'table'
        if valid and type(env.properties) == 'table' and type(env.properties.delivery_tag) == 'string' then
          tag = env.properties.delivery_tag
        end
      end
      -- Tags are hash fields the worker settles by name: anything but plain ASCII
      -- (whatever bytes a producer put there) gets a tag of our own.
      if tag and not string.match(tag, '^[%w%-%._:]+$') then
        tag = nil
      end
      if not tag or tag == '' then
        tag = 'sprout-' .. redis.call('INCR', KEYS[3])
      end
      local entry
      if valid then
        entry = '[' .. raw .. ', "", ' .. rk .. ']'
      else
        entry = '[' .. cjson.encode(raw) .. ', "", ' .. rk .. ']'
      end
      fields[#fields + 1] = tag
      fields[#fields + 1] = entry
      scores[#scores + 1] = score
      scores[#scores + 1] = tag
      owned[#owned + 1] = tag
      if owner ~= '' then owned[#owned + 1] = owner end
      tags[#tags + 1] = tag
      n = n + 1
      out[#out + 1] = i - 5
      out[#out + 1] = raw
      out[#out + 1] = tag
      if #fields >= 1000 then flush() end
    end
  end
end
flush()
if n > 0 then
  redis.call('PEXPIRE', KEYS[5], ARGV[4])
end
return out
"#
);

/// Sweep, first half: take `unacked_mutex` (as kombu does, `SET NX PX 300000`) and list
/// up to `limit` reservations older than the cutoff, with their entries.
///
/// KEYS: `unacked_mutex`, `unacked_index`, `unacked`. ARGV: token, cutoff score, limit.
/// Returns nil when another worker holds the lock, else a flat array (tag, entry or "").
/// When nothing is stale the lock is released at once.
pub static SWEEP_SCAN: LazyLock<Script> = lua!(
    r#"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', 300000) then
  return false
end
local tags = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
if #tags == 0 then
  redis.call('DEL', KEYS[1])
  return {}
end
local out = {}
for _, tag in ipairs(tags) do
  out[#out + 1] = tag
  out[#out + 1] = redis.call('HGET', KEYS[3], tag) or ''
end
return out
"#
);

/// Compare-and-delete of `unacked_mutex` (kombu's own script).
///
/// KEYS: `unacked_mutex`. ARGV: token.
pub static UNLOCK: LazyLock<Script> = lua!(
    r#"
local token = redis.call('get', KEYS[1])
if not token or token ~= ARGV[1] then
    return 0
end
redis.call('del', KEYS[1])
return 1
"#
);

/// Restore: put reserved messages back at the consuming end of their lists (RPUSH, so
/// they are delivered next), each only if it is still reserved — and, for the sweep,
/// only if its score is still at or below the cutoff (not extended or re-reserved since
/// it was read). Nothing is restored twice.
///
/// KEYS: `unacked`, `unacked_index`, `sprout.reserved_by`, then one target list per
/// message.
/// ARGV: cutoff score ("" = unconditional), then (tag, envelope) per message.
/// Returns how many were restored.
pub static RESTORE: LazyLock<Script> = lua!(
    r#"
local n = 0
for i = 4, #KEYS do
  local tag = ARGV[2 * (i - 3)]
  local env = ARGV[2 * (i - 3) + 1]
  local ok = true
  if ARGV[1] ~= '' then
    local s = redis.call('ZSCORE', KEYS[2], tag)
    ok = s and tonumber(s) <= tonumber(ARGV[1])
  end
  if ok and redis.call('HDEL', KEYS[1], tag) == 1 then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('HDEL', KEYS[3], tag)
    redis.call('RPUSH', KEYS[i], env)
    n = n + 1
  end
end
return n
"#
);

/// Liveness restore: put back reservations whose owner is dead — each only if it is
/// still reserved, still tagged with that owner, and the owner's liveness key is still
/// absent (all re-checked here, atomically), so a live worker's job is never restored
/// and nothing is restored twice. Tags no longer in `unacked` (settled by a path that
/// left the tag behind) are dropped from `sprout.reserved_by`.
///
/// KEYS: `unacked`, `unacked_index`, `sprout.reserved_by`, then per message its owner's
/// liveness key and its target list.
/// ARGV: (tag, owner, envelope) per message; an empty envelope only drops a stale tag.
/// Returns how many were restored.
pub static RESTORE_DEAD: LazyLock<Script> = lua!(
    r#"
local n = 0
local j = 1
for i = 4, #KEYS, 2 do
  local tag, owner, env = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  j = j + 3
  if redis.call('HGET', KEYS[3], tag) == owner and redis.call('EXISTS', KEYS[i]) == 0 then
    if env == '' then
      if redis.call('HEXISTS', KEYS[1], tag) == 0 then
        redis.call('HDEL', KEYS[3], tag)
      end
    elseif redis.call('HDEL', KEYS[1], tag) == 1 then
      redis.call('ZREM', KEYS[2], tag)
      redis.call('HDEL', KEYS[3], tag)
      redis.call('RPUSH', KEYS[i + 1], env)
      n = n + 1
    end
  end
end
return n
"#
);

/// Drop index entries that have no message in `unacked` (still none now: a tag can be
/// reserved again, since a restored message keeps its tag).
///
/// KEYS: `unacked`, `unacked_index`, `sprout.reserved_by`. ARGV: the tags. Returns how
/// many were dropped.
pub static DROP_ORPHANS: LazyLock<Script> = lua!(
    r#"
local n = 0
for _, tag in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], tag) == 0 then
    redis.call('HDEL', KEYS[3], tag)
    n = n + redis.call('ZREM', KEYS[2], tag)
  end
end
return n
"#
);

/// Renew the reservations that still exist, saying which ones did.
///
/// KEYS: `unacked_index`. ARGV: score, then the tags. Returns 1 or 0 per tag.
pub static TOUCH: LazyLock<Script> = lua!(
    r#"
local out = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#
);

/// Retry: replace a reservation by a new message (LPUSH, the end of the line) in one
/// step, only if the reservation is still ours.
///
/// KEYS: `unacked`, `unacked_index`, target list, `sprout.reserved_by`.
/// ARGV: tag, envelope.
/// Returns 1, or 0 when the tag was not reserved.
pub static REPLACE: LazyLock<Script> = lua!(
    r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"#
);

/// Dead-letter: move a reservation to `sprout.dead` (capped) and, when a result key is
/// given and holds nothing yet, store and publish a FAILURE there.
///
/// KEYS: `unacked`, `unacked_index`, dead list, result key, `sprout.reserved_by`.
/// ARGV: tag, dead-letter record, cap, result JSON ("" = none), result TTL seconds
/// (0 = none).
/// Returns 1, or 0 when the tag was not reserved.
pub static DEAD_LETTER: LazyLock<Script> = lua!(
    r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
if ARGV[4] ~= '' then
  local stored
  if tonumber(ARGV[5]) > 0 then
    stored = redis.call('SET', KEYS[4], ARGV[4], 'NX', 'EX', tonumber(ARGV[5]))
  else
    stored = redis.call('SET', KEYS[4], ARGV[4], 'NX')
  end
  if stored then
    redis.call('PUBLISH', KEYS[4], ARGV[4])
  end
end
return 1
"#
);

/// Purge: length and deletion of a queue's four priority lists in one step.
///
/// KEYS: the lists. Returns how many messages they held.
pub static PURGE: LazyLock<Script> = lua!(
    r#"
local n = 0
for i = 1, #KEYS do
  n = n + redis.call('LLEN', KEYS[i])
  redis.call('DEL', KEYS[i])
end
return n
"#
);
