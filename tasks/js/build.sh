#!/usr/bin/env bash
# Builds the JavaScript example tasks with `sprout build` into OUT_DIR.
#
#   tasks/js/build.sh SPROUT [OUT_DIR]     (default: <repo>/target/tasks/js)
#
# - Needs node and npm: without them, says so loudly and exits 0 (the JavaScript
#   examples and their tests are skipped).
# - Installs componentize-js (guest-sdk/js/setup_tools.sh). Rebuilds only when the
#   source or the helper (which `sprout build` embeds) changed (a stamp beside the output).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
sprout="${1:?usage: tasks/js/build.sh SPROUT [OUT_DIR]}"
out_dir="${2:-$repo/target/tasks/js}"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "tasks/js/build.sh: SKIPPED: node and npm are not both installed, so the JavaScript" \
         "example tasks (and the tests that run them) are skipped" >&2
    exit 0
fi
export SPROUT_JS_TOOLS="$("$repo/guest-sdk/js/setup_tools.sh")"
mkdir -p "$out_dir"
exec 9>"$out_dir/.build.lock"
flock 9
for src in "$here"/*.js; do
    m="$(basename "$src" .js)"
    stamp="$out_dir/.$m.stamp"
    want="$(cat "$src" "$repo"/guest-sdk/js/sprout-task.js "$repo"/guest-sdk/js/componentize.mjs | sha256sum | cut -d' ' -f1)"
    if [ -f "$out_dir/$m.wasm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        continue
    fi
    "$sprout" build "$src" -o "$out_dir" >&2
    echo "$want" >"$stamp"
done
