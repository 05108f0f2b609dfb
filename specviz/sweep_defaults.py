"""`python -m specviz.sweep_defaults`: pick a model's per-drafter defaults by measurement.

For each candidate setting of the training-free drafters (CLaSp, static skip, prompt lookup),
runs greedy generation on the project's example prompts for the model, interleaved with
`model.generate()` on the same prompt (this process's CPU time, so other jobs on a shared
machine matter little with `--threads 1`), checks every output equals generate()'s, and writes
a JSON with τ, acceptance and speedup per setting, plus the chosen defaults: per drafter, the
setting with the highest speedup. The JSON is what `ModelInfo.drafter_defaults()` reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import api
from .bench import load_prompts
from .engine import Engine, GenerationConfig
from .models import MODELS_DIR, REGISTRY

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts"

GRID: dict[str, list[dict[str, Any]]] = {
    "clasp": [dict(skip_ratio=r, dp_interval=n, k=k, threshold=t)
              for r, n, k, t in itertools.product((0.1, 0.2), (4, 16), (3,), (0.0, 0.6))],
    "static-skip": [dict(skip="alternate", k=3), dict(skip="ratio", skip_ratio=0.1, k=3),
                    dict(skip="ratio", skip_ratio=0.2, k=3)],
    "prompt-lookup": [dict(k=k, max_ngram=3, min_ngram=m) for k, m in itertools.product((4, 8), (1, 2))],
}


def cpu_time() -> float:
    return time.process_time()


def sweep(model: str, prompts: list[str], max_new: int, drafters: list[str], log=print) -> dict[str, Any]:
    loaded = api.get_model(model)
    engine = Engine(loaded.model, name=model)
    encoded = [api.encode(loaded, p) for p in prompts]
    reference, ref_time = [], 0.0
    for ids in encoded:
        t0 = cpu_time()
        out = loaded.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=max_new, do_sample=False)
        ref_time += cpu_time() - t0
        reference.append(out[0, len(ids):].tolist())
    results = []
    for name in drafters:
        for options in GRID[name]:
            total_time, ref_pair, tokens, verifications, drafted, accepted, equal = 0.0, 0.0, 0, 0, 0, 0, 0
            for ids, ref in zip(encoded, reference):
                drafter = api.build_drafter(name, loaded, dict(options))
                t0 = cpu_time()
                trace = engine.generate(ids, drafter, GenerationConfig(max_new_tokens=max_new, record=False))
                total_time += cpu_time() - t0
                t0 = cpu_time()  # a generate() next to it, so the ratio is paired
                loaded.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=max_new, do_sample=False)
                ref_pair += cpu_time() - t0
                tokens += len(trace.generated)
                verifications += len(trace.steps)
                drafted += sum(len(s.draft_tokens) for s in trace.steps)
                accepted += sum(s.accepted for s in trace.steps)
                equal += trace.generated == ref
            row = {"drafter": name, "options": options, "speedup": round(ref_pair / total_time, 3),
                   "tau": round(tokens / max(1, verifications), 3),
                   "acceptance": round(accepted / drafted, 3) if drafted else None,
                   "equal_to_generate": f"{equal}/{len(encoded)}"}
            log(json.dumps(row))
            results.append(row)
    defaults = {}
    for name in drafters:
        rows = [r for r in results if r["drafter"] == name]
        defaults[name] = max(rows, key=lambda r: r["speedup"])["options"]
    return {"results": results, "defaults": defaults}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specviz.sweep_defaults", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", default=None, help="JSONL prompts (default: the model's example prompts)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--drafters", default=",".join(GRID))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON to write (default: assets/models/MODEL/drafter_defaults.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = REGISTRY.get(args.model)
    prompts_file = args.prompts or str(PROMPTS / f"{info.prompts if info else 'chat'}.jsonl")
    drafters = [d.strip() for d in args.drafters.split(",") if d.strip()]
    unknown = [d for d in drafters if d not in GRID]
    if unknown:
        print(f"error: no sweep grid for {', '.join(unknown)} (have: {', '.join(GRID)})", file=sys.stderr)
        return 2
    report = sweep(args.model, load_prompts(prompts_file), args.max_new_tokens, drafters)
    report = {"model": args.model, "command": "python -m specviz.sweep_defaults " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "clock": f"process CPU time, {args.threads} thread(s), greedy, "
              f"{args.max_new_tokens} new tokens, prompts {Path(prompts_file).name}, each run paired with a "
              "generate() run on the same prompt", **report}
    out = Path(args.out) if args.out else MODELS_DIR / args.model / "drafter_defaults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
