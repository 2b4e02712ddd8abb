#!/usr/bin/env python3
"""Write the numpy reference for the neuron anatomy into tests/fixtures/analysis/anatomy.safetensors.

The anchor (gpt2-plain) runs over tests/fixtures/analysis/tokens.npy as in
make_analysis_reference.py; at the kept positions (neither BOS nor newline) its post-GELU
activations v give, in float64:

  vr_pop.{f}     [n_neurons] eq. 4 of the paper with population variances,
                 1 - [(1-b) Var(v|y=0) + b Var(v|y=1)] / Var(v)
  vr_pandas.{f}  the same with pandas' ddof=1 in each group and overall (the paper's code)
  top_val, top_idx   [n_neurons, 20] largest activations (ties: earlier token first) and their
                     token index row * seq_len + position
  pos_mi         [n_neurons] mutual information (nats) of v > 0 with the position, each
                 position weighted by its share of kept tokens
  tok_mean       [n_tokens_counted, n_neurons] mean activation per token id with >= 2 kept
                 occurrences (ids in tok_ids)

for features given as token-id sets (metadata `current` / `previous`: JSON lists of id lists);
a previous-token feature is on where the token before (in the same row) is in its set.
Run with the pinned environment in scripts/requirements-fixtures.txt; CI never runs this.
"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_analysis_reference import MODELS, OUT, ROOT, activations  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

K = 20


def vr(v: np.ndarray, y: np.ndarray, ddof: int) -> np.ndarray:
    """Variance explained per neuron (columns of v) by the boolean y."""
    n1 = int(y.sum())
    n = len(y)
    if n1 == 0 or n1 == n or (ddof and (n1 < 2 or n - n1 < 2)):
        return np.zeros(v.shape[1])
    b = n1 / n
    total = v.var(0, ddof=ddof)
    within = (1 - b) * v[~y].var(0, ddof=ddof) + b * v[y].var(0, ddof=ddof)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1 - within / total
    out[~np.isfinite(out)] = 0.0
    return out


def main() -> None:
    tokens = np.load(OUT / "tokens.npy")
    tok = Tokenizer.from_file(str(ROOT / MODELS[0] / "tokenizer.json"))
    bos = tok.token_to_id("<|endoftext|>")
    newline = tok.encode("\n", add_special_tokens=False).ids[0]
    keep = (tokens != bos) & (tokens != newline)
    acts = activations(MODELS[0], tokens)  # [rows, seq, neurons]
    rows, seq = tokens.shape
    v = acts[keep]
    cur = tokens[keep]
    prev_all = np.full_like(tokens, -1)
    prev_all[:, 1:] = tokens[:, :-1]
    prev = prev_all[keep]
    pos = np.broadcast_to(np.arange(seq), tokens.shape)[keep]
    index = (np.arange(rows)[:, None] * seq + np.arange(seq)[None, :])[keep]

    rng = np.random.default_rng(1)
    vocab = tok.get_vocab_size()
    counts = np.bincount(cur, minlength=vocab)
    frequent = int(np.argmax(counts))
    current = [
        [frequent],
        sorted(rng.choice(vocab, 5, replace=False).tolist()),
        sorted(rng.choice(vocab, 60, replace=False).tolist()),
        sorted(rng.choice(vocab, vocab // 2, replace=False).tolist()),
        [],  # never on: variance explained 0
    ]
    previous = [
        sorted(rng.choice(vocab, 8, replace=False).tolist()),
        sorted(rng.choice(vocab, vocab // 3, replace=False).tolist()),
    ]
    out = {}
    f = 0
    for s in current:
        y = np.isin(cur, s)
        out[f"vr_pop.{f}"] = vr(v, y, 0)
        out[f"vr_pandas.{f}"] = vr(v, y, 1)
        f += 1
    for s in previous:
        y = np.isin(prev, s)
        out[f"vr_pop.{f}"] = vr(v, y, 0)
        out[f"vr_pandas.{f}"] = vr(v, y, 1)
        f += 1

    n = v.shape[1]
    top_val = np.zeros((n, K))
    top_idx = np.zeros((n, K), np.int64)
    for j in range(n):
        order = np.lexsort((index, -v[:, j]))[:K]
        top_val[j] = v[order, j]
        top_idx[j] = index[order]
    out["top_val"] = top_val.astype(np.float32)
    out["top_idx"] = top_idx

    active = v > 0
    p = active.mean(0)
    mi = np.zeros(n)
    eps = 1e-9
    for t in range(seq):
        at = pos == t
        if not at.any():
            continue
        pt = active[at].mean(0)
        w = at.sum() / len(pos)
        mi += w * (pt * np.log((pt + eps) / (p + eps)) + (1 - pt) * np.log((1 - pt + eps) / (1 - p + eps)))
    out["pos_mi"] = mi

    tok_ids = np.nonzero(counts >= 2)[0]
    out["tok_ids"] = tok_ids.astype(np.int64)
    out["tok_mean"] = np.stack([v[cur == t].mean(0) for t in tok_ids]).astype(np.float32)
    meta = {"current": json.dumps(current), "previous": json.dumps(previous)}
    save_file(out, str(OUT / "anatomy.safetensors"), metadata=meta)
    diff = max(np.abs(out[f"vr_pop.{i}"] - out[f"vr_pandas.{i}"]).max() for i in range(f))
    print(f"{len(cur)} kept tokens, {f} features, {len(tok_ids)} counted tokens; "
          f"max |vr_pop - vr_pandas| = {diff:.2e}")


if __name__ == "__main__":
    main()
