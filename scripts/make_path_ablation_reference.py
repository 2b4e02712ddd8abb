#!/usr/bin/env python3
"""Write the reference for the query-only path ablation into
tests/fixtures/analysis/path_ablation.json.

gpt2-plain (eager attention, float32) runs over tests/fixtures/analysis/tokens.npy. Neuron
L0.7's contribution act * W_out[7] is subtracted from the residual stream entering layer 1 for
the query of head L1H1 only (keys and values from the unmodified stream), as the paper's
attention_deactivation.py does. At positions [seq/4, seq) (the paper: 64..256 of 256) it
records, in float64: the neuron's activation, the head's attention to position 0 and the norm
of its output z (before W_O), unmodified and ablated. Run with the pinned environment in
scripts/requirements-fixtures.txt; CI never runs this.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_analysis_reference import OUT, ROOT  # noqa: E402

NEURON_LAYER, NEURON, ATTN_LAYER, HEAD = 0, 7, 1, 1


def main():
    tokens = np.load(OUT / "tokens.npy")
    model = GPT2LMHeadModel.from_pretrained(ROOT / "gpt2-plain", attn_implementation="eager",
                                            torch_dtype=torch.float32).eval()
    acts = {}
    hook = model.transformer.h[NEURON_LAYER].mlp.act.register_forward_hook(
        lambda _m, _i, o: acts.__setitem__("post", o.detach()))
    with torch.no_grad():
        out = model(torch.from_numpy(tokens.astype(np.int64)), output_hidden_states=True)
    hook.remove()
    resid = out.hidden_states[ATTN_LAYER].double()  # the residual stream entering layer 1
    act = acts["post"][..., NEURON].double()
    w_out = model.transformer.h[NEURON_LAYER].mlp.c_proj.weight.detach().double()[NEURON]
    contribution = act[..., None] * w_out
    block = model.transformer.h[ATTN_LAYER].double()
    d = resid.shape[-1]
    n_head = model.config.n_head
    dh = d // n_head

    def qkv(x):
        y = block.attn.c_attn(block.ln_1(x))
        q, k, v = y.split(d, dim=-1)
        split = lambda t: t.view(*t.shape[:2], n_head, dh).transpose(1, 2)[:, HEAD]  # noqa: E731
        return split(q), split(k), split(v)

    with torch.no_grad():
        q, k, v = qkv(resid)
        q_abl, _, _ = qkv(resid - contribution)
        s = resid.shape[1]
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)

        def stats(q):
            scores = (q @ k.transpose(-1, -2)) / np.sqrt(dh)
            p = torch.softmax(scores.masked_fill(mask, float("-inf")), -1)
            return p[..., 0], (p @ v).norm(dim=-1)

        bos, zn = stats(q)
        bos_a, zn_a = stats(q_abl)
    lo = s // 4
    sl = lambda t: t[:, lo:].numpy()  # noqa: E731
    a, b, ba, z, za = sl(act), sl(bos), sl(bos_a), sl(zn), sl(zn_a)
    out = {
        "neuron": [NEURON_LAYER, NEURON], "head": [ATTN_LAYER, HEAD], "positions": [lo, s],
        "n_tokens": int(a.size),
        "mean_activation": float(a.mean()),
        "mean_bos_attention": float(b.mean()), "mean_bos_attention_ablated": float(ba.mean()),
        "mean_z_norm": float(z.mean()), "mean_z_norm_ablated": float(za.mean()),
        "corr_activation_bos_change": float(np.corrcoef(a.ravel(), (ba - b).ravel())[0, 1]),
        "corr_activation_norm_change": float(np.corrcoef(a.ravel(), (za - z).ravel())[0, 1]),
    }
    (OUT / "path_ablation.json").write_text(json.dumps(out, indent=1))
    print(out)


if __name__ == "__main__":
    main()
