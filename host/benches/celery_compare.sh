#!/usr/bin/env bash
# Trivial-task drain rate on Redis: `sprout worker` beside Python Celery's solo, prefork
# and gevent pools, in one run on this machine (issue: Celery protocol on Redis).
#
#   host/benches/celery_compare.sh [--jobs 30000] [--celery-jobs 5000] [--concurrency 200]
#                                  [--workers sprout,solo,prefork,gevent] [--python]
#
# `--python`: the Sprout worker runs the Python task file py.add (the same `a + b` Celery
# runs) instead of the Rust add; the Python tasks are built (tasks/python/build.sh) if missing.
# Makes the Celery virtualenv (tests/python/setup_venv.sh) and adds gevent to it, builds
# the release binary and the tasks if missing, then runs host/benches/celery_compare.py.
# Needs redis-server at 127.0.0.1:6379; uses (and flushes) databases 13 and 14.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "no Redis at 127.0.0.1:6379" >&2; exit 1; }
venv="$("$repo/tests/python/setup_venv.sh")"
"$venv/bin/python" -c "import gevent" 2>/dev/null ||
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "gevent>=24" >&2
[ -x "${SPROUT_BIN:-$repo/target/release/sprout}" ] || (cd "$repo" && cargo build --release --bin sprout)
[ -f "${TASKS_DIR:-$repo/target/tasks}/math.wasm" ] || "$repo/tasks/build.sh" "${TASKS_DIR:-$repo/target/tasks}"
case " $* " in *" --python "*)
    py_tasks="${PY_TASKS_DIR:-${TASKS_DIR:-$repo/target/tasks}/python}"
    [ -f "$py_tasks/add.wasm" ] ||
        "$repo/tasks/python/build.sh" "${SPROUT_BIN:-$repo/target/release/sprout}" "$py_tasks";;
esac
exec "$venv/bin/python" "$repo/host/benches/celery_compare.py" "$@"
