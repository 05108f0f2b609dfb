"""Draft length from a cost model: the choice on hand-made numbers, what the model learns from
steps, and the engine with the flag on stays lossless (greedy equals generate(), sampling exact)."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch

from specviz.draft_length import (Curve, DraftLengthModel, Line, StepCost, best_length, drafted_distribution,
                                  expected_drafted, expected_seconds, expected_tokens, fit_curve, fit_line)
from specviz.engine import Engine, GenerationConfig
from specviz.drafters import make_drafter
from specviz.sampling import SamplingConfig
from specviz.trace import StepEvent, Trace
from tests.test_engine import V, build, chi_square_p, exact_joint, model_for, resample_from_target
from tests.tiny import ARCHS, assert_lossless, random_prompt, reference_greedy, tiny_model


# -- the choice on hand-made numbers -----------------------------------------------------------
def test_high_acceptance_and_cheap_verify_draft_long():
    cost = StepCost(fixed=1.0, verify=Line(0.0, 0.01), per_drafted=0.02)
    assert best_length([0.95] * 8, [1.0] * 8, cost, cap=8) == 8


def test_low_acceptance_drafts_short():
    cost = StepCost(fixed=1.0, verify=Line(0.0, 0.2), per_drafted=0.1)
    assert best_length([0.1] * 8, [1.0] * 8, cost, cap=8, floor=1) == 1
    assert best_length([0.1] * 8, [1.0] * 8, cost, cap=8) == 0  # plain decoding is best
    assert best_length([0.95] * 8, [1.0] * 8, cost, cap=3) == 3  # never above the cap


def test_expected_gain_chains_the_positions():
    """E(k) multiplies the acceptances up to each position: a bad position 3 makes everything
    after it nearly worthless. Summing per-position rates instead would choose k = 6."""
    alpha, rho = [0.9, 0.9, 0.2, 0.9, 0.9, 0.9], [1.0] * 6
    assert math.isclose(expected_tokens(alpha, rho, 3), 1 + 0.9 + 0.81 + 0.162)
    assert math.isclose(expected_tokens(alpha, rho, 4), 1 + 0.9 + 0.81 + 0.162 + 0.1458)
    cost = StepCost(fixed=1.0, verify=Line(0.0, 0.05), per_drafted=0.05)
    assert math.isclose(expected_seconds(cost, rho, 3), 1.05 + 0.1 * 3)
    # rates: k=1 1.652, k=2 2.168, k=3 2.127, k=4 2.081 tokens per second
    assert best_length(alpha, rho, cost, cap=6) == 2


def test_positions_seldom_drafted_cost_little():
    """Prompt lookup finds a match one step in ten, and then its continuation: the verify cost of
    a long cap is paid only on that step, so the full cap is best. Charging every allowed position
    as verified (ignoring rho) would choose 0."""
    alpha, rho = [0.9] * 4, [0.1, 1.0, 1.0, 1.0]
    assert math.isclose(expected_drafted(rho, 4), 0.4)
    cost = StepCost(fixed=1.0, verify=Line(0.0, 0.3), per_drafted=0.0)
    assert best_length(alpha, rho, cost, cap=4, floor=0) == 4

    def charging_every_allowed_position(k: int) -> float:
        return expected_tokens(alpha, rho, k) / (cost.fixed + cost.verify(1 + k))
    assert max(range(5), key=charging_every_allowed_position) == 0


# SmolLM2's verify pass inside the engine, in 1-row steps (BENCHMARKS.md): a step-shaped cost by
# pairs of rows, which a straight line charges evenly
STEPPED = {1: 1.0, 2: 1.38, 3: 1.43, 4: 1.76, 5: 1.79}


def test_the_verify_curve_passes_through_each_sizes_median_and_extends_with_the_slope():
    samples = {n: deque([t, t, 9.0 if n == 3 else t]) for n, t in STEPPED.items()}
    curve = fit_curve(samples)
    assert all(math.isclose(curve(n), t) for n, t in STEPPED.items())  # medians: the 9 s outlier is ignored
    assert math.isclose(curve(4.5), (1.76 + 1.79) / 2)
    slope = fit_line(samples).slope
    assert math.isclose(curve(7), 1.79 + 2 * slope) and curve(-50) == 0.0  # never below zero
    assert fit_curve({2: deque([0.1])}) is None
    assert fit_curve({1: deque([0.1]), 3: deque([0.2])}, min_samples=2) is None


def test_a_stepped_verify_cost_chooses_the_cheap_sizes_a_line_would_miss():
    """At alpha 0.75 the fourth draft token rides a nearly free fifth row: the curve drafts 4, a
    line fitted to the same points charges that row like the others and stops at 3, which the
    true costs make slower."""
    samples = {n: deque([t]) for n, t in STEPPED.items()}
    alpha, rho = [0.75] * 4, [1.0] * 4
    by_curve = best_length(alpha, rho, StepCost(0.0, fit_curve(samples), 0.0), cap=4)
    by_line = best_length(alpha, rho, StepCost(0.0, fit_line(samples), 0.0), cap=4)
    assert (by_curve, by_line) == (4, 3)
    true = StepCost(0.0, Curve(tuple(STEPPED), tuple(STEPPED.values()), 0.0), 0.0)
    assert (expected_tokens(alpha, rho, 4) / expected_seconds(true, rho, 4)
            > expected_tokens(alpha, rho, 3) / expected_seconds(true, rho, 3))


def test_expected_verify_cost_weighs_each_draft_size_by_its_chance():
    rho = [0.5, 1.0, 0.2]
    probs = drafted_distribution(rho, 3)
    assert all(math.isclose(a, b) for a, b in zip(probs, [0.5, 0.0, 0.4, 0.1])) and math.isclose(sum(probs), 1.0)
    curve = Curve(tuple(STEPPED), tuple(STEPPED.values()), 0.0)
    cost = StepCost(fixed=0.1, verify=curve, per_drafted=0.01, per_draft_step=0.05)
    expect = 0.1 + 0.5 * 1.0 + 0.4 * 1.43 + 0.1 * 1.76 + 0.01 * expected_drafted(rho, 3) + 0.05 * 0.5
    assert math.isclose(expected_seconds(cost, rho, 3), expect)


def test_a_drafter_that_does_not_pay_is_switched_off_and_back_on_by_the_probes():
    model = DraftLengthModel(4, probe_every=4, longest_off_gap=16)
    chosen = []
    for _ in range(64):  # every draft rejected
        chosen.append(model.choose(10))
        model.observe(chosen[-1], chosen[-1], 0, 0.002 * chosen[-1], 0.010 + 0.001 * (chosen[-1] + 1))
    assert chosen[:6] == [4, 4, 0, 0, 1, 1]  # warm-up at k, then verify sizes 1 and 2 sampled
    probes = [i for i, k in enumerate(chosen) if k > 0 and i >= 6]  # after the warm-up and exploration
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert probes[0] == 10 and gaps == [8, 16, 16], chosen  # off at step 6: gaps 4, 8, then the longest, 16
    assert all(chosen[i] == 1 for i in probes)  # the cheapest probe: one token
    feed(model, [4] * 80, drafted=4)  # the drafts start to be right: the probes see it
    assert model.choose(10) == 4


def test_fit_line_uses_medians_so_a_preempted_step_does_not_bend_it():
    samples = {2: deque([0.012, 0.012, 0.5]), 6: deque([0.016, 0.016, 0.016])}
    line = fit_line(samples)
    assert math.isclose(line.slope, 0.001) and math.isclose(line.intercept, 0.010)
    assert fit_line({5: deque([0.1, 0.1])}) is None  # one size: no slope
    assert fit_line({2: deque([0.1]), 5: deque([0.2, 0.2])}, min_samples=2) is None
    assert fit_line({2: deque([0.3]), 5: deque([0.1])}).slope == 0.0  # noise never makes tokens free


# -- what the model learns ---------------------------------------------------------------------
def feed(model: DraftLengthModel, alpha_hits: list[int], drafted: int, verify=(0.010, 0.001), draft=0.002):
    """Steps that each draft `drafted` tokens (capped by the model's choice) and accept a given count."""
    for accepted in alpha_hits:
        cap = model.choose(drafted)
        d = min(cap, drafted)
        model.observe(cap, d, min(accepted, d), draft * d, verify[0] + verify[1] * (d + 1))


def test_warm_up_uses_the_drafters_k_then_samples_plain_decoding():
    model = DraftLengthModel(6)
    assert model.choose(10) == 6 and model.choose(3) == 3  # no data: the drafter's own k
    model.observe(6, 6, 2, 0.01, 0.02)
    model.observe(6, 6, 3, 0.01, 0.02)
    assert model.cost() is None
    assert model.choose(10) == 0  # the one-token verify cost is unknown: plain decoding steps
    model.observe(0, 0, 0, 0.0, 0.011)
    assert model.choose(10) == 0
    model.observe(0, 0, 0, 0.0, 0.011)
    cost = model.cost()
    assert math.isclose(cost.verify(1), 0.011) and math.isclose(cost.verify(7), 0.02)
    assert math.isclose(cost.verify(4), 0.011 + 0.009 / 2) and math.isclose(cost.per_drafted, 0.01 / 6)
    assert model.choose(10) == 1  # then two verified tokens: a one-token draft
    model.observe(1, 1, 0, 0.001, 0.0115)
    assert model.choose(10) == 1
    model.observe(1, 1, 0, 0.001, 0.0115)
    assert math.isclose(model.cost().verify(2), 0.0115)  # measured, not read off the line from 1 to 7


def test_exploration_gives_up_on_a_size_the_drafter_does_not_produce():
    """Prompt lookup without a match drafts nothing whatever the cap: the one-token draft is asked
    for `explore_tries` times, then the model decides on what it has."""
    model = DraftLengthModel(6)
    chosen = []
    for _ in range(12):
        chosen.append(model.choose(10))
        model.observe(chosen[-1], 0, 0, 0.0, 0.011)  # never a draft: always one verified token
    assert chosen[:2] == [6, 6] and chosen.count(1) == model.explore_tries
    assert model.cost() is None and chosen[-1] == 6  # one size only: back to the drafter's own k


def test_with_a_floor_of_one_it_explores_a_short_draft_instead():
    model = DraftLengthModel(6, floor=1)
    model.observe(6, 6, 2, 0.01, 0.02)
    model.observe(6, 6, 3, 0.01, 0.02)
    assert model.choose(10) == 1  # one verify size seen twice: try two verified tokens
    model.observe(1, 1, 1, 0.002, 0.011)
    model.observe(1, 1, 1, 0.002, 0.011)
    assert math.isclose(model.cost().verify(2), 0.011)


def test_observed_acceptance_and_production_per_position():
    model = DraftLengthModel(4)
    model.observe(4, 4, 2, 0.0, 0.0)  # positions 1, 2 accepted, 3 rejected, 4 not judged
    model.observe(4, 1, 1, 0.0, 0.0)  # drafted only 1 of 4 allowed (a short match), accepted
    alpha = model.acceptance()
    assert math.isclose(alpha[0], (2 + 1) / (2 + 2))  # 2 of 2, Laplace
    assert math.isclose(alpha[1], (1 + 2 * alpha[0]) / (1 + 2))  # 1 of 1, shrunk toward alpha_1
    assert math.isclose(alpha[2], (0 + 2 * alpha[1]) / (1 + 2))  # 0 of 1
    assert math.isclose(alpha[3], alpha[2])  # never judged: its neighbour's rate
    rho = model.production()
    assert rho[0] == 1.0  # both steps drafted position 1
    assert math.isclose(rho[1], (1 + 1.0) / (2 + 1))  # 1 of 2 steps went on to position 2


@pytest.mark.parametrize("alpha,floor,expect", [(1, 0, 8), (0, 0, 0), (0, 1, 1)])
def test_model_converges_on_extremes(alpha, floor, expect):
    """Every draft accepted with a cheap verify: the drafter's full k; every draft rejected: plain
    decoding (or the floor)."""
    model = DraftLengthModel(8, floor=floor, probe_every=0)
    feed(model, [8 * alpha] * 12, drafted=8)
    assert model.choose(20) == expect


# -- the engine with the flag on ---------------------------------------------------------------
ADAPTIVE_CASES = [
    ("static-skip", {"skip": "alternate", "k": 6}),
    ("early-exit", {"exit_layer": 2, "k": 6}),
    ("early-exit", {"exit_layer": 4, "k": 8, "threshold": 0.3}),
    ("prompt-lookup", {"k": 6, "max_ngram": 3}),
    ("draft-model", {"k": 5}),
    ("clasp", {"skip_ratio": 0.34, "k": 5, "threshold": 0.0}),
    ("hispec", {"d": 2, "v": 4, "n": 6, "k": 3}),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,options", ADAPTIVE_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ADAPTIVE_CASES)])
def test_greedy_matches_generate_with_adaptive_length(arch, name, options):
    target, draft, engine = model_for(arch, 0)
    caps = set()
    for repeat in (False, True):
        prompt = random_prompt(11 + repeat, length=10, repeat=repeat)
        ref = reference_greedy(target, prompt, 48)
        trace = engine.generate(prompt, build(name, options, target, draft),
                                GenerationConfig(max_new_tokens=48, adaptive_length=True))
        assert_lossless(target, prompt, trace.generated, ref)
        assert trace.settings["adaptive_length"] is True
        step_caps = [s.draft_cap for s in trace.steps[1:]]
        caps |= set(step_caps)
        assert trace.steps[0].draft_cap is None  # the prefill drafts nothing
        # drafting switched off mid-generation and on again: the drafter must catch up losslessly
        # (prompt lookup often drafts nothing by itself, so the model seldom needs to switch it off)
        assert name == "prompt-lookup" or any(a == 0 and b > 0 for a, b in zip(step_caps, step_caps[1:])), step_caps
    assert None not in caps and len(caps) > 1, f"the cost model never changed the length: {caps}"


def test_flag_off_leaves_the_trace_as_before():
    target, draft, engine = model_for("llama", 0)
    trace = engine.generate(random_prompt(1), make_drafter("static-skip", target, k=4), GenerationConfig(max_new_tokens=12))
    assert "adaptive_length" not in trace.settings and all(s.draft_cap is None for s in trace.steps)


def test_ar_ignores_the_flag():
    target, draft, engine = model_for("llama", 0)
    generation = engine.start(random_prompt(1), make_drafter("ar", target), GenerationConfig(12, adaptive_length=True))
    assert generation.length_model is None


def test_draft_cap_round_trips_and_old_traces_load():
    trace = Trace("early-exit", {"k": 4}, "m", 4, [1], steps=[
        StepEvent(0, [], 0, 5, [5]), StepEvent(1, [3, 4], 1, 6, [3, 6], draft_cap=2)])
    again = Trace.from_json(trace.to_json())
    assert again == trace and again.steps[1].draft_cap == 2
    old = trace.to_dict()
    for step in old["steps"]:
        del step["draft_cap"]
    assert Trace.from_dict(old).steps[1].draft_cap is None


# -- sampling stays exact ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampling_setup():
    """test_sampling_power's target: amplified upper layers put early exit's q far from p, so
    rejections are common and the planted rule shows in few runs (p ~ 5e-14 at 600 runs, where
    test_engine's softer target needed 2000 runs to reach 2e-5)."""
    target = tiny_model("llama", seed=7, num_layers=3, vocab=V, hidden=32, damp={1: 4.0, 2: 4.0})
    target.generation_config.eos_token_id = None
    target.config.eos_token_id = None
    prompt = [3, 1, 0, 1, 2, 3, 1, 0]
    sampling = {"temperature": 1.0}
    return target, prompt, sampling, exact_joint(target, prompt, SamplingConfig(**sampling), 3)


def history_driven_model() -> DraftLengthModel:
    """The real model acting from the first step on a fixed cost, so each step's length follows
    the acceptances before it: 2 on the prior, 1 right after a rejection at position 1."""
    model = DraftLengthModel(2, warmup_steps=0, probe_every=0, explore_tries=0)  # the cost is given: no sampling
    model.cost = lambda: StepCost(0.010, Line(0.0, 0.0005), 0.0005)
    return model


def adaptive_counts(engine, target, prompt, sampling, runs, accept_rule=None):
    counts, caps = {}, set()
    for seed in range(runs):
        config = GenerationConfig(max_new_tokens=6, sampling=SamplingConfig(seed=seed, **sampling), adaptive_length=True)
        generation = engine.start(prompt, make_drafter("early-exit", target, exit_layer=1, k=2), config,
                                  accept_rule=accept_rule)
        generation.length_model = history_driven_model()
        for _ in generation:
            pass
        key = tuple(generation.generated[:3])
        counts[key] = counts.get(key, 0) + 1
        caps |= {(s.index, s.draft_cap) for s in generation.trace.steps[1:3]}
    return counts, caps


RUNS = 600


def test_sampling_stays_exact_with_adaptive_length_and_the_test_has_teeth(sampling_setup):
    target, prompt, sampling, exact = sampling_setup
    engine = Engine(target)
    counts, caps = adaptive_counts(engine, target, prompt, sampling, RUNS)
    assert {(1, 2), (2, 1), (2, 2)} <= caps, f"the length should follow the history: {caps}"
    p = chi_square_p(counts, exact, RUNS)
    assert p > 0.01, f"adaptive length changed the sampled distribution (chi-square p={p:.2g})"
    wrong, _ = adaptive_counts(engine, target, prompt, sampling, RUNS, accept_rule=resample_from_target)
    p_wrong = chi_square_p(wrong, exact, RUNS)
    assert p_wrong < 1e-3, f"resampling from p went unnoticed with adaptive length (p={p_wrong:.2g})"
