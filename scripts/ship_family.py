#!/usr/bin/env python3
"""Copy five trained seeds into assets/family as the embedded default, with fp16 weights.

    .venv/bin/python scripts/ship_family.py RUN_DIR [--steps 200,800]
    # RUN_DIR/seed-a .. seed-e (or seed0 .. seed4) from `seedscope train --seed k`
    # [--save-steps 200,800]

For seed k in 0..4 (named seed-a .. seed-e) this writes assets/family/seed-X/{config.json,
model.safetensors (float16), tokenizer.json, train_log.json} and, for every step of --steps,
assets/family/seed-X/checkpoint-N/{config.json, model.safetensors (float16), tokenizer.json}
(the training checkpoints `seedscope analyze --steps N,...,final` reads, so universality over
training runs offline and in CI); then assets/family/eval_tokens.npy
(the held-out split, tokenised and cut into rows of the context length, as `seedscope train`
evaluates) and assets/family/FAMILY.json (training config, seeds, train tokens, unigram entropy
of the eval split). The eval losses of the shipped fp16 weights are added by
`seedscope eval-loss` (see README), so they are Seedscope's own numbers.
"""
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ROOT / "assets" / "family"
NAMES = ["seed-a", "seed-b", "seed-c", "seed-d", "seed-e"]


def ship_model(src: Path, dst: Path, files: list) -> None:
    """src's weights as float16 and its `files` copied into dst (created anew)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    tensors = {n: t.astype(np.float16) for n, t in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for f in files:
        shutil.copy(src / f, dst / f)


def main() -> None:
    run = Path(sys.argv[1])
    steps = []
    if "--steps" in sys.argv:
        steps = [int(s) for s in sys.argv[sys.argv.index("--steps") + 1].split(",")]
    logs = []
    for k, name in enumerate(NAMES):
        src = run / name if (run / name).is_dir() else run / f"seed{k}"
        dst = FAMILY / name
        ship_model(src, dst, ["config.json", "tokenizer.json", "train_log.json"])
        for step in steps:
            ship_model(src / f"checkpoint-{step}", dst / f"checkpoint-{step}",
                       ["config.json", "tokenizer.json"])
        logs.append(json.load(open(src / "train_log.json")))
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(FAMILY / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    text = gzip.open(ROOT / "assets" / "corpus" / "eval.txt.gz", "rt", encoding="utf-8").read()
    stream = []
    for work in text.split("<|endoftext|>"):
        stream += [eot] + tok.encode(work.strip(), add_special_tokens=False).ids
    n_ctx = logs[0]["config"]["n_ctx"]
    rows = len(stream) // n_ctx
    ids = np.array(stream[: rows * n_ctx], np.int32).reshape(rows, n_ctx)
    np.save(FAMILY / "eval_tokens.npy", ids)
    counts = np.bincount(ids.ravel(), minlength=tok.get_vocab_size()).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    family = {
        "seeds": {name: log["seed"] for name, log in zip(NAMES, logs)},
        "config": logs[0]["config"],
        "train_tokens_per_seed": logs[0]["steps"] * logs[0]["config"]["batch_size"] * n_ctx,
        "eval_tokens": int(ids.size),
        "eval_unigram_entropy_nats": float(-(p * np.log(p)).sum()),
        "train_eval_loss_f32": {name: log["eval_loss"] for name, log in zip(NAMES, logs)},
        "checkpoint_steps": steps,
        "test_rows": 32,
    }
    (FAMILY / "FAMILY.json").write_text(json.dumps(family, indent=2) + "\n")
    print(json.dumps(family, indent=2))


if __name__ == "__main__":
    main()
