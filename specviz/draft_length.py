"""Draft length from a cost model (issue 16 item 2): per step, draft as many tokens as maximise
expected committed tokens per second, learned online from this generation's own steps.

Per draft position i (1-based) the model keeps two conditional rates, smoothed:

    rho_i   = P(the drafter produces token i | it produced i-1 and the cap allowed i)
    alpha_i = P(token i is accepted            | it was drafted and token i-1 was accepted)

rho is 1 for a fixed-length drafter; it is what makes the model right for drafters that often
draft fewer tokens than allowed (prompt lookup without a match, a confidence threshold), whose
unused positions cost neither a draft nor a verified token. With a cap of k tokens:

    D(k) = sum_{i<=k} prod_{j<=i} rho_j                  expected drafted tokens
    E(k) = 1 + sum_{i<=k} prod_{j<=i} rho_j alpha_j      expected committed tokens (+1: the
                                                          target's own token)
    C(k) = fixed + b (1 + D(k)) + c D(k)                 expected seconds per step

where the verify pass costs a + b n for n verified tokens, a draft costs c0 + c d for d drafted
tokens, and fixed = a + c0 + the drafter's per-step work after verification (CLaSp's DP). The
chosen k maximises E(k) / C(k). (Growing k by one pays off exactly when the next token's
expected gain dE exceeds its expected cost dC at the current rate E/C: the "stop when the next
token is not worth its draft + verify cost" rule, stated in time units.)

Lines are fitted to per-size medians of the observed seconds, so a step that another process
preempted does not bend them. Until two different verify sizes have been seen (each at least
`min_samples` times) the slope b is unknown: the model returns the cap (the drafter's own k),
and when every step so far verified the same number of tokens it explores with a one-token
draft, so the fit gets a second point. Every choice depends only on finished steps, never on
the draft it limits, so greedy output stays generate()'s and rejection sampling stays exact.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Line:
    """seconds ~ intercept + slope * size, both >= 0."""

    intercept: float
    slope: float

    def __call__(self, size: float) -> float:
        return self.intercept + self.slope * size


def fit_line(samples: dict[int, "deque[float]"], min_samples: int = 1) -> Line | None:
    """A weighted least-squares line through the median of each size's samples (weight: how many
    samples), None with fewer than two sizes having `min_samples` each. A negative slope (noise)
    is clamped to 0, and then the intercept is the weighted mean; a negative intercept to 0."""
    points = [(n, statistics.median(ts), len(ts)) for n, ts in samples.items() if len(ts) >= min_samples]
    if len({n for n, _, _ in points}) < 2:
        return None
    weight = sum(w for _, _, w in points)
    mean_n = sum(n * w for n, _, w in points) / weight
    mean_t = sum(t * w for _, t, w in points) / weight
    var = sum(w * (n - mean_n) ** 2 for n, _, w in points)
    slope = max(0.0, sum(w * (n - mean_n) * (t - mean_t) for n, t, w in points) / var)
    intercept = mean_t - slope * mean_n
    if intercept < 0.0:  # keep the line through the data's mean size but never below zero cost
        intercept = 0.0
        slope = mean_t / mean_n if mean_n > 0 else slope
    return Line(intercept, slope)


def smoothed_rates(hits: list[int], reached: list[int], first_prior: float, weight: float) -> list[float]:
    """Per-position rates (hits_i + weight * prior_i) / (reached_i + weight), where position 1's
    prior is `first_prior` and position i's prior is position i-1's rate: a position seldom
    reached borrows its neighbour's rate instead of a flat 0.5, so a good drafter is not held
    back at positions it has not been allowed to try yet."""
    rates, prior = [], first_prior
    for h, r in zip(hits, reached):
        prior = (h + weight * prior) / (r + weight)
        rates.append(prior)
    return rates


@dataclass(frozen=True)
class StepCost:
    """Expected seconds of one step: `fixed` + `per_verified` per verified token (the pending token
    and each draft) + `per_drafted` per drafted token."""

    fixed: float
    per_verified: float
    per_drafted: float


def expected_tokens(alpha: list[float], rho: list[float], k: int) -> float:
    """E(k) = 1 + sum_{i<=k} prod_{j<=i} rho_j alpha_j: committed tokens per step with cap k."""
    total, reach = 1.0, 1.0
    for i in range(k):
        reach *= rho[i] * alpha[i]
        total += reach
    return total


def expected_drafted(rho: list[float], k: int) -> float:
    """D(k) = sum_{i<=k} prod_{j<=i} rho_j: drafted tokens per step with cap k."""
    total, reach = 0.0, 1.0
    for i in range(k):
        reach *= rho[i]
        total += reach
    return total


def expected_seconds(cost: StepCost, rho: list[float], k: int) -> float:
    """C(k) = fixed + per_verified (1 + D(k)) + per_drafted D(k)."""
    drafted = expected_drafted(rho, k)
    return cost.fixed + cost.per_verified * (1.0 + drafted) + cost.per_drafted * drafted


def best_length(alpha: list[float], rho: list[float], cost: StepCost, cap: int, floor: int = 1) -> int:
    """The k in [min(floor, cap), cap] with the highest E(k) / C(k) (the shortest on a tie).
    `alpha` and `rho` must cover position `cap`."""
    if cap <= 0:
        return max(cap, 0)
    best_k, best_rate = None, -1.0
    for k in range(min(floor, cap), cap + 1):
        seconds = expected_seconds(cost, rho, k)
        rate = expected_tokens(alpha, rho, k) / seconds if seconds > 0 else float("inf")
        if rate > best_rate * (1 + 1e-9):
            best_k, best_rate = k, rate
    return best_k


@dataclass
class DraftLengthModel:
    """Learns, during one generation, what a step costs and how far drafts get accepted, and
    chooses each step's draft length (see the module docstring)."""

    max_length: int  # the drafter's own k: positions beyond it are never drafted
    floor: int = 1  # never choose fewer tokens: with 0 the model would stop seeing acceptances
    warmup_steps: int = 2  # steps at the drafter's own k before any choice
    min_samples: int = 2  # samples per verify size before that size enters the fit
    window: int = 32  # recent samples kept per size (the machine's load drifts)
    probe_every: int = 4  # every so many steps, one token more than the best: positions past the
    # chosen length would otherwise never be tried again, and one unlucky early rejection there
    # would keep the drafts short for the rest of the generation
    steps: int = field(default=0, init=False)
    _verify: dict[int, deque] = field(init=False, repr=False)  # verified tokens -> seconds
    _draft: dict[int, deque] = field(init=False, repr=False)  # drafted tokens (>= 1) -> seconds
    _after: deque = field(init=False, repr=False)  # seconds after verification (drafter's observe)
    _made: list[int] = field(init=False, repr=False)  # rho: steps that drafted position i ...
    _allowed: list[int] = field(init=False, repr=False)  # ... of those that could (cap >= i, drafted i-1)
    _accepted: list[int] = field(init=False, repr=False)  # alpha: position i accepted ...
    _tried: list[int] = field(init=False, repr=False)  # ... of those drafted with i-1 accepted

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        n = self.max_length
        self._made, self._allowed, self._accepted, self._tried = [0] * n, [0] * n, [0] * n, [0] * n
        self._verify = defaultdict(lambda: deque(maxlen=self.window))
        self._draft = defaultdict(lambda: deque(maxlen=self.window))
        self._after = deque(maxlen=self.window)

    # -- learning ------------------------------------------------------------------------------
    def observe(self, cap: int, drafted: int, accepted: int, t_draft: float, t_verify: float,
                t_after: float = 0.0) -> None:
        """One finished step: the cap it ran under, how many tokens were drafted and accepted,
        and its seconds drafting, verifying (drafted + 1 tokens) and after verification."""
        self.steps += 1
        limit = min(cap, self.max_length)
        for i in range(min(limit, drafted + 1)):  # position i+1 was allowed and i drafted
            self._allowed[i] += 1
            self._made[i] += i < drafted
        for i in range(min(drafted, accepted + 1, self.max_length)):  # drafted, i accepted before it
            self._tried[i] += 1
            self._accepted[i] += i < accepted
        self._verify[drafted + 1].append(t_verify)
        if drafted:
            self._draft[drafted].append(t_draft)
        self._after.append(t_after)

    def acceptance(self) -> list[float]:
        """alpha_i for i = 1..max_length: (hits+1)/(tries+2) at position 1, then shrunk toward the
        previous position's rate."""
        return smoothed_rates(self._accepted, self._tried, first_prior=0.5, weight=2.0)

    def production(self) -> list[float]:
        """rho_i for i = 1..max_length, shrunk toward 1 (a drafter is assumed to fill its cap)."""
        return smoothed_rates(self._made, self._allowed, first_prior=1.0, weight=1.0)

    def cost(self) -> StepCost | None:
        """The step's cost lines, or None while the verify slope is unknown."""
        verify = fit_line(self._verify, self.min_samples)
        if verify is None:
            return None
        draft = fit_line(self._draft)
        if draft is None:  # one draft size only: all of its cost is per token (overestimates a little)
            ratios = [t / d for d, ts in self._draft.items() for t in ts]
            draft = Line(0.0, statistics.median(ratios) if ratios else 0.0)
        after = statistics.median(self._after) if self._after else 0.0
        return StepCost(verify.intercept + draft.intercept + after, verify.slope, draft.slope)

    # -- choosing ------------------------------------------------------------------------------
    def choose(self, cap: int) -> int:
        """The draft length for the next step, at most `cap` (the engine's remaining budget)."""
        cap = min(cap, self.max_length)
        if cap <= 1 or self.steps < self.warmup_steps:
            return cap
        cost = self.cost()
        if cost is None:
            return self._explore(cap)
        best = best_length(self.acceptance(), self.production(), cost, cap, self.floor)
        probe = self.probe_every > 0 and self.steps % self.probe_every == 0
        return min(best + 1, cap) if probe else best

    def _explore(self, cap: int) -> int:
        """Before the verify slope is known: when every well-sampled verify size is a long draft,
        a one-token draft (2 verified tokens: the widest spread from k + 1 at the cost of one
        short step); else the drafter's own k, to sample a long size."""
        enough = [n for n, ts in self._verify.items() if len(ts) >= self.min_samples]
        return 1 if enough and min(enough) > 2 else cap
