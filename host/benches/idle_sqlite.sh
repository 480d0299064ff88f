#!/usr/bin/env bash
# What an idle `sprout worker` on the embedded SQLite broker costs, and how late the
# first job after a quiet spell starts.
#
#   host/benches/idle_sqlite.sh [IDLE_SECONDS=30] [PROBES=10]
#
# Starts the release worker on a fresh database (default concurrency, liveness on),
# lets it settle 3 s, then reads its CPU time (utime + stime from /proc/PID/stat) over
# IDLE_SECONDS of doing nothing: reported as % of one core. Then PROBES times: waits
# 2 s idle, and times `sprout send add '[2, 3]' --wait` end to end, beside the same
# command against a worker that was busy a moment ago (the previous probe's warm path
# is the baseline: `send` process start, connect, publish, run, store, read back).
# The difference is the latency an idle worker adds.
# Env: SPROUT_BIN (default target/release/sprout), TASKS_DIR (default target/tasks).
set -euo pipefail

idle="${1:-30}"
probes="${2:-10}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${SPROUT_BIN:-$repo/target/release/sprout}"
tasks="${TASKS_DIR:-$repo/target/tasks}"
[ -x "$bin" ] || (cd "$repo" && cargo build --release --bin sprout)
[ -f "$tasks/math.wasm" ] || "$repo/tasks/build.sh" "$tasks"

work="$(mktemp -d)"
worker=""
cleanup() {
    [ -n "$worker" ] && kill "$worker" 2>/dev/null && wait "$worker" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export SPROUT_BROKER="sqlite:$work/sprout.db" SPROUT_LOG=warn

"$bin" worker --tasks "$tasks" 2>"$work/worker.log" &
worker=$!
"$bin" send add '[0, 0]' --wait --timeout 60 >/dev/null   # the worker is up and warm
sleep 3

ticks() { awk '{print $14 + $15}' "/proc/$worker/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
sleep "$idle"
after=$(ticks)
cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v s="$idle" 'BEGIN { printf "%.3f", 100 * t / hz / s }')
echo "idle worker: $((after - before)) ticks in ${idle} s = ${cpu}% of one core"

ms() { date +%s%N; }
cold=()
warm=()
for _ in $(seq "$probes"); do
    sleep 2
    t0=$(ms); "$bin" send add '[2, 3]' --wait >/dev/null; t1=$(ms)
    "$bin" send add '[2, 3]' --wait >/dev/null; t2=$(ms)
    cold+=($(( (t1 - t0) / 1000000 )))
    warm+=($(( (t2 - t1) / 1000000 )))
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "send --wait after 2 s idle: median $(median "${cold[@]}") ms (all: ${cold[*]})"
echo "send --wait right after a job: median $(median "${warm[@]}") ms (all: ${warm[*]})"
echo "loadavg: $(cat /proc/loadavg)"
