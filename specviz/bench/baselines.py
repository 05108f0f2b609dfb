"""The baselines that are not our engine: plain `model.generate()`, and transformers' own
assisted generation of the methods it shares with us (`assistant_early_exit`,
`prompt_lookup_num_tokens`, `assistant_model`), set up with the same settings as our drafter so
that "ours vs transformers" compares implementations, not settings.

The benchmark and every sweep time `generate()` through `generate_call`, so all of them measure
the same baseline call.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..sampling import SamplingConfig

# Our drafter -> transformers' assisted generation of the same method.
HF_COUNTERPART = {"early-exit": "hf:early-exit", "prompt-lookup": "hf:prompt-lookup", "draft-model": "hf:draft-model"}

# Our drafter -> the values of its options that transformers' counterpart always has (it has no
# setting for them): its n-gram search always goes down to 1-grams, it always drafts k tokens, and it
# searches the context only (no store of past answers).
HF_FIXED_SETTINGS: dict[str, dict[str, Any]] = {"prompt-lookup": {"min_ngram": 1, "length": "fixed", "answers": False}}
MATCHED_SUFFIX = "@hf"  # name suffix of our drafter run at the settings transformers can express

# (prompt ids, max_new_tokens, seed) -> the new tokens
TokensCall = Callable[[list[int], int, int], list[int]]


class NoCounterpart(ValueError):
    """transformers cannot run this drafter with these settings (the reason is the message)."""


@dataclass(frozen=True)
class AssistedGeneration:
    """How transformers runs one of our drafters' methods."""

    label: str  # the method's name in the report, e.g. "hf:early-exit"
    generate_kwargs: dict[str, Any]  # passed to model.generate()
    settings: dict[str, Any]  # what the report shows as this method's settings
    assistant: Any = None  # the model whose generation_config transformers reads the draft settings from
    assistant_config: dict[str, Any] = field(default_factory=dict)


def pad_token_id(model) -> int | None:
    """The model's pad token, else its (first) EOS token: what generate() pads with."""
    pad = model.generation_config.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return pad


@contextmanager
def generation_config_values(model, **values) -> Iterator[None]:
    """Set attributes of `model.generation_config` for one call, then restore them.
    transformers reads the assistant's draft length / schedule / confidence threshold from the
    *assistant model's* generation config, not from the `generate()` kwargs."""
    config = model.generation_config
    old = {key: getattr(config, key, None) for key in values}
    for key, value in values.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            setattr(config, key, value)


def _sampling_kwargs(sampling: SamplingConfig) -> dict[str, Any]:
    if sampling.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}


def generate_call(model, device: torch.device, sampling: SamplingConfig | None = None,
                  assisted: AssistedGeneration | None = None) -> TokensCall:
    """A call of `model.generate()` on one prompt (batch size 1, no padding), greedy unless
    `sampling` says otherwise (draws seeded per call), optionally as transformers' assisted generation."""
    sampling = sampling or SamplingConfig()
    pad = pad_token_id(model)
    kwargs = {**_sampling_kwargs(sampling), **(assisted.generate_kwargs if assisted else {})}
    assistant = assisted.assistant if assisted else None

    def call(ids: list[int], max_new: int, seed: int) -> list[int]:
        input_ids = torch.tensor([ids], device=device)
        if not sampling.greedy:
            torch.manual_seed(seed)
        with (generation_config_values(assistant, **assisted.assistant_config) if assistant is not None
              else nullcontext()):
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
                                 pad_token_id=pad, **kwargs)
        return out[0, len(ids):].tolist()
    return call


def greedy_generate(model, ids: list[int], max_new: int) -> list[int]:
    """`model.generate()`'s greedy continuation of `ids` (the sweeps' reference and baseline)."""
    return generate_call(model, model.device)(ids, max_new, 0)


def settings_transformers_lacks(drafter: str, settings: dict[str, Any]) -> dict[str, Any]:
    """{option: the value transformers always uses} for each of `settings` transformers cannot
    express (empty: transformers can run `drafter` with exactly these settings)."""
    fixed = HF_FIXED_SETTINGS.get(drafter, {})
    return {key: value for key, value in fixed.items() if settings.get(key, value) != value}


def assisted_generation(drafter: str, settings: dict[str, Any], options: dict[str, Any],
                        model) -> AssistedGeneration:
    """transformers' assisted generation with `drafter`'s settings (the drafter must be in
    HF_COUNTERPART); raises NoCounterpart when transformers cannot use those settings."""
    label = HF_COUNTERPART[drafter]
    lacking = settings_transformers_lacks(drafter, settings)
    if lacking:
        wanted = ", ".join(f"{key}={value!r}" for key, value in lacking.items())
        raise NoCounterpart(f"transformers' {drafter} has no setting for this: it always runs with {wanted}")
    if drafter == "prompt-lookup":
        kwargs = {"prompt_lookup_num_tokens": settings["k"], "max_matching_ngram_size": settings["max_ngram"]}
        return AssistedGeneration(label, kwargs, kwargs)
    assistant_config = {
        "num_assistant_tokens": settings["k"], "num_assistant_tokens_schedule": "constant",
        "assistant_confidence_threshold": float(settings.get("threshold", 0.0)),
    }
    if drafter == "early-exit":
        kwargs = {"assistant_early_exit": settings["exit_layer"]}
        return AssistedGeneration(label, kwargs, dict(kwargs, **assistant_config), model, assistant_config)
    draft = options["draft_model"]  # draft-model
    return AssistedGeneration(label, {"assistant_model": draft},
                              dict({"assistant_model": settings.get("draft_model", "")}, **assistant_config),
                              draft, assistant_config)
