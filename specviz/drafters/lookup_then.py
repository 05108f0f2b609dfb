"""Prompt lookup first, else a trained head: each step drafts from the context where the context
has a match, and from a cheap trained drafter (the EAGLE head, or the CTC head) where it has none.

The two are good at different steps. A lookup draft is free and right about 60 % of the time
when the context has a match, but everyday chat gives it one at only a few steps; the trained head
costs about 0.08 of a step per token and is right about a quarter of the time at every step. On
SmolLM2 chat each alone beats `generate()` by 13-17 % on this CPU (BENCHMARKS.md); taking the
lookup's draft where there is one and the head's elsewhere keeps both gains. (Snowflake's Arctic
Inference pairs suffix decoding with a small speculator the same way.) With `answers`, a step with no
match in the context looks in the model's own past answers (prompt lookup's answer store) before
the head drafts.

Lossless like its parts: each step's draft comes from one drafter with that drafter's q (one-hot
for a lookup draft), and the verifier is the unchanged target. Both parts see every verification
(`observe`), so the head keeps its cache of the target's states in step even over the steps the
lookup drafted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .base import DecodeState, Draft, VerifyResult, check_draft_length
from .ctc import HEAD_FILES as CTC_FILES
from .draft_heads import find_part
from .eagle import HEAD_FILE as EAGLE_FILE
from .prompt_lookup import DRAFTER as PROMPT_LOOKUP
from .prompt_lookup import PromptLookup
from .prompt_lookup import build as build_lookup
from .registry import Declaration, Option, confidence_threshold, draft_length, make_drafter, random_head_option

NAME = "lookup-then-head"
HEADS = ("eagle", "ctc")
HEAD_FILES = {"eagle": EAGLE_FILE, "ctc": CTC_FILES["ctc"]}
CHOICES = ("auto",) + HEADS  # auto: the model's EAGLE head, else its CTC head


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
        if state.record and draft.tokens:
            where = "the context or past answers" if self.lookup.store is not None else "the context"
            draft.info = {"source": f"the {self.fallback.name} head (no match in {where})", **draft.info}
        return draft

    def observe(self, result: VerifyResult) -> None:
        self.lookup.observe(result)
        self.fallback.observe(result)

    def settings(self) -> dict[str, Any]:
        head = self.fallback.settings()
        return {**self.lookup.settings(), "then": self.fallback.name, "then_k": head["k"],
                "then_threshold": head["threshold"], "head_file": head.get("head_file")}


def build(target, k: int = 16, max_ngram: int = 3, min_ngram: int = 2, length: str = "match", then: str = "auto",
          then_k: int = 1, then_threshold: float = 0.0, random_head: bool = False, answers: bool = False,
          answer_confidence: float = 0.45) -> LookupThenHead:
    if then not in CHOICES:
        raise ValueError(f"then must be one of {', '.join(CHOICES)}, got {then!r}")
    if then == "auto" and not random_head:
        then = next((h for h in HEADS if find_part(target, HEAD_FILES[h]) is not None), None)
        if then is None:
            raise ValueError(f"drafter {NAME!r} needs a trained EAGLE head ({HEAD_FILES['eagle']}) or CTC head "
                             f"({HEAD_FILES['ctc']}) for where the context has no match, and this model has neither: "
                             "train one (`python -m specviz.train.train_eagle`), or use random_head=True")
    elif then == "auto":
        then = "eagle"
    check_draft_length(then_k)
    lookup = build_lookup(target, answers=answers, k=k, max_ngram=max_ngram, min_ngram=min_ngram, length=length,
                          answer_confidence=answer_confidence)
    head = make_drafter(then, target, k=then_k, threshold=then_threshold, random_head=random_head)
    return LookupThenHead(lookup, head)


def _needs(options: dict[str, Any]) -> str | None:
    """auto takes whichever head the model has, and says so at build time when it has none."""
    then = options.get("then", "auto")
    return None if options.get("random_head") or then == "auto" else f"{then}-head"


_LOOKUP = {option.name: option for option in PROMPT_LOOKUP.options}  # prompt lookup's own, declared once

DRAFTER = Declaration(
    NAME, "Lookup, else a head",
    "Copy from the context where its last n-gram occurred before; where it did not, let the EAGLE (or CTC) head "
    "draft.",
    build,
    (draft_length(16, maximum=32, label="k: max tokens copied from the context per verification"),
     _LOOKUP["max_ngram"],
     replace(_LOOKUP["min_ngram"], default=2,
             info="shorter matches are found more often but are right less often; where none is found the head drafts"),
     replace(_LOOKUP["length"], default="match", label="lookup draft length"),
     replace(_LOOKUP["answers"], info="where the context has no match, draft what the model most often said next in "
                                      "its past answers before asking the head"),
     _LOOKUP["answer_confidence"],
     Option("then", "choice", "auto", "the trained head that drafts where the context has no match: auto (the model's "
            "EAGLE head, else its CTC head), eagle or ctc", flag="--then",
            label="where the context has no match, draft with", choices=CHOICES,
            info="auto: the model's EAGLE head, else its CTC head"),
     Option("then_k", "int", 1, "the head's max draft length", flag="--then-k",
            label="the head's k (on a CPU one token pays best)", minimum=1, maximum=16, step=1),
     replace(confidence_threshold(0.0, info="the head drafts its next token only while it is at least this sure "
                                            "of the last one: a sure token is usually right, so one more pays"),
             name="then_threshold", flag="--then-threshold", label="the head's confidence threshold"),
     random_head_option()),
    needs=None, needs_for=_needs)
