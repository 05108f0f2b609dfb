"""The decoder's large linear layers in the CPU kernel that is fastest for a pass's row count.

A verify pass runs k + 1 rows through every layer at once. PyTorch's fp32 `F.linear` (MKL's
sgemm) handles one to three rows at about the price of one (the weights are read once), but from
four rows on it switches to a kernel that costs far more. Measured on this host (Intel Xeon, one
thread), SmolLM2's 30 layers, ms per pass without the LM head:

| rows                                    | 1    | 2    | 3    | 4    | 6    | 9    | 17   |
|-----------------------------------------|-----:|-----:|-----:|-----:|-----:|-----:|-----:|
| `F.linear` everywhere                   | 44.7 | 48.3 | 50.8 | 68.6 | 72.5 | 86.7 | 99.9 |
| a oneDNN weight, reordered once ahead   | 52.2 | 57.1 | 58.4 | 59.3 | 62.4 | 68.7 | 83.5 |

Neither wins at every row count, and where the crossing lies depends on the CPU and the weight's
shape, so, as `layers.CPUHead` does for the LM head, the choice is measured here: the first pass
of each row count (up to `MAX_ROWS`) times both kernels over every weight of a shape in turn (the
way a pass streams them from memory; one weight timed over and over sits in the cache and misleads)
and keeps the faster per (shape, rows) (the packed one only if it is clearly faster, `MARGIN`).

Only specviz's own passes use it (`LayerRunner(..., pack_linears=True)` turns it on around each
pass of that runner, per thread: the engine's, and the draft model's and the EAGLE head's, whose
draft steps it makes 14 % and 3 % cheaper on SmolLM2): `model.generate()` and transformers'
assisted generation on the same model run the model exactly as loaded. The weights' values are the same; the kernels round
differently in the last bits, like any change of kernel (a k + 1-row pass already differs from
`generate()`'s one-row steps), and the lossless tests on the bundled model hold with it. The
reordered copies cost memory: one more copy of each weight this covers (the MLP's, about 320 MB for
SmolLM2 in fp32, 106 MB more for its attention's); weights under `MIN_SIZE` entries are left alone.

On the AMD EPYC host (AVX2) the packed kernel wins at every row count, and for the attention's
smaller weights too: with every decoder linear covered (not only the MLP's), SmolLM2's passes cost
23.3 / 25.8 / 27.8 / 29.5 / 35.5 ms at 1 / 2 / 3 / 4 / 9 rows against 28.9 / 36.5 / 42.4 / 34.6 /
44.2 with the MLP's alone, and specviz-tiny's (256 wide) 6.0 against 6.8 ms at one row. Hence a
`MIN_SIZE` low enough to cover both models' attention weights; the measurement still keeps
`F.linear` wherever it is not clearly slower.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

MIN_SIZE = 1 << 16  # weight entries: a 256 x 256 attention weight is covered; smaller ones cost next to nothing
MAX_ROWS = 64  # longer inputs (a prefill) keep `F.linear`
# the row counts measured: each up to 8, then a ladder; a count between two takes the choice of
# the one below (the choice changes once, at a few rows, and a measurement costs ~0.2 s)
MEASURED_ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)
TRIALS = 3  # timed sweeps per kernel, interleaved; the minimum counts (robust to preemption)
# the packed kernel must be this much faster to be chosen: where the two are close (1-3 rows here),
# a noisy measurement must not trade the module's own kernel for a slightly slower one
MARGIN = 0.05
KERNELS = ("linear", "packed")

_ACTIVE = threading.local()  # whether this thread is inside a pass of a runner that packs


def minimum_times(calls: dict[str, Callable[[], object]], trials: int,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Each call's lowest time over `trials`, the calls interleaved within a trial (one untimed call
    of each first: a copy made on first use is not timed). The minimum is robust to preemption on a
    shared machine. Shared by the LM head's layouts (`layers.fastest_layout`) and the linears'."""
    for call in calls.values():
        call()
    best = {name: float("inf") for name in calls}
    for _ in range(trials):
        for name, call in calls.items():
            t0 = clock()
            call()
            best[name] = min(best[name], clock() - t0)
    return best


def _packed_supported(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class _PackedLinear:
    """Stands in for one `nn.Linear`'s forward: the packed kernel inside an active pass where it
    was measured faster for these rows, the module's own forward everywhere else."""

    def __init__(self, owner: "PackedLinears", module: nn.Linear):
        self.owner, self.module, self.key = owner, module, (tuple(module.weight.shape), module.weight.dtype)
        self.original = nn.Linear.forward.__get__(module)
        self._packed: tuple[int, torch.Tensor] | None = None

    @property
    def packed(self) -> torch.Tensor:
        """The reordered weight, remade if the weight was changed in place since."""
        weight = self.module.weight
        if self._packed is None or self._packed[0] != weight._version:
            with torch.inference_mode(False), torch.no_grad():
                self._packed = (weight._version, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        return self._packed[1]

    def run_packed(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.module.bias, "none", [], "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(_ACTIVE, "on", False) and not (torch.is_grad_enabled() and x.requires_grad):
            rows = x.numel() // x.shape[-1]
            if 0 < rows <= MAX_ROWS and self.owner.kernel(self.key, rows) == "packed":
                out = self.run_packed(x.reshape(rows, x.shape[-1]))
                return out.reshape(*x.shape[:-1], out.shape[-1])
        return self.original(x)


class PackedLinears:
    """Every large `nn.Linear` of a model's decoder layers, each with a packed stand-in, and the
    measured kernel per (weight shape, rows). One per model (`of`), shared by its runners."""

    def __init__(self, model: nn.Module, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.groups: dict[tuple, list[_PackedLinear]] = {}
        self._kernel: dict[tuple, str] = {}  # (shape key, measured rows) -> kernel
        self._by_rows: dict[tuple, str] = {}  # (shape key, any rows) -> kernel, filled from _kernel
        for module in model.model.layers.modules():
            weight = getattr(module, "weight", None)
            if type(module) is nn.Linear and weight.numel() >= MIN_SIZE and _packed_supported(weight):
                stand_in = _PackedLinear(self, module)
                module.forward = stand_in  # an instance attribute: only this module, only when active
                self.groups.setdefault(stand_in.key, []).append(stand_in)

    @classmethod
    def of(cls, model: nn.Module) -> "PackedLinears":
        found = getattr(model, "_specviz_packed_linears", None)
        if found is None:
            found = cls(model)
            model._specviz_packed_linears = found
        return found

    @contextmanager
    def active(self) -> Iterator[None]:
        """Passes inside use the measured kernels (this thread only)."""
        before = getattr(_ACTIVE, "on", False)
        _ACTIVE.on = bool(self.groups)
        try:
            yield
        finally:
            _ACTIVE.on = before

    def kernel(self, key: tuple, rows: int) -> str:
        """The kernel for `rows` rows (1..MAX_ROWS) of this shape: measured for the nearest of
        `MEASURED_ROWS` at or below, on first use. Called by every linear of every pass, so the
        answer per (shape, rows) is kept in a plain dict lookup."""
        found = self._by_rows.get((key, rows))
        if found is None:
            measured = max(r for r in MEASURED_ROWS if r <= rows)
            if (key, measured) not in self._kernel:
                self._kernel[key, measured] = self._fastest(self.groups[key], measured)
            found = self._by_rows[key, rows] = self._kernel[key, measured]
        return found

    def prepare(self) -> None:
        """Measure every shape at every row count it may meet now (a few seconds), so that no
        timed pass pays for it."""
        for key in self.groups:
            for rows in MEASURED_ROWS:
                self.kernel(key, rows)

    def _fastest(self, stand_ins: list[_PackedLinear], rows: int) -> str:
        """Both kernels over every weight of the shape in turn (one untimed sweep each first)."""
        first = stand_ins[0].module.weight
        x = torch.full((rows, first.shape[1]), 0.01, dtype=first.dtype, device=first.device)
        sweeps = {"linear": lambda: [s.original(x) for s in stand_ins],
                  "packed": lambda: [s.run_packed(x) for s in stand_ins]}
        with torch.inference_mode():
            best = minimum_times({name: sweeps[name] for name in KERNELS}, TRIALS, self.clock)
        return "packed" if best["packed"] < (1 - MARGIN) * best["linear"] else "linear"

    def table(self) -> dict[str, dict[int, str]]:
        """The measured choices, by weight shape and rows (for the bench's notes)."""
        out: dict[str, dict[int, str]] = {}
        for (key, rows), name in sorted(self._kernel.items(), key=lambda item: (str(item[0][0]), item[0][1])):
            out.setdefault("x".join(map(str, key[0])), {})[rows] = name
        return out
