"""The layer runner: embed -> any subset of decoder layers -> final norm -> LM head.

Every drafter and the engine drive the model through this one class instead of `model()`,
because speculative decoding needs what `model()` cannot do:

* run any subset of decoder layers (layer skip, early exit) on one shared `DynamicCache`;
* start from a hidden state that an earlier pass already computed at layer e, so verification
  can reuse the exact work of an early-exit draft;
* return the pre-norm residual-stream state after each layer (CLaSp's DP target);
* crop every layer of the cache to an absolute length after a rejection.

Positions are always explicit (absolute token positions), never inferred from the cache: after a
layer-skip draft the per-layer cache lengths differ, and `model()` would take layer 0's length.
The mask of a pass is built against a layer that actually runs (`layer_idx=`), as the
transformers docstring asks for caches whose layers hold different lengths. Each layer runs through
`lean_layers.decoder_layer` (the same operations as transformers' layer, bit for bit, without its
per-module call overhead) where the model passes that module's self-test, else through the module.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from . import greedy_head, lean_layers
from .packed_linears import PackedLinears, minimum_times

REQUIRED_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")


class UnsupportedModelError(ValueError):
    """The model does not expose what the layer runner needs."""


def check_drivable(model: PreTrainedModel) -> None:
    """Raise `UnsupportedModelError` naming what is missing for the layer runner."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(model, "lm_head"):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no `.model` decoder and `.lm_head`; specviz drives "
            "decoder-only causal LMs of the Llama, Qwen2 and Mistral families."
        )
    missing = [part for part in REQUIRED_PARTS if not hasattr(base, part)]
    if missing:
        raise UnsupportedModelError(
            f"{type(model).__name__} lacks {', '.join(missing)}; specviz drives decoder-only "
            "causal LMs of the Llama, Qwen2 and Mistral families."
        )


class CPUHead:
    """logits = x @ W.T (+ b) for an LM head W [V, d], in the matrix-product layout that is fastest
    on this CPU for the number of rows, measured here.

    Decoding is memory-bound: a step costs about the time to read the weights, and for a head this
    large the best layout depends on the CPU and on the row count. One thread, SmolLM2's 49152 x 576
    head, ms (BENCHMARKS.md):

    | CPU                | rows | `F.linear` | x @ (a contiguous W.T) | W @ x.T |
    |--------------------|-----:|-----------:|-----------------------:|--------:|
    | AMD EPYC (AVX2)    | 1    | 11.1       | 5.9                    |         |
    |                    | 2    | 23.9       |                        | 5.9     |
    | Intel Xeon (AMX)   | 1    | 8.0        | 6.6                    | 7.9     |
    |                    | 2    | 8.7        | 11.9                   | 17.1    |
    |                    | 16   | 23.8       | 22.5                   | 15.7    |

    No fixed rule is right on both, so the first product of each row count (up to `MAX_TIMED_ROWS`)
    times every layout (`LAYOUTS`) on the caller's rows and keeps the fastest for that weight shape,
    shared by every head of the process (`layout_for`). Heads under `MIN_TIMED_SIZE` entries and
    other devices use `F.linear`. The layouts round differently in the last bits, like any change
    of kernel (a verify pass over k+1 rows already differs from generate()'s one-row steps), and the
    lossless tests hold whichever is picked. The transposed copy costs one more head in memory
    (113 MB for SmolLM2), shared by every head of the same weight.
    """

    MAX_TIMED_ROWS = 64  # verify passes are at most k + 1 rows; longer inputs (prefill) use F.linear
    # the row counts a warm-up measures ahead: a 32-token draft (the panels' and the bench's longest,
    # e.g. prompt lookup at k 32) plus the pending token
    WARM_ROWS = 33
    MIN_TIMED_SIZE = 1 << 20  # weight entries: below this every layout costs next to nothing

    def __init__(self, owner: torch.nn.Module, name: str = "lm_head"):
        # looked up at each call: a model whose head is swapped later (a draft model given the
        # target's head) is still read right
        self.owner, self.name = owner, name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        linear = getattr(self.owner, self.name)
        weight, bias = linear.weight, getattr(linear, "bias", None)
        flat = x.reshape(-1, x.shape[-1])
        out = LAYOUTS[layout_for(weight, flat)](flat, weight)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _transposed(weight: torch.Tensor) -> torch.Tensor:
    """A contiguous W.T, made once per weight tensor and kept on it, so the engine's runner and a
    draft model sharing the target's head share one copy; remade if the weight changed in place."""
    cached = getattr(weight, "_specviz_transposed", None)
    if cached is None or cached[0] != weight._version:
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode
            cached = (weight._version, weight.detach().t().contiguous())
        weight._specviz_transposed = cached
    return cached[1]


LAYOUTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": lambda x, w: torch.nn.functional.linear(x, w),
    "x @ W.T": lambda x, w: x @ _transposed(w),
    "W @ x.T": lambda x, w: (w @ x.t()).t(),
}
_LAYOUT_OF: dict[tuple, str] = {}  # (weight shape, dtype, rows) -> the fastest layout measured here
LAYOUT_TRIALS = 3  # timed calls per layout, interleaved; the minimum counts (robust to preemption)


def layout_for(weight: torch.Tensor, flat: torch.Tensor, clock: Callable[[], float] = time.perf_counter) -> str:
    """The layout of `LAYOUTS` for `flat @ weight.T`: measured the first time this weight shape
    meets this row count in the process (a few calls of each, on `flat` itself), then remembered."""
    rows = flat.shape[0]
    if weight.device.type != "cpu" or rows > CPUHead.MAX_TIMED_ROWS or weight.numel() < CPUHead.MIN_TIMED_SIZE:
        return "linear"
    key = (tuple(weight.shape), weight.dtype, rows)
    if key not in _LAYOUT_OF:
        _LAYOUT_OF[key] = fastest_layout(weight, flat, clock)
    return _LAYOUT_OF[key]


def fastest_layout(weight: torch.Tensor, flat: torch.Tensor, clock: Callable[[], float] = time.perf_counter) -> str:
    """Time every layout on these rows (one untimed call each first: the transposed copy is made
    once) and return the one with the lowest minimum."""
    calls = {name: (lambda product=product: product(flat, weight)) for name, product in LAYOUTS.items()}
    best = minimum_times(calls, LAYOUT_TRIALS, clock)
    return min(best, key=best.get)


@dataclass
class PassOutput:
    """What one pass of `LayerRunner.forward` returns."""

    hidden: torch.Tensor  # [1, T, d] residual stream after the last layer run (pre final norm)
    states: list[torch.Tensor] | None = None  # input, then output of each layer run ([1, T, d])


class Riders(Protocol):
    """Extra rows that ride along a pass (CLaSp's DP candidates): copies of the token at absolute
    `position`, each attending to the keys of positions [0, position) plus only itself. They
    share the pass's weight reads, write nothing to the cache, and are not part of its output.

    Before each layer the runner asks `inputs(layer)` ([R, d] or None); after it, it hands
    `after(layer, outputs, real)` the riders' outputs ([R, d] or None) and the pass's own rows
    after that layer ([T, d]), every layer in order.
    """

    position: int

    def inputs(self, layer: int) -> torch.Tensor | None: ...

    def after(self, layer: int, outputs: torch.Tensor | None, real: torch.Tensor) -> None: ...


def lean_check(model: PreTrainedModel) -> str | None:
    """`lean_layers.check` of this model, run once per model, dtype and attention kernel (it runs
    a self-test)."""
    key = (next(model.parameters()).dtype, model.config._attn_implementation)
    checked = model.__dict__.setdefault("_specviz_lean_refused", {})
    if key not in checked:
        checked[key] = lean_layers.check(model)
    return checked[key]


class LayerRunner:
    """Drives the decoder layers of one causal LM by hand (batch size 1). `pack_linears`: run the
    decoder's large linears in the kernel measured fastest for each pass's row count on a CPU
    (`specviz.packed_linears`; the engine's verify passes), without changing the model for anyone
    else. `screen_head`: `greedy_tokens` may take the LM head's argmax through an fp16 screen
    (`specviz.greedy_head`) where that is measured faster. `lean`: run the decoder layers as plain
    tensor code (`specviz.lean_layers`, bit for bit the same) where the model's layers qualify."""

    def __init__(self, model: PreTrainedModel, pack_linears: bool = False, screen_head: bool = True,
                 lean: bool = True):
        check_drivable(model)
        self.model = model
        self.base = model.model
        self.config = model.config
        self.num_layers: int = len(self.base.layers)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._layer_types = self._resolve_layer_types()
        self._lm_head = CPUHead(model)
        self._sliding = any(t == "sliding_attention" for t in self._layer_types)
        self.linears = PackedLinears.of(model) if pack_linears and self.device.type == "cpu" else None
        self.screen_head = screen_head  # greedy_tokens may use the fp16 screen (specviz.greedy_head)
        # why the layers run as transformers writes them (None: through lean_layers)
        self.lean_refused: str | None = lean_check(model) if lean else "turned off"

    # -- setup ---------------------------------------------------------------------------
    @property
    def lean(self) -> bool:
        """Whether the decoder layers run through `lean_layers.decoder_layer`."""
        return self.lean_refused is None

    def _resolve_layer_types(self) -> list[str]:
        types = getattr(self.config, "layer_types", None)
        if types is not None:
            return list(types)
        sliding = getattr(self.config, "sliding_window", None)
        return ["sliding_attention" if sliding else "full_attention"] * self.num_layers

    @property
    def takes_riders(self) -> bool:
        """Whether passes can carry `Riders` (every layer attends to the full prefix)."""
        return not self._sliding

    def new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self.config)
        if self._sliding:
            # Sliding layers refuse to crop past their window unless past states are recorded.
            cache.activate_past_recording()
        return cache

    # -- the pieces of a forward pass ----------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed_tokens(input_ids)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Shared final norm + LM head (also used at early exits)."""
        return self._lm_head(self.base.norm(hidden))

    def greedy_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's argmax per row of `hidden` ([r, d], pre-norm) -> [r] token ids: through the
        fp16 screen (`greedy_head`) where this host runs it faster for r rows, else the full head.
        For greedy verdicts that keep no logits."""
        flat = self.base.norm(hidden).reshape(-1, hidden.shape[-1])
        screen = self.greedy_screen()
        if screen is not None and flat.shape[0] <= greedy_head.MAX_ROWS and screen.is_faster(flat, self._lm_head):
            return screen.argmax(flat)
        return self._lm_head(flat).argmax(dim=-1)

    def greedy_screen(self) -> greedy_head.ScreenedHead | None:
        """The LM head's screen (built on first use, shared by every runner of this head), or None:
        off for this runner, a head with a bias, or one `ScreenedHead.build` refuses."""
        linear = self.model.lm_head
        if not self.screen_head or getattr(linear, "bias", None) is not None:
            return None
        return greedy_head.screened_head(linear.weight)

    def prepare_kernels(self, max_rows: int = CPUHead.MAX_TIMED_ROWS) -> None:
        """Measure the LM head's layout (`CPUHead`) and its greedy screen (`greedy_tokens`) for
        every row count up to `max_rows`, and the decoder linears' kernel (`pack_linears`) for
        every row count they may meet, now, so that no later call pays for it: a benchmark's timed
        runs must not."""
        weight = self.model.lm_head.weight
        probe = torch.Generator().manual_seed(0)
        for rows in range(1, max_rows + 1):
            layout_for(weight, torch.zeros(rows, weight.shape[1], dtype=weight.dtype, device=weight.device))
        screen = self.greedy_screen()
        for rows in range(1, min(max_rows, greedy_head.MAX_ROWS) + 1) if screen is not None else ():
            # states like a model's (a clear argmax per row), not zeros, whose every token ties
            states = torch.randn(rows, weight.shape[1], generator=probe).to(weight.device) * 2
            screen.is_faster(states, self._lm_head)
        if self.linears is not None:
            self.linears.prepare()  # every row count up to its MAX_ROWS: a short prompt's prefill too

    def _kernels(self):
        """The context every pass of this runner runs in: its measured linear kernels, if any."""
        return self.linears.active() if self.linears is not None else nullcontext()

    def _layer(self, i: int, hidden: torch.Tensor, mask, rope, positions: torch.Tensor, cache) -> torch.Tensor:
        """Decoder layer `i` on `hidden`, writing its keys and values through `cache.update`."""
        if self.lean:
            return lean_layers.decoder_layer(self.base.layers[i], hidden, rope, mask, cache)
        return self.base.layers[i](hidden, attention_mask=mask, position_embeddings=rope, position_ids=positions,
                                   past_key_values=cache, use_cache=True)

    def positions(self, start: int, length: int) -> torch.Tensor:
        return torch.arange(start, start + length, device=self.device).unsqueeze(0)

    def forward(
        self,
        hidden: torch.Tensor,
        layers: Sequence[int],
        start: int,
        cache: DynamicCache,
        capture: bool = False,
        riders: Riders | None = None,
    ) -> PassOutput:
        """Run `layers` (ascending) on `hidden` whose first token sits at absolute position `start`.

        Every layer run must hold exactly `start` cached tokens; each appends its KV to its own
        slot of `cache`. With `capture`, the input and each layer's output are kept. `riders`
        (see `Riders`) add rows to the layer calls that need them; `hidden` may then hold no rows.
        """
        with self._kernels():
            if riders is not None:
                return self._forward_with_riders(hidden, layers, start, cache, capture, riders)
            return self._forward(hidden, layers, start, cache, capture)

    def _forward(self, hidden: torch.Tensor, layers: Sequence[int], start: int, cache: DynamicCache,
                 capture: bool) -> PassOutput:
        states = [hidden] if capture else None
        if not layers:
            return PassOutput(hidden, states)
        pos = self.positions(start, hidden.shape[1])
        rope = self.base.rotary_emb(hidden, position_ids=pos)
        masks: dict[str, torch.Tensor | None] = {}
        for i in layers:
            kind = self._layer_types[i]
            if kind not in masks:
                build = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
                masks[kind] = build(
                    config=self.config, inputs_embeds=hidden, attention_mask=None,
                    past_key_values=cache, position_ids=pos, layer_idx=i,
                )
            hidden = self._layer(i, hidden, masks[kind], rope, pos, cache)
            if capture:
                states.append(hidden)
        return PassOutput(hidden, states)

    def _forward_with_riders(self, hidden: torch.Tensor, layers: Sequence[int], start: int, cache: DynamicCache,
                             capture: bool, riders: Riders) -> PassOutput:
        """`forward` with riders appended after the pass's T rows in the layers that take them.
        A separate loop because each such layer call needs its own mask (R varies by layer) and a
        cache crop afterwards (attention appends the riders' KV, which must not stay)."""
        states = [hidden] if capture else None
        n_real = hidden.shape[1]
        pos = self.positions(start, n_real)
        plain: dict[str, object] = {}  # mask and rope of the layers without riders (built once)
        ridden: dict[int, tuple] = {}  # rider count -> (positions, mask, rope) of the layers with riders
        for i in layers:
            if self._layer_types[i] == "sliding_attention":
                raise ValueError("riders need full-attention layers (a sliding window would hide their prefix)")
            rows = riders.inputs(i)
            if rows is None:
                if n_real:
                    if not plain:
                        plain["mask"] = create_causal_mask(
                            config=self.config, inputs_embeds=hidden, attention_mask=None,
                            past_key_values=cache, position_ids=pos, layer_idx=i)
                        plain["rope"] = self.base.rotary_emb(hidden, position_ids=pos)
                    hidden = self._layer(i, hidden, plain["mask"], plain["rope"], pos, cache)
                riders.after(i, None, hidden[0])
            else:
                joined = torch.cat([hidden, rows.unsqueeze(0).to(hidden.dtype)], dim=1)
                n_riders = rows.shape[0]
                if n_riders not in ridden:  # most layers carry the same number of riders: build once
                    both = torch.cat([pos, torch.full((1, n_riders), riders.position, device=self.device)], dim=1)
                    ridden[n_riders] = (both, self._rider_mask(start, n_real, n_riders, riders.position),
                                        self.base.rotary_emb(joined, position_ids=both))
                both, mask, rope = ridden[n_riders]
                out = self._layer(i, joined, mask, rope, both, cache)
                self.crop(cache, start + n_real, [i])  # drop the riders' keys and values
                hidden = out[:, :n_real]
                riders.after(i, out[0, n_real:], hidden[0])
            if capture:
                states.append(hidden)
        return PassOutput(hidden, states)

    def _rider_mask(self, cached: int, n_real: int, n_riders: int, position: int) -> torch.Tensor:
        """Keys: `cached` tokens, then the pass's rows, then the riders. Real rows are causal (they
        never reach the riders' columns); a rider sees positions < `position` and itself."""
        keys = cached + n_real + n_riders
        column = torch.arange(keys, device=self.device)
        real = column[None, :] <= (cached + torch.arange(n_real, device=self.device))[:, None]
        rider = column[None, :] < position
        rider = rider.expand(n_riders, keys).clone()
        rider[:, cached + n_real:] = torch.eye(n_riders, dtype=torch.bool, device=self.device)
        return self._as_mask(torch.cat([real, rider], dim=0))

    # -- CLaSp's DP: many candidates through one layer, no cache write ---------------------
    def layer_on_candidates(
        self, layer: int, candidates: torch.Tensor, position: int, cache: DynamicCache
    ) -> torch.Tensor:
        """Run `candidates` ([1, C, d]) through one layer as C independent copies of the token at
        `position`: each attends to the cached prefix [0, position) of that layer plus only
        itself. The real cache is read, never written.
        """
        n_cand = candidates.shape[1]
        slot = cache.layers[layer]
        stored = slot.keys.shape[-2]
        stored_from = slot.get_seq_length() - stored  # sliding layers may have dropped old states
        prefix_len = position - stored_from
        keys, values = slot.keys[:, :, :prefix_len], slot.values[:, :, :prefix_len]
        visible = torch.ones(n_cand, prefix_len + n_cand, dtype=torch.bool, device=self.device)
        visible[:, prefix_len:] = torch.eye(n_cand, dtype=torch.bool, device=self.device)
        window = getattr(self.config, "sliding_window", None)
        if self._layer_types[layer] == "sliding_attention" and window:
            first_visible = max(0, position - window + 1)
            visible[:, : max(0, first_visible - stored_from)] = False
        mask = self._as_mask(visible)
        pos = torch.full((1, n_cand), position, device=self.device)
        rope = self.base.rotary_emb(candidates, position_ids=pos)
        with self._kernels():
            return self._layer(layer, candidates, mask, rope, pos, lean_layers.PrefixOnlyCache(keys, values))

    def _as_mask(self, visible: torch.Tensor) -> torch.Tensor:
        mask = visible[None, None]
        if self.config._attn_implementation == "sdpa":
            return mask
        # eager and the other kernels add the mask to the scores
        blocked = torch.finfo(self.dtype).min
        return torch.zeros(mask.shape, dtype=self.dtype, device=self.device).masked_fill(~mask, blocked)

    # -- cache bookkeeping -----------------------------------------------------------------
    @staticmethod
    def crop(cache: DynamicCache, length: int, layers: Sequence[int] | None = None) -> None:
        """Shorten the chosen layers (default all) to hold at most `length` tokens."""
        chosen = range(len(cache.layers)) if layers is None else layers
        for i in chosen:
            slot = cache.layers[i]
            extra = slot.get_seq_length() - length
            if extra <= 0:
                continue
            if getattr(slot, "record_past", False):
                # A sliding-window layer: transformers' crop would also shrink the stored past to
                # window-1, after which a second rollback in the same step (HiSpec's intermediate
                # level, then the engine's commit) could not reach back far enough. Drop only the
                # tail; `update` still hands attention just the window, so outputs are unchanged
                # and the layer keeps O(sequence) states like a full-attention layer.
                slot.keys, slot.values = slot.keys[:, :, :-extra], slot.values[:, :, :-extra]
                slot.cumulative_length -= extra
            else:
                slot.crop(-extra)

    @staticmethod
    def lengths(cache: DynamicCache) -> list[int]:
        return [slot.get_seq_length() for slot in cache.layers]
