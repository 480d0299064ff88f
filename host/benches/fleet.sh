#!/usr/bin/env bash
# Fleet throughput: the same queue drained by one worker host, then by two.
#
#   host/benches/fleet.sh [JOBS=20000] [TASK=sleep] [ARGS='[0.05]'] [CONCURRENCY=100] [ROUNDS=3]
#
# Hosts are network namespaces on a private bridge (10.231.N.0/24, N free on this
# machine), as in tests/all/fleet.rs: a private redis-server on the broker host, a
# `sprout worker -c CONCURRENCY` on each worker host. Each round fills the queue with
# JOBS Celery messages (`sprout send --count`, from the root namespace), starts the
# worker(s), and times the drain: first message taken → queue empty and nothing
# reserved (results are stored before the ack, so every result is stored by then).
# Rounds alternate one host / two hosts; the script prints each round and the ratio of
# the medians.
#
# What it measures depends on what bounds a worker: `sleep` jobs (the default: each
# waits 50 ms in the host, burning no CPU) are bounded by the slots, so a second host
# doubles the slots; trivial CPU-light jobs (`add '[2, 3]'`, `-c 200`) are bounded by
# the CPU, which the hosts here share (namespaces, one machine).
#
# Needs root, `ip`, redis-server, redis-cli. Cleans up everything it made on exit
# (also on Ctrl-C or failure). Env: SPROUT_BIN (default target/release/sprout),
# TASKS_DIR (default target/tasks; built with tasks/build.sh when missing).
set -euo pipefail

jobs="${1:-20000}"
task="${2:-sleep}"
args="${3:-[0.05]}"
concurrency="${4:-100}"
rounds="${5:-3}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${SPROUT_BIN:-$repo/target/release/sprout}"
tasks="${TASKS_DIR:-$repo/target/tasks}"

[ "$(id -u)" = 0 ] || { echo "fleet.sh: needs root (network namespaces)" >&2; exit 1; }
for tool in ip redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "fleet.sh: $tool is not installed" >&2; exit 1; }
done
[ -x "$bin" ] || (cd "$repo" && cargo build --release --bin sprout)
[ -f "$tasks/$task.wasm" ] || [ -f "$tasks/math.wasm" ] || "$repo/tasks/build.sh" "$tasks"

# Names as tests/all/netns.rs makes them (`sfl<pid, 6 hex>…`), so a test run deletes
# what a killed run of this script left behind.
base="sfl$(printf %06x $$)f"
bridge="${base}b"
third=""
for n in $(seq 1 250); do
    if ! ip -o -4 addr show | grep -q " 10\.231\.$n\."; then third=$n; break; fi
done
[ -n "$third" ] || { echo "fleet.sh: no free 10.231.N.0/24" >&2; exit 1; }
net="10.231.$third"
broker_ip="$net.2"
url="redis://$broker_ip:6379/0"
queue="fleet-bench"
work="$(mktemp -d)"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for n in 0 1 2; do
        for pid in $(ip netns pids "${base}n$n" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "${base}n$n" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip link add "$bridge" type bridge
ip addr add "$net.1/24" dev "$bridge"
ip link set "$bridge" up
for n in 0 1 2; do
    ns="${base}n$n"
    ip netns add "$ns"
    ip link add "${base}v$n" type veth peer name "${base}p$n"
    ip link set "${base}p$n" netns "$ns"
    ip link set "${base}v$n" master "$bridge" up
    ip -n "$ns" addr add "$net.$((2 + n))/24" dev "${base}p$n"
    ip -n "$ns" link set "${base}p$n" up
    ip -n "$ns" link set lo up
done

ip netns exec "${base}n0" redis-server --port 6379 --bind "$broker_ip" --save "" \
    --appendonly no --protected-mode no --dir "$work" >/dev/null &
pids+=($!)
rcli() { redis-cli -h "$broker_ip" -p 6379 "$@"; }
for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli ping >/dev/null

export SPROUT_LOG=warn SPROUT_CACHE_DIR="$repo/target/bench-cache"
now() { date +%s.%N; }

# One round with $1 worker hosts; prints its rate (jobs/s).
round() {
    local hosts="$1" workers=() first done_at
    rcli FLUSHALL >/dev/null
    "$bin" send "$task" "$args" --count "$jobs" --broker "$url" --queue "$queue" >/dev/null 2>&1
    for h in $(seq 1 "$hosts"); do
        ip netns exec "${base}n$h" "$bin" worker --broker "$url" --tasks "$tasks" -Q "$queue" \
            -c "$concurrency" -n "host$h@fleet-bench" >"$work/worker$h.log" 2>&1 &
        workers+=($!)
        pids+=($!)
    done
    while [ "$(rcli LLEN "$queue")" -ge "$jobs" ]; do sleep 0.005; done
    first=$(now)
    while [ "$(rcli LLEN "$queue")" -gt 0 ] || [ "$(rcli HLEN unacked)" -gt 0 ]; do sleep 0.01; done
    done_at=$(now)
    kill -TERM "${workers[@]}"
    wait "${workers[@]}" || { echo "fleet.sh: a worker failed:" >&2; cat "$work"/worker*.log >&2; exit 1; }
    local stored
    stored=$(rcli --scan --pattern 'celery-task-meta-*' | wc -l)
    [ "$stored" -eq "$jobs" ] || { echo "fleet.sh: $stored of $jobs results stored" >&2; exit 1; }
    python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.0f}')" \
        "$jobs" "$first" "$done_at"
}

echo "fleet.sh: $jobs × $task $args, -c $concurrency per host, $rounds rounds; load $(cut -d' ' -f1-3 /proc/loadavg)"
one=() two=()
for r in $(seq 1 "$rounds"); do
    one+=("$(round 1)")
    two+=("$(round 2)")
    echo "round $r: one host ${one[-1]} jobs/s, two hosts ${two[-1]} jobs/s (load $(cut -d' ' -f1 /proc/loadavg))"
done
python3 - "${one[*]}" "${two[*]}" <<'PY'
import statistics, sys
one = [float(x) for x in sys.argv[1].split()]
two = [float(x) for x in sys.argv[2].split()]
m1, m2 = statistics.median(one), statistics.median(two)
print(f"median: one host {m1:.0f} jobs/s, two hosts {m2:.0f} jobs/s: {m2 / m1:.2f}x")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
