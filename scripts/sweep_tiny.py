#!/usr/bin/env python3
"""A quick PyTorch probe of a training choice for the embedded family: which settings give tiny
GPT-2 seeds more universal neurons at the token budget a 2-core machine affords?

    .venv/bin/python scripts/sweep_tiny.py NAME [key=value ...] >> results.jsonl
    keys: layers d_model d_mlp heads n_ctx lr wd beta2 batch warmup tokens seeds

Trains `seeds` GPT-2s (transformers' GPT2LMHeadModel, one thread, seeds 0..) on the bundled
corpus with the family's tokenizer and `seedscope train`'s recipe (AdamW β1 0.9, weight decay on
matrices, linear warm-up then cosine to 10 %, gradient clipping at 1, no dropout; windows of
n_ctx + 1 tokens in a seeded random order), then on 240 held-out rows of
assets/family/eval_tokens.npy (BOS and newline positions dropped, ~27 k tokens) computes, as
PAPER.md §2: max Pearson correlation of every seed-0 neuron over all neurons of each other seed,
the same against a per-layer unit-row Gaussian mixture (the rotation baseline), and
excess = mean_corr - mean_baseline. Prints one JSON line: eval loss per seed, mean_corr,
mean_baseline, the fraction with excess > 0.5 (and > 0.3), per layer, and the activation
frequency. Exploratory only: the shipped family is trained by `seedscope train`.
"""
import gzip, json, math, os, sys, time
import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quick_universality import excess_correlation  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
name = sys.argv[1]
cfg = dict(layers=2, d_model=128, d_mlp=512, lr=3e-3, wd=0.1, batch=32, tokens=3.3e6, seeds=2,
           beta2=0.95, warmup=100, n_ctx=128, heads=4)
for kv in sys.argv[2:]:
    k, v = kv.split("=")
    cfg[k] = type(cfg[k])(float(v)) if isinstance(cfg[k], float) else int(float(v))

tok = Tokenizer.from_file(f"{ROOT}/assets/family/tokenizer.json")
text = gzip.open(f"{ROOT}/assets/corpus/train.txt.gz", "rt", encoding="utf-8").read()
stream = []
for work in text.split("<|endoftext|>"):
    if work.strip():
        stream += tok.encode(work).ids + [0]
stream = np.array(stream, dtype=np.int64)
W = cfg["n_ctx"] + 1
windows = torch.from_numpy(stream[: len(stream) // W * W].reshape(-1, W))
steps = int(cfg["tokens"] // (cfg["batch"] * cfg["n_ctx"]))

ev = np.load(f"{ROOT}/assets/family/eval_tokens.npy").astype(np.int64)
ev_loss_rows = torch.from_numpy(ev[:400])
act_rows = torch.from_numpy(ev[400:640])  # 30 k tokens for correlations
keep = ~np.isin(act_rows.numpy(), [0, 199]).reshape(-1)


def train(seed):
    torch.manual_seed(seed)
    conf = GPT2Config(vocab_size=4096, n_positions=cfg["n_ctx"], n_embd=cfg["d_model"],
                      n_layer=cfg["layers"], n_head=cfg["heads"], n_inner=cfg["d_mlp"],
                      resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=0)
    m = GPT2LMHeadModel(conf)
    decay = [p for n, p in m.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in m.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["wd"]},
                             {"params": nodecay, "weight_decay": 0.0}], lr=cfg["lr"],
                            betas=(0.9, cfg["beta2"]))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=g)
    pos = 0
    t0 = time.time()
    for step in range(steps):
        if step < cfg["warmup"]:
            lr = cfg["lr"] * (step + 1) / cfg["warmup"]
        else:
            p = (step - cfg["warmup"]) / max(1, steps - cfg["warmup"])
            lr = cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
        for gr in opt.param_groups:
            gr["lr"] = lr
        if pos + cfg["batch"] > len(order):
            order = torch.randperm(len(windows), generator=g)
            pos = 0
        b = windows[order[pos:pos + cfg["batch"]]]
        pos += cfg["batch"]
        out = m(b[:, :-1], labels=b[:, :-1])  # HF shifts labels itself
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    m.eval()
    with torch.no_grad():
        losses = [m(ev_loss_rows[i:i + 50], labels=ev_loss_rows[i:i + 50]).loss.item()
                  for i in range(0, len(ev_loss_rows), 50)]
        acts = []
        hooks = [blk.mlp.act.register_forward_hook(lambda mod, i, o: acts.append(o))
                 for blk in m.transformer.h]
        per_layer = [[] for _ in m.transformer.h]
        for i in range(0, len(act_rows), 40):
            acts.clear()
            m(act_rows[i:i + 40])
            for l, a in enumerate(acts):
                per_layer[l].append(a.reshape(-1, a.shape[-1]).double().numpy())
        for h in hooks:
            h.remove()
    A = np.concatenate([np.concatenate(p)[keep] for p in per_layer], axis=1)
    return float(np.mean(losses)), A, time.time() - t0


res = [train(s) for s in range(cfg["seeds"])]
L, d = cfg["layers"], cfg["d_mlp"]
mc, mb = excess_correlation(res[0][1], [r[1] for r in res[1:]], L, d, np.random.default_rng(0))
ex = mc - mb
freq = (res[0][1] > 0).mean(0)
out = dict(name=name, cfg=cfg, steps=steps, eval_loss=[r[0] for r in res],
           train_s=[round(r[2]) for r in res], mean_corr=mc.mean(), mean_baseline=mb.mean(),
           universal=float((ex > 0.5).mean()), over03=float((ex > 0.3).mean()),
           per_layer_universal=[float((ex[l * d:(l + 1) * d] > 0.5).mean()) for l in range(L)],
           per_layer_baseline=[float(mb[l * d:(l + 1) * d].mean()) for l in range(L)],
           freq=float(freq.mean()), n_tokens=int(res[0][1].shape[0]))
print(json.dumps(out))
