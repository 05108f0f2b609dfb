"""Benchmark (not a test): the CTC draft head vs the Medusa-style control head vs `generate()`.

    python -m specviz.bench_ctc                       # bundled model, 20 held-out prompts, 128 tokens
    python -m specviz.bench_ctc --prompts 10 --max-new-tokens 64 --k 4 --threads 1

Prompts are function headers (``def name(args):`` on one line, top level) taken from the held-out
stdlib modules (``specviz.train.corpus.HELDOUT_MODULES``: never trained on by the base model or the
heads), read from ``.train_data/docs_heldout.jsonl`` or, without it, from this interpreter's
stdlib; N of them are picked evenly from the sorted list. Greedy decoding. For each prompt the
methods run back to back (interleaved, so drift on a shared machine hits all of them alike), each
``--repeats`` times keeping the fastest run; a warm-up run precedes everything.

Reported per method: tau (mean tokens committed per target pass, bonus token included, the prefill
excluded), the draft acceptance rate, the mean draft length, ms per token, speedup = mean over
prompts of (new tokens / wall) divided by the same mean for `generate()` (Spec-Bench's
convention), the share of time spent drafting, and how many outputs equal `generate()`'s.
Writes ``bench_results/ctc.json`` (with a markdown table) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^def \w+\(.*\):\s*$")


def heldout_headers(data_dir: Path) -> list[tuple[str, str]]:
    """(module path, header line) of every one-line top-level def in the held-out modules."""
    from .train.corpus import heldout_kind, list_stdlib_py, stdlib_dir

    docs: list[tuple[str, str]] = []
    jsonl = data_dir / "docs_heldout.jsonl"
    if jsonl.exists():
        with open(jsonl, encoding="utf-8") as f:
            docs = [(d["path"], d["text"]) for d in map(json.loads, f)]
    else:
        root = stdlib_dir()
        docs = [(rel, (root / rel).read_text(encoding="utf-8")) for rel in list_stdlib_py(root)
                if heldout_kind(rel) == "heldout"]
    headers = []
    for path, text in sorted(docs):
        for line in text.splitlines():
            if HEADER.match(line):
                headers.append((path, line.rstrip() + "\n"))
    return headers


def pick(items: list, n: int) -> list:
    if n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def run(args) -> dict:
    from .api import encode, get_engine, get_model
    from .drafters import make_drafter
    from .engine import GenerationConfig
    from .trace import compute_metrics

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generate()'s max_length/max_new_tokens notice, once per prompt
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = get_model(args.model, device=args.device)
    engine = get_engine(args.model, device=args.device)
    model = loaded.model
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)
    prompts = pick(heldout_headers(Path(args.data)), args.prompts)
    drafters = {f"ctc ({h})": make_drafter("ctc", model, head=h, k=args.k) for h in args.heads}
    heads_meta = {f"ctc ({h})": make_drafter("ctc", model, head=h).meta for h in args.heads}
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)

    def sync():
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def baseline(ids):
        sync()
        t0 = time.perf_counter()
        out = model.generate(torch.tensor([ids], device=loaded.device), max_new_tokens=args.max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=pad)
        sync()
        return out[0, len(ids):].tolist(), time.perf_counter() - t0

    def speculative(ids, drafter):
        sync()
        t0 = time.perf_counter()
        trace = engine.generate(ids, drafter, config)
        sync()
        return trace, time.perf_counter() - t0

    methods = ["generate()", *drafters]
    rows = {m: [] for m in methods}
    first = encode(loaded, prompts[0][1])
    baseline(first)  # warm-up
    for d in drafters.values():
        speculative(first, d)
    for i, (path, text) in enumerate(prompts):
        ids = encode(loaded, text)
        ref, best = None, None
        for _ in range(args.repeats):
            out, wall = baseline(ids)
            ref, best = out, wall if best is None else min(best, wall)
        rows["generate()"].append({"prompt": text, "module": path, "new": len(ref), "wall": best, "tau": 1.0,
                                   "equal": True})
        for name, d in drafters.items():
            trace, best = None, None
            for _ in range(args.repeats):
                trace, wall = speculative(ids, d)
                best = wall if best is None else min(best, wall)
            m = compute_metrics(trace)
            steps = trace.steps[1:]  # the prefill commits one token without a draft
            rows[name].append({
                "prompt": text, "module": path, "new": m.new_tokens, "wall": best,
                "tau": sum(len(s.committed) for s in steps) / max(1, len(steps)),
                "drafted": sum(len(s.draft_tokens) for s in steps), "accepted": sum(s.accepted for s in steps),
                "steps": len(steps), "t_draft": m.time_split["draft"], "t_verify": m.time_split["verify"],
                "equal": trace.generated == ref,
            })
        if args.verbose:
            print(f"[{i + 1}/{len(prompts)}] {text.strip()[:60]:60s} " + "  ".join(
                f"{m}: {rows[m][-1]['new'] / rows[m][-1]['wall']:.0f} tok/s tau {rows[m][-1]['tau']:.2f}"
                for m in methods), flush=True)

    base_rate = statistics.mean(r["new"] / r["wall"] for r in rows["generate()"])
    summary = {}
    for name in methods:
        rs = rows[name]
        rate = statistics.mean(r["new"] / r["wall"] for r in rs)
        s = {
            "tau": sum(r["tau"] * r.get("steps", r["new"]) for r in rs) / sum(r.get("steps", r["new"]) for r in rs),
            "tau_mean_over_prompts": statistics.mean(r["tau"] for r in rs),
            "ms_per_token": 1000 * sum(r["wall"] for r in rs) / sum(r["new"] for r in rs),
            "tokens_per_s": rate,
            "speedup": rate / base_rate,
            "equal_to_generate": f"{sum(r['equal'] for r in rs)}/{len(rs)}",
        }
        if name != "generate()":
            drafted = sum(r["drafted"] for r in rs)
            s["acceptance_rate"] = sum(r["accepted"] for r in rs) / drafted if drafted else None
            s["mean_draft_length"] = drafted / sum(r["steps"] for r in rs)
            s["draft_time_share"] = sum(r["t_draft"] for r in rs) / sum(r["wall"] for r in rs)
            s["offline_heldout_tau"] = heads_meta[name].get("heldout", {}).get("tau")
        summary[name] = s

    lines = ["| method | tau | accept rate | mean draft | ms/token | speedup vs generate() | draft time "
             "| = generate() |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        acc = s.get("acceptance_rate")
        lines.append(
            f"| {name} | {s['tau']:.2f} | {'-' if acc is None else f'{acc:.2f}'} | "
            f"{s.get('mean_draft_length', 0):.2f} | {s['ms_per_token']:.2f} | {s['speedup']:.2f}x | "
            f"{100 * s.get('draft_time_share', 0):.0f}% | {s['equal_to_generate']} |")
    table = "\n".join(lines)
    setup = (f"{args.model}, {len(prompts)} held-out function headers, greedy, max_new_tokens "
             f"{args.max_new_tokens}, k {args.k}, device {loaded.device}, {torch.get_num_threads()} threads, "
             f"best of {args.repeats}")
    return {"setup": setup, "summary": summary, "table": f"{setup}\n\n{table}", "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="specviz-tiny")
    ap.add_argument("--data", default=str(ROOT / ".train_data"))
    ap.add_argument("--heads", default="ctc,medusa", type=lambda s: [h for h in s.split(",") if h])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench_results" / "ctc.json"))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    result = run(args)
    print(result["table"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
