"""Greedy tokens from a large LM head at about a third of its cost: an fp16 screen, then an exact
fp32 decision among the few tokens the screen cannot rule out.

A greedy verdict needs only the argmax of each verified row's logits, yet the fp32 head reads all
of SmolLM2's 49152 x 576 weights for it (113 MB; 5.2 / 5.9 / 7.1 / 11 / 19 ms at 1 / 2 / 3 / 4 /
8 rows on this host, one thread, about a tenth of a verify step). The same product with the
weights held in fp16 (activations and sums stay fp32: `torch.fbgemm_linear_fp16_weight`) costs
2.2 / 2.3 / 2.4 / 3.4 / 7.1 ms, but its logits are off by the weights' rounding. That error has a
bound we can compute, so the screen can rule tokens out without ever being wrong:

    y_j   = x . w_j          (real arithmetic)   the logit the fp32 head approximates
    y'_j  = fl32(x . w_j)    (any order of sums) the fp32 head's logit: |y'_j - y_j| <= g ||x|| ||w_j||
    s_j   = fl32(x . h_j)    h_j = w_j in fp16   the screen's:         |s_j - x . h_j| <= g ||x|| ||h_j||
    x . w_j - x . h_j = x . r_j,  r_j = w_j - h_j,                     |x . r_j| <= ||x|| ||r_j||

with g = K u / (1 - K u) the textbook bound on a K-term fp32 dot product (u = 2^-24, any
summation order) and Cauchy-Schwarz for the rest, so |s_j - y'_j| <= ||x|| D, where
D = max_j ||r_j|| + 2 g max_j max(||w_j||, ||h_j||) is computed once from the weights (times
1.001 for the rounding of the norms themselves). The fp32 head's argmax t has y'_t >= y'_m for
the screen's argmax m, so s_t >= s_m - 2 ||x|| D: every token with s_j >= max(s) - 2 ||x|| D is a
candidate and no other can win. Each candidate's logit is then computed in fp32 from the fp32
weights, and the highest wins (the lowest token id on a tie, like `torch.argmax`). On SmolLM2's
own states ||x|| D is about 0.09 of a logit: 92 % of rows leave one candidate, none more than 4
(279 decoding steps of the chat prompts, every token equal to the fp32 head's argmax).

The rounded weights h_j are read back from the packed kernel itself (the product with the identity
matrix), so the bound holds whatever rounding the packing uses, and a self-test at construction
checks the kernel's sums against float64 within g; a CPU or build without the kernel, or one that
fails the check, keeps the fp32 head (`ScreenedHead.build` returns None). The candidates' fp32
logits may round differently in the last bit from a full-vocabulary product, like any change of
kernel (a k + 1-row verify pass already differs from `generate()`'s one-row steps); the lossless
tests hold with it. Greedy verdicts use it wherever no probability is kept: every row without `record`, and with
it (the app's runs) the row after the last draft token and the prefill's, whose logits no trace
keeps; a draft token's row, whose p the step views show, and sampling read the full head.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch

from .packed_linears import minimum_times

MIN_SIZE = 1 << 20  # head entries: a smaller head costs too little to screen (specviz-tiny's 8192 x 256 is 2 M)
MAX_ROWS = 64  # verify chunks are at most k + 1 rows
TRIALS = 3
SAFETY = 1.001  # on D: the norms behind it are themselves computed in fp32
U32 = 2.0 ** -24


def _kernel_available() -> bool:
    return hasattr(torch, "fbgemm_pack_gemm_matrix_fp16") and hasattr(torch, "fbgemm_linear_fp16_weight")


# PyTorch 2.13 marks the fp16-weight kernel deprecated (it is still the fastest here, and the
# self-test refuses a build whose kernel changes); the warning says nothing a user can act on. A
# process-wide filter, not `catch_warnings`, which is not thread-safe (the app warms up in a thread).
warnings.filterwarnings("ignore", message=r"fbgemm_(pack_gemm_matrix_fp16|linear_fp16_weight).* is deprecated")


def dot_error(terms: int) -> float:
    """g: the relative bound on a `terms`-term fp32 dot product, |fl(x.w) - x.w| <= g |x|.|w|."""
    return terms * U32 / (1 - terms * U32)


class ScreenedHead:
    """Argmax of `x @ weight.T` per row (see the module docstring). `weight`: an fp32 [V, K] head."""

    def __init__(self, weight: torch.Tensor):
        weight = weight.detach()
        self.weight = weight
        self.version = weight._version
        vocab, width = weight.shape
        with torch.inference_mode(False), torch.no_grad():
            self.packed = torch.fbgemm_pack_gemm_matrix_fp16(weight)
            self.zero = torch.zeros(vocab, dtype=torch.float32)
            g = dot_error(width)
            probe = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
            probe[:, :4] *= 40  # outlier features, as real hidden states have
            residual_sq, rounded_sq, exact = self._read_back(probe)
            largest = torch.maximum(weight.norm(dim=1), rounded_sq.sqrt()).max()
            self.slack = float((residual_sq.sqrt().max() + 2 * g * largest) * SAFETY)
            # the kernel's sums against float64, within the bound the screen assumes for them
            allowed = g * probe.double().norm(dim=1, keepdim=True) * rounded_sq.sqrt()[None] * SAFETY
            self.sound = bool(((self.screen(probe).double() - exact).abs() <= allowed + 1e-30).all())
            # which rows this host screens faster than the fp32 head: measured per row count
            self.faster: dict[int, bool] = {}

    def _read_back(self, probe: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The packed weights h as the kernel holds them, read back a few columns at a time (the
        product with rows of the identity: each sum has one term, so it is exact) -> per token
        ||w_j - h_j||^2 and ||h_j||^2 (float64), and probe @ h.T in float64."""
        vocab, width = self.weight.shape
        residual_sq = torch.zeros(vocab, dtype=torch.float64)
        rounded_sq = torch.zeros(vocab, dtype=torch.float64)
        exact = torch.zeros(probe.shape[0], vocab, dtype=torch.float64)
        for start in range(0, width, chunk):
            stop = min(start + chunk, width)
            rows = torch.eye(width, dtype=torch.float32)[start:stop]
            columns = self.screen(rows).double()  # [stop - start, V]: h[:, start:stop].T
            residual_sq += (self.weight[:, start:stop].double().t() - columns).pow(2).sum(dim=0)
            rounded_sq += columns.pow(2).sum(dim=0)
            exact += probe[:, start:stop].double() @ columns
        return residual_sq, rounded_sq, exact

    def screen(self, x: torch.Tensor) -> torch.Tensor:
        """s = x . h_j for every j: [r, K] fp32 -> [r, V] fp32."""
        return torch.fbgemm_linear_fp16_weight(x, self.packed, self.zero)

    @classmethod
    def build(cls, weight: torch.Tensor) -> "ScreenedHead | None":
        """A screen for this head, or None where it cannot help or cannot be trusted: not a large
        fp32 CPU weight, no fp16-weight kernel in this build, or a kernel failing the self-test."""
        if (weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2
                or weight.numel() < MIN_SIZE or not _kernel_available()):
            return None
        try:
            head = cls(weight)
        except RuntimeError:  # e.g. a build without FBGEMM
            return None
        return head if head.sound else None

    def candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(screen logits [r, V], candidate mask [r, V]): the tokens that may be each row's argmax."""
        scores = self.screen(x)
        margin = 2 * self.slack * x.norm(dim=1, keepdim=True)
        return scores, scores >= scores.amax(dim=1, keepdim=True) - margin

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """The fp32 head's argmax per row ([r, K] -> [r] token ids)."""
        scores, mask = self.candidates(x)
        rows, ids = mask.nonzero(as_tuple=True)  # ordered by row, then token id
        counts = torch.bincount(rows, minlength=x.shape[0])
        if bool((counts == 1).all()):  # one candidate per row: it is the argmax
            return ids
        if bool((counts == 0).any()):  # a row without a finite maximum (NaN or inf): as the full head says
            return torch.nn.functional.linear(x, self.weight).argmax(dim=1)
        picked = torch.empty(x.shape[0], dtype=torch.long)
        counts = counts.tolist()
        start = 0
        for row, count in enumerate(counts):
            chosen = ids[start:start + count]
            logits = torch.nn.functional.linear(x[row:row + 1], self.weight[chosen])[0]
            picked[row] = chosen[logits.argmax()]  # the lowest id on a tie, as over the whole vocabulary
            start += count
        return picked

    def is_faster(self, x: torch.Tensor, full: Callable[[torch.Tensor], torch.Tensor],
                  clock: Callable[[], float] = time.perf_counter) -> bool:
        """Whether screening `x`'s row count beats `full(x).argmax`, measured on first use here."""
        rows = x.shape[0]
        if rows not in self.faster:
            times = minimum_times({"screen": lambda: self.argmax(x), "full": lambda: full(x).argmax(dim=-1)},
                                  TRIALS, clock)
            self.faster[rows] = times["screen"] < times["full"]
        return self.faster[rows]


def screened_head(weight: torch.Tensor) -> ScreenedHead | None:
    """The screen of this weight tensor, made once and kept on it (a draft model sharing the
    target's head shares it), remade if the weight changed in place; None where `build` refuses."""
    cached = getattr(weight, "_specviz_screen", None)
    if cached is None or (cached[1] is not None and cached[1].version != weight._version):
        cached = (weight._version, ScreenedHead.build(weight))
        weight._specviz_screen = cached
    return cached[1]


def screen_table(runner) -> dict | None:
    """What a report records of a runner's screen: D and, per measured row count, whether it was
    faster than the full head (None: no screen on this runner)."""
    screen = runner.greedy_screen() if runner.device.type == "cpu" else None
    if screen is None:
        return None
    return {"slack": screen.slack, "faster_by_rows": {str(k): v for k, v in sorted(screen.faster.items())}}
