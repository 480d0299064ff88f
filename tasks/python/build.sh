#!/usr/bin/env bash
# Builds the Python example tasks with `sprout build` into OUT_DIR.
#
#   tasks/python/build.sh SPROUT [OUT_DIR]     (default: <repo>/target/tasks/python)
#
# - Needs python3: without it, says so loudly and exits 0 (the Python examples and
#   their tests are skipped; nothing else depends on them).
# - Makes the pinned componentize-py venv (guest-sdk/python/setup_venv.sh).
# - A module is rebuilt only when it, its manifest, the SDK or the WIT changed (a stamp
#   of their hashes beside the output; the SDK and WIT are what `sprout build` embeds):
#   a Python component is 18 MB and takes ~15 s to build, and the test suite calls this
#   every run.
# - Every build pre-compiles into the artifact cache (SPROUT_CACHE_DIR if set).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
sprout="${1:?usage: tasks/python/build.sh SPROUT [OUT_DIR]}"
out_dir="${2:-$repo/target/tasks/python}"

if ! command -v python3 >/dev/null 2>&1; then
    echo "tasks/python/build.sh: SKIPPED: python3 is not installed, so the Python example tasks" \
         "(and the tests that run them) are skipped; install python3 (with venv) to build them" >&2
    exit 0
fi

venv="$("$repo/guest-sdk/python/setup_venv.sh")"
export SPROUT_PYTHON_VENV="$venv"
mkdir -p "$out_dir"
exec 9>"$out_dir/.build.lock"
flock 9

modules=(add fib fail runaway fetch_feed)
common="$(cat "$repo"/guest-sdk/python/sprout_task/*.py "$repo"/guest-sdk/python/wit/world.wit \
    "$repo"/wit/task.wit | sha256sum | cut -d' ' -f1)"
for m in "${modules[@]}"; do
    src="$here/$m.py"
    stamp="$out_dir/.$m.stamp"
    want="$( { echo "$common"; cat "$src"; if [ -f "$here/$m.toml" ]; then cat "$here/$m.toml"; fi; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$out_dir/$m.wasm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        continue
    fi
    "$sprout" build "$src" -o "$out_dir" >&2
    echo "$want" >"$stamp"
done
