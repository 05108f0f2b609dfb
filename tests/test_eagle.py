"""The EAGLE drafter: lossless on tiny random models of three architectures, its own cache always
equal to a fresh pass over the committed text, its head file round trip and its messages."""

from __future__ import annotations

import pytest
import torch

from specviz.drafters import make_drafter
from specviz.drafters.eagle import HEAD_FILE, EagleDrafter, load_eagle, random_eagle, save_eagle
from specviz.engine import Engine, GenerationConfig
from tests.test_engine import DAMP
from tests.tiny import ARCHS, assert_lossless, random_prompt, reference_greedy, tiny_model


def agreeing_head(target):
    """A head that often drafts the target's token: it reads the next token's embedding and runs
    the target's own first layer on it (the damped upper layers change little after it)."""
    head = random_eagle(target, seed=0)
    d = target.config.hidden_size
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, :d] = torch.eye(d)
        head.layer.load_state_dict(target.model.layers[0].state_dict())
    return head


_targets: dict = {}


def target_for(arch: str):
    if arch not in _targets:
        target = tiny_model(arch, seed=0, damp=DAMP)
        _targets[arch] = (target, Engine(target), agreeing_head(target))
    return _targets[arch]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("k,threshold", [(1, 0.0), (3, 0.0), (5, 0.0), (4, 0.3)])
def test_greedy_matches_generate_with_accepts_and_rejects(arch, k, threshold):
    target, engine, head = target_for(arch)
    accepted = rejected = 0
    for seed, repeat in ((0, False), (1, True)):
        prompt = random_prompt(seed, length=10, repeat=repeat)
        trace = engine.generate(prompt, EagleDrafter(target, head, k=k, threshold=threshold),
                                GenerationConfig(max_new_tokens=40))
        assert_lossless(target, prompt, trace.generated, reference_greedy(target, prompt, 40))
        accepted += sum(s.accepted for s in trace.steps)
        rejected += sum(s.accepted < len(s.draft_tokens) for s in trace.steps)
    assert accepted >= 5 and rejected >= 5, (accepted, rejected)  # both paths ran


def test_a_random_head_is_lossless_too():
    target, engine, _ = target_for("llama")
    prompt = random_prompt(3, length=10)
    trace = engine.generate(prompt, make_drafter("eagle", target, random_head=True, k=4),
                            GenerationConfig(max_new_tokens=30))
    assert_lossless(target, prompt, trace.generated, reference_greedy(target, prompt, 30))


@torch.no_grad()
def test_its_cache_equals_a_fresh_pass_over_the_committed_text():
    """After every verification the head's pairs of committed positions use the target's exact
    features: its cache then equals one pass over (f_i, x_{i+1}) for the whole text. A crop that
    kept a draft's own pairs, or fed a pair twice, would differ."""
    target, engine, head = target_for("qwen2")
    prompt = random_prompt(1, length=10, repeat=True)
    drafter = EagleDrafter(target, head, k=4)
    generation = engine.start(prompt, drafter, GenerationConfig(max_new_tokens=25))
    for _ in generation:
        pass
    # the last verification's observe(), one more proposal (it feeds that verification's pairs),
    # then drop the proposal's own pairs
    generation._adapt()
    state = generation._state()
    state.max_draft = 4  # the generation is over; a proposal with room to draft feeds the waiting pairs
    drafter.propose(state)
    drafter.runner.crop(drafter.cache, drafter.exact)
    tokens = generation.tokens
    assert drafter.exact == len(tokens) - 1
    captured = {}  # the last layer's output before the final norm
    hook = target.model.layers[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("f", out[0] if isinstance(out, tuple) else out))
    target(torch.tensor([tokens[:-1]]))
    hook.remove()
    fresh = drafter.runner.new_cache()
    inputs = head.pair_inputs(captured["f"], torch.tensor([tokens[1:]]))
    drafter.runner.forward(inputs, range(1), 0, fresh)
    ours, expected = drafter.cache.layers[0], fresh.layers[0]
    assert ours.keys.shape == expected.keys.shape
    torch.testing.assert_close(ours.keys, expected.keys, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.values, expected.values, atol=1e-4, rtol=1e-4)


def test_head_file_round_trip_and_draft_vocabulary(tmp_path):
    target, engine, head = target_for("llama")
    path = tmp_path / HEAD_FILE
    head.train_vocab = 0
    save_eagle(head, path, {"note": "test"})
    loaded = load_eagle(path, target)
    for key, value in head.own_state().items():
        torch.testing.assert_close(loaded.own_state()[key], value.half().float())
    prompt = random_prompt(0, length=10)
    trace = engine.generate(prompt, make_drafter("eagle", target, path=str(path), k=3), GenerationConfig(max_new_tokens=20))
    assert_lossless(target, prompt, trace.generated, reference_greedy(target, prompt, 20))


def test_missing_or_foreign_head_says_what_to_do(tmp_path):
    target, _, _ = target_for("llama")
    with pytest.raises(ValueError, match="needs a trained EAGLE head .*train_eagle"):
        make_drafter("eagle", target)
    with pytest.raises(ValueError, match="does not exist"):
        make_drafter("eagle", target, path=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="either path .* or random_head"):
        make_drafter("eagle", target, path="x", random_head=True)
    other = tiny_model("llama", seed=1, hidden=32)
    save_eagle(random_eagle(other, 0), tmp_path / HEAD_FILE, {})
    with pytest.raises(ValueError, match="hidden size 32"):
        make_drafter("eagle", target, path=str(tmp_path / HEAD_FILE))


@torch.no_grad()
def test_training_second_step_is_what_the_drafter_computes():
    """`train_eagle.second_step` drafts a second token for every position in one call; at each
    position it must equal the drafter's own path: the exact pairs before p in the cache, then the
    pair (its first-step g, the next token) at p."""
    from specviz.layers import LayerRunner
    from specviz.train.train_eagle import head_outputs, second_step

    target, _, _ = target_for("llama")
    head = random_eagle(target, seed=3)
    ids = torch.tensor([random_prompt(5, length=14)])
    captured = {}
    hook = target.model.layers[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("f", out[0] if isinstance(out, tuple) else out))
    target(ids)
    hook.remove()
    mask = torch.ones_like(ids)
    g, _ = head_outputs(head, ids, mask, captured["f"])
    batched = second_step(head, ids, mask, captured["f"], g)
    runner = LayerRunner(head.body)
    exact = head.pair_inputs(captured["f"][:, :-1], ids[:, 1:])
    for p in (1, 5, ids.shape[1] - 2):
        cache = runner.new_cache()
        runner.forward(exact[:, :p], range(1), 0, cache)
        own = head.pair_inputs(g[:, p - 1:p], ids[:, p + 1:p + 2])
        g2 = runner.forward(own, range(1), p, cache).hidden
        torch.testing.assert_close(batched[:, p], head.norm(g2)[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_lookup_then_head_is_lossless_and_uses_both_sources(arch):
    """Prompt lookup where the context has a match, the EAGLE head elsewhere: generate()'s output,
    drafts from both, and the head's cache stays in step over the steps the lookup drafted (the
    head checks that it holds exactly the committed positions' pairs before each of its drafts)."""
    from specviz.drafters.lookup_then import LookupThenHead
    from specviz.drafters.prompt_lookup import PromptLookup

    target, engine, head = target_for(arch)
    sources = {"lookup": 0, "head": 0}
    for seed in (0, 1, 2):
        prompt = random_prompt(seed, length=10, repeat=True)
        drafter = LookupThenHead(PromptLookup(k=6, max_ngram=3, min_ngram=2), EagleDrafter(target, head, k=2))
        trace = engine.generate(prompt, drafter, GenerationConfig(max_new_tokens=40))
        assert_lossless(target, prompt, trace.generated, reference_greedy(target, prompt, 40))
        for s in trace.steps:
            if s.draft_tokens:
                sources["head" if "head" in str((s.info or {}).get("source")) else "lookup"] += 1
    assert sources["lookup"] >= 3 and sources["head"] >= 3, sources


def test_lookup_then_head_passes_its_threshold_to_the_head():
    """then_threshold is the head's own confidence stop: after an unsure head token it drafts no more."""
    target, engine, _ = target_for("llama")
    drafter = make_drafter("lookup-then-head", target, random_head=True, then_k=4, then_threshold=0.99)
    assert drafter.fallback.threshold == 0.99 and drafter.settings()["then_threshold"] == 0.99
    prompt = random_prompt(3, length=10)
    trace = engine.generate(prompt, drafter, GenerationConfig(max_new_tokens=20, record=True))
    assert_lossless(target, prompt, trace.generated, reference_greedy(target, prompt, 20))
    head_steps = [s for s in trace.steps if "head" in str((s.info or {}).get("source"))]
    # a random head is never 99 % sure: each of its drafts stops after the first token
    assert head_steps and all(len(s.draft_tokens) == 1 for s in head_steps)
    with pytest.raises(ValueError, match="threshold"):
        make_drafter("lookup-then-head", target, random_head=True, then_threshold=1.5)


def test_lookup_then_head_needs_a_trained_head_and_says_so():
    target, _, _ = target_for("llama")
    with pytest.raises(ValueError, match="needs a trained EAGLE head .* or CTC head .* has neither"):
        make_drafter("lookup-then-head", target)
    with pytest.raises(ValueError, match="needs a trained EAGLE head"):
        make_drafter("lookup-then-head", target, then="eagle")
    with pytest.raises(ValueError, match="then must be one of auto, eagle, ctc"):
        make_drafter("lookup-then-head", target, then="draft-model", random_head=True)


def test_lookup_then_head_with_answers_needs_the_answer_store_and_says_so():
    target, _, _ = target_for("llama")
    with pytest.raises(ValueError, match="answer store"):
        make_drafter("lookup-then-head", target, random_head=True, answers=True)
    with pytest.raises(ValueError, match="answers must be true or false"):
        make_drafter("lookup-then-head", target, random_head=True, answers="yes")
    assert make_drafter("lookup-then-head", target, random_head=True).settings()["answers"] is False
