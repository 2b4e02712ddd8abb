"""A GPT-2-small-shaped random-weight seed family for scale benchmarks (not committed: ~220 MB
per model in f32).

Every model has GPT-2 small's widths (d_model 768, 12 heads, d_mlp 3072, vocab 50257, context
1024) and `--layers` blocks (12 for the real shape; fewer to fit a CPU). Random weights alone
give no universality, so the family is built to have a known amount of it:

- seed-a: a fresh GPT-2 initialisation (std 0.02, as transformers does);
- seed-b, seed-c: seed-a with every layer's MLP neurons permuted and Gaussian noise added, a
  different noise level per neuron (from 0 to 3x the weights' scale), so some neurons have a
  near-copy in the other model and others have none;
- seed-d, seed-e: independent initialisations (no counterpart at all).

Also writes `tokens.npy` (int32 [rows, 256], Zipf-distributed ids, seeded).

    .venv/bin/python scripts/make_gpt2_small_family.py --out /tmp/gpt2s --layers 2
"""

import argparse
import os

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def variant(base, seed, rng):
    model = GPT2LMHeadModel(base.config)
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.transformer.h:
            d = block.mlp.c_fc.weight.shape[1]
            perm = torch.randperm(d, generator=g)
            scale = torch.rand(d, generator=g) * 3.0
            w_in = block.mlp.c_fc.weight[:, perm]
            b_in = block.mlp.c_fc.bias[perm]
            w_out = block.mlp.c_proj.weight[perm, :]
            w_in = w_in + torch.randn(w_in.shape, generator=g) * w_in.std() * scale[None, :]
            w_out = w_out + torch.randn(w_out.shape, generator=g) * w_out.std() * scale[:, None]
            block.mlp.c_fc.weight.copy_(w_in)
            block.mlp.c_fc.bias.copy_(b_in)
            block.mlp.c_proj.weight.copy_(w_out)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    config = GPT2Config(
        n_layer=args.layers,
        n_embd=768,
        n_head=12,
        n_inner=3072,
        vocab_size=50257,
        n_positions=1024,
        activation_function="gelu_new",
    )
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    a = GPT2LMHeadModel(config)
    models = {"seed-a": a, "seed-b": variant(a, 1, rng), "seed-c": variant(a, 2, rng)}
    for name, seed in [("seed-d", 3), ("seed-e", 4)]:
        torch.manual_seed(seed)
        models[name] = GPT2LMHeadModel(config)
    for name, m in models.items():
        m.save_pretrained(os.path.join(args.out, name), safe_serialization=True)
    ids = np.minimum(rng.zipf(1.2, size=(args.rows, args.seq_len)) - 1, 50256).astype(np.int32)
    ids[:, 0] = 50256
    np.save(os.path.join(args.out, "tokens.npy"), ids)
    print(f"wrote {len(models)} models and tokens {ids.shape} to {args.out}")


if __name__ == "__main__":
    main()
