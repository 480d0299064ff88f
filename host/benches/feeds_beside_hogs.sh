#!/usr/bin/env bash
# Feed throughput beside CPU hogs, as a ratio to the throughput alone: the figure the
# tests `http::timing_a_thousand_feeds_at_c1000_with_and_without_hogs` and
# `prefork::timing_mixed_pools_keep_feed_throughput_while_hogs_run` only bound (they
# fail below 50%, a starvation; the exact ratio depends on the machine's load).
#
#   host/benches/feeds_beside_hogs.sh [ROUNDS=5] [FEEDS=1000] [LAYOUT=all|same|mixed]
#
# Each layout is a real `sprout worker` and `feed-hub run -n FEEDS` (feeds of a 100 ms
# server; time = first request the server sees -> last result read back, and also from
# enqueue), after one untimed warm-up run:
# - same: one async pool, `-P async -c 1000`. A "with hogs" round first sends 4 hogs to
#   the same pool (spinning until a 2.5 s time limit), then the feeds 0.3 s later.
# - mixed: `--pool io=async:1000:celery --pool cpu=prefork:2:cpu`, 40 hogs (≈ 1 s of
#   CPU each) queued for the prefork pool at the start. The hog children are stopped
#   (SIGSTOP) for an "alone" round and run again (SIGCONT) for a "with hogs" round.
# Rounds alternate alone / with hogs, so load from elsewhere weighs on both alike.
# Reports every round, the best of each condition and their ratio, and the median of
# the per-round ratios.
# Extra flags for the mixed layout's worker in $WORKER_ARGS, e.g. WORKER_ARGS="--prefork-nice 0"
# (hog children at normal priority instead of idle priority).
# Env: SPROUT_BIN (default target/release/sprout), FEED_HUB_BIN (target/release/feed-hub),
# TASKS_DIR (target/tasks); each is built when missing.
set -euo pipefail

rounds="${1:-5}"
feeds="${2:-1000}"
layout="${3:-all}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${SPROUT_BIN:-$repo/target/release/sprout}"
hub="${FEED_HUB_BIN:-$repo/target/release/feed-hub}"
tasks="${TASKS_DIR:-$repo/target/tasks}"

[ -x "$bin" ] || (cd "$repo" && cargo build --release --bin sprout)
[ -x "$hub" ] || (cd "$repo" && cargo build --release -p feed-hub)
[ -f "$tasks/fetch_feed.wasm" ] || "$repo/tasks/build.sh" "$tasks"

work="$(mktemp -d "${TMPDIR:-/tmp}/feeds-beside-hogs.XXXXXX")"
worker=""
children=""
stop_worker() {
    [ -n "$children" ] && kill -CONT $children 2>/dev/null || true
    if [ -n "$worker" ]; then
        # Two SIGTERMs: a cold shutdown, so running hogs do not hold it up.
        kill -TERM "$worker" 2>/dev/null || true
        sleep 0.2
        kill -TERM "$worker" 2>/dev/null || true
        wait "$worker" 2>/dev/null || true
    fi
    worker=""
    children=""
}
trap 'stop_worker; rm -rf "$work"' EXIT

export SPROUT_LOG=warn SPROUT_CACHE_DIR="$repo/target/bench-cache"

# Starts `sprout worker ARGS` on a fresh broker with the task dir $work/tasks, and waits
# until it serves.
start_worker() {
    rm -f "$work"/sprout.db*
    broker="sqlite:$work/sprout.db"
    SPROUT_LOG=info "$bin" worker --tasks "$work/tasks" --broker "$broker" "$@" \
        2>"$work/worker.log" >/dev/null &
    worker=$!
    until grep -q '\[tasks\]' "$work/worker.log" 2>/dev/null; do sleep 0.05; done
}

# One feed-hub run against the worker; prints "RATE_FROM_FIRST_FETCH RATE_FROM_ENQUEUE".
feed_run() {
    "$hub" run -n "$feeds" --broker "$broker" --warmup 0 --json |
        python3 -c 'import json, sys
r = json.load(sys.stdin)
print(r["feeds_per_second"], r["feeds"] / (r["first_fetch_after_seconds"] + r["seconds"]))'
}

# Prints the summary of the rounds in $work/rounds (lines "ALONE_FF ALONE_ENQ WITH_FF WITH_ENQ").
summary() {
    python3 - "$1" "$work/rounds" <<'PY'
import statistics, sys
label, path = sys.argv[1], sys.argv[2]
rows = [list(map(float, line.split())) for line in open(path) if line.strip()]
for name, a, w in (("from first fetch", 0, 2), ("from enqueue", 1, 3)):
    alone, hogs = [r[a] for r in rows], [r[w] for r in rows]
    ratios = sorted(h / al for al, h in zip(alone, hogs))
    print(f"{label}, {name}: best alone {max(alone):,.0f}/s, best with hogs "
          f"{max(hogs):,.0f}/s = {100 * max(hogs) / max(alone):.0f}%; per round "
          f"median {100 * statistics.median(ratios):.0f}% "
          f"({100 * ratios[0]:.0f}–{100 * ratios[-1]:.0f}%)")
PY
}

round_line() {
    python3 -c 'import sys
a, e, h, he = map(float, sys.argv[2:])
print(f"  round {sys.argv[1]}: alone {a:,.0f}/s ({e:,.0f}/s from enqueue), with hogs "
      f"{h:,.0f}/s ({he:,.0f}/s), {100 * h / a:.0f}% ({100 * he / e:.0f}%)")' "$@"
}

load() { cut -d' ' -f1-3 /proc/loadavg; }

same_pool() {
    rm -rf "$work/tasks" && mkdir -p "$work/tasks"
    cp "$tasks/fetch_feed.wasm" "$tasks/fetch_feed.toml" "$tasks/hog.wasm" "$work/tasks/"
    printf '[limits]\nfuel = 10_000_000_000_000\ntime_limit = 2.5\n' >"$work/tasks/hog.toml"
    echo "== same pool: $feeds feeds on -P async -c 1000, alone and beside 4 hogs (load $(load))"
    start_worker -P async -c 1000
    "$hub" run -n "$feeds" --broker "$broker" --json >/dev/null # warm-up: one full wave
    : >"$work/rounds"
    for i in $(seq "$rounds"); do
        read -r alone alone_enq < <(feed_run)
        "$bin" send hog '[]' --count 4 --broker "$broker" >/dev/null 2>&1
        sent=$(date +%s.%N)
        sleep 0.3
        read -r hogs hogs_enq < <(feed_run)
        echo "$alone $alone_enq $hogs $hogs_enq" >>"$work/rounds"
        round_line "$i" "$alone" "$alone_enq" "$hogs" "$hogs_enq"
        # The hogs end at their 2.5 s time limit before the next round.
        sleep "$(python3 -c "import time; print(max(0.0, $sent + 2.7 - time.time()))")"
    done
    stop_worker
    summary "same pool, 4 hogs"
}

mixed_pools() {
    rm -rf "$work/tasks" && mkdir -p "$work/tasks"
    cp "$tasks/fetch_feed.wasm" "$tasks/fetch_feed.toml" "$tasks/hog.wasm" "$work/tasks/"
    printf 'queue = "cpu"\n[limits]\nfuel = 20_000_000_000\ntime_limit = 30.0\n' \
        >"$work/tasks/hog.toml"
    echo "== mixed pools: $feeds feeds on io=async:1000, alone and beside 2 hog children" \
        "on cpu=prefork:2 ${WORKER_ARGS:-} (load $(load))"
    # shellcheck disable=SC2086 # WORKER_ARGS is a list of flags
    start_worker --pool io=async:1000:celery --pool cpu=prefork:2:cpu ${WORKER_ARGS:-}
    "$hub" run -n "$feeds" --broker "$broker" --json >/dev/null # warm-up: one full wave
    children=$(grep -o 'prefork: child pid [0-9]* ready' "$work/worker.log" | awk '{ print $4 }' | xargs)
    [ "$(wc -w <<<"$children")" -eq 2 ] || { echo "hog children: '$children'" >&2; exit 1; }
    # Routed to `cpu` by the manifest: ≈ 20 s of work for the two children.
    "$bin" send hog '[]' --count 40 --broker "$broker" --tasks "$work/tasks" >/dev/null 2>&1
    : >"$work/rounds"
    for i in $(seq "$rounds"); do
        # shellcheck disable=SC2086 # two pids
        kill -STOP $children
        sleep 0.1
        read -r alone alone_enq < <(feed_run)
        # shellcheck disable=SC2086
        kill -CONT $children
        sleep 0.3
        read -r hogs hogs_enq < <(feed_run)
        echo "$alone $alone_enq $hogs $hogs_enq" >>"$work/rounds"
        round_line "$i" "$alone" "$alone_enq" "$hogs" "$hogs_enq"
    done
    # The hogs must still be queued or running: they ran through every "with hogs" round.
    "$bin" status --broker "$broker" | awk '$1 == "QUEUE" || $1 == "cpu" { print "  " $0 }'

    stop_worker
    summary "mixed pools, 2 hog children"
}

case "$layout" in
    same) same_pool ;;
    mixed) mixed_pools ;;
    all) same_pool && mixed_pools ;;
    *) echo "LAYOUT: all, same or mixed (got $layout)" >&2; exit 2 ;;
esac
