"""Verifying a long draft in two passes (specviz.verify_split): the plan on hand-made costs, and the
engine's output and cache unchanged whatever the split."""

from __future__ import annotations

import pytest
import torch

from specviz.engine import Engine, Generation, GenerationConfig
from specviz.sampling import SamplingConfig
from specviz import verify_split
from specviz.verify_split import PassCosts, SplitPlanner
from tests.test_engine import build, model_for
from tests.tiny import ARCHS, assert_lossless, random_prompt, reference_greedy

# SmolLM2's decoder body by rows on this CPU, in one-row passes (BENCHMARKS.md)
MEASURED = {1: 1.0, 2: 1.48, 3: 1.74, 5: 1.85, 9: 2.02, 17: 2.37, 33: 3.05}


def costs(curve: dict[int, float]) -> PassCosts:
    table = PassCosts()
    for rows, seconds in curve.items():
        table.observe(rows, seconds)
        table.observe(rows, seconds)
    return table


def planner_seeing(curve: dict[int, float], drafted: int, accepted: list[int]) -> SplitPlanner:
    planner = SplitPlanner(costs(curve))
    for a in accepted:
        planner.observe(drafted, a)
    return planner


def test_a_long_draft_that_fails_early_is_verified_one_row_first():
    """32 drafts, almost always rejected at the first: V(1) + 0.1 V(32) beats V(33) by far."""
    planner = planner_seeing(MEASURED, 32, [0] * 20 + [1, 2])
    assert planner.split(32) == 0


def test_a_draft_that_is_usually_right_stays_one_pass():
    planner = planner_seeing(MEASURED, 32, [32] * 20)
    assert planner.split(32) is None


def test_on_a_flat_cost_curve_one_pass_always_wins():
    """A GPU-like device: a pass of 33 rows costs what one row does, so splitting only adds a pass."""
    flat = {rows: 1.0 for rows in MEASURED}
    assert planner_seeing(flat, 32, [0] * 20).split(32) is None


def test_acceptance_is_counted_by_draft_length():
    """Short drafts that fail must not make long drafts that succeed split (prompt lookup drafts
    long only where a long match agrees), and the other way round."""
    planner = SplitPlanner(costs(MEASURED))
    for _ in range(20):
        planner.observe(2, 0)
        planner.observe(24, 24)
    assert planner.split(24) is None and planner.split(2) == 0
    assert planner.acceptance(3)[0] < 0.1 < 0.9 < planner.acceptance(20)[0]


def test_an_unseen_length_leans_on_the_drafters_overall_record_not_a_coin():
    """Drafts of 8 always right: a first 32-token draft is trusted too (a 0.5 prior would split it),
    and a drafter whose drafts always fail splits its first 32-token draft."""
    assert planner_seeing(MEASURED, 8, [8] * 30).split(32) is None
    assert planner_seeing(MEASURED, 8, [0] * 30).split(32) == 0


def test_a_saving_within_the_margin_keeps_one_pass(monkeypatch):
    """32-token drafts right 6 times in 10: a one-row first pass would save about 8 % on this curve,
    within the margin, so one pass; without the margin the plan would split."""
    planner = planner_seeing(MEASURED, 32, [32] * 6 + [0] * 4)  # one pass 3.05, split 1 + 0.6 V(32) = 2.80
    assert planner.split(32) is None
    monkeypatch.setattr(verify_split, "MARGIN", 0.0)
    assert planner.split(32) == 0


def test_unknown_costs_explore_with_one_row_and_tiny_drafts_never_split():
    planner = SplitPlanner(PassCosts())
    assert planner.split(8) == 0 and planner.split(1) is None and planner.split(0) is None
    assert SplitPlanner(PassCosts(), fixed=3).split(8) == 3 and SplitPlanner(PassCosts(), fixed=9).split(4) == 3


# -- the engine ---------------------------------------------------------------------------------
SPLIT_CASES = [
    ("prompt-lookup", {"k": 8, "max_ngram": 2}),
    ("prompt-lookup", {"k": 12, "max_ngram": 2, "length": "match"}),
    ("draft-model", {"k": 6}),
    ("prompt-lookup", {"k": 10, "max_ngram": 1}),  # transformers' kind: any 1-gram, a fixed length
]  # (layer-skip and early-exit drafts reuse the draft's layers, CLaSp and CTC want states: one pass)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("split", [0, 2])
@pytest.mark.parametrize("name,options", SPLIT_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SPLIT_CASES)])
def test_greedy_matches_generate_with_the_verify_pass_split(arch, split, name, options):
    target, draft, engine = model_for(arch, 0)
    second_passes = 0
    for repeat in (False, True):
        prompt = random_prompt(5 + repeat, length=10, repeat=repeat)
        ref = reference_greedy(target, prompt, 40)
        trace = engine.generate(prompt, build(name, options, target, draft),
                                GenerationConfig(max_new_tokens=40, verify_split=split))
        assert_lossless(target, prompt, trace.generated, ref)
        split_steps = [s for s in trace.steps if s.verify_split is not None]
        assert all(s.verify_split == min(split, len(s.draft_tokens) - 1) for s in split_steps)
        assert all(s.verify_split is None for s in trace.steps if len(s.draft_tokens) < 2)
        second_passes += sum(s.accepted > s.verify_split for s in split_steps)
    # a first pass of 0 drafts must sometimes be followed by the second (else a wrong second pass
    # would go unseen); 3 accepted drafts in a row are rarer on these random models
    assert second_passes or split >= 2, "no split step needed its second pass"


def test_the_cache_after_split_passes_equals_plain_decoding():
    target, draft, engine = model_for("llama", 0)
    prompt = random_prompt(3, length=10, repeat=True)
    generation = engine.start(prompt, build("prompt-lookup", {"k": 8}, target, draft),
                              GenerationConfig(max_new_tokens=30, verify_split=1))
    for _ in generation:
        committed = generation.tokens[:-1]
        with torch.no_grad():
            ref = target(torch.tensor([committed]), use_cache=True).past_key_values
        for ours, theirs in zip(generation.cache.layers, ref.layers):
            assert ours.keys.shape == theirs.keys.shape and torch.allclose(ours.keys, theirs.keys, atol=1e-5)


def test_a_second_pass_fed_the_wrong_tokens_fails_the_lossless_check(monkeypatch):
    """The planted bug: the second pass fed its tokens one place late. The comparison must catch it."""
    target, draft, engine = model_for("llama", 0)
    timed = Generation._timed_pass

    def shifted_second_pass(self, inputs, start):
        second = start != len(self.tokens) - 1
        return timed(self, torch.roll(inputs, 1, dims=1) if second else inputs, start)

    monkeypatch.setattr(Generation, "_timed_pass", shifted_second_pass)
    caught = 0
    for repeat in (False, True):
        prompt = random_prompt(5 + repeat, length=10, repeat=repeat)
        ref = reference_greedy(target, prompt, 40)
        trace = engine.generate(prompt, build("prompt-lookup", {"k": 8, "max_ngram": 2}, target, draft),
                                GenerationConfig(max_new_tokens=40, verify_split=1))
        caught += trace.generated != ref
    assert caught


def test_sampling_the_cost_model_and_off_keep_one_pass_and_a_bad_setting_is_named():
    target, draft, engine = model_for("llama", 0)
    prompt = random_prompt(6, length=10, repeat=True)
    for config in (GenerationConfig(max_new_tokens=20, verify_split=False),  # turned off
                   GenerationConfig(max_new_tokens=20, verify_split=True, adaptive_length=True),  # times whole passes
                   GenerationConfig(max_new_tokens=20, verify_split=True,
                                    sampling=SamplingConfig(temperature=0.8, seed=1))):
        trace = engine.generate(prompt, build("prompt-lookup", {"k": 8}, target, draft), config)
        assert all(s.verify_split is None for s in trace.steps)
    with pytest.raises(ValueError, match="verify_split must be"):
        engine.start(prompt, build("ar", {}, target, draft), GenerationConfig(verify_split=-1))


def test_pass_costs_are_learned_per_engine_across_generations():
    target, draft, _ = model_for("llama", 0)
    engine = Engine(target)
    assert engine.pass_costs.curve() is None
    engine.generate(random_prompt(7, length=10, repeat=True), build("prompt-lookup", {"k": 6}, target, draft),
                    GenerationConfig(max_new_tokens=40, verify_split=True))
    assert engine.pass_costs.curve() is not None  # the next generation plans from the first step
