import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The default model's converted copy goes to a fresh cache per test session, so the run tests the
# GGUF -> cache conversion from scratch and never touches the user's cache (~20 s, once).
# pytest-xdist's workers inherit the variable from the main process, so they share that cache.
if "SPECVIZ_CACHE_DIR" not in os.environ:
    os.environ["SPECVIZ_CACHE_DIR"] = tempfile.mkdtemp(prefix="specviz-test-cache-")
    os.environ["SPECVIZ_TEST_SESSION_CACHE"] = os.environ["SPECVIZ_CACHE_DIR"]  # fresh: this run converts into it

# Under pytest-xdist (`-n auto`, the default in pyproject.toml) every core runs its own worker, so
# each worker keeps to one torch thread: the tiny test models gain nothing from a second thread
# (measured: the same wall time at twice the CPU), and two workers of two threads would contend.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    torch.set_num_threads(1)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + a small byte-level BPE tokenizer saved like a hub checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny import tiny_model

    path = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "class Foo:\n    pass\n"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 pad_token="<pad>")
    hf.save_pretrained(path)
    model = tiny_model("llama", seed=0, num_layers=6, vocab=320, damp={2: 0.1, 3: 0.1, 4: 0.1})
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct through the registry: the first load converts the wheel's GGUF into
    the session's cache. Returns (loaded model, how the first load resolved)."""
    from specviz import api
    from specviz.models import SMOLLM2, SMOLLM2_GGUF

    if SMOLLM2_GGUF.locate() is None:
        pytest.fail(f"the default model's wheel is not installed: {SMOLLM2_GGUF.install}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = api.get_model(SMOLLM2, "cpu")
    return loaded
