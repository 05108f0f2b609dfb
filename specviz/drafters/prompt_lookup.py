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
"""

from __future__ import annotations

from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .registry import Declaration, Option, confidence_threshold, draft_length


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


class PromptLookup:
    name = "prompt-lookup"
    wants_states = False

    def __init__(self, k: int = 8, max_ngram: int = 3, min_ngram: int = 1, threshold: float = 0.0,
                 length: str = "fixed"):
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

    def start(self, state: DecodeState, states) -> None:
        pass

    def propose(self, state: DecodeState) -> Draft:
        limit = min(self.k, state.max_draft)
        if limit <= 0:
            return Draft(tokens=[])
        tokens, n, start = find_continuation(state.tokens, self.max_ngram, self.min_ngram, limit)
        if self.length == "match" and tokens:
            tokens = tokens[:match_length(state.tokens, start, n, limit)]
        for i, tok in enumerate(tokens):  # nothing after an EOS can be committed
            if tok in state.eos_token_ids:
                tokens = tokens[: i + 1]
                break
        info = {"ngram": n, "match_start": start} if state.record else {}
        return Draft(tokens=tokens, probs=None, token_probs=[1.0] * len(tokens), info=info)

    def observe(self, result: VerifyResult) -> None:
        pass

    def settings(self) -> dict:
        return {"k": self.k, "max_ngram": self.max_ngram, "min_ngram": self.min_ngram, "length": self.length}


def build(target, **options) -> PromptLookup:
    return PromptLookup(**options)


DRAFTER = Declaration(
    PromptLookup.name, "Prompt lookup",
    "Find the latest earlier occurrence of the last n tokens in the context and propose what followed it. "
    "Free to draft; great on repetitive code.",
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
     confidence_threshold(0.0, in_panel=False)))  # taken for a uniform interface; a lookup has no confidence
