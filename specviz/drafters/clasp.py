"""CLaSp: in-context layer skip, with the skip set chosen by dynamic programming after verification
(Chen et al., ACL 2025, arXiv 2505.24196; reconstructed, see ALGORITHMS.md §5).

Loop per step::

    propose   draft up to k tokens with the current skip set S* bypassed (`draft_with_skip`);
              layers below min(S*) are exact, so verification reuses their KV and states
    verify    the engine's full pass; it hands us x_0..x_L, the inputs of layers 0..L-1 and the
              last layer's output (pre final norm), for every verify position
    observe   every `dp_interval`-th verification: replace S* by the DP's choice (sparse
              persistence: reuse S* in between). By default the DP's layer calls rode that
              verify pass as extra rows (`ride_verify`, point 12); otherwise the DP runs here, on
              x_0..x_L of the last accepted token

The DP (`layer_dp`). Row i of the table is "after the first i layers" (layers 0..i-1, 0-based
layer indices as everywhere in specviz), column j is "j of them skipped". Cell (i, j) keeps one
hidden state g[i][j], the candidate with the highest fp32 cosine similarity to x_i:

    g[0][0] = x_0
    g[i][j] = argmax_cos( run:  layer_{i-1}(g[i-1][j]),                 if (i-1, j) is a cell
                          skip: g[i-1][j-1],  if layer i-1 is skippable and (i-1, j-1) is a cell )
    column 0 is x_i itself (running every layer reproduces the full model), so it costs nothing.

Backtracking from (L, M) gives the M skipped layers. All "run" candidates of a row go through
their layer in ONE call (`LayerRunner.layer_on_candidates`): C copies of the last accepted token,
all at its position, each attending to the real prefix KV [0, position) plus only itself; the real
cache is read, never written. Cost: L sequential single-layer calls on <= M+1 tokens.

Trace info (`Draft.info`, when `state.record`), stable keys for the UI:

* ``skipped_layers`` list[int]: the skip set this draft used (0-based layer indices).
* ``dp_ran`` bool: a DP finished between the previous proposal and this one, and its result is
  the skip set this draft used. Either it rode the previous step's verify pass (``dp_rode_verify``:
  its layer work and bookkeeping are in that step's ``t_verify``), or it ran on its own in
  `observe()` of the previous step (or in `start()` after the prefill, for the first proposal);
  the engine runs those right before the proposal they prepare, so their time is this same
  step's ``t_search``.
* ``dp_rode_verify`` bool: the DP behind ``dp_ran`` rode the previous verify pass (`DPRider`).
* ``dp_grid`` list[list[float | None]] of shape (L+1) x (M+1), or None when ``dp_ran`` is False:
  ``dp_grid[i][j]`` = cos(g[i][j], x_i). None marks cells that are not part of any path from
  (0, 0) to (L, M) (not computed; JSON-safe, no NaN).
* ``dp_path`` list of [i, j] pairs from [0, 0] to [L, M] (None when ``dp_ran`` is False); a step
  [i-1, j] -> [i, j+1] means layer i-1 was skipped.
* ``dp_time`` float: seconds the DP took (0.0 when ``dp_ran`` is False); for a DP that rode a verify
  pass, only its own bookkeeping (its layer calls were rows of that pass).
* ``dp_score`` float | None: dp_grid[L][M], the final-layer cosine of the chosen path.
* ``dp_age`` int: verifications since the skip set in use was computed (0 when ``dp_ran``).
* ``dp_budget`` int: M.
* ``dp_run_cos`` / ``dp_skip_cos``: like ``dp_grid``, the cosine to x_i of cell (i, j)'s "run layer
  i-1" and "skip layer i-1" candidates (None where that candidate does not exist); the larger one
  is ``dp_grid[i][j]``. The app shows them when a learner picks a cell.

Design choices the paper leaves open (UNVERIFIED in ALGORITHMS.md §5), and why:

1. Target states: the engine's pre-norm residual stream (x_0 = embeddings, x_L = last layer's
   output before the final RMSNorm), compared with cosine in fp32. Pre-norm keeps every row of
   the table in the same space; the norm's elementwise weight would make the last row
   incomparable with the others (ALGORITHMS.md §2.4).
2. Last accepted token: the verify position whose logits produced the target's own token
   (`result.states[b][result.accepted]`), at position len(tokens) - 2. After the commit the real
   cache holds that token's own KV at `position`; the DP attends to [0, position) plus the
   candidate's freshly computed key instead, so each candidate sees exactly the context the token
   had (ALGORITHMS.md §5.1 "attention context").
3. Before the first verification: `start()` runs the DP on the prefill's last prompt token, so
   the first draft already uses a DP skip set (no hand-made initial set is ever used; a fallback
   of the M middle skippable layers exists only if no states are given).
4. Ties (equal cosine): "run" wins. Deterministic, and it keeps computed states over shortcuts.
5. Pruning: only cells on some path from (0, 0) to (L, M) are evaluated (j <= skippable layers so
   far, j >= M - skippable layers left). The others cannot influence the backtracked path, so the
   result is the same as the full table's, with fewer candidates per batch.
6. Budget M = floor(skip_ratio * L) (as the third-party Spec-Bench CLaSp does), clamped to
   [1, number of skippable layers]. The DP always skips exactly M layers (the paper's |S*| = M).
7. First and last layers are not skippable by default (`protect_ends`), as SWIFT does: layer 0
   turns raw embeddings into the residual stream every later layer expects, and the last layer
   feeds the logits directly; keeping layer 0 also keeps at least one exact layer for the
   verifier to reuse. (Not measured separately here; `protect_ends=False` is tested lossless.)
8. Sparse persistence: the DP runs after the prefill and then after every `dp_interval`-th
   verification (verifications 1..: it runs when count % dp_interval == 0); the skip set is kept
   in between. The paper's interval is unverified; the default (4) comes from
   `python -m specviz.bench sweep clasp`.
9. Draft exit: the shared adaptive rule (`DraftBuilder`): stop at k tokens or after a token whose
   top-1 probability is below `threshold` (0 disables); that token is still verified, since its
   draft pass is already paid. The paper's exact rule is unverified.
10. Sampling: drafts are drawn from q (same temperature/top-k/top-p as the target) and returned
   in `Draft.probs`, so the engine's rejection sampling keeps the output distribution exact (the
   third-party code's independent-sample comparison is not lossless and is not used).
11. No wasted work at the end: the engine runs observe() only before a next proposal, so a
   generation that ends never runs a DP that no draft would use.
12. The DP rides the verify pass (`ride_verify`, default on; measured in BENCHMARKS.md). On its
   own the DP is L sequential single-layer calls: one more read of every layer's weights, which
   cost ~1.3 target steps on SmolLM2 on a CPU (80 % of it matrix products), about as much as a
   step on specviz-tiny. The verify pass reads those weights anyway, and on a CPU a pass of 4 + 4
   rows costs little more than one of 4. So the proposal before a DP verification attaches a
   `DPRider`: at each layer the DP's candidates join the pass as extra rows that see only the
   prefix [0, position) and themselves (`LayerRunner._forward_with_riders`; their keys are cropped
   from the cache right after the layer), and the DP's row i+1 is filled as soon as the layer
   returns. The DP's token is then the pass's first row, the pending token (its x_i come from the
   draft's exact layers below the first skipped one, then from the pass), instead of the last
   accepted token, which is only known after the pass. start()'s DP after the prefill, and every
   DP on sliding-window models (a window would hide part of the riders' prefix), make their own
   layer calls. A test checks that a riding DP fills the same table as the DP on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from ..layers import LayerRunner
from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .draft_heads import draft_vocab_of, draft_vocab_option, frequent_vocab_head
from .layer_skip import draft_with_skip
from .registry import Declaration, Option, confidence_threshold, draft_length

NAME = "clasp"

# Defaults picked from `python -m specviz.bench sweep clasp` on specviz-tiny (16 layers, CPU; τ is
# exact, speedups were within ±20% noise on the shared 2-core box):
# * skip_ratio 0.4 (M=6): same τ as 0.25 (2.93 vs 2.86) with 50% more layers skipped; 0.5 lost τ
#   (2.62); the centred-block preset at M=6 reached only τ 1.35.
# * dp_interval 4: the DP costs about one extra forward pass; its share of wall time was 30-35% at
#   N=1, 11-13% at N=4, 3-5% at N=16, while τ fell slowly with N (3.00 / 2.93 / 2.80; at threshold
#   0.3: 5.25 / 5.04 / 4.34). N=4 keeps most of the per-context benefit for a third of the cost.
# * k 8 beat k 4 in τ at every threshold and in speed at thresholds 0.3 and 0.6; threshold 0.6
#   (98% acceptance) was faster than 0.3 (81%, higher τ) in 3 of 4 comparisons over two runs.
DEFAULT_SKIP_RATIO = 0.4
DEFAULT_DP_INTERVAL = 4
DEFAULT_K = 8
DEFAULT_THRESHOLD = 0.6


@dataclass
class DPResult:
    skip: list[int]  # the M skipped layers (0-based, ascending)
    grid: torch.Tensor  # [L+1, M+1] fp32 cosine per cell, NaN where not evaluated
    path: list[tuple[int, int]]  # cells (i, j) from (0, 0) to (L, M)
    time: float  # seconds
    # cos(candidate, x_i) of both candidates per cell (NaN where a candidate does not exist), so
    # the app can show how a cell was decided: "run" = layer i-1 on g[i-1][j], "skip" = g[i-1][j-1]
    run_cos: torch.Tensor | None = None
    skip_cos: torch.Tensor | None = None
    # its layer calls rode a verify pass (`DPRider`): `time` is then only the DP's own bookkeeping,
    # and the layer work is in that verification's time
    rode_verify: bool = False

    @property
    def score(self) -> float:
        return float(self.grid[-1, -1])

    def grid_list(self, grid: torch.Tensor | None = None) -> list[list[float | None]]:
        """JSON-safe nested lists: NaN -> None."""
        grid = self.grid if grid is None else grid
        return [[None if v != v else float(v) for v in row] for row in grid.tolist()]


def cell_ranges(num_layers: int, budget: int, skippable: Sequence[int]) -> list[tuple[int, int]]:
    """For each row i = 0..L, the inclusive range [lo, hi] of columns j on some path (0,0)->(L,M)."""
    can_skip = [i in set(skippable) for i in range(num_layers)]
    total = sum(can_skip)
    if budget > total:
        raise ValueError(f"budget M={budget} exceeds the {total} skippable layers")
    ranges, done = [], 0
    for i in range(num_layers + 1):
        left = total - done
        ranges.append((max(0, budget - left), min(done, budget)))
        if i < num_layers:
            done += can_skip[i]
    return ranges


def _cosine(candidates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(candidates.float(), target.float().unsqueeze(0), dim=-1)


class LayerDP:
    """The DP of one token, advanced one layer at a time, so that its layer calls can run anywhere:
    on their own (`layer_dp`) or as extra rows of the verify pass (`DPRider`).

    For each layer in order: `candidates(layer)` gives the states to run through it (or None),
    then `advance(layer, ran, x_next)` takes their outputs and x_{layer+1}, the full model's input
    of the next layer, and fills row layer+1 of the table. `result()` backtracks once every layer
    has advanced.
    """

    def __init__(self, num_layers: int, budget: int, skippable: Sequence[int], x0: torch.Tensor):
        self.num_layers, self.budget = num_layers, budget
        self.skip_set = set(skippable)
        self.ranges = cell_ranges(num_layers, budget, skippable)
        self.grid = torch.full((num_layers + 1, budget + 1), float("nan"))
        self.grid[0, 0] = 1.0
        self.run_cos, self.skip_cos = torch.full_like(self.grid, float("nan")), torch.full_like(self.grid, float("nan"))
        self.back: list[dict[int, bool]] = [{}]  # back[i][j]: True = layer i-1 skipped to reach (i, j)
        self.row: dict[int, torch.Tensor] = {0: x0.reshape(-1)}
        self.next_layer = 0
        self._cols: list[int] = []  # the columns of the last `candidates` call
        self.elapsed = 0.0  # seconds spent in this object's own bookkeeping (not in layer calls)

    def _run_cols(self, layer: int) -> list[int]:
        lo, hi = self.ranges[layer + 1]
        plo, phi = self.ranges[layer]
        return [j for j in range(max(lo, 1), hi + 1) if plo <= j <= phi]

    def candidates(self, layer: int) -> torch.Tensor | None:
        """[C, d]: the cells of row `layer` whose "run" candidate goes through `layer`."""
        if layer != self.next_layer:
            raise RuntimeError(f"the DP expects layer {self.next_layer} next, got {layer}")
        self._cols = self._run_cols(layer)  # advance() pairs the outputs with these
        return torch.stack([self.row[j] for j in self._cols]) if self._cols else None

    def advance(self, layer: int, ran: torch.Tensor | None, x_next: torch.Tensor) -> None:
        """Fill row i = layer + 1 from the outputs `ran` ([C, d], in `candidates` order) and x_i."""
        t0 = time.perf_counter()
        i, target = layer + 1, x_next.reshape(-1)
        lo, hi = self.ranges[i]
        plo, phi = self.ranges[layer]
        outputs = dict(zip(self._cols, ran)) if ran is not None else {}
        can_skip = layer in self.skip_set
        cands, owners = [], []  # score every candidate of the row at once
        for j in range(max(lo, 1), hi + 1):
            if j in outputs:
                cands.append(outputs[j]); owners.append((j, False))
            if can_skip and plo <= j - 1 <= phi:
                cands.append(self.row[j - 1]); owners.append((j, True))
        scores = _cosine(torch.stack(cands), target).tolist() if cands else []
        best: dict[int, tuple[float, bool, torch.Tensor]] = {}
        for (j, skipped), score, cand in zip(owners, scores, cands):
            (self.skip_cos if skipped else self.run_cos)[i, j] = score
            # "run" is listed first, so a tie keeps it (strictly greater needed to switch)
            if j not in best or score > best[j][0]:
                best[j] = (score, skipped, cand)
        new_row: dict[int, torch.Tensor] = {}
        pointers: dict[int, bool] = {}
        if lo == 0:
            new_row[0], pointers[0] = target, False
            self.grid[i, 0] = 1.0
        for j, (score, skipped, cand) in best.items():
            new_row[j], pointers[j] = cand, skipped
            self.grid[i, j] = score
        self.back.append(pointers)
        self.row = new_row
        self.next_layer = i
        self.elapsed += time.perf_counter() - t0

    @property
    def complete(self) -> bool:
        return self.next_layer == self.num_layers

    def result(self, seconds: float | None = None) -> DPResult:
        if not self.complete:
            raise RuntimeError(f"the DP stopped at layer {self.next_layer} of {self.num_layers}")
        path, skip = [(self.num_layers, self.budget)], []
        j = self.budget
        for i in range(self.num_layers, 0, -1):
            if self.back[i][j]:
                skip.append(i - 1)
                j -= 1
            path.append((i - 1, j))
        path.reverse()
        return DPResult(sorted(skip), self.grid, path, self.elapsed if seconds is None else seconds,
                        self.run_cos, self.skip_cos)


@torch.inference_mode()
def layer_dp(
    runner: LayerRunner,
    cache: DynamicCache,
    states: Sequence[torch.Tensor],
    position: int,
    budget: int,
    skippable: Sequence[int],
) -> DPResult:
    """CLaSp's DP on its own (see the module docstring). `states`: x_0..x_L of one token, each [d]
    (or [1, d]), the token sitting at absolute `position`; `cache` holds the full model's KV of
    positions [0, position) at every layer (more is allowed, it is ignored). The cache is not
    modified. Cost: L sequential single-layer calls on <= M+1 tokens.
    """
    t0 = time.perf_counter()
    n_layers = runner.num_layers
    if len(states) != n_layers + 1:
        raise ValueError(f"states must hold L+1={n_layers + 1} vectors, got {len(states)}")
    dp = LayerDP(n_layers, budget, skippable, states[0])
    for layer in range(n_layers):
        batch = dp.candidates(layer)
        ran = None if batch is None else runner.layer_on_candidates(layer, batch.unsqueeze(0), position, cache)[0]
        dp.advance(layer, ran, states[layer + 1])
    return dp.result(time.perf_counter() - t0)


class DPRider:
    """A `LayerDP` whose layer calls ride the verify pass (`layers.Riders`): the DP's token is the
    pass's first row, the pending token at `position`, and its x_i are that row's states: from the
    draft for the layers the draft ran exactly (`known`: x_0..x_e, whose KV the verifier reuses
    instead of recomputing), from the pass itself above them."""

    def __init__(self, dp: LayerDP, position: int, known: Sequence[torch.Tensor]):
        self.dp, self.position, self.known = dp, position, list(known)

    def inputs(self, layer: int) -> torch.Tensor | None:
        return self.dp.candidates(layer)

    def after(self, layer: int, outputs: torch.Tensor | None, real: torch.Tensor) -> None:
        x_next = self.known[layer + 1] if layer + 1 < len(self.known) else real[0]
        self.dp.advance(layer, outputs, x_next)


def _check_ratio(skip_ratio: Any) -> float:
    if isinstance(skip_ratio, bool) or not isinstance(skip_ratio, (int, float)) or not 0.0 < skip_ratio < 1.0:
        raise ValueError(f"skip_ratio must be a number in (0, 1) (fraction of layers skipped), got {skip_ratio!r}")
    return float(skip_ratio)


def _check_interval(dp_interval: Any) -> int:
    if isinstance(dp_interval, bool) or not isinstance(dp_interval, int) or not 1 <= dp_interval <= 10_000:
        raise ValueError(f"dp_interval (rerun the DP every N verifications) must be an integer in [1, 10000], "
                         f"got {dp_interval!r}")
    return dp_interval


class CLaSp:
    name = NAME
    wants_states = True

    def __init__(self, num_layers: int, skip_ratio: float = DEFAULT_SKIP_RATIO,
                 dp_interval: int = DEFAULT_DP_INTERVAL, k: int = DEFAULT_K,
                 threshold: float = DEFAULT_THRESHOLD, protect_ends: bool = True, ride_verify: bool = True):
        if not isinstance(protect_ends, bool):
            raise ValueError(f"protect_ends must be True or False, got {protect_ends!r}")
        if not isinstance(ride_verify, bool):
            raise ValueError(f"ride_verify must be True or False, got {ride_verify!r}")
        self.ride_verify = ride_verify
        self.head = None  # a DraftHead over the most frequent tokens (`draft_vocab`), None: the target's head
        self._riding = ride_verify  # False on models whose passes cannot carry riders (sliding window)
        self.num_layers = num_layers
        self.skip_ratio = _check_ratio(skip_ratio)
        self.dp_interval = _check_interval(dp_interval)
        self.k = check_draft_length(k)
        self.threshold = check_threshold(threshold)
        self.protect_ends = protect_ends
        self.skippable = list(range(1, num_layers - 1)) if protect_ends else list(range(num_layers))
        if not self.skippable:
            raise ValueError(f"clasp needs a skippable layer: this model has {num_layers} layers and "
                             "protect_ends=True keeps the first and last")
        self.budget = min(len(self.skippable), max(1, int(self.skip_ratio * num_layers)))
        self.skip: list[int] = self._fallback_skip()
        self._verifications = 0
        self._age = 0
        self._fresh: DPResult | None = None  # DP result not yet reported in a draft's info
        self._pending = 0  # position of the pending token at the last proposal
        self.last_dp: DPResult | None = None

    def _fallback_skip(self) -> list[int]:
        first = (len(self.skippable) - self.budget) // 2
        return self.skippable[first: first + self.budget]

    # -- the protocol ---------------------------------------------------------------------------
    def start(self, state: DecodeState, states: list[torch.Tensor] | None) -> None:
        self._verifications, self._age, self._fresh = 0, 0, None
        self._riding = self.ride_verify and state.runner.takes_riders
        self.skip = self._fallback_skip()
        if states is not None:
            # the last prompt token sits at pending_position - 1
            self._run_dp(state.runner, state.cache, [s[-1] for s in states], state.pending_position - 1)

    def propose(self, state: DecodeState) -> Draft:
        info = None
        if state.record:
            dp = self._fresh
            info = {
                "skipped_layers": list(self.skip),
                "dp_ran": dp is not None,
                "dp_grid": dp.grid_list() if dp else None,
                "dp_path": [[i, j] for i, j in dp.path] if dp else None,
                "dp_time": dp.time if dp else 0.0,
                "dp_rode_verify": bool(dp and dp.rode_verify),
                "dp_score": dp.score if dp else None,
                "dp_age": self._age,
                "dp_budget": self.budget,
                "dp_run_cos": dp.grid_list(dp.run_cos) if dp and dp.run_cos is not None else None,
                "dp_skip_cos": dp.grid_list(dp.skip_cos) if dp and dp.skip_cos is not None else None,
            }
        self._fresh = None
        self._pending = state.pending_position
        draft = draft_with_skip(state, self.skip, self.k, self.threshold, capture=True, info=info, head=self.head)
        # the coming verification is a DP one: let the DP's layer calls ride it, unless nothing
        # can be drafted after it (the generation ends there)
        if self._riding and self._dp_due(self._verifications + 1) and state.max_draft > len(draft.tokens) + 1:
            known = [s[0, 0] for s in draft.reuse.states] if draft.reuse is not None else [
                state.runner.embed(torch.tensor([[state.tokens[-1]]], device=state.runner.device))[0, 0]]
            draft.riders = DPRider(LayerDP(self.num_layers, self.budget, self.skippable, known[0]),
                                   state.pending_position, known)
        return draft

    def observe(self, result: VerifyResult) -> None:
        self._verifications += 1
        self._age += 1
        rider = result.draft.riders
        if isinstance(rider, DPRider):
            searched = rider.dp.result()
            searched.rode_verify = True
            self._use(searched)
            return
        if self._riding or not self._dp_due(self._verifications) or result.states is None:
            return
        row = result.accepted
        # position of the last accepted token (robust to an EOS cut of the commit)
        position = self._pending + row
        self._run_dp(result.runner, result.cache, [s[row] for s in result.states], position)

    def settings(self) -> dict:
        return {"skip_ratio": self.skip_ratio, "budget": self.budget, "dp_interval": self.dp_interval,
                "k": self.k, "threshold": self.threshold, "protect_ends": self.protect_ends,
                "ride_verify": self.ride_verify,
                "draft_vocab": draft_vocab_of(self.head)}

    # -- internals ------------------------------------------------------------------------------
    def _dp_due(self, verification: int) -> bool:
        return verification % self.dp_interval == 0

    def _run_dp(self, runner: LayerRunner, cache: DynamicCache, states: list[torch.Tensor], position: int) -> None:
        self._use(layer_dp(runner, cache, states, position, self.budget, self.skippable))

    def _use(self, result: DPResult) -> None:
        self.skip = result.skip
        self.last_dp = result
        self._fresh = result
        self._age = 0


def build(target, skip_ratio: float = DEFAULT_SKIP_RATIO, dp_interval: int = DEFAULT_DP_INTERVAL,
          k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD, protect_ends: bool = True,
          ride_verify: bool = True, draft_vocab: int = 0) -> CLaSp:
    """CLaSp drafter for `target`. skip_ratio in (0, 1): M = floor(ratio * L) layers skipped
    (clamped to [1, skippable]); dp_interval >= 1: rerun the DP every N verifications; k in [1, 64]:
    max draft length; threshold in [0, 1]: stop drafting after a token below this top-1 probability;
    ride_verify: the DP's layer calls ride the verify pass; draft_vocab: score only the N most
    frequent tokens in the draft (0: every token)."""
    drafter = CLaSp(target.config.num_hidden_layers, skip_ratio=skip_ratio, dp_interval=dp_interval,
                    k=k, threshold=threshold, protect_ends=protect_ends, ride_verify=ride_verify)
    drafter.head = frequent_vocab_head(target, draft_vocab, NAME)
    return drafter


DRAFTER = Declaration(
    NAME, "CLaSp (in-context layer skip)",
    "After verification, a dynamic program picks which M layers to skip so the draft's hidden states stay "
    "closest to the full model's; the search reruns every N verifications.",
    build,
    (Option("skip_ratio", "float", DEFAULT_SKIP_RATIO, "fraction of layers to skip (M = ratio x L)",
            flag="--skip-ratio", label="skip ratio (M = ratio × L layers skipped)", minimum=0.05, maximum=0.9, step=0.05),
     Option("dp_interval", "int", DEFAULT_DP_INTERVAL, "rerun the layer DP every N verifications", flag="--dp-interval",
            label="DP interval N (rerun the layer search every N verifications)", minimum=1, maximum=32, step=1),
     draft_length(DEFAULT_K, ui_default=6), confidence_threshold(DEFAULT_THRESHOLD, ui_default=0.5),
     Option("protect_ends", "bool", True, "never skip the first and last layer",
            label="never skip the first and last layer"),
     Option("ride_verify", "bool", True,
            "run the DP's layer calls as extra rows of the verify pass (shares its weight reads) instead of on their own",
            label="run the layer search inside the verify pass",
            info="inside the pass the search shares its weight reads and costs far less; it then searches at "
                 "the pass's first token instead of the last accepted one (off: the search makes its own layer calls)"),
     draft_vocab_option(zero="every token")))
