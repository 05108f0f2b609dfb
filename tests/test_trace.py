"""Metrics of a hand-built trace equal hand-computed values; traces round-trip through JSON."""

import math

from specviz.trace import StepEvent, Trace, compute_metrics


def hand_trace() -> Trace:
    steps = [
        # prefill: the target's first token, no draft
        StepEvent(index=0, draft_tokens=[], accepted=0, target_token=7, committed=[7], t_end=0.5),
        # 4 drafted, 2 accepted, + target token -> 3 committed
        StepEvent(index=1, draft_tokens=[1, 2, 3, 4], accepted=2, target_token=9, committed=[1, 2, 9],
                  draft_probs=[0.9, 0.8, 0.4, 0.3], target_probs=[0.95, 0.7, 0.1, 0.2],
                  t_draft=0.2, t_verify=0.3, t_search=0.05, t_end=1.1, info={"skipped_layers": [1, 3]}),
        # 2 drafted (short draft), both accepted + bonus -> 3 committed
        StepEvent(index=2, draft_tokens=[5, 6], accepted=2, target_token=8, committed=[5, 6, 8],
                  t_draft=0.1, t_verify=0.3, t_search=0.05, t_end=1.6),
        # empty draft (confidence stop) -> 1 committed
        StepEvent(index=3, draft_tokens=[], accepted=0, target_token=4, committed=[4],
                  t_draft=0.01, t_verify=0.2, t_end=1.85),
    ]
    return Trace(drafter="static-skip", settings={"k": 4}, model="m", num_layers=4, prompt_ids=[1, 2],
                 t_prefill=0.5, steps=steps, finish_reason="length")


def test_metrics_match_hand_computation():
    m = compute_metrics(hand_trace())
    assert m.new_tokens == 8
    assert m.steps == 4
    assert math.isclose(m.wall_time, 1.85)
    assert math.isclose(m.tokens_per_s, 8 / 1.85)
    # the prefill is not a verification: 7 tokens over the 3 verifications after it
    assert math.isclose(m.tau, 7 / 3) and m.verifications == 3
    assert math.isclose(m.acceptance_rate, 4 / 6)
    # position 0: reached by 2 drafts, accepted in 2; pos 1: 2 reached, 2 accepted; pos 2, 3:
    # reached only by the 4-token draft (the short one is unobserved there), rejected
    assert m.drafted_per_position == [2, 2, 1, 1]
    assert m.acceptance_per_position == [1.0, 1.0, 0.0, 0.0]
    assert math.isclose(m.mean_draft_length, 6 / 3)
    split = m.time_split
    assert math.isclose(split["prefill"], 0.5)
    assert math.isclose(split["draft"], 0.31)
    assert math.isclose(split["verify"], 0.8)
    assert math.isclose(split["search"], 0.1)
    assert math.isclose(split["other"], 1.85 - 0.5 - 0.31 - 0.8 - 0.1)


def test_plain_decoding_has_tau_one_and_no_acceptance_rate():
    steps = [StepEvent(index=i, draft_tokens=[], accepted=0, target_token=i, committed=[i], t_end=i + 1.0)
             for i in range(5)]
    m = compute_metrics(Trace("ar", {}, "m", 2, [1], steps=steps))
    assert m.tau == 1.0 and m.acceptance_rate is None and m.acceptance_per_position == []


def test_json_round_trip():
    trace = hand_trace()
    again = Trace.from_json(trace.to_json())
    assert again == trace
    assert again.generated == [7, 1, 2, 9, 5, 6, 8, 4]
    assert compute_metrics(again) == compute_metrics(trace)


def test_tau_is_the_accepted_histograms_mean_plus_one():
    """One τ everywhere: the metrics card, the histogram and the bench agree (issue: 4.57 vs 4.75)."""
    from specviz import figures
    from specviz.bench import pool_stats, trace_stats

    trace = hand_trace()
    verifying = [s for s in trace.steps if s.index > 0]
    mean_accepted = sum(s.accepted for s in verifying) / len(verifying)
    m = compute_metrics(trace)
    assert math.isclose(m.tau, mean_accepted + 1)
    assert math.isclose(pool_stats([trace_stats(trace)])["tau"], m.tau)
    title = figures.accepted_histogram(trace).layout.title.text
    assert f"mean {mean_accepted:.2f}" in title and f"τ = {m.tau:.2f}" in title
