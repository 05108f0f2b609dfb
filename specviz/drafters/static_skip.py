"""Static layer skip (Draft & Verify / Self-SD style, whole layers): draft with a fixed set of
layers bypassed. Presets:

* ``alternate`` — every other middle layer (1, 3, 5, ...; first and last layer always run);
* ``ratio``     — the middle `ratio` of the layers, centred (deep middle layers change the
                  residual stream least, so they are the cheapest to drop);
* an explicit list of layer indices.

Layers below the first skipped one are exact, so verification reuses them.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .draft_heads import draft_vocab_of, draft_vocab_option, frequent_vocab_head
from .layer_skip import draft_with_skip
from .registry import Declaration, Option, confidence_threshold, draft_length

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
        self.head = None  # a DraftHead over the most frequent tokens (`draft_vocab`), None: the target's head

    def start(self, state: DecodeState, states) -> None:
        pass

    def propose(self, state: DecodeState) -> Draft:
        info = {"skipped_layers": self.skip} if state.record else None
        return draft_with_skip(state, self.skip, self.k, self.threshold, info=info, head=self.head)

    def observe(self, result: VerifyResult) -> None:
        pass

    def settings(self) -> dict:
        return {"preset": self.preset, "skip_layers": self.skip, "k": self.k, "threshold": self.threshold,
                "draft_vocab": draft_vocab_of(self.head)}


def build(target, draft_vocab: int = 0, **options) -> StaticSkip:
    drafter = StaticSkip(target.config.num_hidden_layers, **options)
    drafter.head = frequent_vocab_head(target, draft_vocab, StaticSkip.name)
    return drafter


def parse_skip(text: str) -> str | list[int]:
    """The CLI's --skip: a preset name, or comma-separated layer indices."""
    if text in PRESETS:
        return text
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise ValueError(f"must be 'alternate', 'ratio' or comma-separated layer indices, got {text!r}") from None


# The panel shows the skip list as preset "custom" plus a text box (`skip_layers`), which these
# two fold into the `skip` option and back.

def panel_to_options(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    custom = str(out.pop("skip_layers", "") or "")
    if out.get("skip") == "custom":
        try:
            out["skip"] = [int(x) for x in re.split(r"[,\s]+", custom.strip()) if x]
        except ValueError:
            raise ValueError(f"custom skip layers must be integers separated by commas, e.g. 2,4,6; got {custom!r}") from None
        if not out["skip"]:
            raise ValueError("preset 'custom' needs a list of layers to skip, e.g. 2,4,6")
    elif custom.strip():  # typed layers would be ignored silently: say so, and lose nothing
        raise ValueError(f"the layers to skip you typed ({custom.strip()}) are used only with preset 'custom', but "
                         f"the preset is {out.get('skip')!r}: choose 'custom' to use them, or clear the box")
    return out


def options_to_panel(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    if "skip" in out and not isinstance(out["skip"], str):
        out["skip"], out["skip_layers"] = "custom", ", ".join(str(i) for i in out["skip"])
    return out


DRAFTER = Declaration(
    StaticSkip.name, "Static layer skip (Draft & Verify / Self-SD)",
    "Draft with the same model but a fixed set of its layers bypassed; verify with all layers.",
    build,
    (Option("skip", "choice", "alternate", "preset: 'alternate', 'ratio', or a comma-separated list of layer indices",
            flag="--skip", label="skip preset", choices=(*PRESETS, "custom"), parse=parse_skip,
            info="alternate: every other middle layer · ratio: the middle fraction · custom: your list"),
     Option("skip_ratio", "float", 0.5, "fraction of the layers preset 'ratio' skips", flag="--skip-ratio",
            label="skip ratio (preset 'ratio')", minimum=0.05, maximum=0.95, step=0.05),
     Option("skip_layers", "text", "", label="layers to skip (preset 'custom'), e.g. 2,4,6", panel_only=True),
     draft_length(4), confidence_threshold(0.0), draft_vocab_option(zero="every token")),
    to_options=panel_to_options, to_panel=options_to_panel)
