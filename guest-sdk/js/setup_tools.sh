#!/usr/bin/env bash
# Installs componentize-js (pinned) from the npm registry for `sprout build x.js`.
#
#   guest-sdk/js/setup_tools.sh       -> prints the tools folder
#
# - The folder is <repo>/target/js-tools (override: SPROUT_JS_TOOLS=DIR); `sprout build`
#   looks there. Needs node and npm.
# - Idempotent and fast when installed; concurrent runs wait on a lock.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${SPROUT_JS_TOOLS:-$repo/target/js-tools}"
spec="${COMPONENTIZE_JS_SPEC:-@bytecodealliance/componentize-js@0.23.0}"
want="${spec##*@}"
pkg="$dir/node_modules/@bytecodealliance/componentize-js/package.json"

ready() {
    [ -f "$pkg" ] && [ "$(node -p "require('$pkg').version" 2>/dev/null)" = "$want" ]
}

if ready; then
    echo "$dir"
    exit 0
fi
command -v node >/dev/null && command -v npm >/dev/null ||
    { echo "setup_tools.sh: node and npm are needed for JavaScript tasks" >&2; exit 1; }
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if ! ready; then
    [ -f "$dir/package.json" ] || echo '{"private": true}' >"$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "$spec" >&2)
    ready || { echo "setup_tools.sh: $spec did not install into $dir" >&2; exit 1; }
fi
echo "$dir"
