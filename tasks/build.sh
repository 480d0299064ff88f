#!/usr/bin/env bash
# Builds the example tasks to wasm and copies them into OUT_DIR.
#
#   tasks/build.sh [OUT_DIR]     (default: <repo>/target/tasks)
#
# - SDK tasks are wasm32-wasip2 components; wasi_upper is a wasm32-wasip1 command.
# - Builds in <repo>/target/wasm, its own target dir, so it never waits on (or
#   invalidates) the host's target dir: tests may call this while `cargo test` runs.
# - Copies <crate>.wasm, and tasks/<crate>/<crate>.toml when it exists, into OUT_DIR.
#   Files are only replaced when their content changed (atomically), so a watcher on
#   OUT_DIR sees no change on a no-op rebuild.
# - Quiet on success apart from cargo's own stderr; exits non-zero on any failure.
set -euo pipefail

tasks_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$tasks_dir")"

out_dir="${1:-$repo/target/tasks}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

target_dir="$repo/target/wasm"

# Component tasks (wasm32-wasip2) and plain WASI commands (wasm32-wasip1).
components=(echo math fib hog sleep fail trap alloc flaky spew fetch_feed greet net redis_client pg_query)
commands=(wasi_upper)

# Variables an outer cargo (`cargo test` calling this script), make, or a coverage or
# clippy run may leak, which would change or break this build. The toolchain comes from
# rust-toolchain.toml, so a leaked RUSTUP_TOOLCHAIN goes too.
clean_env=(
    env
    -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR -u CARGO_BUILD_TARGET
    -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS
    -u RUSTDOCFLAGS -u CARGO_ENCODED_RUSTDOCFLAGS -u CARGO_BUILD_RUSTDOCFLAGS
    -u RUSTC -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER -u RUSTDOC
    -u CARGO_BUILD_RUSTC -u CARGO_BUILD_RUSTC_WRAPPER -u CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER
    -u CARGO_MAKEFLAGS -u MAKEFLAGS -u MFLAGS -u MAKELEVEL
    -u CARGO_PRIMARY_PACKAGE -u CARGO_MANIFEST_DIR -u CARGO_MANIFEST_PATH
    -u RUSTUP_TOOLCHAIN -u CARGO_LLVM_COV -u LLVM_PROFILE_FILE
    -u CARGO_PROFILE_RELEASE_OPT_LEVEL -u CARGO_PROFILE_RELEASE_LTO
    -u CARGO_PROFILE_RELEASE_CODEGEN_UNITS -u CARGO_PROFILE_RELEASE_STRIP
    -u CARGO_PROFILE_RELEASE_DEBUG -u CARGO_PROFILE_RELEASE_PANIC
    CARGO_TARGET_DIR="$target_dir"
)

cd "$tasks_dir"

# The wasm targets come with rust-toolchain.toml; add them if this toolchain lacks them.
if command -v rustup >/dev/null 2>&1; then
    installed="$("${clean_env[@]}" rustup target list --installed 2>/dev/null || true)"
    if ! grep -qx wasm32-wasip2 <<<"$installed" || ! grep -qx wasm32-wasip1 <<<"$installed"; then
        "${clean_env[@]}" rustup target add wasm32-wasip2 wasm32-wasip1 >&2
    fi
fi

component_pkgs=()
for c in "${components[@]}"; do component_pkgs+=(-p "$c"); done
command_pkgs=()
for c in "${commands[@]}"; do command_pkgs+=(-p "$c"); done

"${clean_env[@]}" cargo build --release --target wasm32-wasip2 "${component_pkgs[@]}"
"${clean_env[@]}" cargo build --release --target wasm32-wasip1 "${command_pkgs[@]}"

# The first 8 bytes: "\0asm" + version. Components are layer 1 (0d 00 01 00), core
# modules version 1 (01 00 00 00).
header() { od -An -tx1 -N8 "$1" | tr -d ' \n'; }
component_header=0061736d0d000100
module_header=0061736d01000000

# Copies $1 to $2 unless $2 already has the same bytes; atomic replace.
install_file() {
    if ! cmp -s "$1" "$2"; then
        local tmp
        tmp="$(mktemp "$2.tmp.XXXXXX")"
        cp "$1" "$tmp"
        chmod 644 "$tmp"
        mv -f "$tmp" "$2"
    fi
}

install_task() { # crate target expected-header
    local crate="$1" target="$2" want="$3"
    local wasm="$target_dir/$target/release/$crate.wasm"
    if [[ ! -f "$wasm" ]]; then
        echo "tasks/build.sh: $wasm was not produced" >&2
        exit 1
    fi
    local got
    got="$(header "$wasm")"
    if [[ "$got" != "$want" ]]; then
        echo "tasks/build.sh: $wasm has header $got, expected $want" >&2
        exit 1
    fi
    install_file "$wasm" "$out_dir/$crate.wasm"
    if [[ -f "$tasks_dir/$crate/$crate.toml" ]]; then
        install_file "$tasks_dir/$crate/$crate.toml" "$out_dir/$crate.toml"
    fi
}

for c in "${components[@]}"; do install_task "$c" wasm32-wasip2 "$component_header"; done
for c in "${commands[@]}"; do install_task "$c" wasm32-wasip1 "$module_header"; done
