#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls it).
# Installs what the tests need on a fresh Debian machine (lavapipe, a Vulkan driver that runs on
# the CPU, so the wgpu tests run WGSL for real), then format, clippy, the tests, the GPU kernels'
# tests again on a lavapipe with cooperative matrices (scripts/lavapipe_coop.sh), and the browser
# build with its end-to-end test in headless Chromium (installed too, with Node).
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
# The co-moment kernel on cooperative matrices (tensor cores elsewhere) against the references:
# the kernel and analysis tests again, on a lavapipe that has cooperative matrices (Mesa 26.1, in
# a trixie root that the script builds once; the same test binaries, no rebuild).
scripts/lavapipe_coop.sh cargo test --release --workspace --test kernels --test numerics --test analysis --test unequal
# The browser build (web/): lint its wasm-only code, build web/dist, then run the page end to
# end in headless Chromium (web/e2e.mjs): the embedded family analysed on WebGPU (SwiftShader)
# must give the native `seedscope analyze` result on the same tokens; live text on the page must
# give the native forward's traces, the example scan and the downloads work; a bundle opens from
# a URL, and without WebGPU (drawn with WebGL2); screenshots must not be blank.
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
cargo clippy --release --target wasm32-unknown-unknown -p seedscope-web -- -D warnings
web/build.sh
# Only what is missing: a machine with Node from elsewhere (NodeSource) cannot take Debian's
# npm beside it (apt refuses the conflict), and needs only Chromium.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
(cd web && npm ci --no-audit --no-fund --silent)
e2e="$(mktemp -d)"
cargo run --release --quiet -- analyze --max-tokens 2048 --save-tiles all --out "$e2e/bundle" >/dev/null
node web/e2e.mjs --dist web/dist --bundle "$e2e/bundle" --out "${E2E_OUT:-$e2e/out}" --max-tokens 2048 \
    --seedscope "${CARGO_TARGET_DIR:-target}/release/seedscope" --family assets/family
rm -rf "$e2e"
