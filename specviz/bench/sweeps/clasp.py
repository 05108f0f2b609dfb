"""`python -m specviz.bench sweep clasp`: CLaSp's knobs and its DP against alternatives.

Measures, greedy, batch size 1, `--max-new-tokens` (64) per prompt:

1. a small k x threshold sweep at skip_ratio 0.4, N 4; the best (by speedup) is used below;
2. a sweep of dp_interval N in {1, 4, 16} x skip_ratio in {0.25, 0.4, 0.5}: τ (tokens per
   verification, target's own token included), speedup over `model.generate()` (ratio of mean
   tokens/s over prompts), the DP's share of wall time (DP seconds, the one after the prefill
   included, over wall time), acceptance;
3. at `--compare-ratio`'s M (0.4 -> M=6 of 16), with that ratio's best N, the DP's skip sets
   against static skip sets of the same size M: the most frequent set the DP chose (used
   statically), 50 random sets (screened by τ on a short protocol, then the top 3 and the median
   re-run in full; the best is picked on the same prompts, so it is an optimistic oracle), and the
   static-skip presets (`ratio` = centred middle block of the same size, `alternate` = every
   other middle layer, whatever its size).

Model: the bundled `specviz-tiny` when its weights exist, else a random 16-layer Llama whose
middle layers have their output projections scaled down by random factors (a stand-in for a
trained model's uneven layer importance; a purely random model accepts nothing). Prompts:
assets/prompts/code.jsonl when present (needs the bundled tokenizer), else random token ids.

Speedups are paired: every drafter run on a prompt sits next to a generate() run on the same
prompt (before or after, alternating), and the speedup is the ratio of their mean tokens/s.
Every greedy output is checked against generate()'s; "matched" counts the equal ones.
Timing on a shared 2-core CPU is noisy: read ratios from one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from ...drafters import make_drafter
from ...drafters.static_skip import StaticSkip, alternate_layers, middle_layers
from ...engine import Engine, GenerationConfig
from ...trace import Trace, compute_metrics
from ..baselines import greedy_generate
from ..harness import timed, wall_clock
from ..inputs import load_setup
from .common import results_path

NAME = "clasp"
HELP = "CLaSp's k, threshold, DP interval and skip ratio, and its DP against static skip sets"
DEFAULTS: dict[str, Any] = {"model": None, "device": "cpu", "threads": 1, "max_new_tokens": 64}
HEADER = "| config | τ | speedup vs generate() | DP share of wall | acceptance | matched |\n|---|---|---|---|---|---|"

MakeDrafter = Callable[[], Any]  # a fresh drafter per generation


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, default=2, help="number of prompts")
    p.add_argument("--random-sets", type=int, default=50)
    p.add_argument("--compare-ratio", type=float, default=0.4, help="skip ratio of the skip-set comparison")
    p.add_argument("--screen-prompts", type=int, default=1, help="prompts of the random-set screen")
    p.add_argument("--screen-tokens", type=int, default=32, help="new tokens of the random-set screen")
    p.add_argument("--confirm", type=int, default=3, help="best screened random sets re-run in full")
    p.add_argument("--seed", type=int, default=0)


def default_output(args: argparse.Namespace) -> Path:
    return results_path(NAME)


def middle_damping(i: int, g: torch.Generator) -> float:
    """The random stand-in's layer scales: middle layers damped by random factors, the last kept."""
    return 1.0 if i == 15 else float(0.02 + 0.5 * torch.rand((), generator=g) ** 2)


class PairedBench:
    """Drafter runs each paired with a generate() run on the same prompt."""

    def __init__(self, model, prompts: list[list[int]], max_new: int):
        self.model, self.prompts, self.max_new = model, prompts, max_new
        self.engine = Engine(model)
        self.L = model.config.num_hidden_layers
        self.reference: list[list[int]] = []
        self.base_tps: list[float] = []

    def _generate(self, ids: list[int]) -> tuple[list[int], float]:
        return timed(wall_clock, self.model.device, lambda: greedy_generate(self.model, ids, self.max_new))

    def baseline(self) -> float:
        """generate()'s mean tokens/s over the prompts (after a warm-up); keeps its outputs as the reference."""
        self._generate(self.prompts[0])  # warm-up
        tps, self.reference = [], []
        for ids in self.prompts:
            toks, wall = self._generate(ids)
            self.reference.append(toks)
            tps.append(len(toks) / wall)
        self.base_tps.append(statistics.mean(tps))
        return self.base_tps[-1]

    def screen_tau(self, make: MakeDrafter, n_prompts: int, max_new: int) -> float:
        """τ only, short and untimed: for ranking many static sets cheaply."""
        steps = new = 0
        for ids in self.prompts[:n_prompts]:
            trace = self.engine.generate(ids, make(), GenerationConfig(max_new_tokens=max_new, record=False))
            steps += len(trace.steps) - 1
            new += len(trace.generated) - 1
        return new / steps if steps else 0.0

    def run(self, make: MakeDrafter) -> dict[str, Any]:
        """make() -> a fresh drafter; one generation per prompt."""
        tps, base, traces, matched = [], [], [], 0
        for n, (ids, ref) in enumerate(zip(self.prompts, self.reference)):
            # paired: generate() on the same prompt right before or after (alternating), so load
            # changes on the shared machine hit both sides alike
            if n % 2 == 0:
                toks, wall = self._generate(ids)
            trace = self.engine.generate(ids, make(), GenerationConfig(max_new_tokens=self.max_new, record=True))
            if n % 2 == 1:
                toks, wall = self._generate(ids)
            base.append(len(toks) / wall)
            tps.append(compute_metrics(trace).tokens_per_s)
            traces.append(trace)
            matched += trace.generated == ref
        summary = _trace_summary(traces)
        return {"tau": summary["tau"], "tps": statistics.mean(tps),
                "speedup": statistics.mean(tps) / statistics.mean(base), "generate_tps": statistics.mean(base),
                "dp_share": summary["dp_share"], "acceptance": summary["acceptance"],
                "matched": f"{matched}/{len(self.prompts)}", "sets": summary["sets"]}


def _trace_summary(traces: list[Trace]) -> dict[str, Any]:
    """τ, the DP's share of wall time, acceptance and the skip sets chosen, over all traces."""
    steps = sum(len(t.steps) - 1 for t in traces)
    new = sum(len(t.generated) - 1 for t in traces)  # the prefill's token is not a verification's
    wall = sum(t.wall_time for t in traces)
    # DP time: the engine's t_search (start()'s DP after the prefill is step 1's, observe()'s the next step's)
    search = sum(s.t_search for t in traces for s in t.steps)
    drafted = sum(len(s.draft_tokens) for t in traces for s in t.steps)
    accepted = sum(s.accepted for t in traces for s in t.steps)
    sets = Counter(tuple(s.info["skipped_layers"]) for t in traces for s in t.steps[1:]
                   if "skipped_layers" in s.info)
    return {"tau": new / steps if steps else 0.0, "dp_share": search / wall if wall else 0.0,
            "acceptance": accepted / drafted if drafted else 0.0, "sets": sets}


def _row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['tau']:.2f} | {r['speedup']:.2f} | {100 * r['dp_share']:.1f}% | "
            f"{100 * r['acceptance']:.0f}% | {r['matched']} |")


def _without_sets(r: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in r.items() if key != "sets"}


def _k_threshold(bench: PairedBench, model, out: dict[str, Any]) -> tuple[int, float]:
    """Step 1: k x threshold at skip_ratio 0.4, N 4; returns the best (k, threshold) by speedup."""
    print(f"## k x threshold (skip_ratio 0.4, N 4)\n\n{HEADER}")
    kt = {}
    for k in (4, 8):
        for th in (0.0, 0.3, 0.6):
            r = bench.run(lambda: make_drafter("clasp", model, skip_ratio=0.4, dp_interval=4, k=k, threshold=th))
            kt[(k, th)] = r
            print(_row(f"k {k}, threshold {th}", r), flush=True)
            out["k_threshold"][f"k={k},threshold={th}"] = _without_sets(r)
    k, th = max(kt, key=lambda key: kt[key]["speedup"])
    print(f"\nbest by speedup: k {k}, threshold {th}\n")
    return k, th


def _interval_ratio(bench: PairedBench, model, k: int, th: float, out: dict[str, Any]) -> dict[tuple, dict]:
    """Step 2: dp_interval N x skip_ratio at that k and threshold; records the best in out["best"]."""
    print(f"## dp_interval N x skip_ratio (k={k}, threshold={th})\n\n{HEADER}")
    sweep = {}
    for ratio in (0.25, 0.4, 0.5):
        for n in (1, 4, 16):
            r = bench.run(lambda: make_drafter("clasp", model, skip_ratio=ratio, dp_interval=n, k=k, threshold=th))
            sweep[(ratio, n)] = r
            print(_row(f"ratio {ratio}, N {n} (M={max(1, int(ratio * bench.L))})", r), flush=True)
            out["sweep"][f"ratio={ratio},N={n}"] = _without_sets(r)
    best_ratio, best_n = max(sweep, key=lambda key: sweep[key]["speedup"])
    print(f"\nbest by speedup: skip_ratio {best_ratio}, N {best_n}")
    out["best"] = {"k": k, "threshold": th, "skip_ratio": best_ratio, "dp_interval": best_n}
    return sweep


def _screen_random_sets(bench: PairedBench, args: argparse.Namespace, size: int,
                        static: Callable[[Any], MakeDrafter], clasp_screen: float) -> list[tuple[list[int], float]]:
    """--random-sets distinct random skip sets of `size` middle layers, ranked by screen τ."""
    rng = random.Random(args.seed)
    screen_prompts = min(args.screen_prompts, len(bench.prompts))
    randoms, seen = [], set()
    while len(randoms) < args.random_sets:
        skip = tuple(sorted(rng.sample(range(1, bench.L - 1), size)))
        if skip in seen:
            continue
        seen.add(skip)
        randoms.append((list(skip), bench.screen_tau(static(skip), screen_prompts, args.screen_tokens)))
    randoms.sort(key=lambda sr: sr[1], reverse=True)
    above = sum(t > clasp_screen for _, t in randoms)
    print(f"\nscreen ({screen_prompts} prompt(s), {args.screen_tokens} tokens, τ only): CLaSp τ {clasp_screen:.2f}; "
          f"{len(randoms)} random sets: best {randoms[0][1]:.2f}, median {randoms[len(randoms) // 2][1]:.2f}, "
          f"worst {randoms[-1][1]:.2f}; {above}/{len(randoms)} random sets above CLaSp\n\n{HEADER}")
    return randoms


def _skip_sets(bench: PairedBench, model, args: argparse.Namespace, k: int, th: float,
               sweep: dict[tuple, dict], out: dict[str, Any]) -> None:
    """Step 3: the DP's skip sets against static sets of the same size: its most frequent set, the
    presets, and random sets (screened, the best few and the median confirmed in full)."""
    ratio, L = args.compare_ratio, bench.L
    best_n = max((n for r_, n in sweep if r_ == ratio), key=lambda n: sweep[(ratio, n)]["speedup"], default=4)
    size = max(1, int(ratio * L))
    print(f"\n## skip sets of size M={size} (skip_ratio {ratio}, k={k}, threshold={th})\n\n{HEADER}")

    def make_clasp():
        return make_drafter("clasp", model, skip_ratio=ratio, dp_interval=best_n, k=k, threshold=th)

    def static(skip) -> MakeDrafter:
        return lambda: StaticSkip(L, skip=list(skip), k=k, threshold=th)

    clasp = bench.run(make_clasp)
    print(_row(f"CLaSp DP (N {best_n}), {len(clasp['sets'])} distinct sets", clasp), flush=True)
    modal = list(clasp["sets"].most_common(1)[0][0])
    rows = {"clasp": clasp}
    alt = alternate_layers(L)
    for key, label, skip in (("dp_modal_static", f"DP's most frequent set {modal}, static", modal),
                             ("preset_ratio", f"preset ratio {middle_layers(L, ratio)}", middle_layers(L, ratio)),
                             ("preset_alternate", f"preset alternate {alt} (M={len(alt)})", alt)):
        rows[key] = bench.run(static(skip))
        print(_row(label, rows[key]), flush=True)
    clasp_screen = bench.screen_tau(make_clasp, min(args.screen_prompts, len(bench.prompts)), args.screen_tokens)
    randoms = _screen_random_sets(bench, args, size, static, clasp_screen)
    confirmed = []
    for rank, (skip, _) in enumerate(randoms[: args.confirm]):
        r = bench.run(static(skip))
        confirmed.append((skip, r))
        print(_row(f"random #{rank + 1} by screen τ {skip}", r), flush=True)
    med_set = randoms[len(randoms) // 2][0]
    med = bench.run(static(med_set))
    print(_row(f"median random set by screen τ {med_set}", med), flush=True)
    best_set, best = max(confirmed, key=lambda sr: sr[1]["tau"])
    rows.update(random_best=best, random_median=med)
    out["skip_sets"] = {key: _without_sets(r) for key, r in rows.items()}
    out["screen"] = {"clasp_tau": clasp_screen, "random": [[s, t] for s, t in randoms]}
    out["dp_modal_set"], out["random_best_set"] = modal, best_set
    print(f"\nfull protocol: CLaSp τ / best confirmed random τ = {clasp['tau'] / best['tau']:.3f}, "
          f"speedup ratio {clasp['speedup'] / best['speedup']:.3f}; "
          f"CLaSp τ / median random τ = {clasp['tau'] / med['tau']:.3f}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    model, prompts, desc = load_setup(args.prompts, args.seed, args.model, args.device, middle_damping,
                                      "damped middle layers")
    bench = PairedBench(model, prompts, args.max_new_tokens)
    base = bench.baseline()
    print(f"model: {desc}; {len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy, "
          f"{args.device} ({torch.get_num_threads()} CPU thread(s))\ngenerate(): {base:.1f} tokens/s\n")
    out: dict[str, Any] = {"model": desc, "generate_tps": base, "sweep": {}, "k_threshold": {}, "skip_sets": {}}
    k, th = _k_threshold(bench, model, out)
    sweep = _interval_ratio(bench, model, k, th, out)
    _skip_sets(bench, model, args, k, th, sweep, out)
    base_after = bench.baseline()
    print(f"generate() re-measured at the end: {base_after:.1f} tokens/s (start {base:.1f}); "
          "speedups above are paired with a generate() run on the same prompt")
    out["generate_tps_end"] = base_after
    return out
