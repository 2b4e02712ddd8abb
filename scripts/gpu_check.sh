#!/usr/bin/env bash
# The GPU measurements a machine without a GPU cannot make, as one short run (about five
# minutes on an H100) on a machine with one (Vulkan, Metal or DX12). It needs the release binary
# ($SEEDSCOPE, default $CARGO_TARGET_DIR/release/seedscope or target/release/seedscope) and,
# for the kernel tests, the `kernels` test binary ($KERNELS_TEST: the path `cargo test --release
# --workspace --no-run` prints for tests/kernels.rs; skipped when unset). It prints:
#   1. the adapter and the co-moment kernel it runs (cooperative matrices or f32);
#   2. the kernel tests, including the cooperative kernel against the f64 reference and its twin;
#   3. `bench-correlation` of the f32 kernel and of the device's fastest at the engine's shapes
#      (4,096 rows x 3,072 and 6,144 neurons): GFLOP/s, their ratio, and the fraction of
#      $PEAK_TFLOPS (the device's data-sheet peak; FP32 for the f32 kernel) when set;
#   4. `bench-forward` of the embedded seed-a at 64 x 128, f32 and f16;
#   5. `analyze` of the embedded family on the GPU with the fastest kernel and with
#      --fp32-co-moments: wall time of each and the largest difference between their
#      max_corr, max_baseline and excess_corr columns (the cooperative kernel's error on real
#      activations), the universal counts, and each run's peak GPU memory (wgpu's allocator
#      report), and how long the weight statistics took (their vocabulary projection on the GPU).
# Everything goes to stdout and $OUT (default /tmp/seedscope-gpu-check). For a trial on a
# software adapter: SHAPES="256" (neurons per side in 3.) and MAX_TOKENS=2000 (in 5.).
set -euo pipefail

target=${CARGO_TARGET_DIR:-target}
bin=${SEEDSCOPE:-$target/release/seedscope}
out=${OUT:-/tmp/seedscope-gpu-check}
shapes=${SHAPES:-3072 6144}
limit=()
if [ -n "${MAX_TOKENS:-}" ]; then
    limit=(--max-tokens "$MAX_TOKENS")
fi
peak=()
if [ -n "${PEAK_TFLOPS:-}" ]; then
    peak=(--peak-tflops "$PEAK_TFLOPS")
fi
if [ ! -x "$bin" ]; then
    echo "gpu_check: no seedscope binary at $bin (build with cargo build --release, or set SEEDSCOPE)" >&2
    exit 1
fi
mkdir -p "$out"

echo "== 1. adapter"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== 2. kernel tests"
if [ -n "${KERNELS_TEST:-}" ]; then
    "$KERNELS_TEST" --nocapture 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$out/kernels.log" | tail -40
else
    echo "skipped (set KERNELS_TEST to the tests/kernels.rs binary)"
fi

echo "== 3. co-moment kernels"
for n in $shapes; do
    "$bin" bench-correlation --paths wgpu-fp32,wgpu --rows 4096 --n-a "$n" --n-b "$n" \
        --iters 10 "${peak[@]}" | tee "$out/correlation-$n.jsonl"
    python3 - "$out/correlation-$n.jsonl" <<'EOF'
import json, sys
rows = {r["path"]: r for r in map(json.loads, open(sys.argv[1]))}
fp32, best = rows["wgpu-fp32"]["gflops"], rows["wgpu"]["gflops"]
print(f"   fastest / f32 kernel: {best / fp32:.2f}x ({best / 1e3:.1f} against {fp32 / 1e3:.1f} TFLOP/s)")
EOF
done

echo "== 4. forward"
for dtype in f32 f16; do
    "$bin" bench-forward --backend wgpu --batch 64 --seq-len 128 --dtype "$dtype" --iters 10 \
        | tee "$out/forward-$dtype.json"
done

echo "== 5. analyze, fastest kernel against --fp32-co-moments"
for kind in fastest fp32; do
    flag=()
    [ "$kind" = fp32 ] && flag=(--fp32-co-moments)
    start=$(date +%s.%N)
    "$bin" analyze --backend wgpu --out "$out/bundle-$kind" "${limit[@]}" "${flag[@]}" \
        > "$out/analyze-$kind.log" 2>&1
    end=$(date +%s.%N)
    echo "   $kind: $(python3 -c "print(f'{$end - $start:.1f}')") s wall; $(grep -m1 'device:' "$out/analyze-$kind.log")"
    echo "   $(grep -m1 'peak GPU memory' "$out/analyze-$kind.log" || echo 'no allocator report')"
    echo "   $(grep -m1 '^weight statistics' "$out/analyze-$kind.log")"
done
python3 - "$out/bundle-fastest/neurons.csv" "$out/bundle-fp32/neurons.csv" <<'EOF'
import csv, sys
a, b = (list(csv.DictReader(open(p))) for p in sys.argv[1:3])
assert len(a) == len(b), "the bundles have different neurons"
for col in ("max_corr", "max_baseline", "excess_corr"):
    worst = max(abs(float(x[col]) - float(y[col])) for x, y in zip(a, b))
    print(f"   max |{col} difference|: {worst:.2e}")
count = lambda rows: sum(r["is_universal"] in ("1", "true", "True") for r in rows)
print(f"   universal: {count(a)} with the fastest kernel, {count(b)} with f32")
EOF
