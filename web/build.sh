#!/usr/bin/env bash
# Build the browser explorer into web/dist: the wasm module (crate seedscope-web) and its
# JavaScript glue, the page, and the embedded seed family's files (fetched by the page, not
# compiled into the module). Installs the pinned wasm-bindgen CLI from crates.io when missing.
# Usage: web/build.sh            then web/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Must equal the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN=0.2.130
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seedscope-target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
if ! wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN"; then
  # Its own target directory: installing must not invalidate the workspace's build.
  CARGO_TARGET_DIR="$HOME/.cache/wasm-bindgen-target" \
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN"
fi
cargo build --release --target wasm32-unknown-unknown -p seedscope-web
out=web/dist
rm -rf "$out.partial"
mkdir -p "$out.partial/family"
# Without the function-name section: 20 % smaller (panics still print their messages).
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section \
  --out-dir "$out.partial" --out-name seedscope \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/seedscope_web.wasm"
cp web/index.html "$out.partial/"
# The embedded family as separate files: the page fetches and caches them.
cp assets/family/FAMILY.json assets/family/eval_tokens.npy assets/family/tokenizer.json \
  "$out.partial/family/"
for seed in assets/family/seed-*; do
  mkdir -p "$out.partial/family/$(basename "$seed")"
  cp "$seed/config.json" "$seed/model.safetensors" "$out.partial/family/$(basename "$seed")/"
done
rm -rf "$out"
mv "$out.partial" "$out"
raw=$(stat -c %s "$out/seedscope_bg.wasm")
gz=$(gzip -9 -c "$out/seedscope_bg.wasm" | wc -c)
echo "web/dist: seedscope_bg.wasm $((raw / 1024)) KiB, $((gz / 1024)) KiB gzip -9 (budget 10 MiB compressed)"
