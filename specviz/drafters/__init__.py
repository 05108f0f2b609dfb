"""Drafters, one module each, all behind the protocol in `base.py`; `make_drafter` builds one by name."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from transformers import PreTrainedModel

from .autoregressive import Autoregressive
from .base import DecodeState, Draft, Drafter, Reuse, VerifyResult
from .draft_model import DraftModel
from .early_exit import EarlyExit
from .prompt_lookup import PromptLookup
from .static_skip import StaticSkip

Factory = Callable[..., Drafter]


def _ar(target, **opts):
    return Autoregressive(**opts)


def _static(target, **opts):
    return StaticSkip(target.config.num_hidden_layers, **opts)


def _early(target, **opts):
    return EarlyExit(target.config.num_hidden_layers, **opts)


def _draft_model(target, draft_model: PreTrainedModel | None = None, **opts):
    if draft_model is None:
        raise ValueError("drafter 'draft-model' needs a draft model (--draft-model NAME)")
    return DraftModel(draft_model, target.config.vocab_size, **opts)


def _prompt_lookup(target, **opts):
    return PromptLookup(**opts)


DRAFTERS: dict[str, Factory] = {
    "ar": _ar,
    "static-skip": _static,
    "early-exit": _early,
    "draft-model": _draft_model,
    "prompt-lookup": _prompt_lookup,
}


def register(name: str, factory: Factory) -> None:
    DRAFTERS[name] = factory


# Where each built-in drafter's options are declared (its constructor); other registered
# drafters are read from their factory's signature.
_OPTION_SIGNATURES: dict[str, Callable] = {
    "ar": Autoregressive, "static-skip": StaticSkip, "early-exit": EarlyExit, "draft-model": DraftModel,
    "prompt-lookup": PromptLookup,
}
_NOT_OPTIONS = {"self", "target", "num_layers", "draft_model", "target_vocab_size"}


def drafter_options(name: str) -> frozenset[str]:
    """The option names drafter `name` takes (the draft-model drafter also takes
    `draft_model_name`, which the API resolves to a model)."""
    source = _OPTION_SIGNATURES.get(name) or DRAFTERS[name]
    params = inspect.signature(source).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - _NOT_OPTIONS
    if name == "draft-model":
        names.add("draft_model_name")
    return frozenset(names)


# Drafters that live in their own modules and export `NAME` and `build(target, **options)`.
for _module in ("clasp", "hispec", "ctc"):
    try:
        _mod = importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__name__}.{_module}":
            raise
        continue
    register(_mod.NAME, _mod.build)
    _OPTION_SIGNATURES[_mod.NAME] = getattr(_mod, "OPTIONS_FROM", _mod.build)


# What a drafter needs from a model beyond its weights, named as in `models.ModelInfo.parts`
# (the CTC drafter's need depends on its `head` option: "ctc-head" or "medusa-head").
NEEDS: dict[str, str] = {"early-exit": "early-exit", "hispec": "early-exit", "ctc": "ctc-head",
                         "draft-model": "draft-model"}
PART_TEXT: dict[str, str] = {
    "early-exit": "a model trained to exit early (its intermediate layers must predict through the shared head)",
    "ctc-head": "a CTC draft head trained for this model",
    "medusa-head": "a Medusa draft head trained for this model",
    "draft-model": "a small draft model with this model's tokenizer",
}


def make_drafter(name: str, target: PreTrainedModel, **options: Any) -> Drafter:
    """Build drafter `name` for `target`. Unknown names and bad options raise ValueError."""
    if name not in DRAFTERS:
        raise ValueError(f"unknown drafter {name!r}: choose one of {', '.join(DRAFTERS)}")
    try:
        return DRAFTERS[name](target, **options)
    except TypeError as err:  # an option this drafter does not take
        raise ValueError(f"bad option for drafter {name!r}: {err}") from None


__all__ = ["DRAFTERS", "NEEDS", "PART_TEXT", "drafter_options", "DecodeState", "Draft", "Drafter", "Reuse", "VerifyResult", "make_drafter", "register"]
