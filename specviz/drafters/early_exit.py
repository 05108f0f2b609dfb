"""Early exit (LayerSkip-style self-speculation): draft with the first E layers + the shared
final norm and LM head.

Verification reuses the draft's work: layers below E already hold the drafted tokens' KV, and
their layer-E states are exact, so the target runs only layers >= E on them (plus layers < E
on the one token the draft never fed). Needs a model trained with an early-exit loss (the
bundled one is) to accept anything.
"""

from __future__ import annotations

from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .layer_skip import draft_with_skip
from .registry import Declaration, Option, confidence_threshold, draft_length


class EarlyExit:
    name = "early-exit"
    wants_states = False

    def __init__(self, num_layers: int, exit_layer: int | None = None, k: int = 4, threshold: float = 0.0):
        if exit_layer is None:
            # 3/8 of the depth: on the bundled 16-layer model E=6, k=4 was fastest (1.3x the AR
            # loop; E=4 drafts too poorly, E=8 costs too much per draft token)
            exit_layer = max(1, (3 * num_layers) // 8)
        if not isinstance(exit_layer, int) or not 1 <= exit_layer <= num_layers - 1:
            raise ValueError(f"exit_layer (E) must be an integer in [1, {num_layers - 1}], got {exit_layer!r}")
        self.exit_layer = exit_layer
        self.k = check_draft_length(k)
        self.threshold = check_threshold(threshold)
        self.skip = list(range(exit_layer, num_layers))

    def start(self, state: DecodeState, states) -> None:
        pass

    def propose(self, state: DecodeState) -> Draft:
        info = {"skipped_layers": self.skip, "exit_layer": self.exit_layer} if state.record else None
        return draft_with_skip(state, self.skip, self.k, self.threshold, info=info)

    def observe(self, result: VerifyResult) -> None:
        pass

    def settings(self) -> dict:
        return {"exit_layer": self.exit_layer, "k": self.k, "threshold": self.threshold}


def build(target, **options) -> EarlyExit:
    return EarlyExit(target.config.num_hidden_layers, **options)


DRAFTER = Declaration(
    EarlyExit.name, "Early exit (LayerSkip)",
    "Draft with only the first E layers and the shared LM head; verification reuses their cache.",
    build,
    (Option("exit_layer", "layer", None, "number of layers E the draft runs before the shared head (default 3L/8)",
            flag="--exit-layer", label="exit layer E (0 = auto: 3L/8)", ui_default=0, minimum=0, maximum=63, step=1),
     draft_length(4), confidence_threshold(0.0)),
    needs="early-exit")
