#!/usr/bin/env python3
"""How the cost of `seedscope analyze` grows: against the neurons per seed (the embedded family's
2 x 512, and GPT-2 small's widths at 2 and 12 layers) and against the number of seeds (2 to 5 of
the embedded family), every run exhaustive on the CPU path, then `seedscope cost` over the
bundles: one table (tokens/s and where each run's time went: forwards, co-moments, activation
statistics, device waits, weight statistics, the rest) and its figures.

The GPT-2-width families are `make_gpt2_small_family.py`'s (built on first use, as
`bench_scale.py` does; their 24 rows of 256 tokens keep the 12-layer run to minutes).

Usage (pinned env: scripts/requirements-fixtures.txt; build first: cargo build --release):
    .venv/bin/python scripts/bench_cost.py [--work DIR] [--sizes embedded,l2,l12]
                                           [--seeds 2,3,4,5] [--figures docs/cost]
"""
import argparse
import os
import subprocess
import sys
import tempfile

from bench_scale import ROOT, binary, family, timed


def analyze(b, work, name, models, tokens):
    """`seedscope analyze` of `models` (exhaustive, CPU path) into a fresh bundle: its path,
    wall seconds and peak RSS."""
    out = os.path.join(work, f"cost-{name}-{len(models)}")
    cmd = [b, "analyze", "--backend", "cpu", "--out", out, "--models", *models,
           "--tokens", tokens]
    subprocess.run(["rm", "-rf", out], check=True)
    _, _, wall, rss = timed(cmd)
    print(f"{name}, {len(models)} seeds: {wall:.1f} s wall, peak RSS {rss / 2**30:.2f} GiB",
          file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "seedscope-scale"))
    ap.add_argument("--sizes", default="embedded,l2,l12")
    ap.add_argument("--seeds", default="2,3,4,5", help="seed counts of the embedded family")
    ap.add_argument("--figures", default=None, help="draw the table here too (PNG + SVG)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    b = binary()
    embedded_tokens = os.path.join(ROOT, "assets", "family", "eval_tokens.npy")
    bundles = []
    for name in args.sizes.split(","):
        models, tokens, _ = family(args.work, name)
        counts = [int(k) for k in args.seeds.split(",")] if name == "embedded" else [5]
        for k in counts:
            bundles.append(analyze(b, args.work, name, models[:k], tokens or embedded_tokens))
    cmd = [b, "cost", *bundles] + (["--out", args.figures] if args.figures else [])
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
