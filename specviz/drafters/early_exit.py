"""Early exit (LayerSkip-style self-speculation): draft with the first E layers + the shared
final norm and LM head.

Verification reuses the draft's work: layers below E already hold the drafted tokens' KV, and
their layer-E states are exact, so the target runs only layers >= E on them (plus layers < E
on the one token the draft never fed). Needs a model trained with an early-exit loss (the
bundled one is) to accept anything, or a trained exit adapter (`draft_heads`): a small module
that maps the layer-E state so the shared head predicts the full model's token. The adapter and a
frequency-ranked draft vocabulary change only the draft distribution q, never the verification.
"""

from __future__ import annotations

from .draft_heads import adapter_option, build_head, draft_vocab_option
from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .layer_skip import draft_with_skip
from .registry import Declaration, Option, confidence_threshold, draft_length


class EarlyExit:
    name = "early-exit"
    wants_states = False

    def __init__(self, num_layers: int, exit_layer: int | None = None, k: int = 4, threshold: float = 0.0,
                 head=None):
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
        self.head = head  # DraftHead (adapter, vocabulary subset) or None: the target's own head

    def start(self, state: DecodeState, states) -> None:
        pass

    def propose(self, state: DecodeState) -> Draft:
        info = {"skipped_layers": self.skip, "exit_layer": self.exit_layer, **self._head_settings()} \
            if state.record else None
        return draft_with_skip(state, self.skip, self.k, self.threshold, info=info, head=self.head)

    def observe(self, result: VerifyResult) -> None:
        pass

    def settings(self) -> dict:
        return {"exit_layer": self.exit_layer, "k": self.k, "threshold": self.threshold, **self._head_settings()}

    def _head_settings(self) -> dict:
        return self.head.describe() if self.head is not None else {"adapter": False, "draft_vocab": 0}


def build(target, adapter: str = "auto", draft_vocab: int = 0, **options) -> EarlyExit:
    drafter = EarlyExit(target.config.num_hidden_layers, **options)
    drafter.head = build_head(target, drafter.exit_layer, adapter, draft_vocab, EarlyExit.name)
    return drafter


DRAFTER = Declaration(
    EarlyExit.name, "Early exit (LayerSkip)",
    "Draft with only the first E layers and the shared LM head; verification reuses their cache.",
    build,
    (Option("exit_layer", "layer", None, "number of layers E the draft runs before the shared head (default 3L/8)",
            flag="--exit-layer", label="exit layer E (0 = auto: 3L/8)", ui_default=0, minimum=0, maximum=63, step=1),
     draft_length(4), confidence_threshold(0.0), adapter_option(), draft_vocab_option()),
    needs="early-exit")
