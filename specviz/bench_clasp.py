"""`python -m specviz.bench_clasp`: CLaSp's knobs and its DP against alternatives.

Measures, greedy, batch size 1, `--max-new-tokens` (64) per prompt:

1. a small k x threshold sweep at skip_ratio 0.4, N 4; the best (by speedup) is used below;
2. a sweep of dp_interval N in {1, 4, 16} x skip_ratio in {0.25, 0.4, 0.5}: τ (tokens per
   verification, target's own token included), speedup over `model.generate()` (ratio of mean
   tokens/s over prompts), the DP's share of wall time (DP seconds, the one after the prefill
   included, over wall time), acceptance;
3. at `--compare-ratio`'s M (0.4 -> M=6 of 16), with that ratio's best N, the DP's skip sets against static skip sets of the same size M: the
   most frequent set the DP chose (used statically), 50 random sets (screened by τ on a short
   protocol, then the top 3 and the median re-run in full; the best is picked on the same
   prompts, so it is an optimistic oracle), and the static-skip presets (`ratio` = centred
   middle block of the same size, `alternate` = every other middle layer, whatever its size).

Model: the bundled `specviz-tiny` when its weights exist, else a random 16-layer Llama whose
middle layers have their output projections scaled down by random factors (a stand-in for a
trained model's uneven layer importance; a purely random model accepts nothing). Prompts:
assets/prompts/examples.jsonl when present (needs the bundled tokenizer), else random token ids.

Speedups are paired: every drafter run on a prompt sits next to a generate() run on the same
prompt (before or after, alternating), and the speedup is the ratio of their mean tokens/s.
Every greedy output is checked against generate()'s; "matched" counts the equal ones.
Timing on a shared 2-core CPU is noisy: read ratios from one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from .drafters import make_drafter
from .drafters.static_skip import StaticSkip, alternate_layers, middle_layers
from .engine import Engine, GenerationConfig
from .trace import compute_metrics



def load_setup(n_prompts: int, seed: int, name: str | None = None, device: str = "cpu"):
    """(model, list of prompt id lists, description). `name`: a registry name or model directory
    (default: specviz-tiny when its weights exist, else the random stand-in)."""
    from .bench import load_setup

    def middle_damping(i: int, g: torch.Generator) -> float:
        return 1.0 if i == 15 else float(0.02 + 0.5 * torch.rand((), generator=g) ** 2)

    return load_setup(n_prompts, seed, name, device, middle_damping, "damped middle layers")


def _sync_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Bench:
    def __init__(self, model, prompts, max_new: int):
        self.model, self.prompts, self.max_new = model, prompts, max_new
        self.engine = Engine(model)
        self.L = model.config.num_hidden_layers
        self.reference: list[list[int]] = []
        self.base_tps: list[float] = []

    def _generate(self, ids):
        eos = self.model.generation_config.eos_token_id
        t0 = _sync_clock(self.model.device)
        with torch.inference_mode():
            dev = self.model.device
            out = self.model.generate(torch.tensor([ids], device=dev),
                                      attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=dev),
                                      max_new_tokens=self.max_new, do_sample=False, eos_token_id=eos,
                                      pad_token_id=self.model.generation_config.pad_token_id or 0)
        wall = _sync_clock(self.model.device) - t0
        return out[0, len(ids):].tolist(), wall

    def baseline(self) -> float:
        self._generate(self.prompts[0])  # warm-up
        tps, self.reference = [], []
        for ids in self.prompts:
            toks, wall = self._generate(ids)
            self.reference.append(toks)
            tps.append(len(toks) / wall)
        self.base_tps.append(statistics.mean(tps))
        return self.base_tps[-1]

    def screen_tau(self, make, n_prompts: int, max_new: int) -> float:
        """τ only, short and untimed: for ranking many static sets cheaply."""
        steps = new = 0
        for ids in self.prompts[:n_prompts]:
            trace = self.engine.generate(ids, make(), GenerationConfig(max_new_tokens=max_new, record=False))
            steps += len(trace.steps) - 1
            new += len(trace.generated) - 1
        return new / steps if steps else 0.0

    def run(self, make) -> dict:
        """make() -> a fresh drafter; one generation per prompt."""
        tps, base, traces, matched = [], [], [], 0
        for n, (ids, ref) in enumerate(zip(self.prompts, self.reference)):
            # paired: generate() on the same prompt right before or after (alternating), so load
            # changes on the shared machine hit both sides alike
            if n % 2 == 0:
                toks, wall = self._generate(ids)
            drafter = make()
            trace = self.engine.generate(ids, drafter, GenerationConfig(max_new_tokens=self.max_new, record=True))
            if n % 2 == 1:
                toks, wall = self._generate(ids)
            base.append(len(toks) / wall)
            tps.append(compute_metrics(trace).tokens_per_s)
            traces.append(trace)
            matched += trace.generated == ref
        steps = sum(len(t.steps) - 1 for t in traces)
        new = sum(len(t.generated) - 1 for t in traces)  # the prefill's token is not a verification's
        wall = sum(t.wall_time for t in traces)
        # DP time: observe()'s (the engine's t_search) + start()'s after the prefill (timed inside
        # t_prefill by the engine; the first proposal's info reports it)
        search = sum(s.t_search for t in traces for s in t.steps)
        search += sum(t.steps[1].info.get("dp_time") or 0.0 for t in traces
                      if len(t.steps) > 1 and t.steps[1].info.get("dp_ran"))
        drafted = sum(len(s.draft_tokens) for t in traces for s in t.steps)
        accepted = sum(s.accepted for t in traces for s in t.steps)
        sets = Counter(tuple(s.info["skipped_layers"]) for t in traces for s in t.steps[1:]
                       if "skipped_layers" in s.info)
        return {
            "tau": new / steps if steps else 0.0,
            "tps": statistics.mean(tps),
            "speedup": statistics.mean(tps) / statistics.mean(base),
            "generate_tps": statistics.mean(base),
            "dp_share": search / wall if wall else 0.0,
            "acceptance": accepted / drafted if drafted else 0.0,
            "matched": f"{matched}/{len(self.prompts)}",
            "sets": sets,
        }


def _fmt_row(name: str, r: dict) -> str:
    return (f"| {name} | {r['tau']:.2f} | {r['speedup']:.2f} | {100 * r['dp_share']:.1f}% | "
            f"{100 * r['acceptance']:.0f}% | {r['matched']} |")


HEADER = "| config | τ | speedup vs generate() | DP share of wall | acceptance | matched |\n|---|---|---|---|---|---|"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m specviz.bench_clasp", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registry name or model directory (default: specviz-tiny if "
                   "its weights exist, else a random 16-layer stand-in)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--prompts", type=int, default=2, help="number of prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--random-sets", type=int, default=50)
    p.add_argument("--compare-ratio", type=float, default=0.4, help="skip ratio of the skip-set comparison")
    p.add_argument("--screen-prompts", type=int, default=1, help="prompts of the random-set screen")
    p.add_argument("--screen-tokens", type=int, default=32, help="new tokens of the random-set screen")
    p.add_argument("--confirm", type=int, default=3, help="best screened random sets re-run in full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    model, prompts, desc = load_setup(args.prompts, args.seed, args.model, args.device)
    bench = Bench(model, prompts, args.max_new_tokens)
    L = bench.L
    base = bench.baseline()
    print(f"model: {desc}; {len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy, "
          f"{args.device} ({torch.get_num_threads()} CPU thread(s))\ngenerate(): {base:.1f} tokens/s\n")
    out: dict = {"model": desc, "generate_tps": base, "sweep": {}, "k_threshold": {}, "skip_sets": {}}

    # 1. k x threshold at a middle setting
    print(f"## k x threshold (skip_ratio 0.4, N 4)\n\n{HEADER}")
    kt = {}
    for k_ in (4, 8):
        for th_ in (0.0, 0.3, 0.6):
            r = bench.run(lambda: make_drafter("clasp", model, skip_ratio=0.4, dp_interval=4, k=k_, threshold=th_))
            kt[(k_, th_)] = r
            print(_fmt_row(f"k {k_}, threshold {th_}", r), flush=True)
            out["k_threshold"][f"k={k_},threshold={th_}"] = {kk: v for kk, v in r.items() if kk != "sets"}
    k, th = max(kt, key=lambda key: kt[key]["speedup"])
    print(f"\nbest by speedup: k {k}, threshold {th}\n")

    # 2. N x ratio with that k and threshold
    print(f"## dp_interval N x skip_ratio (k={k}, threshold={th})\n\n{HEADER}")
    sweep = {}
    for ratio in (0.25, 0.4, 0.5):
        for n in (1, 4, 16):
            r = bench.run(lambda: make_drafter("clasp", model, skip_ratio=ratio, dp_interval=n, k=k, threshold=th))
            sweep[(ratio, n)] = r
            print(_fmt_row(f"ratio {ratio}, N {n} (M={max(1, int(ratio * L))})", r), flush=True)
            out["sweep"][f"ratio={ratio},N={n}"] = {kk: v for kk, v in r.items() if kk != "sets"}
    best_ratio, best_n = max(sweep, key=lambda key: sweep[key]["speedup"])
    print(f"\nbest by speedup: skip_ratio {best_ratio}, N {best_n}")
    out["best"] = {"k": k, "threshold": th, "skip_ratio": best_ratio, "dp_interval": best_n}

    # 3. DP skip sets vs static sets of the same size M
    ratio = args.compare_ratio
    best_n = max((n for r_, n in sweep if r_ == ratio), key=lambda n: sweep[(ratio, n)]["speedup"], default=4)
    M = max(1, int(ratio * L))
    print(f"\n## skip sets of size M={M} (skip_ratio {ratio}, k={k}, threshold={th})\n\n{HEADER}")
    clasp = bench.run(lambda: make_drafter("clasp", model, skip_ratio=ratio, dp_interval=best_n,
                                           k=k, threshold=th))
    print(_fmt_row(f"CLaSp DP (N {best_n}), {len(clasp['sets'])} distinct sets", clasp), flush=True)
    modal = list(clasp["sets"].most_common(1)[0][0])

    def static(skip):
        return lambda: StaticSkip(L, skip=list(skip), k=k, threshold=th)

    rows = {"clasp": clasp}
    rows["dp_modal_static"] = bench.run(static(modal))
    print(_fmt_row(f"DP's most frequent set {modal}, static", rows["dp_modal_static"]), flush=True)
    rows["preset_ratio"] = bench.run(static(middle_layers(L, ratio)))
    print(_fmt_row(f"preset ratio {middle_layers(L, ratio)}", rows["preset_ratio"]), flush=True)
    alt = alternate_layers(L)
    rows["preset_alternate"] = bench.run(static(alt))
    print(_fmt_row(f"preset alternate {alt} (M={len(alt)})", rows["preset_alternate"]), flush=True)
    # random sets: screen all on a short protocol (τ only), confirm the best few on the full one
    rng = random.Random(args.seed)
    screen_prompts = min(args.screen_prompts, len(prompts))
    screen = lambda make: bench.screen_tau(make, screen_prompts, args.screen_tokens)
    clasp_screen = screen(lambda: make_drafter("clasp", model, skip_ratio=ratio, dp_interval=best_n, k=k, threshold=th))
    randoms, seen = [], set()
    while len(randoms) < args.random_sets:
        skip = tuple(sorted(rng.sample(range(1, L - 1), M)))
        if skip in seen:
            continue
        seen.add(skip)
        randoms.append((list(skip), screen(static(skip))))
    randoms.sort(key=lambda sr: sr[1], reverse=True)
    above = sum(t > clasp_screen for _, t in randoms)
    print(f"\nscreen ({screen_prompts} prompt(s), {args.screen_tokens} tokens, τ only): CLaSp τ {clasp_screen:.2f}; "
          f"{len(randoms)} random sets: best {randoms[0][1]:.2f}, median {randoms[len(randoms) // 2][1]:.2f}, "
          f"worst {randoms[-1][1]:.2f}; {above}/{len(randoms)} random sets above CLaSp\n\n{HEADER}")
    confirmed = []
    for rank, (skip, t) in enumerate(randoms[: args.confirm]):
        r = bench.run(static(skip))
        confirmed.append((skip, r))
        print(_fmt_row(f"random #{rank + 1} by screen τ {skip}", r), flush=True)
    med_set = randoms[len(randoms) // 2][0]
    med = bench.run(static(med_set))
    print(_fmt_row(f"median random set by screen τ {med_set}", med), flush=True)
    best_set, best = max(confirmed, key=lambda sr: sr[1]["tau"])
    rows.update(random_best=best, random_median=med)
    out["skip_sets"] = {k_: {kk: v for kk, v in r.items() if kk != "sets"} for k_, r in rows.items()}
    out["screen"] = {"clasp_tau": clasp_screen, "random": [[s_, t] for s_, t in randoms]}
    out["dp_modal_set"], out["random_best_set"] = modal, best_set
    print(f"\nfull protocol: CLaSp τ / best confirmed random τ = {clasp['tau'] / best['tau']:.3f}, "
          f"speedup ratio {clasp['speedup'] / best['speedup']:.3f}; "
          f"CLaSp τ / median random τ = {clasp['tau'] / med['tau']:.3f}")
    base_after = bench.baseline()
    print(f"generate() re-measured at the end: {base_after:.1f} tokens/s (start {base:.1f}); "
          "speedups above are paired with a generate() run on the same prompt")
    out["generate_tps_end"] = base_after
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
