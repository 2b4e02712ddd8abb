#!/usr/bin/env python3
"""The paper's scale on a GPU, sized for the few minutes a lent machine gives (issue 19: the
GPT-2-small-shaped family on wgpu at a million tokens and more, tokens/s, peak GPU memory from
wgpu's allocator report; issue 20: the paper's run, five seeds over 100 M tokens, extrapolated
from measured rates only).

It
- builds the GPT-2-small-shaped family if missing (`make_gpt2_small_family.py`: GPT-2 small's
  widths, `--layers` blocks, random fp16 weights with seed-a's MLP neurons planted in seed-b and
  seed-c), with enough token rows for the largest run;
- runs `seedscope analyze --refine R` over each of `--tokens` (kept tokens, via
  `--max-tokens`), timing the process and reading its manifest: kept tokens, wall, tokens/s,
  the device line, peak GPU memory (`cost.device_memory`), where the time went, and how many of
  the planted layer-0 near-copies were found;
- with two or more runs, fits wall = fixed + tokens x marginal through the smallest and the
  largest run and prints what 100 M kept tokens would take at those measured rates (the first
  stage over its sample, the weight statistics and loading are the fixed part);
- with `--exhaustive-tokens N`, also runs the exhaustive analysis over N tokens (all pairs:
  at 12 layers about 11 PFLOP per million tokens, so keep N small).

Nothing here needs a network: on a lent machine carry the release binary and a directory with
GPT-2's tokenizer files (`bench_scale.py` makes one under its work directory,
`gpt2-tokenizer/`), and run it with that machine's python3 (torch, transformers, numpy,
safetensors). For a trial on the CPU path: `--backend cpu --layers 2 --tokens 1024,2048
--refine 512`.

    python3 scripts/gpu_scale.py --seedscope BIN --tokenizer DIR --work DIR \
        [--layers 12] [--tokens 262144,1048576] [--refine 2048] [--backend wgpu] [--half]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_scale import SEEDS, planted_found  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 256  # make_gpt2_small_family.py's row length
PAPER_TOKENS = 100_000_000


def family(work, layers, tokens, tokenizer):
    """The family's model dirs, tokens.npy and planted.npz, built when missing or too short."""
    out = os.path.join(work, f"l{layers}")
    rows = int(tokens / (0.95 * SEQ)) + 1  # room for the dropped BOS and newline positions
    have = 0
    if os.path.exists(os.path.join(out, "planted.npz")):
        import numpy as np

        have = np.load(os.path.join(out, "tokens.npy"), mmap_mode="r").shape[0]
    if have < rows:
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "scripts", "make_gpt2_small_family.py"),
             "--out", out, "--layers", str(layers), "--rows", str(rows),
             "--seq-len", str(SEQ), "--tokenizer", tokenizer],
            check=True,
        )
    return ([os.path.join(out, s) for s in SEEDS], os.path.join(out, "tokens.npy"),
            os.path.join(out, "planted.npz"))


def analyze(args, models, tokens_npy, planted, n, extra):
    """One `seedscope analyze` over `n` tokens: the manifest's figures, wall and peak RSS."""
    out = os.path.join(args.work, f"out-{n}{'-'.join([''] + [a.strip('-') for a in extra])}")
    cmd = [args.seedscope, "analyze", "--backend", args.backend, "--out", out,
           "--models", *models, "--tokens", tokens_npy, "--max-tokens", str(n), *extra]
    if args.half:
        cmd.append("--half")
    # This run's own peak RSS: wait4 on its pid gives its rusage alone (RUSAGE_CHILDREN would
    # also hold the family's generation and the earlier runs). Linux reports kilobytes.
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    rss = usage.ru_maxrss * 1024
    m = json.load(open(os.path.join(out, "manifest.json")))
    found = planted_found(out, planted)
    log = [line for line in stderr.splitlines()
           if any(k in line for k in ("device:", "pass(es)", "forward passes", "peak GPU"))]
    return dict(n=n, args=" ".join(extra), kept=m["n_tokens"], wall=wall, rss=rss,
                device=m["device"], cost=m.get("cost", {}), found=found, log=log)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seedscope", required=True)
    ap.add_argument("--tokenizer", required=True, help="a directory with GPT-2's tokenizer.json")
    ap.add_argument("--work", required=True)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--tokens", default="262144,1048576")
    ap.add_argument("--refine", default="2048")
    ap.add_argument("--exhaustive-tokens", type=int, default=0)
    ap.add_argument("--backend", default="wgpu")
    ap.add_argument("--half", action="store_true", help="f16 models (analyze --half)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    sizes = sorted(int(t) for t in args.tokens.split(","))
    models, tokens_npy, planted = family(
        args.work, args.layers, max(sizes + [args.exhaustive_tokens]), args.tokenizer)
    runs = []
    for n in sizes:
        runs.append(analyze(args, models, tokens_npy, planted, n, ["--refine", args.refine]))
    if args.exhaustive_tokens:
        runs.append(analyze(args, models, tokens_npy, planted, args.exhaustive_tokens, []))
    for r in runs:
        print(f"{r['n']} tokens {r['args'] or 'exhaustive'}: {r['wall']:.1f} s", file=sys.stderr)
        for line in r["log"]:
            print("   ", line, file=sys.stderr)
    print(f"GPT-2-small-shaped family, {args.layers} layers x 3,072 neurons, 5 seeds; "
          f"{runs[0]['device']}")
    print()
    print("| run | kept tokens | wall | tokens/s | peak GPU memory (buffers / reserved) | "
          "peak RSS | forward | accumulate | statistics | finish | weights | "
          "planted layer-0 near-copies found |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        c, t = r["cost"], r["cost"].get("time", {})
        mem = c.get("device_memory", {})
        gpu = (f"{mem.get('peak_allocated_bytes', 0) / 2**30:.2f} / "
               f"{mem.get('peak_reserved_bytes', 0) / 2**30:.2f} GiB"
               if mem.get("peak_reserved_bytes") else "no report")
        print(f"| {r['args'] or 'exhaustive'} | {r['kept']:,} | {r['wall']:.1f} s | "
              f"{r['kept'] / r['wall']:,.0f} | {gpu} | {r['rss'] / 2**30:.2f} GiB | "
              f"{t.get('forward', 0):.1f} | {t.get('accumulate', 0):.1f} | "
              f"{t.get('statistics', 0):.1f} | {c.get('finish_seconds', 0):.1f} | "
              f"{c.get('weights_seconds', 0):.1f} | {r['found'][0]} of {r['found'][1]} |")
    refined = [r for r in runs if r["args"]]
    if len(refined) >= 2:
        a, z = refined[0], refined[-1]
        marginal = (z["wall"] - a["wall"]) / (z["kept"] - a["kept"])
        fixed = a["wall"] - a["kept"] * marginal
        total = fixed + PAPER_TOKENS * marginal
        print()
        if marginal <= 0:
            # The fixed part (loading, the first stage, the weight statistics) swamps the
            # tokens: a projection from these two runs would be noise.
            print(f"No projection: the run over {z['kept']:,} kept tokens took no longer than "
                  f"the one over {a['kept']:,} ({z['wall']:.1f} s against {a['wall']:.1f} s); "
                  f"run token counts further apart (--tokens).")
            return
        print(f"From the measured runs ({a['kept']:,} and {z['kept']:,} kept tokens): "
              f"{marginal * 1e6:.1f} s per million tokens beyond {fixed:.1f} s of fixed cost; "
              f"{PAPER_TOKENS // 1_000_000} M tokens would take {total:.0f} s "
              f"({total / 3600:.2f} h).")


if __name__ == "__main__":
    main()
