"""Exit adapters and the frequency-ranked draft vocabulary: lossless greedy, exact sampling (with a
planted wrong rule that must fail), and clear messages when a part is missing."""

from __future__ import annotations

import pytest
import torch

from specviz.drafters import make_drafter
from specviz.drafters.draft_heads import DraftHead, ExitAdapter, build_head
from specviz.engine import Engine, GenerationConfig
from specviz.sampling import SamplingConfig
from tests.test_engine import V, exact_joint
from tests.test_sampling_power import PROMPT, assert_samples_exactly_with_teeth
from tests.tiny import ARCHS, random_draft_parts, random_prompt, reference_greedy, tiny_model

DAMP = {2: 0.05, 3: 0.3, 4: 0.05, 5: 0.3}
GREEDY_CASES = [
    ("early-exit", {"exit_layer": 2, "k": 4, "adapter": "on"}),
    ("early-exit", {"exit_layer": 3, "k": 6, "adapter": "on", "draft_vocab": 96}),
    ("early-exit", {"exit_layer": 2, "k": 3, "adapter": "off", "draft_vocab": 32, "threshold": 0.2}),
    ("hispec", {"d": 2, "v": 3, "n": 6, "k": 3, "adapter": "on", "threshold": 0.0}),
    ("hispec", {"d": 1, "v": 3, "n": 4, "k": 2, "adapter": "on", "draft_vocab": 64, "threshold": 0.0}),
    ("clasp", {"skip_ratio": 0.4, "dp_interval": 2, "k": 4, "threshold": 0.0, "draft_vocab": 48}),
    ("static-skip", {"skip": "alternate", "k": 3, "draft_vocab": 80}),
]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    made = {}
    for arch in ARCHS:
        for seed in (0, 1):
            model = tiny_model(arch, seed=seed, damp=DAMP)
            random_draft_parts(model, tmp_path_factory.mktemp(f"{arch}{seed}"), exits=(1, 2, 3), seed=seed)
            made[(arch, seed)] = (model, Engine(model))
    return made


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("name,options", GREEDY_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(GREEDY_CASES)])
def test_greedy_equals_generate_with_adapters_and_subset(targets, arch, seed, name, options):
    model, engine = targets[(arch, seed)]
    prompt = random_prompt(seed + 10)
    trace = engine.generate(prompt, make_drafter(name, model, **options), GenerationConfig(max_new_tokens=24))
    assert trace.generated == reference_greedy(model, prompt, 24)


def test_the_adapter_changes_the_drafts(targets):
    """The greedy tests would pass with an adapter that is never applied: check it is."""
    model, engine = targets[("llama", 0)]
    prompt = random_prompt(3)
    runs = {a: engine.generate(prompt, make_drafter("early-exit", model, exit_layer=2, k=4, adapter=a),
                               GenerationConfig(max_new_tokens=24)) for a in ("on", "off")}
    drafts = {a: [s.draft_tokens for s in t.steps] for a, t in runs.items()}
    assert drafts["on"] != drafts["off"]
    assert runs["on"].steps[1].info["adapter"] is True and runs["off"].steps[1].info["adapter"] is False


def test_an_untrained_adapter_is_the_identity():
    adapter = ExitAdapter(16, 32)
    h = torch.randn(3, 16)
    assert torch.equal(adapter(h), h)


def test_subset_head_scores_only_the_subset(targets):
    model, _ = targets[("qwen2", 0)]
    subset = torch.tensor([5, 17, 200, 3])
    head = DraftHead(model, None, subset)
    h = torch.randn(2, model.config.hidden_size)
    got = head(h)
    full = model.lm_head(model.model.norm(h))
    assert torch.isinf(got).sum() == 2 * (model.config.vocab_size - 4)
    assert torch.allclose(got[:, subset], full[:, subset], atol=1e-5)
    assert set(got.argmax(-1).tolist()) <= set(subset.tolist())


def test_missing_parts_are_named(tmp_path):
    model = tiny_model("llama", seed=3)
    with pytest.raises(ValueError, match="no trained exit adapter for exit layer 2.*has: none"):
        build_head(model, 2, "on", 0, "early-exit")
    with pytest.raises(ValueError, match="draft_vocab=64 needs the target.s token ranking"):
        build_head(model, 2, "off", 64, "early-exit")
    with pytest.raises(ValueError, match="draft_vocab must be 0 .* or an integer in \\[1, 256\\]"):
        make_drafter("early-exit", model, exit_layer=2, draft_vocab=999)
    with pytest.raises(ValueError, match="adapter must be one of auto, on, off"):
        make_drafter("early-exit", model, exit_layer=2, adapter="yes")
    random_draft_parts(model, tmp_path, exits=(1,))
    with pytest.raises(ValueError, match="exit layer 2 \\(this model has: 1\\)"):
        make_drafter("early-exit", model, exit_layer=2, adapter="on")
    for name in ("clasp", "static-skip"):  # layer skip: the full head by default, a subset on request
        assert make_drafter(name, model).settings()["draft_vocab"] == 0
        with pytest.raises(ValueError, match=f"{name}: draft_vocab=64 needs the target.s token ranking"):
            make_drafter(name, tiny_model("llama", seed=4), draft_vocab=64)
    assert make_drafter("clasp", model, draft_vocab=64).settings()["draft_vocab"] == 64
    # auto: no adapter for this exit is fine, and the drafter says it drafts without one
    assert make_drafter("early-exit", model, exit_layer=2).settings()["adapter"] is False
    assert make_drafter("early-exit", model, exit_layer=1).settings()["adapter"] is True


# -- sampling exactness, with teeth (see test_sampling_power) -----------------------------------

SAMPLING_CASES = {
    "early-exit+adapter": dict(name="early-exit", exit_layer=1, k=2, adapter="on"),
    "early-exit+adapter+subset": dict(name="early-exit", exit_layer=1, k=2, adapter="on", draft_vocab=3),
    "hispec+adapters+subset": dict(name="hispec", d=1, v=2, n=2, k=2, adapter="on", draft_vocab=3),
    "clasp+subset": dict(name="clasp", skip_ratio=0.34, k=2, threshold=0.0, draft_vocab=3),
}


@pytest.fixture(scope="module")
def sampling_setup(tmp_path_factory):
    target = tiny_model("llama", seed=7, num_layers=3, vocab=V, hidden=32, damp={1: 4.0, 2: 4.0})
    target.generation_config.eos_token_id = None
    target.config.eos_token_id = None
    random_draft_parts(target, tmp_path_factory.mktemp("parts"), exits=(1, 2), seed=5, scale=2.0)
    sampling = {"temperature": 1.0}
    return target, sampling, exact_joint(target, PROMPT, SamplingConfig(**sampling), 3)


# Kept for `pytest -m slow` (20-35 s each), as the default run already proves what they combine:
# CLaSp with a subset adds only the layer-skip draft to the early-exit subset case (the same
# DraftHead, the same rule); HiSpec with adapters adds the adapters' q, proven by the early-exit
# cases, to HiSpec's two-level rule, proven by test_sampling_power and test_hispec.
SLOW_SAMPLING_CASES = {"clasp+subset", "hispec+adapters+subset"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_SAMPLING_CASES else c
                                  for c in SAMPLING_CASES])
def test_adapter_drafts_sample_exactly_and_the_test_has_teeth(sampling_setup, case):
    target, sampling, exact = sampling_setup
    options = dict(SAMPLING_CASES[case])
    name = options.pop("name")
    assert_samples_exactly_with_teeth(Engine(target), lambda: make_drafter(name, target, **options), sampling,
                                      exact, case)
