#!/usr/bin/env python3
"""End-to-end `seedscope analyze` on the embedded family against a straightforward PyTorch +
numpy pipeline doing the same work, in the same run.

The reference pipeline: load the five seeds with transformers (fp32), run them over
assets/family/eval_tokens.npy in batches, capture post-GELU MLP activations with forward hooks,
drop BOS and newline positions, then in float64 numpy: z-score, anchor x other correlations
(all layers x all layers), the per-layer unit-row Gaussian rotation baseline, max over the
other model, mean over models, excess and the fraction universal. Seedscope runs the same
(`seedscope analyze --backend cpu|wgpu`). Prints wall-clock seconds, the ratio, and both
fractions universal (the rotation matrices differ, so they agree only statistically).

Usage (pinned env: scripts/requirements-fixtures.txt; build first: cargo build --release):
    .venv/bin/python scripts/bench_analyze.py [--backend cpu] [--max-tokens N]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quick_universality import excess_correlation  # noqa: E402

SEEDS = ["seed-a", "seed-b", "seed-c", "seed-d", "seed-e"]


def reference(family, tokens, max_tokens, threshold=0.5, seed=0):
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(os.path.join(family, SEEDS[0], "tokenizer.json"))
    drop = {tok.token_to_id("<|endoftext|>")} | set(tok.encode("\n", add_special_tokens=False).ids)
    keep = ~np.isin(tokens, list(drop))
    acts = []
    for name in SEEDS:
        model = GPT2LMHeadModel.from_pretrained(os.path.join(family, name), attn_implementation="eager").eval()
        captured = {}
        hooks = [b.mlp.act.register_forward_hook(lambda _m, _i, o, l=l: captured.__setitem__(l, o))
                 for l, b in enumerate(model.transformer.h)]
        rows = []
        with torch.no_grad():
            for i in range(0, len(tokens), 32):
                batch = torch.from_numpy(tokens[i:i + 32].astype(np.int64))
                model.transformer(batch)
                x = torch.cat([captured[l] for l in range(len(hooks))], -1).numpy()
                rows.append(x[keep[i:i + 32]])
        for h in hooks:
            h.remove()
        a = np.concatenate(rows).astype(np.float64)
        acts.append(a[:max_tokens] if max_tokens else a)
    n_layers = len(model.transformer.h)
    d = acts[0].shape[1] // n_layers

    mean_corr, mean_base = excess_correlation(acts[0], acts[1:], n_layers, d,
                                              np.random.default_rng(seed))
    excess = mean_corr - mean_base
    return time.perf_counter() - t0, float((excess > threshold).mean()), acts[0].shape[0]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/seedscope-target"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--seedscope", default=os.path.join(target, "release", "seedscope"))
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--max-tokens", type=int, default=0)
    args = ap.parse_args()
    family = os.path.join(root, "assets", "family")
    tokens = np.load(os.path.join(family, "eval_tokens.npy"))
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}")
    ref_s, ref_frac, n = reference(family, tokens, args.max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bundle")
        cmd = [args.seedscope, "analyze", "--out", out, "--backend", args.backend]
        if args.max_tokens:
            cmd += ["--max-tokens", str(args.max_tokens)]
        t = time.perf_counter()
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        ours = time.perf_counter() - t
        import json
        manifest = json.load(open(os.path.join(out, "manifest.json")))
    print(f"{n} tokens, 5 seeds, anchor seed-a")
    print(f"pytorch+numpy: {ref_s:7.1f} s, {100 * ref_frac:.2f}% universal")
    print(f"seedscope ({args.backend}): {ours:7.1f} s, {100 * manifest['fraction_universal']:.2f}% universal "
          f"({manifest['device']})")
    print(f"speed ratio seedscope / pytorch+numpy: {ref_s / ours:.2f}x")


if __name__ == "__main__":
    main()
