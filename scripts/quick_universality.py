#!/usr/bin/env python3
"""A quick numpy check of universality in a seed family (before the WGSL engine exists).

    .venv/bin/python scripts/quick_universality.py ANCHOR_DIR OTHER_DIR [OTHER_DIR ...]
        [--chars 200000] [--seq-len 128] [--seed 0]

Runs `seedscope activations` for every model over the head of the evaluation corpus, drops the
BOS position of each row, and computes, as the paper's code does (PAPER.md §2): the Pearson
correlation of every anchor neuron with every neuron (all layers) of each other model, the same
against a per-layer unit-row Gaussian mixture of the other model's neurons (the "rotation"
baseline, seeded here), max over the other model's units, mean over other models, and
excess = mean_corr - mean_baseline. Prints the fraction of anchor neurons with excess > 0.5
(and > 0.3), the mean baseline and the mean activation frequency (fraction of tokens with a
positive post-activation), overall and per layer. Accumulates in float64.
"""
import argparse
import gzip
import os
import subprocess
import tempfile

import numpy as np
from safetensors.numpy import load_file


def activations(seedscope, model, text_path, seq_len, tmp, tag):
    out = os.path.join(tmp, f"{tag}.safetensors")
    subprocess.run([seedscope, "activations", "--model", model, "--text", text_path, "--seq-len",
                    str(seq_len), "--backend", "cpu", "--out", out], check=True,
                   stderr=subprocess.DEVNULL)
    t = load_file(out)
    layers = sorted(int(k.split(".")[1]) for k in t if k.endswith("hook_post"))
    # [n_layers, rows, seq, d_mlp] -> drop BOS -> [n_tokens, n_layers * d_mlp]
    acts = np.stack([t[f"blocks.{l}.mlp.hook_post"][:, 1:, :] for l in layers])
    n_layers, rows, seq, d = acts.shape
    return acts.transpose(1, 2, 0, 3).reshape(rows * seq, n_layers * d).astype(np.float64), n_layers, d


def zscore(x):
    x = x - x.mean(0)
    sd = np.sqrt((x ** 2).mean(0))
    return np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)


def excess_correlation(anchor, others, n_layers, d, rng):
    """Per anchor neuron (columns of `anchor`, [tokens, n_layers * d]): the mean over `others`
    of the max Pearson correlation with any of their neurons, and the same against each other
    model's neurons mixed per layer by a unit-row Gaussian matrix from `rng` (the rotation
    baseline). Returns (mean_corr, mean_baseline); excess = mean_corr - mean_baseline."""
    za = zscore(anchor)
    n = anchor.shape[0]
    maxes, bases = [], []
    for other in others:
        maxes.append(np.nan_to_num(za.T @ zscore(other) / n).max(1))
        rotated = []
        for l in range(n_layers):
            r = rng.standard_normal((d, d))
            r /= np.linalg.norm(r, axis=1, keepdims=True)
            rotated.append(other[:, l * d:(l + 1) * d] @ r.T)
        bases.append((za.T @ zscore(np.concatenate(rotated, 1)) / n).max(1))
    return np.mean(maxes, 0), np.mean(bases, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--chars", type=int, default=200_000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/seedscope-target"))
    ap.add_argument("--seedscope", default=os.path.join(target, "release", "seedscope"))
    ap.add_argument("--eval", default=os.path.join(root, "assets", "corpus", "eval.txt.gz"))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        text = gzip.open(args.eval, "rt", encoding="utf-8").read()[: args.chars]
        text = text.replace("<|endoftext|>", "\n")
        text_path = os.path.join(tmp, "eval.txt")
        open(text_path, "w", encoding="utf-8").write(text)
        anchor, n_layers, d = activations(args.seedscope, args.models[0], text_path, args.seq_len, tmp, "a")
        others = [activations(args.seedscope, m, text_path, args.seq_len, tmp, f"m{k}")[0]
                  for k, m in enumerate(args.models[1:])]
        n = anchor.shape[0]
        mean_corr, mean_base = excess_correlation(anchor, others, n_layers, d, rng)
        excess = mean_corr - mean_base
        freq = (anchor > 0).mean(0)
        print(f"{n} tokens, anchor {args.models[0]}, {len(args.models) - 1} other model(s)")
        print(f"all: universal (excess > 0.5) {np.mean(excess > 0.5):.2%}, excess > 0.3 "
              f"{np.mean(excess > 0.3):.2%}, mean max corr {mean_corr.mean():.3f}, "
              f"mean baseline {mean_base.mean():.3f}, activation frequency {freq.mean():.3f}")
        for l in range(n_layers):
            s = slice(l * d, (l + 1) * d)
            print(f"layer {l}: universal {np.mean(excess[s] > 0.5):.2%}, excess > 0.3 "
                  f"{np.mean(excess[s] > 0.3):.2%}, baseline {mean_base[s].mean():.3f}, "
                  f"frequency {freq[s].mean():.3f}")


if __name__ == "__main__":
    main()
