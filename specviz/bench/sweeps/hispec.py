"""`python -m specviz.bench sweep hispec`: HiSpec's levels against early-exit self-speculation and
`model.generate()`, and a small sweep of d, v, n (and k) to choose the defaults.

Greedy, batch size 1, CPU, `--max-new-tokens` (64) per prompt. Every method runs once per
prompt per repeat, interleaved (the method order rotates from prompt to prompt) so machine drift
hits all alike; one warm-up generation per method first. Reported per method:

* speedup: mean over samples of tokens/s, divided by the same mean of `generate()`;
* τ: tokens committed per full verification (the full model's own token included; prefill
  excluded), the Spec-Bench τ;
* τ_v (HiSpec): tentative tokens per intermediate check (accepted drafts + the exit-v token);
* acc_v: share of exit-d drafts accepted at exit v; acc_L: share of tentative tokens accepted by
  the full model (for early exit: share of drafts accepted);
* time per level in ms per generated token: draft level (layers [0, d) + head), intermediate
  (layers [d, v) + head, incl. the bonus token's layers [0, d)), full check (engine verify:
  layers [v, L) on the tentative tokens + [0, v) on the last one, acceptance included);
* matched: greedy outputs equal to generate()'s.

Model: the bundled `specviz-tiny` when its weights exist, else a random 16-layer Llama whose
layers >= 1 have their output projections scaled down (a weak stand-in for an early-exit-trained
model: early exits agree with the full model only sometimes). Prompts: assets/prompts/
code.jsonl (needs the bundled tokenizer), else random token ids. Timing on a shared 2-core
CPU is noisy: read ratios from one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ...drafters import make_drafter
from ...drafters.hispec import HiSpec
from ...engine import Engine, GenerationConfig
from ..baselines import greedy_generate
from ..harness import timed, wall_clock
from ..inputs import load_setup
from .common import results_path

NAME = "hispec"
HELP = "HiSpec's levels d, v, n, k against early exit and generate()"
DEFAULTS: dict[str, Any] = {"model": None, "device": "cpu", "threads": 1, "max_new_tokens": 64}
HEADER = ("| method | speedup vs generate() | τ (full) | τ_v | acc_v | acc_L | ms/token draft | "
          "ms/token intermediate | ms/token full check | matched |\n|---|---|---|---|---|---|---|---|---|---|")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--d", default=None, help="draft exits to sweep, e.g. 1,2,3 (default: HiSpec's default d)")
    p.add_argument("--v", default=None, help="intermediate exits to sweep (default: L/4 and HiSpec's default v)")
    p.add_argument("--n", default=None, help="tentative-buffer sizes to sweep (default: HiSpec's default n)")
    p.add_argument("--k", default=None, help="drafts per intermediate round to sweep (default: HiSpec's default k)")
    p.add_argument("--threshold", default=None,
                   help="exit-d confidence thresholds to sweep, e.g. 0,0.5 (default: 0 and HiSpec's default)")
    p.add_argument("--ee-k", default="4", help="draft lengths of the early-exit baselines (at every d and v)")
    p.add_argument("--seed", type=int, default=0)


def default_output(args: argparse.Namespace) -> Path:
    return results_path(NAME)


class Method:
    """One row: how to make its drafter (None: model.generate()) and what its runs measured."""

    def __init__(self, label: str, make: Callable[[], Any] | None = None, group: str = ""):
        self.label, self.make, self.group = label, make, group  # make None: model.generate()
        self.tps: list[float] = []
        self.traces = []
        self.matched = 0


def _generate(model, ids: list[int], max_new: int) -> tuple[list[int], float]:
    return timed(wall_clock, model.device, lambda: greedy_generate(model, ids, max_new))


def run_all(model, prompts: list[list[int]], methods: list[Method], max_new: int, repeats: int) -> None:
    """Warm up each method, then every repeat x prompt x method once, the order rotated per prompt."""
    engine = Engine(model)
    config = GenerationConfig(max_new_tokens=max_new, record=True)
    reference = [_generate(model, ids, max_new)[0] for ids in prompts]
    for m in methods:  # warm-up
        if m.make is None:
            _generate(model, prompts[0], 8)
        else:
            engine.generate(prompts[0], m.make(), GenerationConfig(max_new_tokens=8))
    for rep, (p, ids) in itertools.product(range(repeats), enumerate(prompts)):
        shift = (rep * len(prompts) + p) % len(methods)
        for m in methods[shift:] + methods[:shift]:
            if m.make is None:
                toks, wall = _generate(model, ids, max_new)
            else:
                trace = engine.generate(ids, m.make(), config)
                toks, wall = trace.generated, trace.wall_time
                m.traces.append(trace)
            m.tps.append(len(toks) / wall)
            m.matched += toks == reference[p]


def summarize(m: Method, base_tps: float) -> dict[str, Any]:
    """One row's numbers: speedup, τ, acceptance at both levels, ms per token per level."""
    row = {"method": m.label, "group": m.group, "tps": statistics.mean(m.tps),
           "speedup": statistics.mean(m.tps) / base_tps, "matched": f"{m.matched}/{len(m.tps)}"}
    if not m.traces:
        return row
    steps = [s for t in m.traces for s in t.steps[1:]]
    new = sum(len(t.generated) - 1 for t in m.traces)
    drafted = sum(len(s.draft_tokens) for s in steps)
    accepted = sum(s.accepted for s in steps)
    row.update(tau=new / len(steps) if steps else 0.0, acc_L=accepted / drafted if drafted else 0.0)
    t_verify = sum(s.t_verify for s in steps)
    if steps and "verify_exit" in steps[0].info:
        rounds = sum(len(s.info["rounds"]) for s in steps)
        d_drafts = sum(s.info["drafted"] for s in steps)
        d_acc = sum(s.info["accepted_intermediate"] for s in steps)
        row.update(tau_v=drafted / rounds if rounds else 0.0, acc_v=d_acc / d_drafts if d_drafts else 0.0,
                   ms_draft=1e3 * sum(s.info["t_draft_level"] for s in steps) / new,
                   ms_inter=1e3 * sum(s.info["t_intermediate"] for s in steps) / new)
    else:
        row.update(ms_draft=1e3 * sum(s.t_draft for s in steps) / new, ms_inter=0.0)
    row["ms_full"] = 1e3 * t_verify / new
    return row


def fmt(r: dict[str, Any]) -> str:
    def f(key, spec=".2f"):
        return format(r[key], spec) if key in r else "–"
    return (f"| {r['method']} | {r['speedup']:.2f} | {f('tau')} | {f('tau_v')} | {f('acc_v', '.0%')} | "
            f"{f('acc_L', '.0%')} | {f('ms_draft')} | {f('ms_inter')} | {f('ms_full')} | {r['matched']} |")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _grid(args: argparse.Namespace, L: int) -> tuple[list[int], list[int], list[int], list[int], list[float]]:
    """(d, v, n, k, threshold) values to sweep: the flags', else around HiSpec's defaults for L layers."""
    default = HiSpec(L)
    ds = _ints(args.d) if args.d else [default.d]
    vs = _ints(args.v) if args.v else sorted({max(default.d + 1, L // 4), default.v})
    ns = _ints(args.n) if args.n else [default.n]
    ks = _ints(args.k) if args.k else [default.k]
    thresholds = ([float(x) for x in args.threshold.split(",") if x.strip()] if args.threshold
                  else sorted({0.0, default.threshold}))
    return ds, vs, ns, ks, thresholds


def _methods(model, args: argparse.Namespace) -> list[Method]:
    """generate(), the engine's AR loop, early exit at every d and v, HiSpec at every valid grid point."""
    L = model.config.num_hidden_layers
    ds, vs, ns, ks, thresholds = _grid(args, L)
    methods = [Method("generate()", None, "baseline"), Method("engine AR", lambda: make_drafter("ar", model), "baseline")]
    for e in sorted(set(ds) | set(vs)):
        for k in _ints(args.ee_k):
            methods.append(Method(f"early-exit E={e} k={k}",
                                  (lambda e=e, k=k: make_drafter("early-exit", model, exit_layer=e, k=k)), "early-exit"))
    for d, v, n, k, th in itertools.product(ds, vs, ns, ks, thresholds):
        if d < v < L:
            methods.append(Method(f"hispec d={d} v={v} n={n} k={k}" + (f" th={th}" if th else ""),
                                  (lambda d=d, v=v, n=n, k=k, th=th: make_drafter(
                                      "hispec", model, d=d, v=v, n=n, k=k, threshold=th)), "hispec"))
    return methods


def _print_best(rows: list[dict[str, Any]]) -> None:
    best = max((r for r in rows if r["group"] == "hispec"), key=lambda r: r["speedup"], default=None)
    best_ee = max((r for r in rows if r["group"] == "early-exit"), key=lambda r: r["speedup"], default=None)
    if best and best_ee:
        print(f"\nbest HiSpec: {best['method']} ({best['speedup']:.2f}x); best early exit: {best_ee['method']} "
              f"({best_ee['speedup']:.2f}x); ratio {best['speedup'] / best_ee['speedup']:.2f}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    # later layers move the residual stream less: early exits mostly agree
    model, prompts, desc = load_setup(args.prompts, args.seed, args.model, args.device, lambda i, g: 0.35 / i,
                                      "damped layers")
    methods = _methods(model, args)
    print(f"model: {desc}; {len(prompts)} prompts x {args.repeats}, {args.max_new_tokens} new tokens, greedy, "
          f"CPU {torch.get_num_threads()} thread(s); {len(methods)} methods, interleaved", flush=True)
    t0 = time.perf_counter()
    run_all(model, prompts, methods, args.max_new_tokens, args.repeats)
    base = statistics.mean(methods[0].tps)
    rows = [summarize(m, base) for m in methods]
    print(f"generate(): {base:.1f} tokens/s; bench wall {time.perf_counter() - t0:.0f} s\n\n{HEADER}")
    for r in rows:
        print(fmt(r))
    _print_best(rows)
    return {"model": desc, "generate_tps": base, "rows": rows}
