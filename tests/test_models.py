"""Loading: tiny random Llama / Qwen2 / Mistral saved like hub checkpoints load back through the
same `from_pretrained` path a hub id takes; unsupported architectures fail clearly."""

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from specviz.drafters import make_drafter
from specviz.engine import Engine, GenerationConfig
from specviz.models import load_model, pick_dtype
from tests.tiny import ARCHS, reference_greedy, tiny_model


def copy_tokenizer(src: str, dst) -> None:
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)


@pytest.mark.parametrize("arch", ARCHS)
def test_load_saved_checkpoint(arch, tmp_path, tiny_model_dir):
    model = tiny_model(arch, vocab=320)
    model.save_pretrained(tmp_path)
    copy_tokenizer(tiny_model_dir, tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.model.config.model_type == arch
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert loaded.model.dtype == pick_dtype(loaded.device)
    assert not any(p.requires_grad and p.grad is not None for p in loaded.model.parameters())
    if loaded.device.type == "cpu":
        prompt = loaded.tokenizer("def add(a, b):")["input_ids"]
        trace = Engine(loaded.model).generate(prompt, make_drafter("static-skip", loaded.model),
                                              GenerationConfig(max_new_tokens=12))
        assert trace.generated == reference_greedy(loaded.model, prompt, 12)


def test_unsupported_architecture(tmp_path, tiny_model_dir):
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(tmp_path)
    copy_tokenizer(tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match=r"architecture 'gpt2' is not supported: the layer runner drives llama, qwen2, mistral"):
        load_model(str(tmp_path))


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(tmp_path))


def test_bad_device_and_dtype(tiny_model_dir):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda'"):
        load_model(tiny_model_dir, device="tpu")
    with pytest.raises(ValueError, match="dtype must be one of auto"):
        load_model(tiny_model_dir, dtype="int3")
