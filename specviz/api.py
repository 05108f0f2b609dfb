"""The front door for the CLI, the UI and the benchmark: load models once, build a drafter by
name with its options, tokenize a prompt, start a generation.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from .drafters import DRAFTERS, PART_TEXT, Drafter, make_drafter
from .engine import Engine, Generation, GenerationConfig
from .models import REGISTRY, LoadedModel, Progress, load_model
from .sampling import SamplingConfig

_load_lock = threading.Lock()


_loaded: dict[tuple, LoadedModel] = {}
MAX_LOADED = 4


def get_model(name: str, device: str | None = None, dtype: str | None = None,
              progress: Progress | None = None) -> LoadedModel:
    """Load (once per process) and return a model with its tokenizer. `progress` hears the slow
    stages of a first load (e.g. converting the default model's GGUF)."""
    key = (name, device, dtype)
    info = REGISTRY.get(name)
    donor = get_model(info.embeddings_from, device, dtype, progress) if info and info.embeddings_from else None
    with _load_lock:
        if key not in _loaded:
            if len(_loaded) >= MAX_LOADED:
                _loaded.pop(next(iter(_loaded)))
            _loaded[key] = load_model(name, device=device, dtype=dtype, progress=progress)
            if donor is not None:
                share_embeddings(_loaded[key].model, donor.model)
        return _loaded[key]


def share_embeddings(draft, target) -> None:
    """A draft model stored without embeddings / LM head uses the target's (the same tensors)."""
    draft.model.embed_tokens = target.model.embed_tokens
    draft.lm_head = target.lm_head


def is_loaded(name: str, device: str | None = None, dtype: str | None = None) -> bool:
    return (name, device, dtype) in _loaded


@lru_cache(maxsize=4)
def _engine(name: str, device: str | None, dtype: str | None) -> Engine:
    loaded = get_model(name, device, dtype)
    return Engine(loaded.model, name=name)


def get_engine(name: str, device: str | None = None, dtype: str | None = None) -> Engine:
    return _engine(name, device, dtype)


def encode(loaded: LoadedModel, prompt: str, chat: bool = True) -> list[int]:
    """Token ids for `prompt`. With `chat` and a model that has a chat template, the prompt is
    sent as one user message through the template (with the assistant turn opened); otherwise
    the raw text is tokenized as is."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must not be empty")
    if chat and loaded.has_chat_template:
        ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = loaded.tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError("prompt must not be empty (it encodes to no tokens)")
    return [int(i) for i in ids]


def decode(loaded: LoadedModel, ids: list[int]) -> str:
    return loaded.tokenizer.decode(ids, skip_special_tokens=False)


def drafter_defaults(model: str, drafter: str) -> dict[str, Any]:
    """The options a registry model sets for `drafter` (from its recorded sweep); {} otherwise."""
    info = REGISTRY.get(model)
    return dict(info.drafter_defaults().get(drafter, {})) if info else {}


def missing_part(drafter: str, model: str, options: dict[str, Any] | None = None) -> str | None:
    """Why `drafter` would only run uselessly on registry model `model`, or None if it fits.
    Models outside the registry are not judged (the user chose them)."""
    info = REGISTRY.get(model)
    declared = DRAFTERS.get(drafter)
    need = declared.part_needed(options or {}) if declared else None
    if info is None or need is None:
        return None
    if need == "draft-model" and info.draft_model:  # the model names its own draft model
        return None
    if need in info.parts:
        return None
    trained = [name for name, other in REGISTRY.items() if need in other.parts and not other.hidden]
    elsewhere = f"try it on {' or '.join(trained)} (trained for it), or " if trained else ""
    return (f"drafter {drafter!r} needs {PART_TEXT[need]}, which {model} does not have yet, so it would only slow "
            f"decoding down; {elsewhere}pick clasp, static-skip or prompt-lookup")


def check_fits(drafter: str, loaded: LoadedModel, options: dict[str, Any]) -> None:
    reason = missing_part(drafter, loaded.name, options)
    if reason:
        raise ValueError(reason)


def build_drafter(drafter: str, loaded: LoadedModel, options: dict[str, Any] | None = None,
                  device: str | None = None, dtype: str | None = None, swept_defaults: bool = True) -> Drafter:
    """`make_drafter` plus what needs loading: the draft model of the draft-model drafter.
    Options not given take the model's swept defaults (`swept_defaults`), else the drafter's own."""
    options = {**(drafter_defaults(loaded.name, drafter) if swept_defaults else {}), **(options or {})}
    check_fits(drafter, loaded, options)
    if drafter == "draft-model" and "draft_model" not in options:
        info = REGISTRY.get(loaded.name)
        draft_name = options.pop("draft_model_name", None) or (info.draft_model if info else None)
        if draft_name is None:
            raise ValueError(f"drafter 'draft-model' needs --draft-model: {loaded.name!r} has no default draft model")
        draft = get_model(draft_name, device, dtype)
        options["draft_model"] = draft.model
        options["model_name"] = draft_name
    return make_drafter(drafter, loaded.model, **options)


def start(model: str, drafter: str, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
          top_p: float = 1.0, top_k: int = 0, seed: int = 0, options: dict[str, Any] | None = None,
          device: str | None = None, dtype: str | None = None, stop: threading.Event | None = None,
          record: bool = True, chat: bool = True, progress: Progress | None = None,
          adaptive_length: bool = False) -> tuple[LoadedModel, Generation]:
    """Validate everything, then return the model and a ready-to-iterate `Generation`
    (`adaptive_length`: each step's draft length from the cost model, see `specviz.draft_length`)."""
    loaded = get_model(model, device, dtype, progress=progress)
    sampling = SamplingConfig(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed))
    ids = encode(loaded, prompt, chat=chat)
    built = build_drafter(drafter, loaded, options, device, dtype)
    engine = get_engine(model, device, dtype)
    config = GenerationConfig(max_new_tokens=max_new_tokens, sampling=sampling, record=record,
                              adaptive_length=adaptive_length)
    return loaded, engine.start(ids, built, config, stop=stop)


def reference_margin(loaded: LoadedModel, ids: list[int]) -> tuple[float, float]:
    """(top-1 minus top-2 logit, top-1 logit) of the model's next token after `ids`, from one
    plain forward pass: how close to a tie the reference's choice there was."""
    import torch

    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids], device=loaded.device)).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1]), float(top[0])
