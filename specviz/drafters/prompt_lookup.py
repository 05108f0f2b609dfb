"""Prompt lookup (Saxena 2023; transformers' `prompt_lookup_num_tokens`): find the most recent
earlier occurrence of the context's last n tokens and propose the k tokens that followed it.

Tries n = max_ngram down to min_ngram. The draft is deterministic (q is one-hot on each
token), which rejection sampling handles exactly. It has no draft distribution, so the
confidence threshold does not apply.

Draft length (`length`): "fixed" proposes k tokens whenever there is a match (Saxena; what
transformers does). "match" proposes as many tokens as the context's suffix agrees with the
text before the match (the matched n-gram extended backwards), at most k: a long agreement
means the model is copying a passage and will likely go on copying, a 1-gram match is right
only about one time in five (SmolLM2 on input-grounded prompts; BENCHMARKS.md), so a long
draft there costs verify time for nothing. The length depends only on the committed context,
so greedy output stays generate()'s.

Past answers (`answers`): where the context has no match, look in the model's own earlier answers
(`answer_store.AnswerStore`, shipped with the model) and propose their most frequent continuation
of the context's longest suffix found there (up to `STORE_NGRAM` tokens). Chat answers share
their phrasing, not their words with the question, so this is what gives prompt lookup something
to copy on everyday chat. The draft ends where the estimated chance that all of it is accepted
falls below `answer_confidence`: on this CPU the first drafted token adds ~0.38 of a step to
SmolLM2's verify pass (BENCHMARKS.md), so a token is worth proposing only while it is fairly
likely to be reached and accepted. Measured (BENCHMARKS.md): it raises τ on chat prompts by about
0.1; on the AMD host that did not pay, since the verify pass grows with the draft; on the Intel host
with the engine's measured kernels (`specviz.packed_linears`) it gains 4-6 % on chat and about 1 %
on grounded prompts, and SmolLM2's swept defaults turn it on. Off in the drafter's own defaults
(a model without an answer store has nothing to look in).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .answer_store import STORE_FILE, AnswerStore
from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .draft_heads import find_part
from .registry import Declaration, Option, confidence_threshold, draft_length, parse_bool


def find_continuation(tokens: list[int], max_ngram: int, min_ngram: int, k: int) -> tuple[list[int], int, int]:
    """Return (continuation, n, match start) for the longest suffix n-gram that occurred before.

    Among its earlier occurrences, the latest one followed by k tokens wins (recent text predicts
    best); the latest match of a short repeat would cap the draft at the repeat's period
    ([9, 9, 9] -> one token), so a match with a shorter continuation is used only if no match
    has k tokens after it (the longest such continuation, latest on ties).
    """
    size = len(tokens)
    for n in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        suffix = tokens[size - n:]
        best: tuple[list[int], int] = ([], -1)
        for start in range(size - n - 1, -1, -1):
            if tokens[start:start + n] == suffix:
                continuation = tokens[start + n:start + n + k]
                if len(continuation) == k:
                    return continuation, n, start
                if len(continuation) > len(best[0]):
                    best = (continuation, start)
        if best[0]:
            return best[0], n, best[1]
    return [], 0, -1


def match_length(tokens: list[int], start: int, n: int, cap: int) -> int:
    """How many of the context's last tokens agree with the tokens ending at `start + n` (the
    n-gram found at `start`, extended backwards), at most `cap` (at least n when n <= cap)."""
    size, end = len(tokens), start + n
    length = min(n, cap)
    while length < cap and end - length - 1 >= 0 and tokens[end - length - 1] == tokens[size - length - 1]:
        length += 1
    return length


LENGTHS = ("fixed", "match")
STORE_NGRAM = 8  # the longest context suffix looked up in the answer store


@lru_cache(maxsize=4)
def load_store(path: Path) -> AnswerStore:
    """One store per file, shared by every drafter built on it (it is read-only)."""
    return AnswerStore.load(path)


def find_store(target) -> AnswerStore:
    path = find_part(target, STORE_FILE) if target is not None else None
    if path is None:
        raise ValueError(f"prompt-lookup: answers=True needs this model's answer store ({STORE_FILE}), which it does "
                         "not have; turn 'answers' off, or build the store with `python -m specviz.train.answer_store`")
    return load_store(path)


class PromptLookup:
    name = "prompt-lookup"
    wants_states = False

    def __init__(self, k: int = 8, max_ngram: int = 3, min_ngram: int = 1, threshold: float = 0.0,
                 length: str = "fixed", store: AnswerStore | None = None, answer_confidence: float = 0.45):
        self.k = check_draft_length(k)
        if length not in LENGTHS:
            raise ValueError(f"length must be one of {', '.join(LENGTHS)}, got {length!r}")
        self.length = length
        if not isinstance(max_ngram, int) or not 1 <= max_ngram <= 16:
            raise ValueError(f"max_ngram (n) must be an integer in [1, 16], got {max_ngram!r}")
        if not isinstance(min_ngram, int) or not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"min_ngram must be an integer in [1, max_ngram={max_ngram}], got {min_ngram!r}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.threshold = check_threshold(threshold)  # accepted for a uniform interface; unused
        if not isinstance(answer_confidence, (int, float)) or not 0.0 <= answer_confidence <= 1.0:
            raise ValueError(f"answer_confidence must be in [0, 1], got {answer_confidence!r}")
        self.store, self.answer_confidence = store, float(answer_confidence)

    def start(self, state: DecodeState, states) -> None:
        pass

    def propose(self, state: DecodeState) -> Draft:
        limit = min(self.k, state.max_draft)
        if limit <= 0:
            return Draft(tokens=[])
        tokens, info = self.lookup(state.tokens, limit)
        for i, tok in enumerate(tokens):  # nothing after an EOS can be committed
            if tok in state.eos_token_ids:
                tokens = tokens[: i + 1]
                break
        return Draft(tokens=tokens, probs=None, token_probs=[1.0] * len(tokens), info=info if state.record else {})

    def lookup(self, context: list[int], limit: int) -> tuple[list[int], dict]:
        """At most `limit` tokens to propose after `context`, and where they were found."""
        tokens, n, start = find_continuation(context, self.max_ngram, self.min_ngram, limit)
        if self.length == "match" and tokens:
            tokens = tokens[:match_length(context, start, n, limit)]
        if tokens or self.store is None:
            return tokens, {"source": "context", "ngram": n, "match_start": start}
        found = self.store.draft(context, limit, STORE_NGRAM, 1, self.answer_confidence)
        return found.tokens, {"source": "past answers", "ngram": found.ngram, "answer_count": found.count,
                              "answer_estimates": [round(p, 3) for p in found.probs]}

    def observe(self, result: VerifyResult) -> None:
        pass

    def settings(self) -> dict:
        found = {"k": self.k, "max_ngram": self.max_ngram, "min_ngram": self.min_ngram, "length": self.length,
                 "answers": self.store is not None}
        return found | ({"answer_confidence": self.answer_confidence} if self.store is not None else {})


def build(target, answers: bool = False, **options) -> PromptLookup:
    if not isinstance(answers, bool):
        raise ValueError(f"answers must be true or false, got {answers!r}")
    return PromptLookup(store=find_store(target) if answers else None, **options)


DRAFTER = Declaration(
    PromptLookup.name, "Prompt lookup",
    "Find the latest earlier occurrence of the last n tokens in the context and propose what followed it. "
    "Free to draft; great on repetitive code. With past answers on, it also drafts what the model most often said "
    "next in its own earlier answers.",
    build,
    (draft_length(8, maximum=32),
     Option("max_ngram", "int", 3, "longest n-gram to match", flag="--max-ngram", label="max n-gram",
            minimum=1, maximum=8, step=1),
     Option("min_ngram", "int", 1, "shortest n-gram to match", flag="--min-ngram", label="min n-gram",
            minimum=1, maximum=8, step=1),
     Option("length", "choice", "fixed", "draft length: 'fixed' (k tokens) or 'match' (as many tokens as the "
            "context agrees with the text before the match, at most k)", flag="--lookup-length",
            label="draft length (how many of the k tokens to propose)", choices=LENGTHS,
            info="fixed: always k · match: as many as the tokens the context shares with the earlier text "
                 "(the match extended backwards), at most k: a longer agreement earns a longer draft"),
     Option("answers", "bool", False, "where the context has no match, look in the model's own earlier answers "
            "(its answer store): true or false", flag="--answers", label="also look in the model's own earlier answers",
            parse=parse_bool,
            info="where the context has no match: draft what the model most often said next in its past answers"),
     Option("answer_confidence", "float", 0.45, "past answers: end the draft before the estimated chance that all "
            "of it is accepted falls below this", flag="--answer-confidence",
            label="past answers: minimum estimated chance the whole draft is accepted", minimum=0.0, maximum=1.0,
            step=0.05, info="estimated from how often the store's answers went on this way; lower: longer drafts"),
     confidence_threshold(0.0, in_panel=False)))  # taken for a uniform interface; a lookup has no confidence
