#!/usr/bin/env bash
# docs/report from the embedded family, in one go: the analysis over every held-out token (at
# the family's shipped training steps 200 and 800 and at the end), the entropy-neuron interventions, the strongest attention path ablation, the report; then the
# figures docs/report/README.md shows and summary.json (the numbers `tests/family.rs` checks
# against a fresh analysis, so a stale report fails the tests).
#
#   scripts/make_docs_report.sh          # about 5 minutes on two CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/seedscope-target}"
cargo build --release --quiet --workspace --bin seedscope
bin="$CARGO_TARGET_DIR/release/seedscope"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$bin" analyze --backend cpu --steps 200,800,final --out "$work/series"
bundle="$work/series/final"
"$bin" intervene "$bundle" --backend cpu
"$bin" intervene "$bundle" --path --backend cpu
"$bin" report "$bundle" --out "$work/report"
out=docs/report
mkdir -p "$out"
rm -f "$out"/*.png
for f in fig2-universality fig3-percentiles fig6a-vocab-kurtosis fig7-entropy-interventions \
         families training-universality "$(basename "$(ls "$work"/report/fig8-path-ablation-*.png | head -1)" .png)"; do
    cp "$work/report/$f.png" "$out/"
done
"$bin" summary "$bundle" --json > "$out/summary.json"
cp "$bundle/interventions.json" "$out/"
echo "wrote $(ls "$out" | wc -l) files to $out"
