"""The planted GPT-2-small-width reference (tests/fixtures/planted/reference.safetensors).

Three models of GPT-2 small's widths (d_model 768, 12 heads, d_mlp 3072) with 2 layers, a
512-token vocabulary and 64 positions. Their weights are not stored: both this script and the
Rust test (tests/planted.rs) compute them from a counter-based hash (splitmix64 of a key per
tensor and the element index), so the two sides build the same models bit for bit:

- seed-a: every weight uniform with std 0.02, biases 0, LayerNorms 1 / 0;
- seed-b: seed-a with each layer's MLP neurons permuted and noised: seed-a's neuron i becomes
  seed-b's neuron twin[l, i], its input and output weights plus uniform noise of std
  0.02 * level[l, i], level uniform in [0, MAX_LEVEL);
- seed-c: an independent initialisation.

The reference runs them with transformers over 12 rows x 32 tokens (BOS = id 0 first in each
row, dropped), captures the post-GELU activations and computes in float64 every seed-a neuron's
correlation with every neuron of seed-b and of seed-c: the maximum and where it is, and the
one-to-one matching: each other neuron's best seed-a neuron (`back_argmax`), the gaps between the
best and second-best correlation of each row and column (`row_gap`, `back_gap`: where they are
tiny, a float32 run may pick the other), `mutual_best`, and scipy's maximum-weight one-to-one
assignment of each layer's block (`partner`, its total `assign_total` [other, layer], and
`assignment_corr`, the mean correlation with the partners); and the permutation null
(`null_max_corr`): the best correlation with the other model's activations, each block of
BLOCK_ROWS rows with its kept tokens rotated as seedscope_analysis::engine::null_order does
(seed 0).

    .venv/bin/python scripts/make_planted_reference.py
"""
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from scipy.optimize import linear_sum_assignment
from transformers import GPT2Config, GPT2LMHeadModel

D, HEADS, D_MLP, LAYERS, VOCAB, POSITIONS = 768, 12, 3072, 2, 512, 64
ROWS, SEQ = 12, 32
# Noise levels are uniform below this: small enough that seed-b's later layers see nearly
# seed-a's residual stream (a larger level on every neuron scrambles the MLP's output, and
# with it every later layer's twins).
MAX_LEVEL = 0.3
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
BLOCK_ROWS = 4  # the test's blocks (tests/planted.rs)


def null_order(n, seed, r0):
    """seedscope_analysis::engine::null_order: a block's kept tokens rotated by a drawn offset."""
    if n < 2:
        return np.arange(n)
    s = min(32, n // 2)
    with np.errstate(over="ignore"):  # splitmix64 wraps
        base = int(splitmix(np.uint64(seed ^ 0x4E554C4C)))
        offset = s + int(splitmix(np.uint64(base ^ r0))) % (n - 2 * s + 1)
    return (np.arange(n) + offset) % n


def permuted(x, keep):
    """x (kept tokens, row-major) with each block's tokens in the null's order (seed 0)."""
    out, start = [], 0
    for r0 in range(0, keep.shape[0], BLOCK_ROWS):
        n = int(keep[r0:r0 + BLOCK_ROWS].sum())
        out.append(x[start:start + n][null_order(n, 0, r0)])
        start += n
    return np.concatenate(out)


def splitmix(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(seed, tensor, n):
    """n values in [0, 1) for tensor number `tensor` of model seed `seed` (53 bits)."""
    key = np.uint64((seed * 4096 + tensor) << 32)
    z = splitmix(np.arange(n, dtype=np.uint64) ^ key)
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def weight(seed, tensor, shape, std=0.02):
    u = uniform(seed, tensor, int(np.prod(shape)))
    return ((u - 0.5) * (std * np.sqrt(12.0))).reshape(shape).astype(np.float32)


def init(seed):
    """A model's weights in the Hugging Face GPT-2 layout (Conv1D: [in, out])."""
    w = {}
    t = iter(range(1000))
    w["transformer.wte.weight"] = weight(seed, next(t), (VOCAB, D))
    w["transformer.wpe.weight"] = weight(seed, next(t), (POSITIONS, D))
    for l in range(LAYERS):
        h = f"transformer.h.{l}"
        w[f"{h}.ln_1.weight"] = np.ones(D, np.float32)
        w[f"{h}.ln_1.bias"] = np.zeros(D, np.float32)
        w[f"{h}.attn.c_attn.weight"] = weight(seed, next(t), (D, 3 * D))
        w[f"{h}.attn.c_attn.bias"] = np.zeros(3 * D, np.float32)
        w[f"{h}.attn.c_proj.weight"] = weight(seed, next(t), (D, D))
        w[f"{h}.attn.c_proj.bias"] = np.zeros(D, np.float32)
        w[f"{h}.ln_2.weight"] = np.ones(D, np.float32)
        w[f"{h}.ln_2.bias"] = np.zeros(D, np.float32)
        w[f"{h}.mlp.c_fc.weight"] = weight(seed, next(t), (D, D_MLP))
        w[f"{h}.mlp.c_fc.bias"] = np.zeros(D_MLP, np.float32)
        w[f"{h}.mlp.c_proj.weight"] = weight(seed, next(t), (D_MLP, D))
        w[f"{h}.mlp.c_proj.bias"] = np.zeros(D, np.float32)
    w["transformer.ln_f.weight"] = np.ones(D, np.float32)
    w["transformer.ln_f.bias"] = np.zeros(D, np.float32)
    return w


def planted(base, seed):
    """`base` with each layer's MLP neurons permuted and noised: (weights, twin, level)."""
    w = dict(base)
    twins, levels = [], []
    for l in range(LAYERS):
        h = f"transformer.h.{l}.mlp"
        # Tensor numbers 100+ are the permutation and noise draws (never weights).
        perm = np.argsort(uniform(seed, 100 + 4 * l, D_MLP), kind="stable")  # b's j is a's perm[j]
        level = (uniform(seed, 101 + 4 * l, D_MLP) * MAX_LEVEL).astype(np.float32)  # per a's neuron
        twin = np.empty(D_MLP, np.int64)
        twin[perm] = np.arange(D_MLP)
        noise_in = weight(seed, 102 + 4 * l, (D, D_MLP))
        noise_out = weight(seed, 103 + 4 * l, (D_MLP, D))
        lv = level[perm]
        w[f"{h}.c_fc.weight"] = base[f"{h}.c_fc.weight"][:, perm] + noise_in * lv[None, :]
        w[f"{h}.c_fc.bias"] = base[f"{h}.c_fc.bias"][perm]
        w[f"{h}.c_proj.weight"] = base[f"{h}.c_proj.weight"][perm, :] + noise_out * lv[:, None]
        twins.append(twin)
        levels.append(level)
    return w, np.stack(twins).astype(np.int32), np.stack(levels)


def tokens():
    ids = (splitmix(np.arange(ROWS * SEQ, dtype=np.uint64) ^ np.uint64(7 << 40))
           % np.uint64(VOCAB)).astype(np.int64).reshape(ROWS, SEQ)
    ids[:, 0] = 0
    return ids


def activations(weights, ids):
    config = GPT2Config(n_layer=LAYERS, n_embd=D, n_head=HEADS, n_inner=D_MLP, vocab_size=VOCAB,
                        n_positions=POSITIONS, activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)
    captured = {}
    for l, b in enumerate(model.transformer.h):
        b.mlp.act.register_forward_hook(lambda _m, _i, o, l=l: captured.__setitem__(l, o))
    with torch.no_grad():
        model.transformer(torch.from_numpy(ids))
    x = torch.cat([captured[l] for l in range(LAYERS)], -1).double().numpy()
    return x[ids != 0]


def main():
    a = init(1)
    b, twin, level = planted(a, 2)
    c = init(3)
    ids = tokens()
    xa = activations(a, ids)
    za = (xa - xa.mean(0)) / xa.std(0)
    out = {"tokens": ids.astype(np.int32), "twin": twin, "level": level.astype(np.float32)}
    maxs, args = [], []
    n = LAYERS * D_MLP
    mutual = np.zeros(n, np.int64)
    backs, back_gaps, row_gaps, partners, totals, partner_corrs = [], [], [], [], [], []
    nulls = []
    top2 = lambda m, axis: np.sort(m, axis=axis).take([-1, -2], axis=axis)
    for w in (b, c):
        x = activations(w, ids)
        z = (x - x.mean(0)) / x.std(0)
        corr = za.T @ z / len(za)
        xp = permuted(x, ids != 0)
        zp = (xp - xp.mean(0)) / xp.std(0)
        nulls.append((za.T @ zp / len(za)).max(1))
        maxs.append(corr.max(1))
        args.append(corr.argmax(1))
        back = corr.argmax(0)
        backs.append(back)
        t = top2(corr, 0)
        back_gaps.append(t[0] - t[1])
        t = top2(corr, 1)
        row_gaps.append(t[:, 0] - t[:, 1])
        mutual += back[corr.argmax(1)] == np.arange(n)
        partner = np.empty(n, np.int64)
        total = []
        for l in range(LAYERS):
            s = slice(l * D_MLP, (l + 1) * D_MLP)
            rows, cols = linear_sum_assignment(corr[s, s], maximize=True)
            partner[l * D_MLP + rows] = l * D_MLP + cols
            total.append(corr[s, s][rows, cols].sum())
        partners.append(partner)
        totals.append(total)
        partner_corrs.append(corr[np.arange(n), partner])
    out["max_corr"] = np.stack(maxs).astype(np.float32)
    out["argmax"] = np.stack(args).astype(np.int32)
    out["back_argmax"] = np.stack(backs).astype(np.int32)
    out["back_gap"] = np.stack(back_gaps).astype(np.float32)
    out["row_gap"] = np.stack(row_gaps).astype(np.float32)
    out["mutual_best"] = mutual.astype(np.int32)
    out["partner"] = np.stack(partners).astype(np.int32)
    out["assign_total"] = np.array(totals)
    out["assignment_corr"] = np.mean(partner_corrs, 0)
    out["null_max_corr"] = np.stack(nulls).astype(np.float32)
    out["n_tokens"] = np.array([len(za)], np.int32)
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "planted")
    os.makedirs(path, exist_ok=True)
    save_file(out, os.path.join(path, "reference.safetensors"))
    found = (out["argmax"][0].reshape(LAYERS, D_MLP)
             == twin + np.arange(LAYERS)[:, None] * D_MLP)
    print(f"{len(za)} kept tokens; the twin is seed-b's best match for {found.sum()} of "
          f"{found.size} seed-a neurons; best correlations with seed-c up to "
          f"{out['max_corr'][1].max():.3f}; mutual best in both for {(mutual == 2).sum()}, in seed-b "
          f"for {(backs[0][args[0]] == np.arange(n)).sum()}; assignment totals {out['assign_total']}; "
          f"mean best correlation under the permutation null {out['null_max_corr'].mean(1)}")


if __name__ == "__main__":
    main()
