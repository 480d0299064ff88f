#!/usr/bin/env bash
# Builds the test-only guests (tests/guests/*) to wasm and copies them into OUT_DIR.
#
#   tests/guests/build.sh OUT_DIR
#
# Same rules as tasks/build.sh: its own target dir (<repo>/target/wasm-test-guests),
# a clean cargo environment (this runs from inside `cargo test`), and files replaced
# only when their bytes changed, atomically.
set -euo pipefail

guests_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$guests_dir/../.." && pwd)"
out_dir="${1:?usage: tests/guests/build.sh OUT_DIR}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
target_dir="$repo/target/wasm-test-guests"

components=(escape version_v1 version_v2)

clean_env=(
    env
    -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR -u CARGO_BUILD_TARGET
    -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS
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

cd "$guests_dir"
pkgs=()
for c in "${components[@]}"; do pkgs+=(-p "$c"); done
"${clean_env[@]}" cargo build --release --target wasm32-wasip2 "${pkgs[@]}"

for c in "${components[@]}"; do
    wasm="$target_dir/wasm32-wasip2/release/$c.wasm"
    if [[ ! -f "$wasm" ]]; then
        echo "tests/guests/build.sh: $wasm was not produced" >&2
        exit 1
    fi
    if ! cmp -s "$wasm" "$out_dir/$c.wasm"; then
        tmp="$(mktemp "$out_dir/$c.wasm.tmp.XXXXXX")"
        cp "$wasm" "$tmp"
        chmod 644 "$tmp"
        mv -f "$tmp" "$out_dir/$c.wasm"
    fi
done
