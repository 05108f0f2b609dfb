"""A datastore of the target's own earlier answers, searched by suffix: where the context's last
n tokens occurred in those answers, and what the model said next, with how often.

Retrieval drafting (REST, He et al. 2024) drafts from a datastore of text instead of a model;
SuffixDecoding (Oliaro et al. 2024) keeps the datastore as a suffix tree of the model's own earlier
outputs and drafts the most frequent continuation. A chat model's answers repeat themselves across
questions ("Here are three tips for", "I hope this helps!"), so its own answers predict it well
where the context has nothing to copy. The draft costs a few binary searches, no model pass.

The store is a token array (answers separated by -1) and a *truncated suffix array*: the start
positions sorted by the `depth` tokens that follow them. The positions whose text starts with a
pattern are then one contiguous range, found a token at a time by binary search (each column of
a range is sorted), and the tokens that followed the pattern are one column of that range, in
runs. Walking the most frequent run token by token is a walk down the suffix tree.

Each drafted token carries an estimate of P(the model says it | the matched context and the
drafted tokens before it): its count over the range's size + `PRIOR`. The pseudo-count says that a
context seen once or twice is a guess, not a certainty: with +1, tokens estimated at 0.5 were
accepted 0.25 of the time on the chat prompts; +3 brought the estimates close to the observed rates
(BENCHMARKS.md, "Past answers").

File: `answer_store.safetensors` in the model's assets, tensors `tokens` (int32) and `order`
(int32, the sorted suffix starts), built by `python -m specviz.train.answer_store`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STORE_FILE = "answer_store.safetensors"
SEPARATOR = -1  # between two answers; never matches a token
PRIOR = 3  # pseudo-observations of "something else" in every estimate (see the module docstring)
DEPTH = 24  # suffixes are sorted by their first DEPTH tokens: a match plus its continuation fit in it


@dataclass
class StoreDraft:
    """The continuation found for a context, and what backs it."""

    tokens: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # estimated P(token | matched context, tokens before)
    ngram: int = 0  # how many of the context's last tokens matched
    count: int = 0  # how many times the matched n-gram occurs in the store


def suffix_order(tokens: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    """The positions of `tokens` (separators excluded) sorted by the `depth` tokens from each."""
    padded = np.concatenate([tokens.astype(np.int64), np.full(depth, SEPARATOR, dtype=np.int64)])
    starts = np.flatnonzero(tokens != SEPARATOR)
    keys = [padded[starts + j] for j in reversed(range(depth))]  # np.lexsort: last key is the primary one
    return starts[np.lexsort(keys)].astype(np.int32)


class AnswerStore:
    def __init__(self, tokens: np.ndarray, order: np.ndarray | None = None, depth: int = DEPTH):
        tokens = np.asarray(tokens, dtype=np.int32)
        if tokens.ndim != 1:
            raise ValueError(f"answer store: tokens must be one array, got shape {tokens.shape}")
        self.depth = depth
        self.order = suffix_order(tokens, depth) if order is None else np.asarray(order, dtype=np.int32)
        if self.order.shape != (int((tokens != SEPARATOR).sum()),):
            raise ValueError("answer store: the suffix order does not cover the tokens (rebuild the store)")
        self.tokens = np.concatenate([tokens, np.full(depth + 1, SEPARATOR, dtype=np.int32)])
        firsts = self.tokens[self.order]
        self._bucket = np.searchsorted(firsts, np.arange(int(firsts.max(initial=0)) + 2))  # by first token
        self.size = int(self.order.size)

    @classmethod
    def load(cls, path: Path) -> "AnswerStore":
        from safetensors.numpy import load_file

        found = load_file(str(path))
        return cls(found["tokens"], found["order"])

    def _column(self, lo: int, hi: int, j: int) -> np.ndarray:
        """Token j of every suffix in [lo, hi) (sorted, since they share their first j tokens)."""
        return self.tokens[self.order[lo:hi] + j]

    def find(self, pattern: list[int]) -> tuple[int, int]:
        """The range of suffixes that start with `pattern` (empty: lo == hi)."""
        first = pattern[0]
        if not 0 <= first < self._bucket.size - 1:
            return 0, 0
        lo, hi = int(self._bucket[first]), int(self._bucket[first + 1])
        for j, tok in enumerate(pattern[1:], start=1):
            if lo >= hi:
                break
            col = self._column(lo, hi, j)
            lo, hi = lo + int(np.searchsorted(col, tok, "left")), lo + int(np.searchsorted(col, tok, "right"))
        return lo, hi

    def draft(self, context: list[int], k: int, max_ngram: int, min_ngram: int = 1, min_prob: float = 0.0) -> StoreDraft:
        """The most frequent continuation of the longest suffix of `context` (max_ngram down to
        min_ngram tokens) found in the store: at most k tokens, ending before the running product
        of their estimated probabilities falls below `min_prob` (so possibly none)."""
        longest = min(max_ngram, len(context), self.depth - 1)
        for n in range(longest, min_ngram - 1, -1):
            lo, hi = self.find(context[len(context) - n:])
            if hi > lo:
                return self._walk(lo, hi, n, k, min_prob)
        return StoreDraft()

    def _walk(self, lo: int, hi: int, n: int, k: int, min_prob: float) -> StoreDraft:
        found = StoreDraft(ngram=n, count=hi - lo)
        joint = 1.0
        for j in range(n, min(n + k, self.depth)):
            col = self._column(lo, hi, j)
            values, firsts, counts = np.unique(col, return_index=True, return_counts=True)
            best = int(np.argmax(counts))  # ties: the smallest token id (deterministic)
            token = int(values[best])
            if token == SEPARATOR:  # the answers mostly end here (after their EOS)
                break
            prob = int(counts[best]) / (hi - lo + PRIOR)
            joint *= prob
            if joint < min_prob:
                break
            found.tokens.append(token)
            found.probs.append(prob)
            lo, hi = lo + int(firsts[best]), lo + int(firsts[best]) + int(counts[best])
        return found
