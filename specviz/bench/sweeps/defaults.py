"""`python -m specviz.bench sweep defaults`: pick a model's per-drafter defaults by measurement.

For each candidate setting of the drafters in `GRID` (the training-free ones, and those that use
a model's trained parts: exit adapters, draft heads, draft model),
runs greedy generation on the project's example prompts for the model, interleaved with
`model.generate()` on the same prompt (this process's CPU time, so other jobs on a shared
machine matter little with `--threads 1`), checks every output equals generate()'s, and writes
a JSON with τ, acceptance and speedup per setting, plus the chosen defaults: per drafter, the
setting with the highest speedup. Options a setting leaves out take the drafter's own defaults,
not the model's current ones (a sweep must not inherit the last sweep's winner). The JSON is what
`ModelInfo.drafter_defaults()` reads, so it goes to `assets/models/MODEL/drafter_defaults.json`
unless `--json` says otherwise. Sweeping some drafters keeps the other drafters' rows and defaults
of an existing file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from ... import api
from ...engine import Engine, GenerationConfig
from ...layers import CPUHead
from ...models import MODELS_DIR, LoadedModel
from ..baselines import greedy_generate
from ..harness import cpu_clock, timed
from ..inputs import load_prompts, prompts_for, resolve_prompts
from .common import BadOption

NAME = "defaults"
HELP = "a model's per-drafter defaults (drafter_defaults.json) by measurement"
DEFAULTS: dict[str, Any] = {"model": "smollm2-135m-instruct", "device": None, "threads": 1, "max_new_tokens": 48}

# a current default stays unless another setting is this much faster in the sweep (one sweep's
# noise on this machine is about 1-2 %; CTC k 2 / 4 / 6 read 1.092 / 1.088 / 1.079 on 2026-12-03)
KEEP_MARGIN = 0.02

GRID: dict[str, list[dict[str, Any]]] = {
    "clasp": [dict(skip_ratio=r, dp_interval=n, k=k, threshold=t)
              for r, n, k, t in itertools.product((0.1, 0.2), (4, 16), (3,), (0.0, 0.6))],
    "static-skip": [dict(skip="alternate", k=3), dict(skip="ratio", skip_ratio=0.1, k=3),
                    dict(skip="ratio", skip_ratio=0.2, k=3)],
    # k drafted tokens per match, or as many as the match is long (length="match"; BENCHMARKS.md)
    "prompt-lookup": ([dict(k=k, max_ngram=3, min_ngram=m) for k, m in itertools.product((4, 8), (1, 2))]
                      + [dict(k=k, max_ngram=3, min_ngram=m, length="match") for k, m in ((16, 2), (32, 2), (32, 1))]
                      # and the model's own past answers where the context has no match (models with an answer store)
                      + [dict(k=k, max_ngram=3, min_ngram=2, length="match", answers=True, answer_confidence=0.45)
                         for k in (16, 32)]),
    # trained parts (exit adapters at 4, 8, 15; the 8192 most frequent tokens for the draft heads)
    # (one draft token per step: on the Intel host's verify curve a third and fourth row cost more
    # than the adapters' drafts earn back; 1.06x against 0.83x at k 3 on chat, 2026-12-03)
    "early-exit": [dict(exit_layer=e, k=k, draft_vocab=8192) for e, k in itertools.product((4, 8), (1, 3))],
    "hispec": [dict(d=4, v=15, n=6, k=3, threshold=0.0, draft_vocab=8192),
               dict(d=4, v=8, n=4, k=2, threshold=0.0, draft_vocab=8192)],
    "draft-model": [dict(k=k, draft_vocab=8192) for k in (1, 2, 3, 5)],
    "ctc": [dict(head="ctc", k=k) for k in (2, 4, 6)],  # the CTC drafter keeps its CTC head; Medusa is the control
    # one token, or more only after a sure one (the threshold: a sure first token is usually right)
    "eagle": [dict(k=k) for k in (1, 2, 3)] + [dict(k=k, threshold=t) for k, t in ((2, 0.5), (2, 0.7), (3, 0.7))],
    # the lookup's settings are prompt lookup's swept ones; the head's k, its threshold and the
    # shortest match vary
    "lookup-then-head": [dict(k=32, max_ngram=3, min_ngram=m, length="match", then="eagle", then_k=j,
                              then_threshold=t)
                         for m, j, t in ((2, 1, 0.0), (2, 2, 0.0), (1, 1, 0.0), (2, 2, 0.5), (2, 2, 0.7), (2, 3, 0.7))]
                        # and the model's own past answers before the head (models with an answer store)
                        + [dict(k=32, max_ngram=3, min_ngram=2, length="match", then="eagle", then_k=2,
                                then_threshold=0.7, answers=True, answer_confidence=0.45)],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None,
                   help="JSONL prompts or a bundled set by name, e.g. grounded (default: the model's example prompts)")
    p.add_argument("--drafters", default=",".join(GRID))


def default_output(args: argparse.Namespace) -> Path:
    return MODELS_DIR / args.model / "drafter_defaults.json"


def _cpu_timed(loaded: LoadedModel, call: Callable[[], Any]) -> tuple[Any, float]:
    return timed(cpu_clock, loaded.device, call)


def _measure_setting(loaded: LoadedModel, engine: Engine, name: str, options: dict[str, Any],
                     encoded: list[list[int]], reference: list[list[int]], max_new: int) -> dict[str, Any]:
    """One drafter setting on every prompt, each run paired with a generate() run on the same prompt."""
    total_time, ref_pair, tokens, verifications, drafted, accepted, equal = 0.0, 0.0, 0, 0, 0, 0, 0
    for ids, ref in zip(encoded, reference):
        drafter = api.build_drafter(name, loaded, dict(options), swept_defaults=False)
        config = GenerationConfig(max_new_tokens=max_new, record=False)
        trace, seconds = _cpu_timed(loaded, lambda: engine.generate(ids, drafter, config))
        total_time += seconds
        ref_pair += _cpu_timed(loaded, lambda: greedy_generate(loaded.model, ids, max_new))[1]
        tokens += len(trace.generated)
        verifications += len(trace.steps)
        drafted += sum(len(s.draft_tokens) for s in trace.steps)
        accepted += sum(s.accepted for s in trace.steps)
        equal += trace.generated == ref
    return {"drafter": name, "options": options, "speedup": round(ref_pair / total_time, 3),
            "tau": round(tokens / max(1, verifications), 3),
            "acceptance": round(accepted / drafted, 3) if drafted else None,
            "equal_to_generate": f"{equal}/{len(encoded)}"}


def sweep(model: str, prompts: list[str], max_new: int, drafters: list[str], device: str | None = None,
          log: Callable[[str], None] = print, current: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every GRID setting of `drafters` on `prompts`; per drafter, the fastest setting is its default
    (`choose_defaults`: `current`, the defaults so far, stay unless clearly beaten)."""
    loaded = api.get_model(model, device)
    engine = Engine(loaded.model, name=model)
    engine.runner.prepare_kernels(CPUHead.WARM_ROWS)  # measured now, not inside the first setting's timed runs
    encoded = [api.encode(loaded, p) for p in prompts]
    reference = [_cpu_timed(loaded, lambda: greedy_generate(loaded.model, ids, max_new))[0] for ids in encoded]
    results = []
    for name in drafters:
        for options in GRID[name]:
            try:
                api.build_drafter(name, loaded, dict(options), swept_defaults=False)
            except ValueError as why:  # a setting this model cannot run (e.g. it has no answer store)
                log(f"skipped {name} {json.dumps(options)}: {why}")
                continue
            row = _measure_setting(loaded, engine, name, options, encoded, reference, max_new)
            log(json.dumps(row))
            results.append(row)
    return {"results": results, "defaults": choose_defaults(results, drafters, current or {})}


def choose_defaults(results: list[dict[str, Any]], drafters: list[str],
                    current: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per drafter, the fastest setting; but a current default measured in this sweep stays unless
    another setting beats it by `KEEP_MARGIN`: settings within one sweep's noise must not flip the
    default back and forth from sweep to sweep."""
    defaults = {}
    for name in drafters:
        rows = [r for r in results if r["drafter"] == name]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["speedup"])
        kept = next((r for r in rows if r["options"] == current.get(name)), None)
        if kept is not None and best["speedup"] < kept["speedup"] * (1 + KEEP_MARGIN):
            best = kept
        defaults[name] = best["options"]
    return defaults


def merge_existing(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Keep the rows and defaults of drafters this sweep did not measure (from an earlier sweep)."""
    if not path.is_file():
        return report
    old = json.loads(path.read_text(encoding="utf-8"))
    swept = set(report["defaults"])
    rows = [r for r in old.get("results", []) if r["drafter"] not in swept] + report["results"]
    defaults = {**{k: v for k, v in old.get("defaults", {}).items() if k not in swept}, **report["defaults"]}
    return {"results": rows, "defaults": defaults}


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        prompts_file = str(resolve_prompts(args.prompts) if args.prompts else prompts_for(args.model))
    except ValueError as err:
        raise BadOption(str(err)) from None
    drafters = [d.strip() for d in args.drafters.split(",") if d.strip()]
    unknown = [d for d in drafters if d not in GRID]
    if unknown:
        raise BadOption(f"no sweep grid for {', '.join(unknown)} (have: {', '.join(GRID)})")
    output = default_output(args)
    current = json.loads(output.read_text(encoding="utf-8")).get("defaults", {}) if output.is_file() else {}
    measured = sweep(args.model, load_prompts(prompts_file), args.max_new_tokens, drafters, args.device,
                     current=current)
    command = "python -m specviz.bench sweep " + " ".join(shlex.quote(a) for a in args.argv)
    clock = (f"process CPU time, {args.threads} thread(s), greedy, {args.max_new_tokens} new tokens, prompts "
             f"{Path(prompts_file).name}, each run paired with a generate() run on the same prompt")
    date = time.strftime("%Y-%m-%d")
    for row in measured["results"]:  # rows kept from earlier sweeps keep their own provenance
        row.update(command=command, clock=clock, date=date)
    report = merge_existing(output, measured)
    # the file-level fields describe the latest sweep only; each row says how it was measured
    return {"model": args.model, "command": command, "date": date, "clock": clock, **report}
