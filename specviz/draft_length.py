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
    C(k) = fixed + sum_d P(d drafted) V(d + 1) + c D(k)     expected seconds per step

where V(n) is the measured verify cost of n tokens, a draft costs c0 + c d for d drafted tokens,
and fixed = the drafter's per-step work after verification (CLaSp's DP) + c0 whenever it drafts.
V is a curve, not a line: the median seconds of each verify size this generation saw, linear
between them and with the fitted line's slope beyond. On this CPU it is step-shaped (on
SmolLM2 a second verified row costs 0.38 of a step, a third 0.05: BENCHMARKS.md), and a line
would charge the cheap rows like the dear ones. The chosen k, 0 included, maximises E(k) / C(k).
(Growing k by one pays off exactly when the next token's expected gain dE exceeds its expected
cost dC at the current rate E/C: the "stop when the next token is not worth its draft + verify
cost" rule, stated in time units.)

k = 0 is plain decoding: a drafter whose drafts do not pay (on SmolLM2 on this CPU, every trained
drafter: first-position acceptance 0.2-0.3 against the ~0.4 a one-token draft needs) is switched
off rather than slowing the generation down. Acceptance is then learned only from probes, which
draft at the best positive length: the first `probe_every` steps after the switch, then at
gaps that double up to `longest_off_gap`, so a drafter that keeps failing costs less and less and
one that starts to pay is switched back on. (While drafting, every `probe_every`-th step drafts
one token more than the best.)

Medians per size are used, so a step that another process preempted does not bend the curve.
After a warm-up at the drafter's own k, the model samples the sizes the curve most depends on
before trusting it: one verified token (a plain decoding step, which a drafter that always fills
its cap never shows), two (a one-token draft: the weak drafter's only candidate, and the size
whose price differs most between CPUs) and more than two (`_length_to_sample`). Every choice depends
only on finished steps, never on the draft it limits, so greedy output stays generate()'s and
rejection sampling stays exact.
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
class Curve:
    """Seconds of a verify pass by verified tokens: the measured point of each sampled size,
    linear between points, and `slope` per token beyond the first and last points (never below
    zero cost)."""

    sizes: tuple[int, ...]  # increasing
    seconds: tuple[float, ...]
    slope: float

    def __call__(self, size: float) -> float:
        sizes, seconds = self.sizes, self.seconds
        if size <= sizes[0]:
            return max(0.0, seconds[0] - self.slope * (sizes[0] - size))
        if size >= sizes[-1]:
            return seconds[-1] + self.slope * (size - sizes[-1])
        right = next(i for i, n in enumerate(sizes) if n >= size)
        n0, n1, t0, t1 = sizes[right - 1], sizes[right], seconds[right - 1], seconds[right]
        return t0 + (t1 - t0) * (size - n0) / (n1 - n0)


def fit_curve(samples: dict[int, "deque[float]"], min_samples: int = 1) -> Curve | None:
    """The verify curve through the median of each size with `min_samples` samples, with the
    weighted line's slope (`fit_line`) outside them; None with fewer than two such sizes."""
    line = fit_line(samples, min_samples)
    if line is None:
        return None
    points = sorted((n, statistics.median(ts)) for n, ts in samples.items() if len(ts) >= min_samples)
    return Curve(tuple(n for n, _ in points), tuple(t for _, t in points), line.slope)


@dataclass(frozen=True)
class StepCost:
    """Expected seconds of one step: `fixed` (every step), `verify(n)` for n verified tokens (the
    pending token and each draft), `per_drafted` per drafted token and `per_draft_step` once
    when anything is drafted."""

    fixed: float
    verify: "Line | Curve"
    per_drafted: float
    per_draft_step: float = 0.0


def drafted_distribution(rho: list[float], k: int) -> list[float]:
    """P(exactly d tokens drafted) for d = 0..k under cap k: the drafter reaches position d with
    prod_{j<=d} rho_j and stops there with 1 - rho_{d+1} (at the cap, always)."""
    probs, reach = [], 1.0
    for d in range(k):
        probs.append(reach * (1.0 - rho[d]))
        reach *= rho[d]
    probs.append(reach)
    return probs


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
    """C(k) = fixed + sum_d P(d) verify(d + 1) + per_drafted D(k) + per_draft_step P(d > 0)."""
    probs = drafted_distribution(rho, k)
    verify = sum(p * cost.verify(d + 1) for d, p in enumerate(probs))
    return cost.fixed + verify + cost.per_drafted * expected_drafted(rho, k) + cost.per_draft_step * (1.0 - probs[0])


def rates(alpha: list[float], rho: list[float], cost: StepCost, lengths: range) -> dict[int, float]:
    """E(k) / C(k), expected committed tokens per second, for each k in `lengths`."""
    out = {}
    for k in lengths:
        seconds = expected_seconds(cost, rho, k)
        out[k] = expected_tokens(alpha, rho, k) / seconds if seconds > 0 else float("inf")
    return out


def best_length(alpha: list[float], rho: list[float], cost: StepCost, cap: int, floor: int = 0) -> int:
    """The k in [min(floor, cap), cap] with the highest E(k) / C(k) (the shortest on a tie).
    `alpha` and `rho` must cover position `cap`."""
    if cap <= 0:
        return max(cap, 0)
    best_k, best_rate = None, -1.0
    for k, rate in rates(alpha, rho, cost, range(min(floor, cap), cap + 1)).items():
        if rate > best_rate * (1 + 1e-9):
            best_k, best_rate = k, rate
    return best_k


@dataclass
class DraftLengthModel:
    """Learns, during one generation, what a step costs and how far drafts get accepted, and
    chooses each step's draft length (see the module docstring)."""

    max_length: int  # the drafter's own k: positions beyond it are never drafted
    floor: int = 0  # never choose fewer tokens; 0 lets it switch drafting off (probes keep learning)
    warmup_steps: int = 2  # steps at the drafter's own k before any choice
    min_samples: int = 2  # samples per verify size before that size enters the fit
    window: int = 32  # recent samples kept per size (the machine's load drifts)
    probe_every: int = 4  # every so many steps, one token more than the best: positions past the
    # chosen length would otherwise never be tried again, and one unlucky early rejection there
    # would keep the drafts short for the rest of the generation
    longest_off_gap: int = 32  # while drafting is off, the gap between probes doubles from
    # probe_every up to this: a drafter that keeps failing its probes costs less and less
    explore_tries: int = 4  # steps spent at most on sampling each verify size the curve lacks
    steps: int = field(default=0, init=False)
    _off_gap: int = field(init=False, repr=False)  # steps from this probe (while off) to the next
    _next_off_probe: int = field(default=0, init=False, repr=False)  # step count it is due at
    _verify: dict[int, deque] = field(init=False, repr=False)  # verified tokens -> seconds
    _draft: dict[int, deque] = field(init=False, repr=False)  # drafted tokens (>= 1) -> seconds
    _after: deque = field(init=False, repr=False)  # seconds after verification (drafter's observe)
    _made: list[int] = field(init=False, repr=False)  # rho: steps that drafted position i ...
    _allowed: list[int] = field(init=False, repr=False)  # ... of those that could (cap >= i, drafted i-1)
    _accepted: list[int] = field(init=False, repr=False)  # alpha: position i accepted ...
    _tried: list[int] = field(init=False, repr=False)  # ... of those drafted with i-1 accepted
    _explored: dict[str, int] = field(init=False, repr=False)  # steps spent sampling each wanted verify size

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        n = self.max_length
        self._made, self._allowed, self._accepted, self._tried = [0] * n, [0] * n, [0] * n, [0] * n
        self._verify = defaultdict(lambda: deque(maxlen=self.window))
        self._draft = defaultdict(lambda: deque(maxlen=self.window))
        self._after = deque(maxlen=self.window)
        self._off_gap = self.probe_every
        self._explored = defaultdict(int)

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
        """The step's expected cost, or None while the verify curve is unknown."""
        verify = fit_curve(self._verify, self.min_samples)
        if verify is None:
            return None
        draft = fit_line(self._draft)
        if draft is None:  # one draft size only: all of its cost is per token (overestimates a little)
            ratios = [t / d for d, ts in self._draft.items() for t in ts]
            draft = Line(0.0, statistics.median(ratios) if ratios else 0.0)
        after = statistics.median(self._after) if self._after else 0.0
        return StepCost(after, verify, draft.slope, draft.intercept)

    # -- choosing ------------------------------------------------------------------------------
    def choose(self, cap: int) -> int:
        """The draft length for the next step, at most `cap` (the engine's remaining budget)."""
        cap = min(cap, self.max_length)
        if cap <= 0 or self.steps < self.warmup_steps:
            return max(cap, 0)
        sample = self._length_to_sample(cap)
        if sample is not None:
            return sample
        cost = self.cost()
        if cost is None:  # exploration gave up (nothing to draft so far): the drafter's own k
            return cap
        alpha, rho = self.acceptance(), self.production()
        best = best_length(alpha, rho, cost, cap, self.floor)
        if self.probe_every <= 0:
            return best
        if best == 0:
            return self._probe_from_off(alpha, rho, cost, cap)
        self._off_gap, self._next_off_probe = self.probe_every, 0  # drafting pays: a later switch-off probes often again
        return min(best + 1, cap) if self.steps % self.probe_every == 0 else best

    def _probe_from_off(self, alpha: list[float], rho: list[float], cost: StepCost, cap: int) -> int:
        """While drafting is off: 0, except on a due probe, which drafts at the best positive
        length so its acceptance keeps being learned; each probe that leaves drafting off doubles
        the gap to the next. (State changes here, so the engine calls `choose` once per step.)"""
        if self._next_off_probe == 0:  # just switched off: the first probe comes after one gap
            self._next_off_probe = self.steps + self._off_gap
        if self.steps < self._next_off_probe:
            return 0
        self._off_gap = min(2 * self._off_gap, max(self.longest_off_gap, self.probe_every))
        self._next_off_probe = self.steps + self._off_gap
        by_rate = rates(alpha, rho, cost, range(1, cap + 1))
        return max(by_rate, key=by_rate.get)

    def _length_to_sample(self, cap: int) -> int | None:
        """A draft length whose verify size the curve still lacks, or None. In order: plain
        decoding (one verified token; not under a floor), a one-token draft (two: on one CPU of
        this project a second verified row costs 0.4 of a step, on another 0.05, and whether a
        weak drafter should draft at all hangs on it), and a long draft (more than two; the
        warm-up's own k usually gives it). Each is tried at most `explore_tries` times, so a
        drafter that finds nothing to draft (prompt lookup without a match) is not held to it."""
        enough = {n for n, ts in self._verify.items() if len(ts) >= self.min_samples}
        wanted = [("plain", 0, {1})] if self.floor == 0 else []
        wanted += [("one", 1, {2}), ("long", cap, set(range(3, cap + 2)))]
        for name, length, sizes in wanted:
            if sizes and not sizes & enough and self._explored[name] < self.explore_tries:
                self._explored[name] += 1
                return length
        return None
