#!/usr/bin/env bash
# Trivial-task drain rate on RabbitMQ: `sprout worker` beside Python Celery's solo and
# prefork pools, in one run on this machine (issue: RabbitMQ and result backends).
#
#   host/benches/amqp_compare.sh [--jobs 30000] [--celery-jobs 3000] [--concurrency 200]
#                                [--workers sprout,solo,prefork]
#
# Makes the Celery virtualenv (tests/python/setup_venv.sh), builds the release binary and
# the tasks if missing, creates the RabbitMQ vhost `sprout-bench` (deleted on exit) and
# runs host/benches/amqp_compare.py. Needs RabbitMQ at 127.0.0.1:5672 (guest/guest) with
# `rabbitmqctl`, and Redis at 127.0.0.1:6379 (results, database 14, flushed).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "no Redis at 127.0.0.1:6379" >&2; exit 1; }
vhost="sprout-bench-$$"
rabbitmqctl add_vhost "$vhost" >/dev/null
trap 'rabbitmqctl delete_vhost "$vhost" >/dev/null' EXIT
rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
venv="$("$repo/tests/python/setup_venv.sh")"
[ -x "${SPROUT_BIN:-$repo/target/release/sprout}" ] || (cd "$repo" && cargo build --release --bin sprout)
[ -f "${TASKS_DIR:-$repo/target/tasks}/math.wasm" ] || "$repo/tasks/build.sh" "${TASKS_DIR:-$repo/target/tasks}"
BENCH_VHOST="$vhost" "$venv/bin/python" "$repo/host/benches/amqp_compare.py" "$@"
