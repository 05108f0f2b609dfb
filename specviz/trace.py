"""What a run leaves behind: one `StepEvent` per verification, a `Trace`, and metrics from it.

The trace is plain data (ints, floats, strings, lists, dicts) so it round-trips through JSON and
figures can be drawn from it without a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class StepEvent:
    """One draft-verify-accept-commit cycle."""

    index: int
    draft_tokens: list[int]  # what the drafter proposed (empty for plain decoding)
    accepted: int  # how many of them the target accepted (a prefix)
    target_token: int  # the target's own token after the accepted prefix (correction or bonus)
    committed: list[int]  # tokens added to the output this step (after EOS / length cut)
    draft_probs: list[float] = field(default_factory=list)  # q(x_i) of each draft token
    target_probs: list[float] = field(default_factory=list)  # p(x_i) of each draft token
    t_draft: float = 0.0  # seconds spent proposing
    t_verify: float = 0.0  # seconds in the target's verification pass and acceptance
    # seconds the drafter spent adapting right before this step's draft: its observe() of the
    # previous verification, or start() after the prefill (CLaSp's DP: the step marked dp_ran)
    t_search: float = 0.0
    t_end: float = 0.0  # seconds since generation started, at the end of this step
    info: dict[str, Any] = field(default_factory=dict)  # drafter-specific, shown by the UI
    # The acceptance rule's own numbers (rejection sampling only), so the app can replay it:
    # the uniform draw u_i per checked draft token, and p / q / residual of the target's token.
    draws: list[float] = field(default_factory=list)
    accept_detail: dict[str, Any] = field(default_factory=dict)
    # [e, j]: the verifier reused the draft's exact work in layers < e for the first j verify
    # inputs (None: it recomputed everything)
    reuse: list[int] | None = None
    # the draft length the cost model allowed this step (GenerationConfig.adaptive_length);
    # None: no cost model (older traces lack the field and load as None)
    draft_cap: int | None = None
    # greedy on a CPU: the verify pass was split, its first pass covering this many drafts (the
    # rest ran only if they were all accepted; specviz.verify_split); None: one pass
    verify_split: int | None = None

    @property
    def rejected(self) -> list[int]:
        return self.draft_tokens[self.accepted:]


@dataclass
class Trace:
    drafter: str
    settings: dict[str, Any]
    model: str
    num_layers: int
    prompt_ids: list[int]
    t_prefill: float = 0.0
    steps: list[StepEvent] = field(default_factory=list)
    finish_reason: str = ""  # "eos", "length" or "stopped"

    @property
    def generated(self) -> list[int]:
        return [tok for step in self.steps for tok in step.committed]

    @property
    def wall_time(self) -> float:
        return self.steps[-1].t_end if self.steps else self.t_prefill

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and k != "steps"}
        step_fields = {f.name for f in fields(StepEvent)}
        steps = [StepEvent(**{k: v for k, v in s.items() if k in step_fields}) for s in data.get("steps", [])]
        return cls(steps=steps, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Trace":
        return cls.from_dict(json.loads(text))


@dataclass
class Metrics:
    new_tokens: int
    steps: int
    wall_time: float
    tokens_per_s: float
    # τ: tokens committed per verification, the target's own token included (plain decoding:
    # 1.00). The prefill is not a verification (it checks no draft) and is not counted, so τ is
    # the accepted-length histogram's mean + 1 (less only where an EOS inside a draft cut a commit).
    tau: float
    acceptance_rate: float | None  # accepted draft tokens / drafted tokens (None: nothing drafted)
    acceptance_per_position: list[float]  # P(draft position i accepted | a draft reached i)
    drafted_per_position: list[int]  # how many drafts reached position i (the sample size)
    mean_draft_length: float  # drafted tokens per verification
    time_split: dict[str, float]  # seconds: prefill, draft, verify, search, other
    verifications: int = 0  # steps after the prefill

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verification_steps(trace: Trace) -> list[StepEvent]:
    """The steps that verified a draft (or drafted nothing and added one token): all but the prefill."""
    return [s for s in trace.steps if s.index > 0]


def tau_of(verify_tokens: int, verifications: int, new_tokens: int) -> float:
    """τ from its sums; with no verification yet (only the prefill ran), plain decoding's 1.0."""
    if verifications:
        return verify_tokens / verifications
    return 1.0 if new_tokens else 0.0


def compute_metrics(trace: Trace) -> Metrics:
    steps = trace.steps
    verifying = verification_steps(trace)
    new_tokens = sum(len(s.committed) for s in steps)
    wall = trace.wall_time
    drafted = sum(len(s.draft_tokens) for s in steps)
    accepted = sum(s.accepted for s in steps)
    longest = max((len(s.draft_tokens) for s in steps), default=0)
    reached = [sum(1 for s in steps if len(s.draft_tokens) > i) for i in range(longest)]
    hits = [sum(1 for s in steps if s.accepted > i) for i in range(longest)]
    split = {
        "prefill": trace.t_prefill,
        "draft": sum(s.t_draft for s in steps),
        "verify": sum(s.t_verify for s in steps),
        "search": sum(s.t_search for s in steps),
    }
    split["other"] = max(0.0, wall - sum(split.values()))
    return Metrics(
        new_tokens=new_tokens,
        steps=len(steps),
        wall_time=wall,
        tokens_per_s=new_tokens / wall if wall > 0 else 0.0,
        tau=tau_of(sum(len(s.committed) for s in verifying), len(verifying), new_tokens),
        acceptance_rate=accepted / drafted if drafted else None,
        acceptance_per_position=[h / r for h, r in zip(hits, reached)],
        drafted_per_position=reached,
        mean_draft_length=drafted / len(verifying) if verifying else 0.0,
        time_split=split,
        verifications=len(verifying),
    )
