"""Verifying a long draft in two passes when it is likely to fail early (greedy, on a CPU).

A greedy verdict needs the target's rows only up to the first rejected draft token. On a GPU a
pass over many rows costs about what a pass over one does, so the engine verifies every draft in
one pass. On this project's CPU it does not: SmolLM2's decoder body over 1 / 2 / 5 / 9 / 17 / 33
rows costs about 1 / 1.5 / 1.85 / 2 / 2.4 / 3 one-row passes (BENCHMARKS.md). A 32-token draft
that fails at its first token (transformers' fixed-length prompt lookup, say) then pays three
steps to learn one token. Split after m drafts instead:

    pass 1: rows [0, m + 1)      (the pending token and the first m drafts)
    pass 2: rows [m + 1, n + 1)  only if drafts 1..m+1 were all accepted (the cache already holds
                                 pass 1's rows, so pass 2 continues the same sequence)

With V(r) the measured seconds of an r-row pass and P(j) the chance that the first j drafts are
all accepted, the expected cost is V(m + 1) + P(m + 1) V(n - m), against V(n + 1) in one pass;
the plan takes the cheapest m if it saves at least `MARGIN` of the one pass, else one pass. The verdict is the same either way (the rows behind
a rejection are never read), so greedy output stays generate()'s.

V comes from the passes the engine has timed (`PassCosts`, kept per engine: the plain pass's cost
is the model's on this device, whatever the drafter), P from this generation's drafts, counted
by draft-length bucket: a drafter's long drafts can be far surer than its short ones (prompt
lookup drafts long only where a long match agrees) or far less sure (a fixed-length draft).
Until two pass sizes are known the plan explores with m = 0 (a one-row first pass).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

from .draft_length import fit_curve, smoothed_rates

PRIOR_WEIGHT = 2.0  # pseudo-drafts of the pooled rate behind each bucket's rate
MARGIN = 0.2  # split only when it is expected to save a fifth of the one-pass cost: the rates are
# estimates, and a wrongly split draft that is right after all pays a whole second pass (at 0.1,
# SmolLM2's own prompt lookup on chat split 43 of its 63 drafts, 21 of them needing the second
# pass, and ran 5 % slower than with one pass)


@dataclass
class PassCosts:
    """Seconds of plain verify passes (no reused draft work, no riders) by rows: recent samples
    per row count, for the median curve of `draft_length.fit_curve`."""

    window: int = 32
    min_samples: int = 2
    _seconds: dict[int, deque] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._seconds = defaultdict(lambda: deque(maxlen=self.window))

    def observe(self, rows: int, seconds: float) -> None:
        self._seconds[rows].append(seconds)

    def curve(self):
        """V(rows), or None with fewer than two row counts sampled `min_samples` times."""
        return fit_curve(self._seconds, self.min_samples)


def length_bucket(n: int) -> int:
    """Drafts of 1, 2-3, 4-7, 8-15, ... tokens share acceptance counts."""
    return n.bit_length()


@dataclass
class SplitPlanner:
    """Chooses, per draft, how many drafts the first verify pass covers (None: one pass)."""

    costs: PassCosts
    fixed: int | None = None  # always split after this many drafts (tests, demonstrations)
    _hits: dict[int, list[int]] = field(default_factory=dict, repr=False)  # bucket -> accepted at position i
    _tries: dict[int, list[int]] = field(default_factory=dict, repr=False)  # ... of drafts that reached it

    def observe(self, drafted: int, accepted: int) -> None:
        """One verdict: position i (0-based) was tried when every draft before it was accepted."""
        if drafted < 2:
            return
        bucket = length_bucket(drafted)
        hits = self._hits.setdefault(bucket, [])
        tries = self._tries.setdefault(bucket, [])
        while len(tries) < drafted:
            hits.append(0)
            tries.append(0)
        for i in range(min(drafted, accepted + 1)):
            tries[i] += 1
            hits[i] += i < accepted

    def acceptance(self, drafted: int) -> list[float]:
        """alpha_i for i = 1..drafted among drafts of this length's bucket, each shrunk toward the
        rate at that position over every bucket (itself shrunk toward 0.5): a bucket seen a few
        times leans on the drafter's overall record, not on a coin."""
        pooled = smoothed_rates(*self._counts(None, drafted), first_prior=0.5, weight=2.0)
        hits, tries = self._counts(length_bucket(drafted), drafted)
        return [(h + PRIOR_WEIGHT * p) / (t + PRIOR_WEIGHT) for h, t, p in zip(hits, tries, pooled)]

    def _counts(self, bucket: int | None, drafted: int) -> tuple[list[int], list[int]]:
        """(hits, tries) at positions 1..drafted of one bucket, or summed over all (None)."""
        buckets = self._tries if bucket is None else [bucket] if bucket in self._tries else []
        hits, tries = [0] * drafted, [0] * drafted
        for b in buckets:
            for i, (h, t) in enumerate(zip(self._hits[b][:drafted], self._tries[b][:drafted])):
                hits[i] += h
                tries[i] += t
        return hits, tries

    def split(self, drafted: int) -> int | None:
        """Drafts in the first pass for a draft of `drafted` tokens, or None for one pass."""
        if drafted < 2:
            return None
        if self.fixed is not None:
            return min(self.fixed, drafted - 1)
        curve = self.costs.curve()
        if curve is None:
            return 0  # explore: a one-row first pass samples the smallest size
        alpha = self.acceptance(drafted)
        one_pass = curve(drafted + 1)
        best, best_cost, all_accepted = None, (1.0 - MARGIN) * one_pass, 1.0
        for m in range(drafted):
            all_accepted *= alpha[m]  # drafts 1..m+1 accepted: the second pass is needed
            cost = curve(m + 1) + all_accepted * curve(drafted - m)
            if cost < best_cost:
                best, best_cost = m, cost
        return best
