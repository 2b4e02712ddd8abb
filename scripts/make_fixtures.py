#!/usr/bin/env python3
"""Write tiny random Hugging Face checkpoints and reference activations into tests/fixtures.

Each fixture directory holds what a Hugging Face model directory holds (config.json, weights,
tokenizer.json) plus `reference.safetensors` with the token ids the reference was computed on
(`tokens`, int64 [n_seq, seq_len]) and, from transformers itself, `blocks.{l}.mlp.hook_pre`,
`blocks.{l}.mlp.hook_post` (the MLP input to the activation function and its output, the
TransformerLens hook points) and `logits`, all float32.

Fixtures:
  gpt2-plain       GPT-2, model.safetensors
  gpt2-crfm        GPT-2 with scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn
                   (the Stanford CRFM seed flags), model.safetensors
  gpt2-crfm-fp16   the same architecture saved like the CRFM seeds: an fp16 pytorch_model.bin
  neox-rotary      GPT-NeoX with partial rotary (rotary_pct 0.5) and parallel residual,
                   sharded safetensors with model.safetensors.index.json
  gpt2-wide        GPT-2 of another shape with the same tokenizer: 4 layers of 160 neurons
                   (n_embd 40) against the others' 3 of 128, for comparing models of
                   different widths and depths

Weights are random but scaled so that activations are of order one (at the default 0.02
initialisation the neurons barely move, and a 1e-4 tolerance would prove little).

Run with the pinned environment in scripts/requirements-fixtures.txt; CI never runs this.
"""
from pathlib import Path
import json
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
VOCAB = 320
N_SEQ, SEQ_LEN = 2, 12
TEXT = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "Rough winds do shake the darling buds of May, And summer's lease hath all too short a date. "
    "Of Man's first disobedience, and the fruit Of that forbidden tree whose mortal taste "
    "Brought death into the World, and all our woe, With loss of Eden."
)


def make_tokenizer() -> Tokenizer:
    """A byte-level BPE like GPT-2's, with <|endoftext|> as id 0 (BOS/EOS/pad)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer)
    return tok


def perturb_(model: torch.nn.Module, scale: float) -> None:
    """Give every parameter (LayerNorm gains and biases too) random values of a useful size."""
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("weight") and p.dim() == 1:  # LayerNorm gain
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(scale * noise)


def references(model: torch.nn.Module, tokens: torch.Tensor, mlps, act_attr: str, fc_attr: str) -> dict:
    out: dict[str, torch.Tensor] = {"tokens": tokens.clone()}
    handles = []
    for layer, mlp in enumerate(mlps):
        def pre_hook(_m, _i, o, layer=layer):
            out[f"blocks.{layer}.mlp.hook_pre"] = o.detach().float().clone()

        def post_hook(_m, _i, o, layer=layer):
            out[f"blocks.{layer}.mlp.hook_post"] = o.detach().float().clone()

        handles.append(getattr(mlp, fc_attr).register_forward_hook(pre_hook))
        handles.append(getattr(mlp, act_attr).register_forward_hook(post_hook))
    with torch.no_grad():
        out["logits"] = model(tokens).logits.detach().float().clone()
    for h in handles:
        h.remove()
    return {k: v.contiguous() for k, v in out.items()}


def write_fixture(name: str, model, tok: Tokenizer, save_kwargs: dict, mlps_of, act_attr, fc_attr, cls):
    d = ROOT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.save_pretrained(d, **save_kwargs)
    tok.save(str(d / "tokenizer.json"))
    # The reference is computed from the checkpoint as transformers loads it (an fp16 file is
    # upcast to the float32 model), which is exactly what Seedscope must reproduce.
    loaded = cls.from_pretrained(d, attn_implementation="eager", torch_dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(1, VOCAB, (N_SEQ, SEQ_LEN), generator=gen)
    tokens[:, 0] = 0  # BOS, as TransformerLens prepends it
    refs = references(loaded, tokens, mlps_of(loaded), act_attr, fc_attr)
    save_file(refs, str(d / "reference.safetensors"))
    post = refs["blocks.0.mlp.hook_post"]
    print(f"{name}: files {sorted(p.name for p in d.iterdir())}, hook_post std {post.std():.3f}")


def gpt2_config(**flags) -> GPT2Config:
    shape = {"n_embd": 32, "n_layer": 3} | {k: flags.pop(k) for k in ("n_embd", "n_layer") if k in flags}
    return GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_head=4, n_inner=None,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0, **shape, **flags,
    )


def main() -> None:
    torch.manual_seed(0)
    tok = make_tokenizer()
    gpt2_mlps = lambda m: [b.mlp for b in m.transformer.h]

    plain = GPT2LMHeadModel(gpt2_config()).eval()
    perturb_(plain, 0.3)
    write_fixture("gpt2-plain", plain, tok, {}, gpt2_mlps, "act", "c_fc", GPT2LMHeadModel)

    crfm_cfg = gpt2_config(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)
    crfm = GPT2LMHeadModel(crfm_cfg).eval()
    perturb_(crfm, 0.3)
    write_fixture("gpt2-crfm", crfm, tok, {}, gpt2_mlps, "act", "c_fc", GPT2LMHeadModel)
    write_fixture(
        "gpt2-crfm-fp16", crfm.half(), tok, {"safe_serialization": False},
        gpt2_mlps, "act", "c_fc", GPT2LMHeadModel,
    )

    neox_cfg = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, hidden_act="gelu", rotary_pct=0.5, rotary_emb_base=10000,
        max_position_embeddings=32, use_parallel_residual=True, tie_word_embeddings=False,
        attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0,
    )
    neox = GPTNeoXForCausalLM(neox_cfg).eval()
    perturb_(neox, 0.3)
    write_fixture(
        "neox-rotary", neox, tok, {"max_shard_size": "40KB"},
        lambda m: [l.mlp for l in m.gpt_neox.layers], "act", "dense_h_to_4h", GPTNeoXForCausalLM,
    )
    torch.manual_seed(1)
    wide = GPT2LMHeadModel(gpt2_config(n_embd=40, n_layer=4)).eval()
    perturb_(wide, 0.3)
    write_fixture("gpt2-wide", wide, tok, {}, gpt2_mlps, "act", "c_fc", GPT2LMHeadModel)
    # What the Hugging Face tokenizer gives for a text, with BOS prepended as TransformerLens
    # `to_tokens` does (the fixture tokenizer is the same in every fixture directory).
    sample = "Thou art more lovely,\n and 2024 winds\tdo shake -- the darling buds!"
    ids = [tok.token_to_id("<|endoftext|>")] + tok.encode(sample, add_special_tokens=False).ids
    with open(ROOT / "tokenizer-reference.json", "w") as f:
        json.dump({"text": sample, "ids_with_bos": ids}, f, indent=1)
    with open(ROOT / "versions.json", "w") as f:
        json.dump(
            {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
             "tokenizers": __import__("tokenizers").__version__},
            f, indent=2,
        )


if __name__ == "__main__":
    main()
