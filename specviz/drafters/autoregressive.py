"""Plain decoding: the empty draft. The engine's loop then is ordinary greedy/sampled decoding."""

from __future__ import annotations

from .base import DecodeState, Draft, VerifyResult


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
