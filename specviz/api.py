"""The front door for the CLI, the UI and the benchmark: load models once, build a drafter by
name with its options, tokenize a prompt, start a generation.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from .drafters import Drafter, make_drafter
from .engine import Engine, Generation, GenerationConfig
from .models import DEFAULT_DRAFT, LoadedModel, load_model
from .sampling import SamplingConfig

_load_lock = threading.Lock()


@lru_cache(maxsize=4)
def _cached(name: str, device: str | None, dtype: str | None) -> LoadedModel:
    return load_model(name, device=device, dtype=dtype)


def get_model(name: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load (once per process) and return a model with its tokenizer."""
    with _load_lock:
        return _cached(name, device, dtype)


@lru_cache(maxsize=4)
def _engine(name: str, device: str | None, dtype: str | None) -> Engine:
    loaded = get_model(name, device, dtype)
    return Engine(loaded.model, name=name)


def get_engine(name: str, device: str | None = None, dtype: str | None = None) -> Engine:
    return _engine(name, device, dtype)


def encode(loaded: LoadedModel, prompt: str) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must not be empty")
    ids = loaded.tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError("prompt must not be empty (it encodes to no tokens)")
    return list(ids)


def decode(loaded: LoadedModel, ids: list[int]) -> str:
    return loaded.tokenizer.decode(ids, skip_special_tokens=False)


def build_drafter(drafter: str, loaded: LoadedModel, options: dict[str, Any] | None = None,
                  device: str | None = None, dtype: str | None = None) -> Drafter:
    """`make_drafter` plus what needs loading: the draft model of the draft-model drafter."""
    options = dict(options or {})
    if drafter == "draft-model" and "draft_model" not in options:
        draft_name = options.pop("draft_model_name", None) or DEFAULT_DRAFT.get(loaded.name)
        if draft_name is None:
            raise ValueError(f"drafter 'draft-model' needs --draft-model: {loaded.name!r} has no default draft model")
        draft = get_model(draft_name, device, dtype)
        options["draft_model"] = draft.model
        options["model_name"] = draft_name
    return make_drafter(drafter, loaded.model, **options)


def start(model: str, drafter: str, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
          top_p: float = 1.0, top_k: int = 0, seed: int = 0, options: dict[str, Any] | None = None,
          device: str | None = None, dtype: str | None = None, stop: threading.Event | None = None,
          record: bool = True) -> tuple[LoadedModel, Generation]:
    """Validate everything, then return the model and a ready-to-iterate `Generation`."""
    loaded = get_model(model, device, dtype)
    sampling = SamplingConfig(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed))
    ids = encode(loaded, prompt)
    built = build_drafter(drafter, loaded, options, device, dtype)
    engine = get_engine(model, device, dtype)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling, record=record)
    return loaded, engine.start(ids, built, config, stop=stop)
