"""Bad input gets a ValueError that names the parameter and the allowed range; nothing crashes."""

import pytest

from specviz.drafters import make_drafter
from specviz.engine import Engine, GenerationConfig
from specviz.models import load_model, resolve_source
from specviz.sampling import SamplingConfig
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", num_layers=6)


def test_empty_prompt(target):
    with pytest.raises(ValueError, match="prompt must not be empty"):
        Engine(target).start([], make_drafter("ar", target), GenerationConfig())


@pytest.mark.parametrize("n", [0, -3])
def test_max_new_tokens_not_positive(target, n):
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer >= 1"):
        Engine(target).start([5, 6], make_drafter("ar", target), GenerationConfig(max_new_tokens=n))


def test_max_new_tokens_beyond_context(target):
    with pytest.raises(ValueError, match=r"max_new_tokens must be in \[1, 510\]"):
        Engine(target).start([5, 6], make_drafter("ar", target), GenerationConfig(max_new_tokens=600))


@pytest.mark.parametrize("name", ["static-skip", "early-exit", "prompt-lookup"])
@pytest.mark.parametrize("k", [0, -1, 65])
def test_bad_k(target, name, k):
    with pytest.raises(ValueError, match=r"k \(max draft length\) must be an integer in \[1, 64\]"):
        make_drafter(name, target, k=k)


@pytest.mark.parametrize("exit_layer", [0, 6, 7, -1])
def test_exit_layer_outside_range(target, exit_layer):
    with pytest.raises(ValueError, match=r"exit_layer \(E\) must be an integer in \[1, 5\]"):
        make_drafter("early-exit", target, exit_layer=exit_layer)


@pytest.mark.parametrize("name", ["static-skip", "early-exit", "prompt-lookup"])
@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_outside_range(target, name, threshold):
    with pytest.raises(ValueError, match=r"threshold \(confidence stop\) must be in \[0, 1\]"):
        make_drafter(name, target, threshold=threshold)


def test_bad_skip_list(target):
    with pytest.raises(ValueError, match=r"skip_layers must be .* in \[0, 5\]"):
        make_drafter("static-skip", target, skip=[2, 9])


def test_unknown_drafter(target):
    with pytest.raises(ValueError, match="unknown drafter 'nope': choose one of ar, static-skip"):
        make_drafter("nope", target)


def test_unknown_option(target):
    with pytest.raises(ValueError, match="bad option for drafter 'early-exit'"):
        make_drafter("early-exit", target, exit_layr=2)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'no/such-model'"):
        resolve_source("no/such-model")
    with pytest.raises(ValueError, match="unknown model"):
        load_model("https://example.com/evil")


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": -1}, r"temperature must be in \[0, 10\]"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -2}, r"top_k must be >= 0"),
])
def test_bad_sampling(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_draft_model_vocab_mismatch(target):
    other = tiny_model("llama", num_layers=2, vocab=100)
    with pytest.raises(ValueError, match="must share the target's tokenizer"):
        make_drafter("draft-model", target, draft_model=other)
