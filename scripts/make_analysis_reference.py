#!/usr/bin/env python3
"""Write the numpy reference for the universality engine into tests/fixtures/analysis.

The three GPT-2 fixtures of the same shape (gpt2-plain as the anchor, gpt2-crfm and
gpt2-crfm-fp16 as the other "seeds") run in transformers over `tokens.npy` (random ids, BOS at
position 0 of every row, some newline tokens). Post-GELU MLP activations (TransformerLens
`blocks.{l}.mlp.hook_post`) at positions whose token is neither BOS nor newline are kept, and
everything the paper's code computes is done in float64 numpy:

  rotation.{m}.{l}   the fixed baseline matrices (unit-norm Gaussian rows), other model m, layer l
  corr.{o}           Pearson correlation of every anchor neuron with every neuron of other o
  max_corr, argmax, min_corr, baseline_max_corr      [n_other, n_neurons]
  excess_corr, is_universal (threshold 0.5)          [n_neurons]
  back_argmax.{o}    per neuron of other o, its best anchor neuron (column argmax)
  mutual_best        in how many others the best match's own best match is the neuron
  partner.{o}        the anchor neuron's partner in scipy's maximum-weight one-to-one
                     assignment of each layer's correlation block (linear_sum_assignment)
  assignment_corr    mean over others of the correlation with that partner  [n_neurons]
  null_max_corr      [n_other, n_neurons] the permutation null: best correlation with the other
                     model's activations with each block's kept tokens rotated as
                     seedscope_analysis::engine::null_order does (blocks of BLOCK_ROWS rows, seed 0)
  mean, var          anchor activation mean and population variance  [n_neurons]

It also writes tests/fixtures/unequal/reference.safetensors: gpt2-plain (3 layers of 128
neurons), gpt2-wide (4 of 160) and gpt2-crfm (3 of 128), models of different shapes sharing a
tokenizer, each the anchor in turn (`--all-anchors`), over the same tokens. For anchor a and its
k-th other model (the others in order):

  max_corr.{a}, second_max.{a}, argmax.{a}, min_corr.{a}, baseline_max_corr.{a}  [n_other, width_a]
                     (second_max: the second-best correlation, so a test can tell a tie)
  back_max.{a}.{k}, back_second.{a}.{k}, back_argmax.{a}.{k}   per neuron of the other model
  partner.{a}.{k}    scipy's assignment of each anchor layer l to the other's layer
                     l * L_other // L_anchor (the same relative depth); -1 without a partner
  partner_corr.{a}.{k}  the correlation with that partner (NaN without one)
  mutual_best.{a}, assignment_corr.{a} (NaN where some other model left no partner)  [width_a]
  tile.{a}.{b}.{la}.{lb}  two saved tiles: plain L0 x wide L1, wide L3 x plain L2

The baseline matrices are fixed, not random (the test builds the same ones):
row i, column j of model m's layer l is ((73 i + 151 j + 37 l + 11 m) mod 97) / 48 - 1, each row
then scaled to unit norm.

Run with the pinned environment in scripts/requirements-fixtures.txt; CI never runs this.
`python scripts/make_analysis_reference.py unequal` writes only the second file.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from scipy.optimize import linear_sum_assignment
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = ROOT / "analysis"
MODELS = ["gpt2-plain", "gpt2-crfm", "gpt2-crfm-fp16"]
N_ROWS, SEQ_LEN = 24, 32
BLOCK_ROWS = 5  # the test's blocks (tests/analysis.rs options())
M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def null_order(n: int, seed: int, r0: int) -> np.ndarray:
    """seedscope_analysis::engine::null_order: a block's kept tokens rotated by a drawn offset."""
    if n < 2:
        return np.arange(n)
    s = min(32, n // 2)
    offset = s + splitmix64(splitmix64(seed ^ 0x4E554C4C) ^ r0) % (n - 2 * s + 1)
    return (np.arange(n) + offset) % n


def permuted(x: np.ndarray, keep: np.ndarray, seed: int) -> np.ndarray:
    """x (rows of kept tokens, row-major) with each block's tokens in the null's order."""
    out, start = [], 0
    for r0 in range(0, keep.shape[0], BLOCK_ROWS):
        n = int(keep[r0:r0 + BLOCK_ROWS].sum())
        out.append(x[start:start + n][null_order(n, seed, r0)])
        start += n
    return np.concatenate(out)


def activations(name: str, tokens: np.ndarray) -> np.ndarray:
    # eager: SDPA ignores the CRFM flags (scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn)
    model = GPT2LMHeadModel.from_pretrained(ROOT / name, attn_implementation="eager", torch_dtype=torch.float32).eval()
    acts = {}
    hooks = []
    for l, block in enumerate(model.transformer.h):
        hooks.append(block.mlp.act.register_forward_hook(
            lambda _m, _i, o, l=l: acts.__setitem__(l, o.detach().double().numpy())))
    with torch.no_grad():
        model(torch.from_numpy(tokens.astype(np.int64)))
    for h in hooks:
        h.remove()
    # [rows, seq, layers * d_mlp], layer-major columns
    return np.concatenate([acts[l] for l in range(len(acts))], axis=-1)


def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    sa = np.sqrt((a ** 2).sum(0))
    sb = np.sqrt((b ** 2).sum(0))
    c = a.T @ b
    with np.errstate(divide="ignore", invalid="ignore"):
        c = c / np.outer(sa, sb)
    c[~np.isfinite(c)] = 0.0  # constant neurons correlate 0 (the paper sets NaN to 0)
    return np.clip(c, -1.0, 1.0)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(ROOT / MODELS[0] / "tokenizer.json"))
    bos = tok.token_to_id("<|endoftext|>")
    newline = tok.encode("\n", add_special_tokens=False).ids
    assert len(newline) == 1, newline
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, tok.get_vocab_size(), size=(N_ROWS, SEQ_LEN)).astype(np.int32)
    tokens[rng.random(tokens.shape) < 0.05] = newline[0]
    tokens[:, 0] = bos
    np.save(OUT / "tokens.npy", tokens)
    keep = (tokens != bos) & (tokens != newline[0])
    acts = [activations(m, tokens)[keep] for m in MODELS]
    n_layers = acts[0].shape[1] // 128
    d = acts[0].shape[1] // n_layers
    out = {}
    maxes, argmaxes, mins, bases = [], [], [], []
    n = acts[0].shape[1]
    mutual = np.zeros(n, np.int64)
    partner_corrs, nulls = [], []
    for o, other in enumerate(acts[1:], start=1):
        c = corr(acts[0], other)
        out[f"corr.{o - 1}"] = c.astype(np.float32)
        back = c.argmax(0)
        out[f"back_argmax.{o - 1}"] = back.astype(np.int32)
        mutual += back[c.argmax(1)] == np.arange(n)
        partner = np.empty(n, np.int64)
        for l in range(n_layers):
            s = slice(l * d, (l + 1) * d)
            rows, cols = linear_sum_assignment(c[s, s], maximize=True)
            partner[l * d + rows] = l * d + cols
        out[f"partner.{o - 1}"] = partner.astype(np.int32)
        nulls.append(corr(acts[0], permuted(other, keep, 0)).max(1))
        partner_corrs.append(c[np.arange(n), partner])
        maxes.append(c.max(1))
        argmaxes.append(c.argmax(1))
        mins.append(c.min(1))
        rotated = []
        for l in range(n_layers):
            r = rng.standard_normal((d, d))
            r /= np.linalg.norm(r, axis=1, keepdims=True)
            out[f"rotation.{o}.{l}"] = r.astype(np.float32)
            # the engine multiplies by the f32 matrix: use exactly that one
            rotated.append(other[:, l * d:(l + 1) * d] @ r.astype(np.float32).astype(np.float64).T)
        bases.append(corr(acts[0], np.concatenate(rotated, 1)).max(1))
    excess = np.mean(maxes, 0) - np.mean(bases, 0)
    out.update(
        max_corr=np.array(maxes, np.float32),
        argmax=np.array(argmaxes, np.int32),
        min_corr=np.array(mins, np.float32),
        baseline_max_corr=np.array(bases, np.float32),
        excess_corr=excess.astype(np.float32),
        is_universal=(excess > 0.5).astype(np.uint8),
        mutual_best=mutual.astype(np.int32),
        null_max_corr=np.array(nulls, np.float32),
        assignment_corr=np.mean(partner_corrs, 0),
        mean=acts[0].mean(0),
        var=acts[0].var(0),
        n_tokens=np.array([keep.sum()], np.int64),
    )
    save_file(out, str(OUT / "reference.safetensors"))
    print(f"{keep.sum()} kept tokens; {int(out['is_universal'].sum())} of {excess.size} anchor neurons universal; "
          f"{int((mutual == len(acts) - 1).sum())} mutual best matches in every other model")


UNEQUAL = ["gpt2-plain", "gpt2-wide", "gpt2-crfm"]
UNEQUAL_TILES = [(0, 1, 0, 1), (1, 0, 3, 2)]


def fixed_rotation(d: int, m: int, l: int) -> np.ndarray:
    """The unequal test's baseline matrix of model m, layer l (exact in f64 on both sides)."""
    i, j = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
    r = ((73 * i + 151 * j + 37 * l + 11 * m) % 97) / 48.0 - 1.0
    return (r / np.sqrt((r ** 2).sum(1, keepdims=True))).astype(np.float32)


def unequal() -> None:
    out_dir = ROOT / "unequal"
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(ROOT / UNEQUAL[0] / "tokenizer.json"))
    bos = tok.token_to_id("<|endoftext|>")
    newline = tok.encode("\n", add_special_tokens=False).ids[0]
    tokens = np.load(OUT / "tokens.npy")
    keep = (tokens != bos) & (tokens != newline)
    acts, shapes = [], []
    for m, name in enumerate(UNEQUAL):
        x = activations(name, tokens)[keep]
        cfg = GPT2LMHeadModel.from_pretrained(ROOT / name).config
        d = 4 * cfg.n_embd if cfg.n_inner is None else cfg.n_inner
        shapes.append((cfg.n_layer, d))
        assert x.shape[1] == cfg.n_layer * d, (name, x.shape)
        acts.append(x)
    rotated = []
    for m, (layers, d) in enumerate(shapes):
        parts = [acts[m][:, l * d:(l + 1) * d] @ fixed_rotation(d, m, l).astype(np.float64).T
                 for l in range(layers)]
        rotated.append(np.concatenate(parts, 1))
    out = {}
    for a, (la_n, da) in enumerate(shapes):
        others = [o for o in range(len(UNEQUAL)) if o != a]
        width = la_n * da
        maxes, seconds, argmaxes, mins, bases = [], [], [], [], []
        mutual = np.zeros(width, np.int64)
        partner_corrs = []
        for k, o in enumerate(others):
            lo_n, do = shapes[o]
            c = corr(acts[a], acts[o])
            top2 = np.sort(c, 1)[:, -2:]
            maxes.append(c.max(1))
            seconds.append(top2[:, 0])
            argmaxes.append(c.argmax(1))
            mins.append(c.min(1))
            bases.append(corr(acts[a], rotated[o]).max(1))
            back = c.argmax(0)
            out[f"back_argmax.{a}.{k}"] = back.astype(np.int32)
            col2 = np.sort(c, 0)[-2:, :]
            out[f"back_max.{a}.{k}"] = col2[1].astype(np.float32)
            out[f"back_second.{a}.{k}"] = col2[0].astype(np.float32)
            mutual += back[c.argmax(1)] == np.arange(width)
            partner = np.full(width, -1, np.int64)
            for l in range(la_n):
                lb = l * lo_n // la_n
                rows, cols = linear_sum_assignment(
                    c[l * da:(l + 1) * da, lb * do:(lb + 1) * do], maximize=True)
                partner[l * da + rows] = lb * do + cols
            out[f"partner.{a}.{k}"] = partner.astype(np.int32)
            pc = np.full(width, np.nan)
            has = partner >= 0
            pc[has] = c[np.arange(width)[has], partner[has]]
            partner_corrs.append(pc)
            out[f"partner_corr.{a}.{k}"] = pc
            for (ta, tb, la, lb) in UNEQUAL_TILES:
                if (ta, tb) == (a, o):
                    out[f"tile.{ta}.{tb}.{la}.{lb}"] = c[la * da:(la + 1) * da, lb * do:(lb + 1) * do].astype(np.float32)
        out[f"max_corr.{a}"] = np.array(maxes, np.float32)
        out[f"second_max.{a}"] = np.array(seconds, np.float32)
        out[f"argmax.{a}"] = np.array(argmaxes, np.int32)
        out[f"min_corr.{a}"] = np.array(mins, np.float32)
        out[f"baseline_max_corr.{a}"] = np.array(bases, np.float32)
        out[f"mutual_best.{a}"] = mutual.astype(np.int32)
        out[f"assignment_corr.{a}"] = np.mean(partner_corrs, 0)
        excess = np.mean(maxes, 0) - np.mean(bases, 0)
        print(f"anchor {UNEQUAL[a]} ({la_n} x {da}): {int((excess > 0.5).sum())} universal, "
              f"{int((mutual == len(others)).sum())} mutual in every other model, "
              f"{int(np.isnan(out[f'assignment_corr.{a}']).sum())} without a partner somewhere")
    out["n_tokens"] = np.array([keep.sum()], np.int64)
    save_file(out, str(out_dir / "reference.safetensors"))


if __name__ == "__main__":
    which = sys.argv[1:] or ["seeds", "unequal"]
    if "seeds" in which:
        main()
    if "unequal" in which:
        unequal()
