#!/usr/bin/env python3
"""Write the reference for `seedscope intervene` into tests/fixtures/analysis/interventions.json.

gpt2-plain runs (eager attention, float32) over tests/fixtures/analysis/tokens.npy with neuron
L1.5's post-GELU activation fixed to each value at every position (a forward hook on
`mlp.act`). Over the positions that have a next token and whose token is not BOS, in float64:
the final LayerNorm scale sqrt(var(x) + eps) of ln_f's input, the entropy -sum p log p of the
next-token distribution, the cross-entropy of the true next token and 1 / (rank + 1) of it
(rank: how many logits are strictly larger). Run with the pinned environment in
scripts/requirements-fixtures.txt; CI never runs this.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_analysis_reference import OUT, ROOT  # noqa: E402

LAYER, NEURON, VALUES = 1, 5, [None, 0.0, 3.0]


def metrics(model, tokens, bos, value):
    hooks = []
    if value is not None:
        def patch(_m, _i, o):
            o = o.clone()
            o[..., NEURON] = value
            return o
        hooks.append(model.transformer.h[LAYER].mlp.act.register_forward_hook(patch))
    captured = {}
    hooks.append(model.transformer.ln_f.register_forward_hook(
        lambda _m, i, _o: captured.__setitem__("x", i[0].detach().double())))
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens.astype(np.int64))).logits.double()
    for h in hooks:
        h.remove()
    x = captured["x"]
    eps = model.config.layer_norm_epsilon
    scale = torch.sqrt(((x - x.mean(-1, keepdim=True)) ** 2).mean(-1) + eps)[:, :-1]
    lg = logits[:, :-1]
    lsm = torch.log_softmax(lg, -1)
    entropy = -(lsm.exp() * lsm).sum(-1)
    nxt = torch.from_numpy(tokens[:, 1:].astype(np.int64))
    loss = -lsm.gather(-1, nxt[..., None])[..., 0]
    target = lg.gather(-1, nxt[..., None])
    rank = (lg > target).sum(-1).double()
    valid = torch.from_numpy(tokens[:, :-1] != bos)
    m = lambda t: float(t[valid].mean())  # noqa: E731
    return {"scale": m(scale), "entropy": m(entropy), "loss": m(loss),
            "reciprocal_rank": m(1.0 / (rank + 1.0)), "n_tokens": int(valid.sum())}


def main():
    tokens = np.load(OUT / "tokens.npy")
    tok = Tokenizer.from_file(str(ROOT / "gpt2-plain" / "tokenizer.json"))
    bos = tok.token_to_id("<|endoftext|>")
    model = GPT2LMHeadModel.from_pretrained(ROOT / "gpt2-plain", attn_implementation="eager",
                                            torch_dtype=torch.float32).eval()
    out = {"layer": LAYER, "neuron": NEURON,
           "values": [v for v in VALUES if v is not None],
           "nominal": metrics(model, tokens, bos, None),
           "patched": [metrics(model, tokens, bos, v) for v in VALUES if v is not None]}
    (OUT / "interventions.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out["nominal"]), [p["scale"] for p in out["patched"]])


if __name__ == "__main__":
    main()
