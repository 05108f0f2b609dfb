"""Tiny random models for tests (Llama, Qwen2, Mistral), and the losslessness check."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ARCHS = ("llama", "qwen2", "mistral")
EOS = 2


def tiny_config(arch: str = "llama", num_layers: int = 6, vocab: int = 256, hidden: int = 64, **extra):
    kwargs = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=False,
    )
    if arch == "mistral":
        kwargs["sliding_window"] = extra.pop("sliding_window", 4096)
    kwargs.update(extra)
    return AutoConfig.for_model(arch, **kwargs)


def tiny_model(arch: str = "llama", seed: int = 0, num_layers: int = 6, damp: dict[int, float] | None = None,
               attn: str = "sdpa", **config_extra):
    """A random model. `damp` {layer: scale} scales a layer's output projections so that it
    changes the residual stream little (scale 0 = exact identity): layer-skip drafts then get
    real acceptance, as in a trained model."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, num_layers, **config_extra), attn_implementation=attn)
    # larger logits than the default init so argmax margins are far above float noise
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        for layer, scale in (damp or {}).items():
            model.model.layers[layer].self_attn.o_proj.weight.mul_(scale)
            model.model.layers[layer].mlp.down_proj.weight.mul_(scale)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = 0
    return model.eval()


def random_prompt(seed: int, length: int = 12, vocab: int = 256, repeat: bool = False) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (length,), generator=g).tolist()
    if repeat:  # give prompt lookup something to find
        ids = ids + ids[: length // 2] + ids
    return ids


@torch.no_grad()
def reference_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=EOS, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def top2_margin(model, ids: list[int]) -> float:
    """Top-1 minus top-2 logit of the next token after `ids` (full forward, no cache)."""
    logits = model(torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def assert_lossless(model, prompt: list[int], ours: list[int], ref: list[int], tol: float = 1e-5) -> None:
    """`ours` must equal `ref` token for token; a divergence is allowed only where the reference's
    top-2 logit margin is below `tol` (a genuine numerical near-tie)."""
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            margin = top2_margin(model, prompt + ref[:i])
            assert margin < tol, f"diverged at new token {i}: ours {a} vs generate {b}, margin {margin:.3g}"
            return
    assert len(ours) == len(ref), f"length differs: ours {len(ours)} vs generate {len(ref)}"


def random_draft_parts(model, folder, exits, seed: int = 0, scale: float = 0.5) -> None:
    """Give `model` random exit adapters at `exits` and a random token ranking, saved in `folder`
    as a model's trained parts are (the drafters find them through `specviz_assets`)."""
    from safetensors.torch import save_file

    from specviz.drafters.draft_heads import VOCAB_FILE, ExitAdapter, save_adapters

    torch.manual_seed(seed)
    cfg = model.config
    adapters = {}
    for e in exits:
        adapter = ExitAdapter(cfg.hidden_size, 2 * cfg.hidden_size, cfg.rms_norm_eps)
        torch.nn.init.normal_(adapter.down.weight, std=scale / cfg.hidden_size ** 0.5)  # not the identity
        adapters[e] = adapter
    save_adapters(adapters, folder / "exit_adapters.safetensors", {"random": True})
    rank = torch.randperm(cfg.vocab_size, generator=torch.Generator().manual_seed(seed)).int()
    save_file({"rank": rank}, str(folder / VOCAB_FILE))
    model.specviz_assets = str(folder)


def count_calls(monkeypatch, owner, name: str) -> list[int]:
    """Replace `owner.name` by a wrapper that counts its calls; returns the counter ([n])."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def engine_alone_runs(calls: list[int], model, engine, seeds: range, max_new: int, k: int, what: str) -> list:
    """Prompt lookup (draft length `k`) on each seed's repeating prompt: `generate()` never calls
    `what` (the counter `calls` stays), the engine does (it grows), and its output equals
    `generate()`'s. Returns the engine's traces."""
    from specviz.drafters.prompt_lookup import PromptLookup
    from specviz.engine import GenerationConfig

    traces = []
    for seed in seeds:
        prompt = random_prompt(seed, repeat=True)
        before = calls[0]
        expected = reference_greedy(model, prompt, max_new)
        assert calls[0] == before, f"generate() ran {what}"
        traces.append(engine.generate(prompt, PromptLookup(k=k), GenerationConfig(max_new_tokens=max_new)))
        assert traces[-1].generated == expected
        assert calls[0] > before, f"the engine did not run {what}"
    return traces
