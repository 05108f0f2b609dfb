"""The bundled offline models in assets/models load offline and behave sanely (issue #3)."""

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "assets" / "models" / "specviz-tiny"
DRAFT = ROOT / "assets" / "models" / "specviz-tiny-draft"

PROMPT = "def add(a, b):\n    return"

SNIPPETS = [
    "def f(x):\n\treturn x\n",
    "class A:\n    def __init__(self):\n        self.x = 1\n\n\n\n    def g(self):  # comment\n        pass\n",
    "s = 'héllo wörld ✓ 中文 🙂'\nprint(s)\n",
    "\n\n   \n\t\t\n",
    "if a:\r\n    b = {'k': [1, 2.5e-3, None]}\r\n",
    "x = f'{a!r:>10}'  \\\n    + \"\"\"doc\n  string\"\"\"\n",
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(BASE), local_files_only=True)


def _load(path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    return m.eval()


@pytest.fixture(scope="module")
def base():
    return _load(BASE)


def test_files_present_and_small():
    for d in (BASE, DRAFT):
        for fn in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "MODEL_CARD.md", "eval_heldout.json", "training_meta.json"):
            assert (d / fn).is_file(), d / fn
        shards = list(d.glob("*.safetensors"))
        assert shards
        assert all(s.stat().st_size <= 15_000_000 for s in shards)
    total = sum(s.stat().st_size for d in (BASE, DRAFT) for s in d.glob("*.safetensors"))
    assert total <= 60_000_000


def test_config(base, tok):
    c = base.config
    assert c.model_type == "llama"
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (16, 256, 4, 4)
    assert c.vocab_size == len(tok) == 8192
    assert c.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert next(base.parameters()).dtype == torch.float32


@pytest.mark.parametrize("text", SNIPPETS)
def test_tokenizer_roundtrip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_tokenizer_specials(tok):
    assert [tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2, 3]


def test_greedy_generation(base, tok):
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False)
    n = ids["input_ids"].shape[1]
    with torch.no_grad():
        out = base.generate(**ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert out.shape == (1, n + 16)
    new = out[0, n:].tolist()
    assert len(set(new)) >= 3, new  # not a single repeated token
    text = tok.decode(new)
    assert text.strip(), repr(text)
    # the model should have learned something about Python: the prompt's next token is likely code
    with torch.no_grad():
        logits = base(**ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    assert torch.softmax(logits, -1).max() > 0.05


def test_heldout_loss_decreases_with_depth():
    ev = json.loads((BASE / "eval_heldout.json").read_text())
    losses = [e["loss"] for e in sorted(ev["per_exit"], key=lambda e: e["exit_layer"])]
    assert len(losses) == 16
    assert losses[-1] < 3.5  # final exit (nats/token on held-out stdlib modules)
    assert losses[0] > losses[3] > losses[7] > losses[15]
    # essentially monotone: no exit is much worse than the one before it
    assert all(b <= a + 0.02 for a, b in zip(losses, losses[1:]))
    assert losses[7] < losses[0] - 1.0  # early exits make real predictions


def test_draft_model(tok):
    d = _load(DRAFT)
    assert d.config.num_hidden_layers == 3 and d.config.vocab_size == 8192
    from transformers import AutoTokenizer

    dtok = AutoTokenizer.from_pretrained(str(DRAFT), local_files_only=True)
    assert dtok.get_vocab() == tok.get_vocab()
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = d.generate(**ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8
    ev = json.loads((DRAFT / "eval_heldout.json").read_text())
    assert ev["final_loss"] < 4.0


def test_training_pipeline_cpu_smoke(tmp_path):
    """corpus -> tokenizer -> train_lm (tiny, CPU, a few steps, resume) -> export -> eval, end to end."""
    from specviz.train import corpus, tokenizer, train_lm

    src = tmp_path / "stdlib"
    (src / "json").mkdir(parents=True)
    (src / "test").mkdir()
    body = "def f{i}(x, y=1):\n\t'''Doc ✓.'''\n    return [x + y * {i} for _ in range(3)]\n\n\nclass C{i}:\n    pass\n"
    for i in range(12):
        (src / f"mod{i}.py").write_text(body.format(i=i) * 20)
    (src / "mod99.py").write_text(body.format(i=99) * 20)  # lands in the val split (path hash)
    (src / "bisect.py").write_text(body.format(i=7) * 10)  # held out
    (src / "json" / "__init__.py").write_text(body.format(i=8) * 10)  # held out (package)
    (src / "test" / "test_bisect.py").write_text("x = 1\n")  # excluded
    (src / "site-packages").mkdir()
    (src / "site-packages" / "ignored.py").write_text("y = 2\n")
    data = tmp_path / "data"
    m = corpus.build(data, src)
    assert m["splits"]["heldout"]["files"] == ["bisect.py", "json/__init__.py"]
    assert m["splits"]["val"]["files"] == ["mod99.py"]
    assert m["excluded_tests_of_heldout"] == ["test/test_bisect.py"]
    assert all("site-packages" not in f for s in m["splits"].values() for f in s["files"])
    tokenizer.main(["--data", str(data), "--vocab-size", "300"])
    out = tmp_path / "run"
    tiny = ["--data", str(data), "--out", str(out), "--device", "cpu", "--n-layers", "3", "--hidden", "32",
            "--intermediate", "64", "--heads", "2", "--kv-heads", "2", "--batch-size", "2", "--seq-len", "32",
            "--eval-every", "2", "--ckpt-every", "2", "--log-every", "1", "--warmup", "1", "--val-tokens", "64"]
    train_lm.main(["--preset", "base", "--steps", "2"] + tiny)
    train_lm.main(["--preset", "base", "--steps", "4", "--resume"] + tiny)
    meta = json.loads((out / "export" / "training_meta.json").read_text())
    assert meta["steps"] == 4
    ev = json.loads((out / "export" / "eval_heldout.json").read_text())
    assert [e["exit_layer"] for e in ev["per_exit"]] == [1, 2, 3]
    assert all(0 < e["loss"] < 10 for e in ev["per_exit"])
    assert (out / "export" / "tokenizer.json").is_file()
    train_lm.main(["--card", str(out / "export"), "--data", str(data)])
    card = (out / "export" / "MODEL_CARD.md").read_text()
    assert "| 3 |" in card and "def nlargest" in card and "python -m specviz.train.train_lm --preset base" in card
