"""The decoder linears' measured kernel (`specviz.packed_linears`): used only inside the engine's
passes, picked by the lowest measured time, and lossless."""

from __future__ import annotations

import pytest
import torch

from specviz import packed_linears
from specviz.drafters import make_drafter
from specviz.drafters.prompt_lookup import PromptLookup
from specviz.engine import Engine, GenerationConfig
from specviz.packed_linears import PackedLinears

from tests.tiny import count_calls, engine_alone_runs, random_prompt, reference_greedy, tiny_model

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


@pytest.fixture
def packed_everywhere(monkeypatch):
    """Every decoder linear of a tiny model is covered and takes the packed kernel at every row
    count; returns the count of packed calls."""
    monkeypatch.setattr(packed_linears, "MIN_SIZE", 0)
    monkeypatch.setattr(PackedLinears, "_fastest", lambda self, stand_ins, rows: "packed")
    return count_calls(monkeypatch, packed_linears._PackedLinear, "run_packed")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_engine_passes_use_the_packed_kernel_and_stay_lossless(packed_everywhere, arch):
    """Prompt lookup's long drafts through packed linears equal generate(), and generate() itself,
    on the same model, never touches the packed kernel."""
    model = tiny_model(arch, seed=3)
    traces = engine_alone_runs(packed_everywhere, model, Engine(model), range(3), 40, 8, "the packed kernel")
    for trace in traces:
        assert max(len(s.draft_tokens) for s in trace.steps) >= 3  # passes of 4+ rows were checked


def test_a_wrong_packed_kernel_is_caught(packed_everywhere, monkeypatch):
    """Teeth: a packed kernel that is slightly off changes the engine's output."""
    run = packed_linears._PackedLinear.run_packed
    monkeypatch.setattr(packed_linears._PackedLinear, "run_packed", lambda self, flat: run(self, flat) * 1.5)
    model = tiny_model("llama", seed=3)
    prompt = random_prompt(0, repeat=True)
    trace = Engine(model).generate(prompt, PromptLookup(k=8), GenerationConfig(max_new_tokens=40))
    assert trace.generated != reference_greedy(model, prompt, 40)


def test_outside_a_pass_the_model_runs_as_loaded(packed_everywhere):
    model = tiny_model("llama", seed=4)
    ids = torch.tensor([random_prompt(1)])
    with torch.no_grad():
        plain = model(ids).logits
        Engine(model)  # installs the stand-ins
        again = model(ids).logits
    assert torch.equal(plain, again)
    assert packed_everywhere[0] == 0


@pytest.mark.parametrize("times, expected", [
    ([3.0, 9.0, 3.0, 1.0, 3.0, 9.0], "packed"),  # one packed sweep ran at 1 s: the lowest minimum
    ([3.0, 4.0, 2.5, 4.0, 3.0, 4.0], "linear"),
    ([3.0, 2.9, 3.0, 2.9, 3.0, 2.9], "linear"),  # within the margin: the module's own kernel stays
])
def test_the_kernel_is_the_lowest_measured_minimum_and_remembered(monkeypatch, times, expected):
    """A fake clock: each timed sweep (linear, then packed, per trial) takes the next time."""
    monkeypatch.setattr(packed_linears, "MIN_SIZE", 0)
    seconds, ticks, now = iter(times), [0], [0.0]

    def clock():
        ticks[0] += 1
        if ticks[0] % 2 == 0:  # the end of a sweep
            now[0] += next(seconds)
        return now[0]

    linears = PackedLinears(tiny_model("llama", seed=5, num_layers=2), clock=clock)
    key = next(iter(linears.groups))
    assert linears.kernel(key, 4) == expected
    assert ticks[0] == 2 * len(packed_linears.KERNELS) * packed_linears.TRIALS
    assert linears.kernel(key, 4) == expected  # remembered, not re-timed
    assert ticks[0] == 2 * len(packed_linears.KERNELS) * packed_linears.TRIALS
    assert linears.table() == {"x".join(map(str, key[0])): {4: expected}}


def test_row_counts_between_the_measured_ones_take_the_choice_below(monkeypatch):
    monkeypatch.setattr(packed_linears, "MIN_SIZE", 0)
    measured = []
    monkeypatch.setattr(PackedLinears, "_fastest",
                        lambda self, stand_ins, rows: measured.append(rows) or ("packed" if rows >= 12 else "linear"))
    linears = PackedLinears(tiny_model("llama", seed=5, num_layers=1))
    key = next(iter(linears.groups))
    assert [linears.kernel(key, r) for r in (3, 9, 11, 12, 15, 64)] == ["linear"] * 3 + ["packed"] * 3
    assert measured == [3, 8, 12, 64]
    linears.prepare()
    assert sorted(measured) == sorted(packed_linears.MEASURED_ROWS * len(linears.groups))  # each once per shape


def test_grad_and_long_inputs_keep_the_modules_own_forward(packed_everywhere):
    model = tiny_model("llama", seed=6, num_layers=1)
    linears = PackedLinears.of(model)
    stand_in = next(iter(linears.groups.values()))[0]
    x = torch.randn(1, 3, stand_in.module.in_features, requires_grad=True)
    with linears.active():
        stand_in(x)  # autograd: the packed op has no backward
        assert packed_everywhere[0] == 0
        with torch.no_grad():
            stand_in(torch.randn(1, packed_linears.MAX_ROWS + 1, stand_in.module.in_features))  # a prefill
        assert packed_everywhere[0] == 0
        with torch.no_grad():
            got = stand_in(x.detach())
        assert packed_everywhere[0] == 1
    assert torch.allclose(got, stand_in.original(x.detach()), atol=1e-5)


@pytest.mark.parametrize("name", ["draft-model", "eagle"])
def test_drafters_own_passes_take_the_packed_kernel(packed_everywhere, monkeypatch, name):
    """The draft model's and the EAGLE head's runners pack their linears too: a packed kernel that
    is off changes their drafts (so they run it), never the engine's output (the target, unpacked
    here, verifies every draft)."""
    run = packed_linears._PackedLinear.run_packed
    monkeypatch.setattr(packed_linears._PackedLinear, "run_packed", lambda self, flat: run(self, flat) * 1.5)
    model = tiny_model("llama", seed=5)
    options = {"draft_model": tiny_model("llama", seed=6, num_layers=1)} if name == "draft-model" else {"random_head": True}
    engine, prompt = Engine(model, pack_linears=False), random_prompt(2)
    drafts = {}
    for packed in (True, False):
        drafter = make_drafter(name, model, k=3, **options)
        if not packed:
            drafter.runner.linears = None
        trace = engine.generate(prompt, drafter, GenerationConfig(max_new_tokens=24))
        assert trace.generated == reference_greedy(model, prompt, 24)
        drafts[packed] = [s.draft_tokens for s in trace.steps]
    assert packed_everywhere[0] > 0
    assert drafts[True] != drafts[False]
