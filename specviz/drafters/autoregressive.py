"""Plain decoding: the empty draft. The engine's loop then is ordinary greedy/sampled decoding."""

from __future__ import annotations

from .base import DecodeState, Draft, VerifyResult
from .registry import Declaration


class Autoregressive:
    name = "ar"
    wants_states = False

    def start(self, state: DecodeState, states) -> None:
        pass

    def propose(self, state: DecodeState) -> Draft:
        return Draft(tokens=[])

    def observe(self, result: VerifyResult) -> None:
        pass

    def settings(self) -> dict:
        return {}


def build(target, **options) -> Autoregressive:
    return Autoregressive(**options)


DRAFTER = Declaration(
    Autoregressive.name, "Plain decoding",
    "No draft: the target adds one token per forward pass. The baseline every drafter is compared with.",
    build)
