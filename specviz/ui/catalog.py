"""What the app offers per model: the model list, labels and descriptions, depth and chat
template (from the registry or a local config alone: no weights, no network), and the example
prompts that suit it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..models import DEFAULT_MODEL, HUB_ALLOWLIST, REGISTRY, unobtainable_reason

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
PROMPTS_DIR = ASSETS / "prompts"

# Models offered by default: the registry's targets (the default first), then small allowlisted
# hub models, which are offered only where they can load (in the hub cache, or the hub reachable).
DEFAULT_UI_MODELS = [DEFAULT_MODEL] + [n for n, i in REGISTRY.items() if not i.hidden and n != DEFAULT_MODEL]
HUB_UI_MODELS = [m for m in ("HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-Coder-0.5B") if m in HUB_ALLOWLIST]


def default_model_names() -> list[str]:
    """The app's model list: registry targets, then small allowlisted hub models (labelled
    "needs network" where they are not cached and the hub cannot be reached; choosing one then
    says so at once instead of trying a download)."""
    return list(DEFAULT_UI_MODELS) + list(HUB_UI_MODELS)


def first_obtainable(names: Sequence[str]) -> tuple[str, str]:
    """The first model in `names` that can load here, and a note when earlier ones cannot (e.g. a
    Space without the default model's wheel and without network falls back to specviz-tiny)."""
    skipped = []
    for name in names:
        reason = unobtainable_reason(name)
        if reason is None:
            note = " ".join(skipped) + (f" Running on {model_label(name)} instead." if skipped else "")
            return name, note.strip()
        skipped.append(f"⚠️ {reason}")
    return names[0], " ".join(skipped)


def model_label(name: str) -> str:
    info = REGISTRY.get(name)
    if info is not None:
        return info.label or info.name
    if name in HUB_ALLOWLIST and unobtainable_reason(name):
        return f"{name} (needs network)"
    return name


def num_layers(model: str) -> int | None:
    """Depth of a model from the registry or a local config.json alone (no weights, no network),
    or None if it cannot be known here."""
    info = REGISTRY.get(model)
    return info.num_layers if info is not None else _local_config_int(model, "num_hidden_layers")


def vocab_size(model: str) -> int | None:
    """Vocabulary size of a model, known the same way as `num_layers` (None if it cannot be)."""
    info = REGISTRY.get(model)
    return info.vocab_size if info is not None else _local_config_int(model, "vocab_size")


def _local_config_int(model: str, key: str) -> int | None:
    """An integer from the config.json of a local model folder, None for anything else."""
    try:
        if os.path.isdir(model):
            return int(json.loads((Path(model) / "config.json").read_text())[key])
    except Exception:  # noqa: BLE001 - the sliders simply keep their range
        return None
    return None


def has_chat_template(model: str) -> bool:
    """Whether prompts to `model` go through a chat template (registry: declared; folder: its files)."""
    info = REGISTRY.get(model)
    if info is not None:
        return info.chat
    folder = Path(model) if isinstance(model, str) and os.path.isdir(model) else None
    if folder is None:
        return False
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def model_markdown(model: str) -> str:
    """The line under the model dropdown: its description and depth."""
    layers = num_layers(model)
    info = REGISTRY.get(model)
    text = info.description if info else model
    if layers and not (info and str(layers) in info.description):
        text += f" · {layers} layers"
    return f"*{text}*"


@dataclass(frozen=True)
class Example:
    label: str
    prompt: str


def examples_for(model: str, directory: Path | None = None) -> list[Example]:
    """The example prompts that suit `model` (chat prompts, or code for specviz-tiny)."""
    info = REGISTRY.get(model)
    kind = info.prompts if info else ("chat" if has_chat_template(model) else "code")
    return load_examples((directory or PROMPTS_DIR) / f"{kind}.jsonl")


def load_examples(path: Path) -> list[Example]:
    out: list[Example] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
            prompt = obj["prompt"]
            label = obj.get("label") or prompt.strip().splitlines()[0][:48]
            out.append(Example(f"{label}: {short(prompt)}" if obj.get("label") else label, prompt))
    return out


def short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
