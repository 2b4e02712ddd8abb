#!/usr/bin/env python3
"""Forward throughput of Seedscope's neuron pass against PyTorch, on the same random weights.

For a GPT-2-small-shaped model (12 layers, d_model 768, vocab 50257) and a tiny one (4 layers,
d_model 128, vocab 4096), this writes a random GPT2LMHeadModel to a temporary directory, times
`transformer(tokens)` in PyTorch (fp32, all cores, no grad) up to the last MLP's activation,
then times `seedscope bench-forward` on each backend over the same batch shape, and prints
tokens/s and the ratio Seedscope / PyTorch. The Seedscope pass computes and keeps every MLP
neuron's pre- and post-activation and stops at the last MLP's activation, as the universality
pass does (nothing reads the last MLP's output projection or the final norm), so PyTorch stops
there too: a forward hook on the last block's activation ends its pass. Both do the same work.

Usage (pinned env: scripts/requirements-fixtures.txt; build first: cargo build --release):
    .venv/bin/python scripts/bench_forward.py [--seedscope PATH] [--backends cpu,wgpu]
Shapes are chosen so that lavapipe (software Vulkan) finishes: on a machine with a real GPU pass
--wgpu-batch 8 --wgpu-seq 128.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SHAPES = {
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "tiny": dict(n_layer=4, n_embd=128, n_head=4, vocab_size=4096, n_positions=256),
}


class Stop(Exception):
    """Raised by the hook on the last MLP's activation: the pass is done."""


def stop(_module, _inputs, _output):
    raise Stop


def torch_tokens_per_s(model, batch, seq, iters):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
    hook = model.transformer.h[-1].mlp.act.register_forward_hook(stop)

    def forward():
        try:
            model.transformer(tokens)
        except Stop:
            pass
    with torch.no_grad():
        forward()  # warm-up
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            forward()
            times.append(time.perf_counter() - t)
    hook.remove()
    times.sort()
    return batch * seq / times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/seedscope-target"))
    ap.add_argument("--seedscope", default=os.path.join(target, "release", "seedscope"))
    ap.add_argument("--backends", default="cpu,wgpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--wgpu-batch", type=int, default=1)
    ap.add_argument("--wgpu-seq", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            torch.manual_seed(0)
            model = GPT2LMHeadModel(GPT2Config(activation_function="gelu_new", **shape)).eval()
            path = os.path.join(tmp, name)
            model.save_pretrained(path)
            for backend in args.backends.split(","):
                batch, seq = (args.wgpu_batch, args.wgpu_seq) if backend == "wgpu" else (args.batch, args.seq)
                ref = torch_tokens_per_s(model, batch, seq, args.iters)
                out = subprocess.run(
                    [args.seedscope, "bench-forward", "--model", path, "--backend", backend,
                     "--batch", str(batch), "--seq-len", str(seq), "--iters", str(args.iters)],
                    check=True, capture_output=True, text=True,
                ).stdout
                ours = json.loads(out.strip().splitlines()[-1])
                rows.append((name, backend, ours["device"], batch, seq, ours["tokens_per_s"], ref))
                print(f"{name:10} {backend:5} {batch}x{seq}: seedscope {ours['tokens_per_s']:9.1f} tok/s, "
                      f"pytorch {ref:9.1f} tok/s, ratio {ours['tokens_per_s'] / ref:.3f}  [{ours['device']}]",
                      flush=True)
    print("\n| model | backend | batch x seq | Seedscope tok/s | PyTorch tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, backend, device, batch, seq, ours, ref in rows:
        print(f"| {name} | {backend} ({device}) | {batch}x{seq} | {ours:.1f} | {ref:.1f} | {ours / ref:.3f} |")


if __name__ == "__main__":
    main()
