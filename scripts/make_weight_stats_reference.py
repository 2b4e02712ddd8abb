"""Reference neuron weight statistics for tests/weight_stats.rs.

A numpy implementation of TransformerLens's weight processing (fold_ln, center_writing_weights,
center_unembed), checked against TransformerLens itself for GPT-2 (whose processed weights then
feed the reference; the NeoX fixture uses the numpy processing), and of
the paper's per-neuron weight statistics (weights.py:compute_neuron_statistics and the vocabulary
cosine moments of utils.vector_moments), from the Hugging Face state dict:

  w_in_norm, input_bias, w_out_norm, in_out_sim, l2_penalty,
  vocab_mean, vocab_var, vocab_skew, vocab_kurt (population moments, non-excess kurtosis),
  vocab_top / vocab_bottom: the 10 token ids with the largest / smallest cos(W_U[:, v], w_out),
  null_frac: ||P w_out|| / ||w_out|| with P the projection onto W_U's bottom d_model/20 + 1
  eigen-directions (the near-null space of the entropy neurons).

Run with the pinned fixture environment (scripts/requirements-fixtures.txt):
  .venv/bin/python scripts/make_weight_stats_reference.py
"""

import os

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "weight_stats")
MODELS = {
    "seed-a": os.path.join(ROOT, "assets", "family", "seed-a"),
    "neox-rotary": os.path.join(ROOT, "tests", "fixtures", "neox-rotary"),
}


def mlp_weights(model):
    """Per layer (W_in [d_model, d_mlp], b_in, W_out [d_mlp, d_model], ln gamma, ln beta)
    in TransformerLens orientation, and (W_U [d_model, vocab], ln_final gamma, beta)."""
    sd = {k: v.detach().to(torch.float64).numpy() for k, v in model.state_dict().items()}
    layers = []
    if model.config.model_type == "gpt2":
        n = model.config.n_layer
        for i in range(n):
            h = f"transformer.h.{i}"
            layers.append((
                sd[f"{h}.mlp.c_fc.weight"],  # Conv1D: [in, out]
                sd[f"{h}.mlp.c_fc.bias"],
                sd[f"{h}.mlp.c_proj.weight"],
                sd[f"{h}.ln_2.weight"],
                sd[f"{h}.ln_2.bias"],
            ))
        w_u = sd["transformer.wte.weight"].T  # tied
        ln_f = (sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    else:
        n = model.config.num_hidden_layers
        for i in range(n):
            h = f"gpt_neox.layers.{i}"
            layers.append((
                sd[f"{h}.mlp.dense_h_to_4h.weight"].T,  # nn.Linear: [out, in]
                sd[f"{h}.mlp.dense_h_to_4h.bias"],
                sd[f"{h}.mlp.dense_4h_to_h.weight"].T,
                sd[f"{h}.post_attention_layernorm.weight"],
                sd[f"{h}.post_attention_layernorm.bias"],
            ))
        w_u = sd["embed_out.weight"].T
        ln_f = (sd["gpt_neox.final_layer_norm.weight"], sd["gpt_neox.final_layer_norm.bias"])
    return layers, w_u, ln_f


def process(layers, w_u, ln_f):
    out = []
    for w_in, b_in, w_out, g, b in layers:
        # fold_ln: the LayerNorm's scale into the reading weights, its shift into the bias,
        # then centre the reading weights over d_model.
        b_in = b_in + (w_in * b[:, None]).sum(0)
        w_in = w_in * g[:, None]
        w_in = w_in - w_in.mean(0, keepdims=True)
        # center_writing_weights: each neuron's output row has mean zero over d_model.
        w_out = w_out - w_out.mean(1, keepdims=True)
        out.append((w_in, b_in, w_out))
    g, _ = ln_f
    w_u = w_u * g[:, None]
    w_u = w_u - w_u.mean(0, keepdims=True)  # fold_ln centres reading weights
    w_u = w_u - w_u.mean(1, keepdims=True)  # center_unembed: mean over the vocabulary
    return out, w_u


def stats(layers, w_u):
    res = {k: [] for k in ["w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty",
                           "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt",
                           "vocab_top", "vocab_bottom", "null_frac"]}
    u = w_u / np.linalg.norm(w_u, axis=0, keepdims=True)
    # W_U's near-null space: eigenvectors of W_U W_U^T with the smallest eigenvalues, the bottom
    # 5 % plus one (the all-ones direction the centring removes).
    d = w_u.shape[0]
    _, vecs = np.linalg.eigh(w_u @ w_u.T)
    null = vecs[:, :max(d // 20, 1) + 1]  # [d_model, k], ascending eigenvalues
    for w_in, b_in, w_out in layers:
        win = w_in.T  # [d_mlp, d_model]
        n_in = np.linalg.norm(win, axis=1)
        n_out = np.linalg.norm(w_out, axis=1)
        res["w_in_norm"].append(n_in)
        res["input_bias"].append(b_in)
        res["w_out_norm"].append(n_out)
        res["in_out_sim"].append((win * w_out).sum(1) / (n_in * n_out))
        res["l2_penalty"].append(n_in ** 2 + n_out ** 2)
        cos = (w_out / n_out[:, None]) @ u  # [d_mlp, vocab]
        mean = cos.mean(1)
        var = ((cos - mean[:, None]) ** 2).mean(1)
        z = (cos - mean[:, None]) / np.sqrt(var)[:, None]
        res["vocab_mean"].append(mean)
        res["vocab_var"].append(var)
        res["vocab_skew"].append((z ** 3).mean(1))
        res["vocab_kurt"].append((z ** 4).mean(1))
        order = np.argsort(-cos, axis=1, kind="stable")
        res["vocab_top"].append(order[:, :10])
        res["vocab_bottom"].append(order[:, ::-1][:, :10])
        res["null_frac"].append(np.linalg.norm(w_out @ null, axis=1) / n_out)
    out = {}
    for k, v in res.items():
        a = np.stack(v)
        out[k] = a.astype(np.int32) if k.startswith("vocab_t") or k.startswith("vocab_b") \
            else a.astype(np.float64)
    return out


def attention_scores(model, processed):
    """The paper's h_n = w_out_hat^T W_Q[A,h] k_BOS[A,h] / sqrt(d_head) for every neuron and
    every head of a later layer: per neuron the max and min with their head (layer*H + h)."""
    from tokenizers import Tokenizer
    sd = {k: v.detach().to(torch.float64).numpy() for k, v in model.state_dict().items()}
    tok = Tokenizer.from_file(os.path.join(model.name_or_path, "tokenizer.json"))
    bos = tok.token_to_id("<|endoftext|>")
    with torch.no_grad():
        out = model(torch.tensor([[bos]]), use_cache=True)
    cache = out.past_key_values
    keys = [(cache.key_cache[i] if hasattr(cache, "key_cache") else cache[i][0])[0, :, 0, :].double().numpy()
            for i in range(len(processed))]  # [H, dh] per layer
    gpt2 = model.config.model_type == "gpt2"
    H = model.config.n_head if gpt2 else model.config.num_attention_heads
    d = keys[0].size
    dh = d // H
    us = []
    for a in range(len(processed)):
        if gpt2:
            wq = sd[f"transformer.h.{a}.attn.c_attn.weight"][:, :d] * sd[f"transformer.h.{a}.ln_1.weight"][:, None]
        else:
            w = sd[f"gpt_neox.layers.{a}.attention.query_key_value.weight"].reshape(H, 3, dh, d)[:, 0]
            wq = w.reshape(H * dh, d).T * sd[f"gpt_neox.layers.{a}.input_layernorm.weight"][:, None]
        wq = wq - wq.mean(0, keepdims=True)  # fold_ln centres the reading weights
        for h in range(H):
            us.append(wq[:, h * dh:(h + 1) * dh] @ keys[a][h] / np.sqrt(dh))
    u = np.stack(us, 1)  # [d, L*H]
    res = {"attn_max": [], "attn_max_head": [], "attn_min": [], "attn_min_head": []}
    for q, (_, _, w_out) in enumerate(processed):
        n = w_out.shape[0]
        if q == len(processed) - 1:
            res["attn_max"].append(np.full(n, np.nan))
            res["attn_min"].append(np.full(n, np.nan))
            res["attn_max_head"].append(np.full(n, -1))
            res["attn_min_head"].append(np.full(n, -1))
            continue
        w = w_out / np.linalg.norm(w_out, axis=1, keepdims=True)
        s = w @ u[:, (q + 1) * H:]
        res["attn_max"].append(s.max(1))
        res["attn_min"].append(s.min(1))
        res["attn_max_head"].append(s.argmax(1) + (q + 1) * H)
        res["attn_min_head"].append(s.argmin(1) + (q + 1) * H)
    return {k: np.stack(v).astype(np.int32 if k.endswith("head") else np.float64) for k, v in res.items()}


def transformer_lens_processed(model):
    """The same processing done by TransformerLens itself (GPT-2): a HookedTransformer loaded
    with fold_ln, center_writing_weights and center_unembed, in float64. Returns its per-layer
    (W_in, b_in, W_out), W_U and W_Q [L, H, d_model, d_head]."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    c = model.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions,
        act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
        dtype=torch.float64, default_prepend_bos=False)
    tl = HookedTransformer(cfg)
    sd = convert_gpt2_weights(model.to(torch.float64), cfg)
    tl.load_and_process_state_dict(sd, fold_ln=True, center_writing_weights=True,
                                   center_unembed=True, fold_value_biases=True)
    f = lambda t: t.detach().double().numpy()  # noqa: E731
    layers = [(f(tl.W_in[i]), f(tl.b_in[i]), f(tl.W_out[i])) for i in range(cfg.n_layers)]
    return layers, f(tl.W_U), f(tl.W_Q)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, path in MODELS.items():
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        layers, w_u, ln_f = mlp_weights(model)
        processed, w_u = process(layers, w_u, ln_f)
        if model.config.model_type == "gpt2":
            # Check this script's processing against TransformerLens, then use TransformerLens's
            # weights for the reference.
            tl_layers, tl_w_u, _ = transformer_lens_processed(model)
            diff = max(max(np.abs(a - b).max() for a, b in zip(x, y))
                       for x, y in zip(processed, tl_layers))
            diff = max(diff, np.abs(w_u - tl_w_u).max())
            print(f"{name}: numpy processing vs TransformerLens, max |diff| = {diff:.2e}")
            assert diff < 1e-9, diff
            processed, w_u = tl_layers, tl_w_u
            model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        out = stats(processed, w_u)
        out.update(attention_scores(model, processed))
        save_file(out, os.path.join(OUT, f"{name}.safetensors"))
        print(name, "written")


if __name__ == "__main__":
    main()
