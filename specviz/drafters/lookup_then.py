"""Prompt lookup first, else a trained head: each step drafts from the context where the context
has a match, and from a cheap trained drafter (the EAGLE head, or the CTC head) where it has none.

The two are good at different steps. A lookup draft is free and right about 60 % of the time
when the context has a match, but everyday chat gives it one at only a few steps; the trained head
costs about 0.08 of a step per token and is right about a quarter of the time at every step. On
SmolLM2 chat each alone beats `generate()` by 13-17 % on this CPU (BENCHMARKS.md); taking the
lookup's draft where there is one and the head's elsewhere keeps both gains. (Snowflake's Arctic
Inference pairs suffix decoding with a small speculator the same way.)

Lossless like its parts: each step's draft comes from one drafter with that drafter's q (one-hot
for a lookup draft), and the verifier is the unchanged target. Both parts see every verification
(`observe`), so the head keeps its cache of the target's states in step even over the steps the
lookup drafted.
"""

from __future__ import annotations

from typing import Any

from .base import DecodeState, Draft, VerifyResult, check_draft_length
from .prompt_lookup import LENGTHS, PromptLookup
from .registry import Declaration, Option, draft_length, make_drafter

NAME = "lookup-then-head"
HEADS = ("eagle", "ctc")


class LookupThenHead:
    name = NAME

    def __init__(self, lookup: PromptLookup, fallback):
        self.lookup, self.fallback = lookup, fallback
        self.wants_states = fallback.wants_states

    def start(self, state: DecodeState, states) -> None:
        self.lookup.start(state, states)
        self.fallback.start(state, states)

    def propose(self, state: DecodeState) -> Draft:
        draft = self.lookup.propose(state)
        if draft.tokens:
            return draft
        draft = self.fallback.propose(state)
        if state.record:
            draft.info = {"source": f"the {self.fallback.name} head (no match in the context)", **draft.info}
        return draft

    def observe(self, result: VerifyResult) -> None:
        self.lookup.observe(result)
        self.fallback.observe(result)

    def settings(self) -> dict[str, Any]:
        head = self.fallback.settings()
        return {**self.lookup.settings(), "then": self.fallback.name, "then_k": head["k"],
                "head_file": head.get("head_file")}


def build(target, k: int = 16, max_ngram: int = 3, min_ngram: int = 2, length: str = "match", then: str = "eagle",
          then_k: int = 1, random_head: bool = False) -> LookupThenHead:
    if then not in HEADS:
        raise ValueError(f"then must be one of {', '.join(HEADS)}, got {then!r}")
    if not isinstance(random_head, bool):
        raise ValueError(f"random_head must be true or false, got {random_head!r}")
    check_draft_length(then_k)
    lookup = PromptLookup(k=k, max_ngram=max_ngram, min_ngram=min_ngram, length=length)
    return LookupThenHead(lookup, make_drafter(then, target, k=then_k, random_head=random_head))


def _needs(options: dict[str, Any]) -> str | None:
    return None if options.get("random_head") else f"{options.get('then', 'eagle')}-head"


DRAFTER = Declaration(
    NAME, "Prompt lookup, else a trained head",
    "Copy from the context where its last n-gram occurred before; where it did not, let the EAGLE (or CTC) head "
    "draft.",
    build,
    (draft_length(16, maximum=32, label="k: max tokens copied from the context per verification"),
     Option("max_ngram", "int", 3, "longest n-gram to match", flag="--max-ngram", label="max n-gram",
            minimum=1, maximum=8, step=1),
     Option("min_ngram", "int", 2, "shortest n-gram to match", flag="--min-ngram", label="min n-gram",
            minimum=1, maximum=8, step=1,
            info="shorter matches are found more often but are right less often; where none is found the head drafts"),
     Option("length", "choice", "match", "lookup draft length: 'fixed' (k tokens) or 'match' (as many as the context "
            "agrees with the text before the match, at most k)", flag="--lookup-length",
            label="lookup draft length", choices=LENGTHS),
     Option("then", "choice", "eagle", "the trained head that drafts where the context has no match: eagle or ctc",
            flag="--then", label="where the context has no match, draft with", choices=HEADS),
     Option("then_k", "int", 1, "the head's max draft length", flag="--then-k",
            label="the head's k (on a CPU one token pays best)", minimum=1, maximum=16, step=1),
     Option("random_head", "bool", False, "an untrained random head (when no trained head file exists)",
            label="untrained random head (when no trained head file exists)")),
    needs="eagle-head", needs_for=_needs)
