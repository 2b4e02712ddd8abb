#!/usr/bin/env python3
"""End-to-end `seedscope analyze` on the embedded family (or another, --family) against a straightforward PyTorch +
numpy pipeline doing the paper's core work, in the same run.

The reference pipeline: load the five seeds with transformers (fp32), run them over
assets/family/eval_tokens.npy in batches up to the last MLP's activation (as Seedscope's pass
stops there), capture post-GELU MLP activations with forward hooks,
drop BOS and newline positions, then in numpy: z-score, anchor x other correlations (all layers
x all layers, every anchor neuron with every neuron of each other seed), the per-layer unit-row
Gaussian rotation baseline, max over the other model, mean over models, excess and the fraction
universal. The correlations run twice, accumulating in float64 (as the paper does) and in
float32; the forward is timed once and counted in both pipelines.

Seedscope (`seedscope analyze --backend cpu|wgpu`, wall clock of the whole process) does that
and more: it also counts pre-activation histograms, the anatomy (variance explained, examples,
position information), weight statistics and attention scores, and writes the bundle; its
correlations are f32 GEMMs of block-centred activations merged into f64 totals. So the ratios
understate what the same core work costs it. Prints seconds, both ratios and the fractions
universal (the rotation matrices differ, so they agree only statistically).

Usage (pinned env: scripts/requirements-fixtures.txt; build first: cargo build --release):
    .venv/bin/python scripts/bench_analyze.py [--backend cpu] [--max-tokens N]
        [--family DIR --tokens FILE.npy]
--family takes another five-seed family laid out as the embedded one (seed-a..seed-e, each with
its tokenizer.json), e.g. the 2-layer GPT-2-small-width family of scripts/bench_scale.py
(`--family WORK/l2 --tokens WORK/l2/tokens-x4.npy`); both sides then read those tokens.
"""
import argparse
import json
import os
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


class Stop(Exception):
    """Raised by the hook on the last MLP's activation: the pass is done."""


def forward(family, tokens, max_tokens):
    """Every seed's post-GELU activations at the kept positions, [tokens, layers * d_mlp]."""
    tok = Tokenizer.from_file(os.path.join(family, SEEDS[0], "tokenizer.json"))
    drop = {tok.token_to_id("<|endoftext|>")} | set(tok.encode("\n", add_special_tokens=False).ids)
    keep = ~np.isin(tokens, list(drop))
    acts = []
    for name in SEEDS:
        model = GPT2LMHeadModel.from_pretrained(os.path.join(family, name), attn_implementation="eager").eval()
        captured = {}
        last = len(model.transformer.h) - 1

        def capture(_m, _i, o, l):
            captured[l] = o
            if l == last:
                raise Stop  # nothing after the last activation is needed

        hooks = [b.mlp.act.register_forward_hook(lambda m, i, o, l=l: capture(m, i, o, l))
                 for l, b in enumerate(model.transformer.h)]
        rows = []
        with torch.no_grad():
            for i in range(0, len(tokens), 32):
                batch = torch.from_numpy(tokens[i:i + 32].astype(np.int64))
                try:
                    model.transformer(batch)
                except Stop:
                    pass
                x = torch.cat([captured[l] for l in range(len(hooks))], -1).numpy()
                rows.append(x[keep[i:i + 32]])
        for h in hooks:
            h.remove()
        a = np.concatenate(rows)
        acts.append(a[:max_tokens] if max_tokens else a)
    return acts, len(model.transformer.h)


def correlations(acts, n_layers, dtype, threshold=0.5, seed=0):
    acts = [a.astype(dtype) for a in acts]
    d = acts[0].shape[1] // n_layers
    mean_corr, mean_base = excess_correlation(acts[0], acts[1:], n_layers, d,
                                              np.random.default_rng(seed))
    return float(((mean_corr - mean_base) > threshold).mean())


def timed(f, *args):
    t = time.perf_counter()
    out = f(*args)
    return time.perf_counter() - t, out


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/seedscope-target"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--seedscope", default=os.path.join(target, "release", "seedscope"))
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--max-tokens", type=int, default=0)
    ap.add_argument("--family", default=os.path.join(root, "assets", "family"))
    ap.add_argument("--tokens", help="token rows (.npy); default: the family's eval_tokens.npy")
    args = ap.parse_args()
    family = args.family
    tokens_path = args.tokens or os.path.join(family, "eval_tokens.npy")
    tokens = np.load(tokens_path)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}")
    fwd_s, (acts, n_layers) = timed(forward, family, tokens, args.max_tokens)
    f64_s, f64_frac = timed(correlations, acts, n_layers, np.float64)
    f32_s, f32_frac = timed(correlations, acts, n_layers, np.float32)
    n = acts[0].shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bundle")
        cmd = [args.seedscope, "analyze", "--out", out, "--backend", args.backend,
               "--models", *[os.path.join(family, name) for name in SEEDS], "--tokens", tokens_path]
        if args.max_tokens:
            cmd += ["--max-tokens", str(args.max_tokens)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        ours = time.perf_counter() - t
        manifest = json.load(open(os.path.join(out, "manifest.json")))
    print(f"{family}: {n} tokens, 5 seeds, {n_layers} layers x {acts[0].shape[1] // n_layers} neurons, anchor seed-a")
    print(f"pytorch forward: {fwd_s:7.1f} s")
    print(f"pytorch + numpy, float64 correlations (the paper): {fwd_s + f64_s:7.1f} s, {100 * f64_frac:.2f}% universal")
    print(f"pytorch + numpy, float32 correlations:             {fwd_s + f32_s:7.1f} s, {100 * f32_frac:.2f}% universal")
    print(f"seedscope analyze ({args.backend}, all of it):    {ours:7.1f} s, {100 * manifest['fraction_universal']:.2f}% universal "
          f"({manifest['device']})")
    print(f"speed ratio vs float64 pipeline: {(fwd_s + f64_s) / ours:.2f}x")
    print(f"speed ratio vs float32 pipeline: {(fwd_s + f32_s) / ours:.2f}x")


if __name__ == "__main__":
    main()
