#!/usr/bin/env python3
"""The embedded family's eval losses computed by Hugging Face transformers, recorded in
assets/family/FAMILY.json as the independent reference `tests/family.rs` checks Seedscope's
`eval_loss` against.

    .venv/bin/python scripts/family_losses.py      # pinned env: scripts/requirements-fixtures.txt

For each seed: GPT2LMHeadModel.from_pretrained on the shipped fp16 weights, computed in float32,
mean next-token cross-entropy (nats) over every predicted position of every row of
eval_tokens.npy (`eval_loss_transformers`) and of its first `test_rows` rows
(`eval_loss_test_rows_transformers`), in batches of 16 rows, no positions masked.
"""
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ROOT / "assets" / "family"


def mean_loss(model, ids: np.ndarray) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 16):
            x = torch.from_numpy(ids[start : start + 16].astype(np.int64))
            logits = model(x).logits.double()
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            total += ce.item()
            count += x[:, 1:].numel()
    return total / count


def main() -> None:
    torch.set_num_threads(2)
    path = FAMILY / "FAMILY.json"
    family = json.loads(path.read_text())
    ids = np.load(FAMILY / "eval_tokens.npy")
    rows = family["test_rows"]
    all_rows, test_rows = {}, {}
    for name in family["seeds"]:
        model = GPT2LMHeadModel.from_pretrained(FAMILY / name, torch_dtype=torch.float32).eval()
        all_rows[name] = round(mean_loss(model, ids), 6)
        test_rows[name] = round(mean_loss(model, ids[:rows]), 6)
        print(name, all_rows[name], test_rows[name])
    family["eval_loss_transformers"] = all_rows
    family["eval_loss_test_rows_transformers"] = test_rows
    family["eval_loss_transformers_note"] = (
        f"transformers {transformers.__version__}, torch {torch.__version__}: "
        "GPT2LMHeadModel on the shipped fp16 weights in float32 (scripts/family_losses.py)"
    )
    path.write_text(json.dumps(family, indent=2) + "\n")


if __name__ == "__main__":
    main()
