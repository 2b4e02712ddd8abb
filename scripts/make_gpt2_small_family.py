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

Also writes `tokens.npy` (int32 [rows, 256], Zipf-distributed ids, seeded) and `planted.npz`:
for seed-b and seed-c, per layer, `{name}_twin[l, i]` = the neuron of that seed made from
seed-a's neuron i and `{name}_noise[l, i]` its noise level (0: an exact copy).

With `--crfm-cache DIR` the five models are also written in the Stanford CRFM form (fp16
`pytorch_model.bin`, `scale_attn_by_inverse_layer_idx` and `reorder_and_upcast_attn` set) laid
out as a Hugging Face cache (`DIR/models--seedscope-bench--gpt2-small-{a..e}/snapshots/...`), so
`--models seedscope-bench/gpt2-small-a,...` resolves offline with `HF_HUB_CACHE=DIR`. (Those
flags change the attention, so that family's numbers are its own.)

    .venv/bin/python scripts/make_gpt2_small_family.py --out /tmp/gpt2s --layers 12
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def variant(base, seed, rng, planted):
    """`base` with each layer's MLP neurons permuted and noised; `planted` gets, per layer, the
    permutation's inverse (where each of base's neurons went) and the noise levels."""
    model = GPT2LMHeadModel(base.config)
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    twins, noises = [], []
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
            # Neuron j of this model is base's neuron perm[j]: base's i went to inv[i].
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(d)
            twins.append(inv.numpy())
            noises.append(scale[inv].numpy())
    planted["twin"] = np.stack(twins).astype(np.int32)
    planted["noise"] = np.stack(noises).astype(np.float32)
    return model


def write_crfm_cache(models, cache, tokenizer):
    """The models as Stanford CRFM checkpoints (fp16 pytorch_model.bin, CRFM flags) in the
    Hugging Face cache layout."""
    tokenizer_files = sorted(os.listdir(tokenizer)) if tokenizer else []
    for name, m in models.items():
        repo = os.path.join(cache, f"models--seedscope-bench--gpt2-small-{name[-1]}")
        rev = "0" * 40
        snap = os.path.join(repo, "snapshots", rev)
        os.makedirs(snap, exist_ok=True)
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        with open(os.path.join(repo, "refs", "main"), "w") as f:
            f.write(rev)
        config = m.config.to_dict()
        config.update(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
                      torch_dtype="float16")
        with open(os.path.join(snap, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        # lm_head.weight is tied to wte (as the loader expects when it is absent).
        state = {k: v.half().contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}
        torch.save(state, os.path.join(snap, "pytorch_model.bin"))
        for f in tokenizer_files:
            shutil.copy(os.path.join(tokenizer, f), os.path.join(snap, f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--crfm-cache", help="also write the CRFM form as a Hugging Face cache here")
    ap.add_argument(
        "--tokenizer",
        help="a directory with GPT-2's tokenizer files (tokenizer.json, ...) to copy into every "
        "model (analyze reads the BOS and newline ids from it)",
    )
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
    planted = {"seed-b": {}, "seed-c": {}}
    models = {
        "seed-a": a,
        "seed-b": variant(a, 1, rng, planted["seed-b"]),
        "seed-c": variant(a, 2, rng, planted["seed-c"]),
    }
    for name, seed in [("seed-d", 3), ("seed-e", 4)]:
        torch.manual_seed(seed)
        models[name] = GPT2LMHeadModel(config)
    dtype = getattr(torch, args.dtype)
    tokenizer_files = sorted(os.listdir(args.tokenizer)) if args.tokenizer else []
    for name, m in models.items():
        m.to(dtype).save_pretrained(os.path.join(args.out, name), safe_serialization=True)
        m.to(torch.float32)
        for f in tokenizer_files:
            shutil.copy(os.path.join(args.tokenizer, f), os.path.join(args.out, name, f))
    os.makedirs(args.out, exist_ok=True)
    np.savez(
        os.path.join(args.out, "planted.npz"),
        **{f"{n}_{k}": v for n, p in planted.items() for k, v in p.items()},
    )
    if args.crfm_cache:
        write_crfm_cache(models, args.crfm_cache, args.tokenizer)
    ids = np.minimum(rng.zipf(1.2, size=(args.rows, args.seq_len)) - 1, 50256).astype(np.int32)
    ids[:, 0] = 50256
    np.save(os.path.join(args.out, "tokens.npy"), ids)
    print(f"wrote {len(models)} models and tokens {ids.shape} to {args.out}")


if __name__ == "__main__":
    main()
