#!/usr/bin/env python3
"""Correlation-update throughput: Seedscope's CPU path and WGSL kernels against numpy X.T @ Y.

For each shape (rows = tokens per block, n_a anchor neurons, n_b other neurons) this writes two
random float32 matrices with large means to a temporary directory, times numpy's `A.T @ B`
(OpenBLAS, all cores) on them, then runs `seedscope bench-correlation` on the same files and
prints GFLOP/s (2 * rows * n_a * n_b per update) and the ratio Seedscope / numpy. Seedscope's
update does more than the GEMM: block means, centring, and the compensated merge.

Usage (pinned env: scripts/requirements-fixtures.txt; build first: cargo build --release):
    .venv/bin/python scripts/bench_correlation.py [--paths cpu,gemm,matrixmultiply,wgpu] [--shapes 4096x1024x1024]
`gemm` times the CPU update's GEMM alone (the `gemm` crate, as the update calls it): a reference
for what the update spends beyond its GEMM (block means, centring, the f64 merge).
`matrixmultiply` times the same product with ndarray's matrixmultiply (the update's GEMM before
the `gemm` crate), for comparison.
Runs on a shared host vary from one second to the next, so each shape is timed in `--rounds`
rounds, numpy then Seedscope in each, and the line gives the median of the rounds' ratios (and
their range) next to the median rates.
`wgpu` runs the device's fastest co-moment kernel (cooperative matrices with f16 inputs where the
adapter has them), `wgpu-fp32` the f32 kernel on the same device; with both, the line of `wgpu`
also gives its ratio to `wgpu-fp32`. `--peak-tflops P` (the device's data-sheet peak) adds the
fraction of it reached.
On lavapipe (software Vulkan) keep wgpu shapes small: --wgpu-shapes 1024x256x256.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np


def numpy_gflops(a, b, iters):
    a.T @ b  # warm-up
    t = time.perf_counter()
    for _ in range(iters):
        a.T @ b
    secs = (time.perf_counter() - t) / iters
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / secs / 1e9


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/seedscope-target"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--seedscope", default=os.path.join(target, "release", "seedscope"))
    ap.add_argument("--shapes", default="4096x1024x1024,4096x3072x3072")
    ap.add_argument("--wgpu-shapes", default="1024x256x256")
    ap.add_argument("--paths", default="cpu,wgpu")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    paths = args.paths.split(",")
    jobs = [(s, p) for s in args.shapes.split(",") for p in ("cpu", "gemm", "matrixmultiply")
            if p in paths]
    jobs += [(s, p) for s in args.wgpu_shapes.split(",") for p in ("wgpu-fp32", "wgpu")
             if p in paths]
    fp32 = {}
    print(f"numpy {np.__version__}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for shape, path in jobs:
            rows, na, nb = (int(x) for x in shape.split("x"))
            a = (rng.standard_normal((rows, na)) + 100.0).astype(np.float32)
            b = (rng.standard_normal((rows, nb)) - 50.0).astype(np.float32)
            pa, pb = os.path.join(tmp, "a.npy"), os.path.join(tmp, "b.npy")
            np.save(pa, a)
            np.save(pb, b)
            cmd = [args.seedscope, "bench-correlation", "--a", pa, "--b", pb,
                   "--paths", path, "--iters", str(args.iters)]
            if args.peak_tflops:
                cmd += ["--peak-tflops", str(args.peak_tflops)]
            refs, runs = [], []
            for _ in range(args.rounds):
                refs.append(numpy_gflops(a, b, args.iters))
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            ratios = sorted(r["gflops"] / ref for r, ref in zip(runs, refs))
            ratio = float(np.median(ratios))
            ref = float(np.median(refs))
            # The round whose rate is the median stands for the path (device name, peak share).
            r = sorted(runs, key=lambda x: x["gflops"])[len(runs) // 2]
            extra = ""
            if "of_peak" in r:
                extra += f", {100 * r['of_peak']:.1f} % of peak"
            if path == "wgpu-fp32":
                fp32[shape] = r["gflops"]
            elif path == "wgpu" and shape in fp32:
                extra += f", {r['gflops'] / fp32[shape]:.2f}x the f32 kernel"
            print(f"{shape:>18} {path:>14}: seedscope {r['gflops']:7.2f} GFLOP/s ({r['device']}), "
                  f"numpy {ref:7.2f} GFLOP/s, ratio {ratio:.2f} "
                  f"(rounds {ratios[0]:.2f}–{ratios[-1]:.2f}){extra}")


if __name__ == "__main__":
    main()
