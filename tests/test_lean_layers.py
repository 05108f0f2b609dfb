"""The decoder layers as plain tensor code (`specviz.lean_layers`): bit for bit transformers'
layers on every family and dtype, used by the engine's passes (never by `generate()`), and
refused where the self-test or the setup says no."""

from __future__ import annotations

import pytest
import torch

from specviz import lean_layers
from specviz.drafters.prompt_lookup import PromptLookup
from specviz.engine import Engine, GenerationConfig
from specviz.layers import LayerRunner

from tests.tiny import ARCHS, count_calls, engine_alone_runs, random_prompt, reference_greedy, tiny_model


def wrong_rotate(heads, cos, sin):
    """A planted wrong rotation: the rotated half without its sign flip."""
    half = heads.shape[-1] // 2
    return heads * cos + torch.cat((heads[..., half:], heads[..., :half]), dim=-1) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ARCHS)
def test_passes_equal_transformers_layers_bit_for_bit(arch, dtype):
    """A prefill with captured states, then passes of 1 and 4 rows, and CLaSp's candidates."""
    model = tiny_model(arch, seed=1).to(dtype)
    theirs, ours = LayerRunner(model, lean=False), LayerRunner(model)
    assert ours.lean and not theirs.lean
    ids = torch.tensor([random_prompt(2, length=12)])
    layers = list(range(ours.num_layers))
    with torch.inference_mode():
        caches = theirs.new_cache(), ours.new_cache()
        prefill = [run.forward(run.embed(ids[:, :7]), layers, 0, cache, capture=True)
                   for run, cache in zip((theirs, ours), caches)]
        assert all(torch.equal(a, b) for a, b in zip(prefill[0].states, prefill[1].states))
        for rows in (1, 4):
            step = theirs.embed(ids[:, 7:7 + rows])
            skipping = layers[::2]  # a layer-skip draft: some layers' caches fall behind
            outs = [run.forward(step, skipping, 7, cache).hidden for run, cache in zip((theirs, ours), caches)]
            assert torch.equal(*outs)
            for run, cache in zip((theirs, ours), caches):
                run.crop(cache, 7)
        candidates = prefill[0].states[3][:, -1:].expand(1, 5, -1).contiguous()
        assert torch.equal(*(run.layer_on_candidates(3, candidates, 6, cache)
                             for run, cache in zip((theirs, ours), caches)))


def test_the_engine_runs_lean_layers_and_generate_does_not(monkeypatch):
    calls = count_calls(monkeypatch, lean_layers, "decoder_layer")
    model = tiny_model("qwen2", seed=3)
    engine = Engine(model)
    calls[0] = 0  # the self-test ran it once
    engine_alone_runs(calls, model, engine, range(2), 30, 6, "the lean layer")


def test_a_wrong_lean_layer_is_refused_by_the_self_test(monkeypatch):
    """Teeth: a rotation off by a sign in half the dimensions fails the self-test, and the runner
    keeps transformers' layers and stays lossless."""
    monkeypatch.setattr(lean_layers, "rotate", wrong_rotate)
    model = tiny_model("llama", seed=4)
    runner = LayerRunner(model)
    assert not runner.lean and "self-test" in runner.lean_refused
    prompt = random_prompt(1, repeat=True)
    trace = Engine(model).generate(prompt, PromptLookup(k=6), GenerationConfig(max_new_tokens=30))
    assert trace.generated == reference_greedy(model, prompt, 30)


def test_a_wrong_lean_layer_let_through_changes_the_output(monkeypatch):
    """Teeth for the equality tests: if the check were skipped, the wrong rotation would show."""
    monkeypatch.setattr(lean_layers, "rotate", wrong_rotate)
    monkeypatch.setattr(lean_layers, "check", lambda model: None)
    model = tiny_model("llama", seed=0)
    engine, caught = Engine(model), 0
    for seed in range(3):
        prompt = random_prompt(seed, repeat=True)
        trace = engine.generate(prompt, PromptLookup(k=6), GenerationConfig(max_new_tokens=30))
        caught += trace.generated != reference_greedy(model, prompt, 30)
    assert caught


def test_eager_attention_and_turned_off_keep_transformers_layers():
    eager = LayerRunner(tiny_model("llama", seed=5, attn="eager"))
    assert not eager.lean and "eager" in eager.lean_refused
    off = LayerRunner(tiny_model("llama", seed=5), lean=False)
    assert off.lean_refused == "turned off"
