"""`python -m specviz.bench sweep ctc`: the CTC draft head vs the Medusa-style control head vs `generate()`.

    python -m specviz.bench sweep ctc                 # bundled model, 20 held-out prompts, 128 tokens
    python -m specviz.bench sweep ctc --prompts 10 --max-new-tokens 64 --k 4 --threads 1

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
Writes ``bench_results/ctc.json`` (with a markdown table) unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ...models import ASSETS
from ..baselines import greedy_generate
from ..harness import timed, wall_clock
from .common import results_path

T = TypeVar("T")
NAME = "ctc"
HELP = "the CTC draft head vs the Medusa-style head vs generate(), on held-out function headers"
DEFAULTS: dict[str, Any] = {"model": "specviz-tiny", "device": "cpu", "threads": None, "max_new_tokens": 128}
ROOT = ASSETS.parent
GENERATE = "generate()"
DEF_LINE = re.compile(r"^def \w+\(.*\):\s*$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=str(ROOT / ".train_data"))
    p.add_argument("--heads", default="ctc,medusa", type=lambda s: [h for h in s.split(",") if h])
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--verbose", action="store_true")


def default_output(args: argparse.Namespace) -> Path:
    return results_path(NAME)


def heldout_headers(data_dir: Path) -> list[tuple[str, str]]:
    """(module path, header line) of every one-line top-level def in the held-out modules."""
    from ...train.corpus import heldout_kind, list_stdlib_py, stdlib_dir

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
            if DEF_LINE.match(line):
                headers.append((path, line.rstrip() + "\n"))
    return headers


def pick(items: list, n: int) -> list:
    """n items spread evenly over the list (all of them when n is not smaller)."""
    if n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _fastest(repeats: int, call: Callable[[], tuple[T, float]]) -> tuple[T | None, float | None]:
    """(the last result, the fewest seconds) of `repeats` calls."""
    result, best = None, None
    for _ in range(repeats):
        result, seconds = call()
        best = seconds if best is None else min(best, seconds)
    return result, best


def _drafter_row(trace, wall: float, ref: list[int]) -> dict[str, Any]:
    """One prompt's numbers for a CTC / Medusa run (its trace, fastest wall time, generate()'s output)."""
    from ...trace import compute_metrics

    m = compute_metrics(trace)
    steps = trace.steps[1:]  # the prefill commits one token without a draft
    return {
        "new": m.new_tokens, "wall": wall,
        "tau": sum(len(s.committed) for s in steps) / max(1, len(steps)),
        "drafted": sum(len(s.draft_tokens) for s in steps), "accepted": sum(s.accepted for s in steps),
        "steps": len(steps), "t_draft": m.time_split["draft"], "t_verify": m.time_split["verify"],
        "equal": trace.generated == ref,
    }


def _summarise(name: str, rs: list[dict[str, Any]], base_rate: float, head_meta: dict[str, Any]) -> dict[str, Any]:
    """One method's summary over prompts (τ weighted by steps; acceptance etc. for the heads)."""
    rate = statistics.mean(r["new"] / r["wall"] for r in rs)
    s = {
        "tau": sum(r["tau"] * r.get("steps", r["new"]) for r in rs) / sum(r.get("steps", r["new"]) for r in rs),
        "tau_mean_over_prompts": statistics.mean(r["tau"] for r in rs),
        "ms_per_token": 1000 * sum(r["wall"] for r in rs) / sum(r["new"] for r in rs),
        "tokens_per_s": rate,
        "speedup": rate / base_rate,
        "equal_to_generate": f"{sum(r['equal'] for r in rs)}/{len(rs)}",
    }
    if name != GENERATE:
        drafted = sum(r["drafted"] for r in rs)
        s["acceptance_rate"] = sum(r["accepted"] for r in rs) / drafted if drafted else None
        s["mean_draft_length"] = drafted / sum(r["steps"] for r in rs)
        s["draft_time_share"] = sum(r["t_draft"] for r in rs) / sum(r["wall"] for r in rs)
        s["offline_heldout_tau"] = head_meta.get("heldout", {}).get("tau")
    return s


def _table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| method | tau | accept rate | mean draft | ms/token | speedup vs generate() | draft time "
             "| = generate() |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        acc = s.get("acceptance_rate")
        lines.append(
            f"| {name} | {s['tau']:.2f} | {'-' if acc is None else f'{acc:.2f}'} | "
            f"{s.get('mean_draft_length', 0):.2f} | {s['ms_per_token']:.2f} | {s['speedup']:.2f}x | "
            f"{100 * s.get('draft_time_share', 0):.0f}% | {s['equal_to_generate']} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ...api import encode, get_engine, get_model
    from ...drafters import make_drafter
    from ...engine import GenerationConfig

    loaded = get_model(args.model, device=args.device)
    engine = get_engine(args.model, device=args.device)
    model, device = loaded.model, loaded.device
    prompts = pick(heldout_headers(Path(args.data)), args.prompts)
    drafters = {f"ctc ({h})": make_drafter("ctc", model, head=h, k=args.k) for h in args.heads}
    heads_meta = {f"ctc ({h})": make_drafter("ctc", model, head=h).meta for h in args.heads}
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)

    def baseline(ids: list[int]) -> tuple[list[int], float]:
        return timed(wall_clock, device, lambda: greedy_generate(model, ids, args.max_new_tokens))

    def speculative(ids: list[int], drafter) -> tuple[Any, float]:
        return timed(wall_clock, device, lambda: engine.generate(ids, drafter, config))

    methods = [GENERATE, *drafters]
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    first = encode(loaded, prompts[0][1])
    baseline(first)  # warm-up
    for d in drafters.values():
        speculative(first, d)
    for i, (path, text) in enumerate(prompts):
        ids = encode(loaded, text)
        ref, best = _fastest(args.repeats, lambda: baseline(ids))
        rows[GENERATE].append({"prompt": text, "module": path, "new": len(ref), "wall": best, "tau": 1.0,
                               "equal": True})
        for name, d in drafters.items():
            trace, best = _fastest(args.repeats, lambda: speculative(ids, d))
            rows[name].append({"prompt": text, "module": path, **_drafter_row(trace, best, ref)})
        if args.verbose:
            print(f"[{i + 1}/{len(prompts)}] {text.strip()[:60]:60s} " + "  ".join(
                f"{m}: {rows[m][-1]['new'] / rows[m][-1]['wall']:.0f} tok/s tau {rows[m][-1]['tau']:.2f}"
                for m in methods), flush=True)

    base_rate = statistics.mean(r["new"] / r["wall"] for r in rows[GENERATE])
    summary = {name: _summarise(name, rows[name], base_rate, heads_meta.get(name, {})) for name in methods}
    setup = (f"{args.model}, {len(prompts)} held-out function headers, greedy, max_new_tokens "
             f"{args.max_new_tokens}, k {args.k}, device {device}, {torch.get_num_threads()} threads, "
             f"best of {args.repeats}")
    result = {"setup": setup, "summary": summary, "table": f"{setup}\n\n{_table(summary)}", "rows": rows}
    print(result["table"])
    return result
