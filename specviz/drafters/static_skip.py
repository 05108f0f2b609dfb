"""Static layer skip (Draft & Verify / Self-SD style, whole layers): draft with a fixed set of
layers bypassed. Presets:

* ``alternate`` — every other middle layer (1, 3, 5, ...; first and last layer always run);
* ``ratio``     — the middle `ratio` of the layers, centred (deep middle layers change the
                  residual stream least, so they are the cheapest to drop);
* an explicit list of layer indices.

Layers below the first skipped one are exact, so verification reuses them.
"""

from __future__ import annotations

from typing import Sequence

from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .layer_skip import draft_with_skip

PRESETS = ("alternate", "ratio")


def alternate_layers(num_layers: int) -> list[int]:
    return list(range(1, num_layers - 1, 2))


def middle_layers(num_layers: int, ratio: float) -> list[int]:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"skip_ratio must be in (0, 1), got {ratio!r}")
    count = min(num_layers - 2, max(1, round(ratio * num_layers)))
    first = 1 + (num_layers - 2 - count) // 2
    return list(range(first, first + count))


def resolve_skip(num_layers: int, preset: str | Sequence[int], ratio: float = 0.5) -> list[int]:
    if isinstance(preset, str):
        if preset == "alternate":
            return alternate_layers(num_layers)
        if preset == "ratio":
            return middle_layers(num_layers, ratio)
        raise ValueError(f"skip preset must be one of {PRESETS} or a list of layer indices, got {preset!r}")
    layers = sorted(set(int(i) for i in preset))
    if not layers or layers[0] < 0 or layers[-1] >= num_layers or len(layers) >= num_layers:
        raise ValueError(
            f"skip_layers must be a non-empty list of distinct layer indices in [0, {num_layers - 1}] "
            f"that leaves at least one layer, got {list(preset)!r}"
        )
    return layers


class StaticSkip:
    name = "static-skip"
    wants_states = False

    def __init__(self, num_layers: int, skip: str | Sequence[int] = "alternate", skip_ratio: float = 0.5,
                 k: int = 4, threshold: float = 0.0):
        self.skip = resolve_skip(num_layers, skip, skip_ratio)
        self.preset = skip if isinstance(skip, str) else "list"
        self.skip_ratio = skip_ratio
        self.k = check_draft_length(k)
        self.threshold = check_threshold(threshold)

    def start(self, state: DecodeState, states) -> None:
        pass

    def propose(self, state: DecodeState) -> Draft:
        info = {"skipped_layers": self.skip} if state.record else None
        return draft_with_skip(state, self.skip, self.k, self.threshold, info=info)

    def observe(self, result: VerifyResult) -> None:
        pass

    def settings(self) -> dict:
        return {"preset": self.preset, "skip_layers": self.skip, "k": self.k, "threshold": self.threshold}
