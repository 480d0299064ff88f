#!/usr/bin/env bash
# Creates the Python venv the Celery interop tests drive: a real Celery client and
# worker (`celery[redis]`; plain `celery redis` lacks `packaging`, docs/PROTOCOL.md).
#
#   tests/python/setup_venv.sh        -> prints the venv's path
#
# - The venv is <repo>/target/celery-venv (override: CELERY_VENV=DIR).
# - Idempotent and fast when the venv already imports what it needs; concurrent runs
#   wait on a lock instead of racing.
# - Celery is pinned to the version docs/PROTOCOL.md was verified with (override:
#   CELERY_SPEC='celery[redis]==X'); Flower (the events/metrics tests drive its HTTP
#   API) to the release tests/all/flower.rs was written against (FLOWER_SPEC).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${CELERY_VENV:-$repo/target/celery-venv}"
spec="${CELERY_SPEC:-celery[redis]==5.7.0}"
flower="${FLOWER_SPEC:-flower==2.2.0}"
py="$venv/bin/python"

ready() {
    [ -x "$py" ] && "$py" -c "import celery, redis, packaging, flower" >/dev/null 2>&1
}

if ready; then
    echo "$venv"
    exit 0
fi

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ! ready; then
    python3 -m venv "$venv"
    "$py" -m pip install --quiet --disable-pip-version-check "$spec" "$flower" >&2
    ready || { echo "setup_venv.sh: celery[redis] and flower did not install into $venv" >&2; exit 1; }
fi
echo "$venv"
