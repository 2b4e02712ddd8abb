#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls it).
# Installs what the tests need on a fresh Debian machine (lavapipe, a Vulkan driver that runs on
# the CPU, so the wgpu tests run WGSL for real), then format, clippy, the tests and a wasm32
# type-check of the crates the browser build will use.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p | grep -q libvulkan.so.1 || ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

# One profile (release) for tests, benches and the CLI, so `cargo run --release` and this
# script share one build (in CARGO_TARGET_DIR when set, else target/).
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
# Everything below the app must build for the browser too (ARCHITECTURE.md): type-check the
# engine and the report for wasm32 so nothing native-only creeps in unnoticed.
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo check --release --target wasm32-unknown-unknown -p seedscope-analysis -p seedscope-report
