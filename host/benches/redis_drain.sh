#!/usr/bin/env bash
# End-to-end drain rate of `sprout worker` on Redis (Celery protocol v2 on the wire).
#
#   host/benches/redis_drain.sh [JOBS=50000] [CONCURRENCY=200] [TASK=add] [ARGS='[2, 3]']
#
# Fills a fresh queue with JOBS Celery messages (`sprout send --count`, the Celery
# encoder), starts the release `sprout worker -c CONCURRENCY --max-jobs JOBS` on it, and
# reports: the publish rate, the drain rate (first message taken → queue empty and
# every result stored), and the worker's wall time including start-up.
# Needs redis-server at 127.0.0.1:6379 (db 12 is used; keys of the run are deleted).
# Env: SPROUT_BIN (default target/release/sprout, built if missing), TASKS_DIR
# (default target/tasks, built with tasks/build.sh), WORKER_ARGS (more worker flags,
# e.g. `--worker-dead-after 0` to measure without the liveness heartbeat).
set -euo pipefail

jobs="${1:-50000}"
concurrency="${2:-200}"
task="${3:-add}"
args="${4:-[2, 3]}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${SPROUT_BIN:-$repo/target/release/sprout}"
tasks="${TASKS_DIR:-$repo/target/tasks}"
db=12
broker="redis://127.0.0.1:6379/$db"
queue="drain-$$-$RANDOM"

redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "no Redis at 127.0.0.1:6379" >&2; exit 1; }
[ -x "$bin" ] || (cd "$repo" && cargo build --release --bin sprout)
[ -f "$tasks/math.wasm" ] || "$repo/tasks/build.sh" "$tasks"

rcli() { redis-cli -h 127.0.0.1 -p 6379 -n "$db" "$@"; }
now() { date +%s.%N; }

export SPROUT_LOG=warn SPROUT_CACHE_DIR="$repo/target/bench-cache"
"$bin" send "$task" "$args" --count "$jobs" --broker "$broker" --queue "$queue" 2>&1 | tail -1

start=$(now)
"$bin" worker --broker "$broker" --tasks "$tasks" -Q "$queue" -c "$concurrency" \
    --max-jobs "$jobs" ${WORKER_ARGS:-} >/dev/null 2>&1 &
worker=$!
while [ "$(rcli LLEN "$queue")" -ge "$jobs" ]; do sleep 0.005; done
first=$(now)
while [ "$(rcli LLEN "$queue")" -gt 0 ]; do sleep 0.01; done
wait "$worker"
done_at=$(now)

python3 - "$jobs" "$start" "$first" "$done_at" <<'PY'
import sys
n, start, first, done = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"drain: {n} jobs in {done - first:.2f} s = {n / (done - first):.0f} jobs/s "
      f"(worker wall time {done - start:.2f} s with start-up)")
PY
# Delete this run's results (the queue is empty; acked messages left nothing behind).
rcli --scan --pattern 'celery-task-meta-*' | head -n "$jobs" | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p 6379 -n "$db" UNLINK >/dev/null
rcli DEL "_kombu.binding.$queue" "_kombu.binding_permanent.$queue" >/dev/null
