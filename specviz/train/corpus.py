"""Build the training corpus: the running interpreter's standard-library ``.py`` files.

Usage::

    python -m specviz.train.corpus --out .train_data

Writes, under ``--out``:

* ``docs_train.jsonl`` - training documents (one JSON object ``{"path", "text"}`` per line)
* ``docs_val.jsonl``   - a small validation split carved from the training files by a fixed
  path hash (~2 % of files); used only to pick the best checkpoint during training
* ``docs_heldout.jsonl`` - the held-out modules in :data:`HELDOUT_MODULES`; never trained on,
  never used for tokenizer training or checkpoint selection, only for the final report
* ``corpus_manifest.json`` - python version, stdlib path, file lists per split, byte counts,
  skipped files and sha256 hashes of the corpus (file list + bytes)

Files are read as bytes and decoded as strict UTF-8 (the handful of deliberately non-UTF-8
test fixtures in the stdlib are skipped and listed in the manifest). File order is the sorted
order of the POSIX relative paths, so the output is deterministic for a given interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import sysconfig
from pathlib import Path

# Held-out modules: evaluated on, never trained on. ``json`` is a package (all its files).
HELDOUT_MODULES = (
    "bisect",
    "csv",
    "difflib",
    "fractions",
    "graphlib",
    "heapq",
    "json",
    "shlex",
    "statistics",
    "textwrap",
)

VAL_MODULUS = 50  # ~2 % of the remaining files go to the validation split


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def list_stdlib_py(root: Path) -> list[str]:
    """Sorted POSIX relative paths of all ``.py`` files under ``root`` (no site-packages)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        parts = rel_dir.parts
        # never descend into third-party / cache folders
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        if parts and parts[0] in ("site-packages", "dist-packages"):
            continue
        for fn in filenames:
            if fn.endswith(".py"):
                out.append((rel_dir / fn).as_posix())
    return sorted(out)


def heldout_kind(rel: str) -> str | None:
    """'heldout' for held-out module source, 'excluded' for their tests, else None."""
    p = Path(rel)
    parts = p.parts
    for mod in HELDOUT_MODULES:
        # the module itself: <mod>.py at top level, or the package <mod>/...
        if rel == f"{mod}.py" or (len(parts) > 1 and parts[0] == mod):
            return "heldout"
        # its tests anywhere: test_<mod>.py or anything inside a test_<mod>/ folder
        if p.name == f"test_{mod}.py" or f"test_{mod}" in parts[:-1]:
            return "excluded"
    return None


def is_val(rel: str) -> bool:
    h = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16)
    return h % VAL_MODULUS == 0


def build(out: Path, root: Path | None = None) -> dict:
    root = root or stdlib_dir()
    files = list_stdlib_py(root)
    out.mkdir(parents=True, exist_ok=True)
    corpus_hash = hashlib.sha256()
    split_hash = {s: hashlib.sha256() for s in ("train", "val", "heldout")}
    split_files: dict[str, list[dict]] = {"train": [], "val": [], "heldout": []}
    excluded, skipped = [], []
    writers = {s: open(out / f"docs_{s}.jsonl", "w", encoding="utf-8") for s in split_files}
    try:
        for rel in files:
            data = (root / rel).read_bytes()
            corpus_hash.update(rel.encode() + b"\0" + data + b"\0")
            kind = heldout_kind(rel)
            if kind == "excluded":
                excluded.append(rel)
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(rel)
                continue
            if not text.strip():
                skipped.append(rel)
                continue
            split = "heldout" if kind == "heldout" else ("val" if is_val(rel) else "train")
            split_hash[split].update(rel.encode() + b"\0" + data + b"\0")
            split_files[split].append({"path": rel, "bytes": len(data)})
            writers[split].write(json.dumps({"path": rel, "text": text}, ensure_ascii=False) + "\n")
    finally:
        for w in writers.values():
            w.close()
    manifest = {
        "python_version": sys.version,
        "python_implementation": platform.python_implementation(),
        "stdlib": str(root),
        "heldout_modules": list(HELDOUT_MODULES),
        "val_rule": f"int(sha256(relpath)[:8], 16) % {VAL_MODULUS} == 0",
        "n_files_total": len(files),
        "corpus_sha256": corpus_hash.hexdigest(),
        "corpus_sha256_rule": "sha256 over sorted files of relpath + b'\\0' + file bytes + b'\\0'",
        "splits": {
            s: {
                "n_files": len(v),
                "bytes": sum(f["bytes"] for f in v),
                "sha256": split_hash[s].hexdigest(),
                "files": [f["path"] for f in v],
            }
            for s, v in split_files.items()
        },
        "excluded_tests_of_heldout": excluded,
        "skipped_non_utf8_or_empty": skipped,
    }
    (out / "corpus_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def read_docs(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".train_data", type=Path)
    ap.add_argument("--stdlib", default=None, type=Path, help="override the stdlib folder (default: this interpreter's)")
    args = ap.parse_args(argv)
    m = build(args.out, args.stdlib)
    for s, v in m["splits"].items():
        print(f"{s:8s} files={v['n_files']:5d} bytes={v['bytes']:10d} sha256={v['sha256'][:16]}")
    print(f"excluded tests of held-out modules: {len(m['excluded_tests_of_heldout'])}; skipped: {len(m['skipped_non_utf8_or_empty'])}")
    print(f"corpus sha256 {m['corpus_sha256']}  ({m['n_files_total']} files under {m['stdlib']})")


if __name__ == "__main__":
    main()
