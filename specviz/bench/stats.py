"""From timed samples to one record per method: tokens/s, speedups, τ, acceptance, α, the
Leviathan prediction and the time split.

Trace metrics follow `trace.compute_metrics` (τ counts the target's own token; the prefill, which
verifies no draft, is not a verification) and are *pooled* over samples (sums first, ratios last), so a short output weighs less than a
long one; tokens/s is the mean over samples (Spec-Bench's convention).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from ..trace import Trace, compute_metrics, tau_of

RECORD_FIELDS = (
    "drafter", "kind", "status", "reason", "tokens_per_s", "speedup_vs_generate", "speedup_vs_ar",
    "speedup_paired_median", "tau", "acceptance_rate", "alpha", "acceptance_per_position",
    "drafted_per_position", "mean_draft_length", "draft_cost_c", "predicted_speedup",
    "time_split_ms_per_token", "peak_memory_mb", "matched_generate", "mismatched_samples",
    "samples", "new_tokens", "wall_s", "settings", "vs_transformers",
)
TOTALS = ("steps", "new_tokens", "verifications", "drafted", "accepted", "rejections", "t_draft", "t_verify")
SPLIT_PARTS = ("prefill", "draft", "verify", "search", "other")


@dataclass
class Sample:
    """One timed call: a method on one prompt in one repeat."""

    method: str
    prompt: int  # index in the prompt file
    repeat: int
    new_tokens: int
    wall: float  # seconds (CPU seconds with --clock cpu)
    peak_bytes: int | None
    matched: bool | None = None  # greedy: output == generate()'s; None when not checked
    first_difference: int | None = None
    stats: dict[str, Any] | None = None  # trace_stats() of our engine's runs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing (or b is 0)."""
    return a / b if a is not None and b else None


def leviathan_speedup(alpha: float, gamma: float, c: float) -> float:
    """S = (1 - α^(γ+1)) / ((1 - α)(γc + 1)); α -> 1 gives (γ + 1) / (γc + 1)."""
    if alpha >= 1.0 - 1e-12:
        tokens = gamma + 1.0
    else:
        tokens = (1.0 - alpha ** (gamma + 1.0)) / (1.0 - alpha)
    return tokens / (gamma * c + 1.0)


def trace_stats(trace: Trace) -> dict[str, Any]:
    """The sums one trace contributes to the pooled metrics (small, JSON-able; traces are dropped)."""
    m = compute_metrics(trace)
    stats = {"steps": m.steps, "new_tokens": m.new_tokens, "verifications": 0, "drafted": 0, "accepted": 0,
             "rejections": 0, "t_draft": 0.0, "t_verify": 0.0, "split": dict(m.time_split),
             "reached": list(m.drafted_per_position),
             "hits": [0] * len(m.drafted_per_position)}
    for step in trace.steps[1:]:  # steps[0] is the prefill, not a verification of a draft
        stats["verifications"] += 1
        stats["drafted"] += len(step.draft_tokens)
        stats["accepted"] += step.accepted
        stats["rejections"] += step.accepted < len(step.draft_tokens)
        stats["t_draft"] += step.t_draft
        stats["t_verify"] += step.t_verify
        for i in range(step.accepted):
            stats["hits"][i] += 1
    return stats


def _sum_per_position(all_stats: list[dict[str, Any]], key: str, longest: int) -> list[int]:
    return [sum(s[key][i] for s in all_stats if i < len(s[key])) for i in range(longest)]


def pool_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool trace stats over all samples of one method (`trace.compute_metrics` conventions)."""
    total = {key: sum(s[key] for s in all_stats) for key in TOTALS}
    longest = max(len(s["reached"]) for s in all_stats)
    reached = _sum_per_position(all_stats, "reached", longest)
    hits = _sum_per_position(all_stats, "hits", longest)
    split = {key: sum(s["split"][key] for s in all_stats) for key in SPLIT_PARTS}
    drafted, accepted, verifications = total["drafted"], total["accepted"], total["verifications"]
    new_tokens = total["new_tokens"]
    out: dict[str, Any] = {
        # every prefill (steps - verifications of them) commits exactly one token
        "tau": tau_of(new_tokens - (total["steps"] - verifications), verifications, new_tokens) if total["steps"] else None,
        "acceptance_rate": accepted / drafted if drafted else None,
        "alpha": accepted / (accepted + total["rejections"]) if accepted + total["rejections"] else None,
        "acceptance_per_position": [h / r for h, r in zip(hits, reached)],
        "drafted_per_position": reached,
        "mean_draft_length": drafted / verifications if verifications else 0.0,
        "time_split_ms_per_token": {k: 1e3 * v / new_tokens for k, v in split.items()} if new_tokens else None,
        "verify_ms_per_verification": 1e3 * total["t_verify"] / verifications if verifications else None,
        "draft_ms_per_draft_token": 1e3 * total["t_draft"] / drafted if drafted else None,
    }
    if drafted and verifications and total["t_verify"] > 0 and out["alpha"] is not None:
        c = out["draft_ms_per_draft_token"] / out["verify_ms_per_verification"]
        out["draft_cost_c"] = c
        out["predicted_speedup"] = leviathan_speedup(out["alpha"], out["mean_draft_length"], c)
    return out


def empty_record(**values: Any) -> dict[str, Any]:
    """A record with every RECORD_FIELDS key (None) and `values` set."""
    record: dict[str, Any] = {key: None for key in RECORD_FIELDS}
    record.update(values)
    return record


def summarise(method: dict[str, Any], samples: list[Sample]) -> dict[str, Any]:
    """One method's record from its samples: speed, memory, greedy match and pooled trace metrics."""
    record = empty_record(drafter=method["drafter"], kind=method["kind"], status="ok", reason="",
                          settings=method["settings"], samples=len(samples))
    if method.get("failed"):
        record.update(status="failed", reason=method["failed"])
    if not samples:
        record.update(status="failed", reason=record["reason"] or "no sample finished")
        return record
    rates = [s.new_tokens / s.wall for s in samples if s.wall > 0]
    record.update(
        tokens_per_s=statistics.fmean(rates) if rates else None,
        tokens_per_s_std=statistics.stdev(rates) if len(rates) > 1 else 0.0,
        new_tokens=sum(s.new_tokens for s in samples),
        wall_s=sum(s.wall for s in samples),
    )
    peaks = [s.peak_bytes for s in samples if s.peak_bytes is not None]
    record["peak_memory_mb"] = max(peaks) / 2**20 if peaks else None
    checked = [s for s in samples if s.matched is not None]
    if checked:
        record["matched_generate"] = all(s.matched for s in checked)
        record["mismatched_samples"] = [{"prompt": s.prompt, "repeat": s.repeat, "first_difference": s.first_difference}
                                        for s in checked if not s.matched]
    stats = [s.stats for s in samples if s.stats is not None]
    if stats:
        record.update(pool_stats(stats))
    return record


def paired_ratios(samples: list[Sample], base: dict[tuple[int, int], Sample]) -> list[float]:
    """Per (prompt, repeat): (base s/token) / (this method's s/token)."""
    ratios = []
    for s in samples:
        b = base.get((s.prompt, s.repeat))
        if b is None or not s.new_tokens or not b.new_tokens or s.wall <= 0 or b.wall <= 0:
            continue
        ratios.append((b.wall / b.new_tokens) / (s.wall / s.new_tokens))
    return ratios


def paired_median(samples: list[Sample], base: dict[tuple[int, int], Sample]) -> float | None:
    """The median of `paired_ratios`, None when no sample has a partner."""
    paired = paired_ratios(samples, base)
    return statistics.median(paired) if paired else None


def by_prompt_and_repeat(samples: list[Sample]) -> dict[tuple[int, int], Sample]:
    """Samples keyed by (prompt, repeat): the partners of `paired_ratios`."""
    return {(s.prompt, s.repeat): s for s in samples}
