#!/usr/bin/env bash
# Creates the venv Python task files are built and tested with: componentize-py (what
# `sprout build` runs for a Python source), wheel (so `sprout build` can turn a
# dependency's setuptools source distribution into a wheel offline) and pytest (the
# SDK's own tests).
#
#   guest-sdk/python/setup_venv.sh        -> prints the venv's path
#
# - The venv is <repo>/target/python-venv (override: SPROUT_PYTHON_VENV=DIR); `sprout
#   build` looks there (and on PATH) for componentize-py.
# - componentize-py is pinned: the WIT and the SDK were verified with this version
#   (override: COMPONENTIZE_PY_SPEC='componentize-py==X').
# - Idempotent and fast when the venv is ready; concurrent runs wait on a lock.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${SPROUT_PYTHON_VENV:-$repo/target/python-venv}"
cpy="${COMPONENTIZE_PY_SPEC:-componentize-py==0.25.1}"
pytest_spec="${PYTEST_SPEC:-pytest==8.3.4}"
wheel_spec="${WHEEL_SPEC:-wheel==0.45.1}"
want="${cpy#componentize-py==}"

ready() {
    [ -x "$venv/bin/componentize-py" ] && [ -x "$venv/bin/pytest" ] &&
        "$venv/bin/python" -c "import wheel" 2>/dev/null &&
        [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" = "componentize-py $want" ]
}

if ready; then
    echo "$venv"
    exit 0
fi

command -v python3 >/dev/null || { echo "setup_venv.sh: python3 is not installed" >&2; exit 1; }
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ! ready; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$cpy" "$pytest_spec" "$wheel_spec" >&2
    ready || { echo "setup_venv.sh: $cpy did not install into $venv" >&2; exit 1; }
fi
echo "$venv"
