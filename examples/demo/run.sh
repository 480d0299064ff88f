#!/usr/bin/env bash
# The `make demo` script: a worker on the embedded SQLite broker runs a mix of jobs —
# sums, CPU-heavy fibs, sleeps, a hog that is preempted and stopped, a failing task, a
# task that retries, a plain WASI command — and every result is printed.
#
# usage: examples/demo/run.sh [SPROUT_BINARY] [TASKS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
SPROUT=${1:-target/release/sprout}
TASKS=${2:-target/tasks}
WORK=target/demo
rm -rf "$WORK" && mkdir -p "$WORK"
export SPROUT_BROKER="sqlite:$WORK/sprout.db"
export SPROUT_LOG=warn

echo "== starting a worker: $SPROUT worker --tasks $TASKS -P async -c 100 (broker $SPROUT_BROKER)"
"$SPROUT" worker --tasks "$TASKS" -P async -c 100 --log info 2>"$WORK/worker.log" &
WORKER=$!
trap 'kill $WORKER 2>/dev/null || true' EXIT

# name | task | args | expected: ok, or the error kind
JOBS=(
  "add 2+3|add|[2, 3]|ok"
  "add 40+2|add|[40, 2]|ok"
  "mul 6x7|mul|[6, 7]|ok"
  "alias tasks.add|tasks.add|[1, 1]|ok"
  "fib(25)|fib|[25]|ok"
  "fib(30)|fib|[30]|ok"
  "sleep 0.5 s|sleep|[0.5]|ok"
  "sleep 0.5 s|sleep|[0.5]|ok"
  "echo|echo|[{\"hello\": \"sprout\"}]|ok"
  "WASI command|wasi_upper|[\"no\", \"sdk\", \"needed\"]|ok"
  "flaky (retried twice)|flaky|[2]|ok"
  "hog (spins forever)|hog|[]|OutOfFuel"
  "fail|fail|[\"this task always fails\"]|ValueError"
  "trap (panics)|trap|[\"guest panic\"]|WasmTrap"
  "alloc 200 MiB|alloc|[200]|MemoryLimitExceeded"
)

echo "== sending ${#JOBS[@]} jobs"
i=0
for spec in "${JOBS[@]}"; do
  IFS='|' read -r _name task args _expect <<<"$spec"
  "$SPROUT" send "$task" "$args" --wait --timeout 60 >"$WORK/$i.out" 2>"$WORK/$i.err" &
  i=$((i + 1))
done
wait_start=$(date +%s%N)
for job in $(jobs -p); do
  [ "$job" = "$WORKER" ] || wait "$job" || true
done
elapsed_ms=$(( ($(date +%s%N) - wait_start) / 1000000 ))

echo
printf '%-24s %-6s %s\n' "JOB" "" "RESULT"
good=0; bad=0; i=0
for spec in "${JOBS[@]}"; do
  IFS='|' read -r name _task _args expect <<<"$spec"
  out=$(cat "$WORK/$i.out"); err=$(grep -v '^\s*$' "$WORK/$i.err" | tail -1 || true)
  if [ -n "$out" ]; then result="$out"; kind=ok; else result=$(sed -E 's/^[^ ]+ //' <<<"$err"); kind=$(sed -E 's/^[A-Z]+: ([A-Za-z]+):.*/\1/' <<<"$result"); fi
  if [ "$kind" = "$expect" ]; then mark="ok"; good=$((good + 1)); else mark="WRONG"; bad=$((bad + 1)); fi
  printf '%-24s %-6s %s\n' "$name" "$mark" "${result:0:90}"
  i=$((i + 1))
done

echo
"$SPROUT" status | sed -n '/^RESULTS/,/^$/p'
echo
echo "== summary: $good of ${#JOBS[@]} jobs ended as expected (${elapsed_ms} ms); the hog was preempted"
echo "   every fuel slice and stopped at its budget while the other jobs ran beside it."
kill -TERM $WORKER
wait $WORKER || true
trap - EXIT
echo "== worker stopped: $(grep -o 'worker stopped.*' "$WORK/worker.log" || echo '(see target/demo/worker.log)')"
[ "$bad" -eq 0 ]
