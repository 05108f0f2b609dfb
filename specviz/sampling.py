"""One logits-processing path for draft and target, and the lossless acceptance rules.

Rejection sampling is exact only if p (target) and q (draft) are the distributions the tokens
were actually drawn from, after the same temperature / top-k / top-p. Both sides therefore go
through `SamplingConfig.probs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


MIN_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy (argmax, first index on ties)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        # Below MIN_TEMPERATURE, logits / T overflows fp32 to inf and softmax gives NaN; such a
        # temperature is greedy in all but name, so it is refused with a message, not clamped.
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature <= 10.0):
            raise ValueError(f"temperature must be in [0, 10] (0 = greedy; a sampling temperature must be at least "
                             f"{MIN_TEMPERATURE}), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] -> the distribution tokens are drawn from (fp32).

        Greedy: a one-hot on the argmax, so acceptance reduces to exact match.
        """
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(greedy_token(logits), logits.shape[-1]).float()
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            # drop a token once the mass before it already reaches top_p (keeps at least one)
            drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= self.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits.softmax(-1)


def greedy_token(logits: torch.Tensor) -> torch.Tensor:
    """Argmax with a deterministic tie-break: the lowest token id wins (as torch.argmax documents)."""
    return logits.argmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token from a 1-D distribution. The draw happens on CPU so runs are reproducible
    across devices."""
    return int(torch.multinomial(probs.float().cpu(), 1, generator=generator).item())


def uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator).item())


@dataclass
class Verdict:
    """How many draft tokens were accepted, and the token the target adds after them."""

    accepted: int
    next_token: int
    # What the rule decided with, for the app to show the rule on a run's own numbers (rejection
    # sampling only): the uniform draw u_i per draft token checked, and p / q / residual of the
    # target's token ("p", "q", "residual", "residual_mass"; q and residual only after a rejection).
    draws: list[float] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); falls back to p if the residual has no mass (then p == q)."""
    r = (p - q).clamp_min(0.0)
    total = r.sum()
    return r / total if total > 0 else p


def accept_greedy(draft: list[int], target_probs: torch.Tensor) -> Verdict:
    """Longest prefix of `draft` equal to the target's argmax, then the target's own token."""
    target_tokens = greedy_token(target_probs).tolist()
    n = 0
    while n < len(draft) and draft[n] == target_tokens[n]:
        n += 1
    return Verdict(n, target_tokens[n])


def greedy_verdict_in_chunks(draft: list[int], tokens_of: Callable[[int, int], list[int]],
                             first_rows: int | Sequence[int] = 2) -> Verdict:
    """`accept_greedy`'s verdict, reading the target's rows only as far as it needs.

    `tokens_of(start, stop)` gives the target's greedy tokens for rows [start, stop) of the k + 1
    verified (through the full LM head or the engine's screened one). The first `first_rows` rows
    are read alone, and the rest only if every draft token among them was accepted, so a draft
    rejected early never pays for the LM head over the rows behind it. On a CPU the head over a
    large vocabulary is a real share of a verification (a fifth of a step for SmolLM2's 49k
    tokens), and most drafts that fail fail early. Several row counts (increasing) make several
    chunks: the engine's split verify pass computes the rows behind a chunk only when asked."""
    rows, start = len(draft) + 1, 0
    stops = [first_rows] if isinstance(first_rows, int) else list(first_rows)
    for stop in [min(n, rows) for n in stops] + [rows]:
        if stop <= start:
            continue
        for i, token in enumerate(tokens_of(start, stop), start):
            if i == len(draft) or draft[i] != token:
                return Verdict(i, int(token))
        start = stop
    raise AssertionError("unreachable: the last row always ends the verdict")


def accept_rejection(
    draft: list[int],
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator,
) -> Verdict:
    """Speculative sampling (Leviathan et al. 2023, Chen et al. 2023).

    Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw from
    norm(max(0, p_i - q_i)); if every draft survives, draw a bonus token from p_{k+1}.
    `draft_probs` None means a deterministic drafter (q is one-hot on the draft token).
    target_probs: [k+1, V]; draft_probs: [k, V].
    """
    p_all = target_probs.float().cpu()
    q_all = None if draft_probs is None else draft_probs.float().cpu()
    draws: list[float] = []
    for i, token in enumerate(draft):
        p = p_all[i]
        if q_all is None:
            q = torch.zeros_like(p)
            q[token] = 1.0
        else:
            q = q_all[i]
        q_x = float(q[token])
        ratio = 1.0 if q_x <= 0.0 else float(p[token]) / q_x
        draws.append(uniform(generator))
        if draws[-1] < min(1.0, ratio):
            continue
        r = residual(p, q)
        token = sample(r, generator)
        detail = {"p": float(p[token]), "q": float(q[token]), "residual": float(r[token]),
                  "residual_mass": float((p - q).clamp_min(0.0).sum())}
        return Verdict(i, token, draws, detail)
    token = sample(p_all[len(draft)], generator)
    return Verdict(len(draft), token, draws, {"p": float(p_all[len(draft)][token])})
