#!/usr/bin/env bash
# Mixed pools in one worker: CPU hogs on a prefork pool, a stream of short jobs on an
# async pool. Prints the short jobs' throughput alone and while the hogs run.
#
# usage: examples/mixed-pools/run.sh [SPROUT_BINARY] [TASKS_DIR] [SHORT_JOBS]
# Extra worker flags in $WORKER_ARGS, e.g. WORKER_ARGS="--prefork-nice 0"; the CPU pool's
# spec in $CPU_POOL (default cpu=prefork:2, e.g. CPU_POOL=cpu=prefork:1 on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
SPROUT=${1:-target/release/sprout}
SRC=${2:-target/tasks}
SHORT=${3:-10000}
CPU_POOL=${CPU_POOL:-cpu=prefork:2}
WORK=target/mixed-pools
rm -rf "$WORK" && mkdir -p "$WORK/tasks"
export SPROUT_BROKER="sqlite:$WORK/sprout.db"
export SPROUT_TASKS="$WORK/tasks"
export SPROUT_LOG=warn

# Routing lives in the manifests: `sprout send` reads `queue` from them.
cp "$SRC/echo.wasm" "$SRC/hog.wasm" "$WORK/tasks/"
printf 'queue = "io"\n' >"$WORK/tasks/echo.toml"
printf 'queue = "cpu"\n[limits]\nfuel = 20_000_000_000   # about 1 s of CPU\ntime_limit = 30.0\n' \
  >"$WORK/tasks/hog.toml"

echo "== $SPROUT worker --pool io=async:200 --pool $CPU_POOL ${WORKER_ARGS:-}"
# shellcheck disable=SC2086 # WORKER_ARGS is a list of flags
"$SPROUT" worker --pool io=async:200 --pool "$CPU_POOL" ${WORKER_ARGS:-} --log info \
  2>"$WORK/worker.log" &
WORKER=$!
trap 'kill $WORKER 2>/dev/null; sleep 0.2; kill $WORKER 2>/dev/null || true' EXIT
until grep -q '\[tasks\]' "$WORK/worker.log" 2>/dev/null; do sleep 0.05; done
sed -n '/\[config\]/,/\[tasks\]/p' "$WORK/worker.log" | grep 'pool'

successes() { "$SPROUT" status | awk '$1 == "SUCCESS" { print $2; found = 1 } END { if (!found) print 0 }'; }

# Sends $SHORT echo jobs (routed to `io`) and prints how long until all succeeded.
short_run() {
  local before start
  before=$(successes)
  start=$(date +%s%N)
  "$SPROUT" send echo '[1]' --count "$SHORT" >/dev/null 2>&1
  until [ "$(successes)" -ge $((before + SHORT)) ]; do sleep 0.02; done
  echo $((($(date +%s%N) - start) / 1000000))
}

"$SPROUT" send echo '[0]' --count 500 >/dev/null 2>&1 # warm up
until [ "$(successes)" -ge 500 ]; do sleep 0.05; done
alone=$(short_run)
echo "$SHORT echo jobs alone:          ${alone} ms ($((SHORT * 1000 / alone)) jobs/s)"

"$SPROUT" send hog '[]' --count 40 >/dev/null 2>&1 # routed to `cpu`: ~20 s of work for 2 children
sleep 0.5
hogs=$(short_run)
echo "$SHORT echo jobs beside 2 hogs:  ${hogs} ms ($((SHORT * 1000 / hogs)) jobs/s)"
"$SPROUT" status | sed -n '1,4p'
