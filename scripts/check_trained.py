#!/usr/bin/env python3
"""Check that a directory written by `seedscope train` loads in transformers and gives the same
logits as Seedscope.

    .venv/bin/python scripts/check_trained.py DIR [--seedscope PATH]

Loads DIR with GPT2LMHeadModel.from_pretrained, runs it on a fixed token batch, runs
`seedscope activations --logits --backend cpu` on the same tokens, and prints the largest
absolute logit difference (exit 1 above 1.5e-4, ten times what the shipped seeds give).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/seedscope-target"))
    ap.add_argument("--seedscope", default=os.path.join(target, "release", "seedscope"))
    args = ap.parse_args()
    model = GPT2LMHeadModel.from_pretrained(args.dir, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (2, min(64, model.config.n_positions)), generator=gen)
    with torch.no_grad():
        ref = model(tokens).logits.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        npy, out = os.path.join(tmp, "t.npy"), os.path.join(tmp, "o.safetensors")
        np.save(npy, tokens.numpy().astype(np.int64))
        subprocess.run([args.seedscope, "activations", "--model", args.dir, "--tokens", npy, "--out", out,
                        "--logits", "--backend", "cpu"], check=True, stderr=subprocess.DEVNULL)
        ours = load_file(out)["logits"]
    err = float(np.abs(ours - ref).max())
    print(f"{args.dir}: transformers loads it; max |logit difference| vs Seedscope {err:.2e}")
    sys.exit(0 if err < 1.5e-4 else 1)


if __name__ == "__main__":
    main()
