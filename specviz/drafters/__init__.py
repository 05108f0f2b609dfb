"""Drafters, one module each, all behind the protocol in `base.py`. Each module declares itself
once (`DRAFTER = Declaration(...)`, see `registry.py`); importing this package registers them,
and `make_drafter` builds one by name."""

from __future__ import annotations

import importlib

from .base import DecodeState, Draft, Drafter, Reuse, VerifyResult
from .registry import DRAFTERS, Declaration, Option, drafter_options, make_drafter, register, unregister

# Registration order is the CLI's and the benchmark's order. A module that is absent from a build
# is skipped (the UI then shows its drafter as not available).
MODULES = ("autoregressive", "static_skip", "early_exit", "draft_model", "prompt_lookup", "clasp", "hispec", "ctc",
           "eagle", "lookup_then")

for _module in MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__name__}.{_module}":
            raise
        continue
    register(_mod.DRAFTER)


# The trained parts a drafter may need (`Declaration.needs`), in words.
PART_TEXT: dict[str, str] = {
    "early-exit": "a model trained to exit early, or trained exit adapters (its intermediate layers must predict "
                  "the next token through the shared head)",
    "ctc-head": "a CTC draft head trained for this model",
    "medusa-head": "a Medusa draft head trained for this model",
    "draft-model": "a small draft model with this model's tokenizer",
    "eagle-head": "an EAGLE head trained for this model (one layer over its last hidden states)",
}


__all__ = ["DRAFTERS", "PART_TEXT", "Declaration", "Option", "drafter_options", "DecodeState", "Draft", "Drafter",
           "Reuse", "VerifyResult", "make_drafter", "register", "unregister"]
