"""`AppConfig`: what the handlers need to know about the app they serve (the model list, limits,
device, export folder, load status, examples), built once by `build_app` and bound to each
handler, so a handler is a plain function a test can call with a config of its own."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .catalog import Example, default_model_names, examples_for, first_obtainable, short
from .controls import Control, drafter_names, spec_for
from .loading import LoadStatus

MAX_NEW_TOKENS_LIMIT = 512
DEFAULT_MAX_NEW_TOKENS = 96
PLOT_EVERY = 8  # steps between streamed plot updates (the final update always draws)


def _export_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="specviz-export-"))


@dataclass
class AppConfig:
    """What `build_app`'s arguments settle for every event of one app."""

    model_names: list[str]  # the allowlist the model dropdown offers; handlers refuse any other name
    default_model: str
    load_status: LoadStatus = field(default_factory=LoadStatus)
    drafters: list[str] = field(default_factory=drafter_names)
    max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT
    default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    device: str | None = None
    dtype: str | None = None
    plot_every: int = PLOT_EVERY
    examples: list[str] | None = None  # given by the caller: the same prompts for every model
    export_dir: Path = field(default_factory=_export_dir)

    def __post_init__(self) -> None:
        if self.default_model not in self.model_names:
            raise ValueError(f"default_model {self.default_model!r} is not in model_names {self.model_names}")
        self.max_new_tokens_limit = int(self.max_new_tokens_limit)
        self.default_max_new_tokens = min(int(self.default_max_new_tokens), self.max_new_tokens_limit)

    @classmethod
    def create(cls, model_names: Sequence[str] | None = None, default_model: str | None = None,
               **settings) -> AppConfig:
        """The default model list where none is given, and the first model that can load here as
        the default where none is named (the status line says why earlier ones cannot)."""
        names = list(model_names) if model_names else default_model_names()
        status = LoadStatus()
        if default_model is None:
            default_model, status.fallback = first_obtainable(names)
            status.set(status.fallback)
        return cls(names, default_model, status, **settings)

    def known_model(self, model: object) -> str:
        """`model` if the app offers it, else the default (nothing is looked up for other names)."""
        return model if isinstance(model, str) and model in self.model_names else self.default_model

    def examples_of(self, model: str) -> list[Example]:
        if self.examples is not None:
            return [Example(short(p), p) for p in self.examples]
        return examples_for(model)

    def control_keys(self) -> list[tuple[str, Control]]:
        """Every (drafter, control) pair in a fixed order: the keyword inputs of the model events."""
        return [(d, c) for d in self.drafters for c in spec_for(d).controls]
