"""The drafter protocol and the pieces drafters share.

A drafter does two things (as in transformers' `CandidateGenerator`):

* `propose(state) -> Draft`: up to `state.max_draft` tokens to check, with the distribution
  each was drawn from (so rejection sampling can stay exact) and, optionally, work the target
  may reuse (`Reuse`: exact hidden states at some layer, whose KV below it is already cached).
* `observe(result)`: learn from the verification (crop its own cache, rerun a layer search...).

`start(state, states)` is called once after the prompt's prefill; `states` (for a drafter that
`wants_states`) holds the inputs of layers 0..L for every prompt token, each [T, d] (index L: the
last layer's output), else None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import DynamicCache

from ..layers import LayerRunner
from ..sampling import SamplingConfig, greedy_token, sample


@dataclass
class DecodeState:
    """What a drafter sees. `tokens[-1]` is the pending token: committed, but not yet in the
    target's cache (its KV is written by the next verification)."""

    tokens: list[int]
    runner: LayerRunner
    cache: DynamicCache
    max_draft: int  # the drafter may propose at most this many tokens now
    sampling: SamplingConfig
    generator: torch.Generator
    eos_token_ids: frozenset[int] = frozenset()
    record: bool = True  # False: skip building UI-only info (tracing overhead benchmark)

    @property
    def pending_position(self) -> int:
        return len(self.tokens) - 1


@dataclass
class Reuse:
    """Exact work the target may reuse: `hidden[:, i]` is the input of layer `layer` for verify
    input i (i < j), and layers below `layer` already hold those j tokens' KV."""

    layer: int
    hidden: torch.Tensor  # [1, j, d]
    states: list[torch.Tensor] | None = None  # inputs of layers 0..layer for the j tokens


@dataclass
class Draft:
    tokens: list[int]
    probs: torch.Tensor | None = None  # [k, V] distributions drawn from; None: deterministic
    token_probs: list[float] = field(default_factory=list)  # q(x_i), shown on hover
    reuse: Reuse | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # extra rows for the verify pass to carry (`layers.Riders`, e.g. CLaSp's DP candidates); the
    # drafter reads their results in observe()
    riders: Any = None


@dataclass
class VerifyResult:
    draft: Draft
    accepted: int
    target_token: int
    tokens: list[int]  # the whole sequence after the commit; tokens[-1] is the new pending token
    runner: LayerRunner
    cache: DynamicCache
    # inputs of layers 0..L (index L: last layer's output), each [k+1, d], when the drafter
    # asked for them (`wants_states`); row `accepted` is the last accepted token.
    states: list[torch.Tensor] | None = None


@runtime_checkable
class Drafter(Protocol):
    name: str
    wants_states: bool

    def start(self, state: DecodeState, states: list[torch.Tensor] | None) -> None: ...

    def propose(self, state: DecodeState) -> Draft: ...

    def observe(self, result: VerifyResult) -> None: ...

    def settings(self) -> dict[str, Any]: ...


def check_draft_length(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > 64:
        raise ValueError(f"k (max draft length) must be an integer in [1, 64], got {k!r}")
    return k


def check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold (confidence stop) must be in [0, 1] (0 disables), got {threshold!r}")
    return float(threshold)


@dataclass
class DraftChoice:
    token: int
    probs: torch.Tensor  # the distribution the token was drawn from ([V], fp32)
    confidence: float  # top-1 probability of that distribution (softmax at T=1 when greedy)
    token_prob: float  # probability of the chosen token


def choose(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> DraftChoice:
    """Pick a draft token from 1-D logits with the same processing the target uses."""
    if sampling.greedy:
        token = int(greedy_token(logits))
        soft = logits.float().softmax(-1)
        return DraftChoice(token, sampling.probs(logits), float(soft.max()), float(soft[token]))
    probs = sampling.probs(logits)
    token = sample(probs, generator)
    return DraftChoice(token, probs, float(probs.max()), float(probs[token]))


class DraftBuilder:
    """Accumulates draft tokens and applies the stopping rules every drafter shares:
    at most `limit` tokens, stop after a token whose confidence is below `threshold`, stop after
    an EOS (nothing after it can be committed).

    The unsure token is kept, not dropped: its draft pass is already paid, and checking it costs
    the verifier one more row, a small fraction of a draft pass (on SmolLM2 ~0.2 of a step against
    ~0.9 for a layer-skip draft token), while it is still accepted fairly often. Dropping it wasted
    a whole draft pass per thresholded draft (CLaSp on specviz-tiny: 2.8 passes for 1.8 tokens
    offered). transformers' `ConfidenceCriteria` and Draft & Verify also keep it."""

    def __init__(self, limit: int, threshold: float, eos: frozenset[int]):
        self.limit, self.threshold, self.eos = limit, threshold, eos
        self.tokens: list[int] = []
        self.probs: list[torch.Tensor] = []
        self.token_probs: list[float] = []
        self.done = limit <= 0

    def offer(self, choice: DraftChoice) -> bool:
        """Add the choice unless a stopping rule refuses it; return whether drafting goes on."""
        if self.done:
            return False
        self.tokens.append(choice.token)
        self.probs.append(choice.probs)
        self.token_probs.append(choice.token_prob)
        unsure = choice.confidence < self.threshold
        self.done = unsure or len(self.tokens) >= self.limit or choice.token in self.eos
        return not self.done

    def build(self, sampling: SamplingConfig, reuse: Reuse | None = None, info=None) -> Draft:
        probs = torch.stack(self.probs) if (self.probs and not sampling.greedy) else None
        return Draft(list(self.tokens), probs, list(self.token_probs), reuse, dict(info or {}))
