#!/usr/bin/env bash
# CPU per feed of the feed hub (worker + feed server + load generator), robust to
# other load on the machine: runs `feed-hub run` with N1 and N2 feeds (same warm-up)
# ROUNDS times, alternating, and reports the CPU-seconds (user + sys of feed-hub and the
# worker it spawns, from /usr/bin/time) the extra N2 - N1 feeds cost, per feed; also each
# run's feeds/s and the load average.
#
#   host/benches/feed_cpu.sh [ROUNDS] [N1] [N2]      (defaults: 3 1000 11000)
#
# SPROUT, FEED_HUB and TASKS override the binaries and task dir (default: target/release
# and target/tasks); EXTRA is passed to `feed-hub run` (e.g. "--warmup 0").
set -euo pipefail
rounds="${1:-3}"
n1="${2:-1000}"
n2="${3:-11000}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sprout="${SPROUT:-$repo/target/release/sprout}"
hub="${FEED_HUB:-$repo/target/release/feed-hub}"
tasks="${TASKS:-$repo/target/tasks}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

run() { # n -> "cpu_seconds feeds_per_second load1"
    local n="$1" load
    load="$(cut -d' ' -f1 /proc/loadavg)"
    # shellcheck disable=SC2086
    /usr/bin/time -f "%U %S" -o "$tmp/time" "$hub" run -n "$n" --spawn-worker "$sprout" \
        -c 1000 --tasks "$tasks" --json ${EXTRA:-} >"$tmp/out" 2>"$tmp/err"
    local json cpu
    json="$(grep '^{' "$tmp/out" | tail -1)"
    cpu="$(awk '{print $1 + $2}' "$tmp/time")"
    echo "$cpu $(echo "$json" | sed 's/.*"feeds_per_second":\([0-9.]*\).*/\1/') $load"
}

total1=0 total2=0
for r in $(seq "$rounds"); do
    read -r c1 f1 l1 < <(run "$n1")
    read -r c2 f2 l2 < <(run "$n2")
    per=$(awk -v a="$c1" -v b="$c2" -v n1="$n1" -v n2="$n2" 'BEGIN{printf "%.1f", (b-a)/(n2-n1)*1e6}')
    printf 'round %d: %d feeds %.2f CPU-s %.0f feeds/s (load %s); %d feeds %.2f CPU-s %.0f feeds/s (load %s); marginal %s µs CPU/feed\n' \
        "$r" "$n1" "$c1" "$f1" "$l1" "$n2" "$c2" "$f2" "$l2" "$per"
    total1=$(awk -v t="$total1" -v c="$c1" 'BEGIN{print t+c}')
    total2=$(awk -v t="$total2" -v c="$c2" 'BEGIN{print t+c}')
done
awk -v a="$total1" -v b="$total2" -v n1="$n1" -v n2="$n2" -v r="$rounds" \
    'BEGIN{printf "mean marginal CPU per feed: %.1f µs\n", (b-a)/r/(n2-n1)*1e6}'
