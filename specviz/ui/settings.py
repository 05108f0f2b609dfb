"""One request's settings, validated: every event that runs the model starts here, so bad input
becomes one readable `gr.Error` before anything loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..sampling import MIN_TEMPERATURE
from .config import AppConfig
from .controls import (available, check_ranges, options_from_values, param_name, parse_extra, spec_for,
                       unavailable_message)
from .errors import as_float, as_int, user_error


@dataclass
class RunSettings:
    model: str
    prompt: str
    drafter: str
    options: dict[str, Any]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    chat: bool = True  # through the model's chat template (when it has one)
    adaptive_length: bool = False  # each step's draft length from the cost model (specviz.draft_length)

    def key(self) -> tuple:
        return (self.model, self.prompt, self.drafter, json.dumps(self.options, sort_keys=True, default=str),
                self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.seed, self.chat,
                self.adaptive_length)


def check_sampling(config: AppConfig, max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any,
                   seed: Any) -> tuple[int, float, float, int, int]:
    """(max_new_tokens, temperature, top_p, top_k, seed), each checked, in RunSettings' order."""
    max_new = as_int("max_new_tokens", max_new_tokens, 1, config.max_new_tokens_limit)
    temperature = as_float("temperature", temperature)
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= 10.0):
        raise user_error(f"temperature must be between 0 (greedy) and 10, and at least {MIN_TEMPERATURE} when "
                         f"sampling, got {temperature}")
    top_p = as_float("top_p", top_p)
    if not 0.0 < top_p <= 1.0:
        raise user_error(f"top_p must be in (0, 1], got {top_p}")
    return max_new, temperature, top_p, as_int("top_k", top_k, 0), as_int("seed", seed, 0, 2**31 - 1)


def check_flag(opts: dict[str, Any], name: str, default: bool) -> bool:
    """A checkbox's value (`default` when the request leaves it out)."""
    value = opts.get(name, default)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise user_error(f"{name} must be true or false, got {value!r}")
    return value


def drafter_options(config: AppConfig, drafter: str, extra_options: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """The drafter's options from its panel's values (keyword inputs) and the extra-options JSON."""
    values = {c.kwarg: opts.get(param_name(drafter, c.kwarg), c.default) for c in spec_for(drafter).controls}
    values.update(parse_extra(drafter, extra_options))
    try:
        options = options_from_values(drafter, values, config.model_names)
        check_ranges(drafter, options)
    except ValueError as err:
        raise user_error(f"Bad option for {drafter}: {err}") from None
    return options


def settings_from(config: AppConfig, model: Any, prompt: Any, drafter: Any, max_new_tokens: Any, temperature: Any,
                  top_p: Any, top_k: Any, seed: Any, extra_options: Any, opts: dict[str, Any]) -> RunSettings:
    """Validate one request (the inputs of /run, /step and /compare) into RunSettings."""
    names = config.model_names
    if not isinstance(model, str) or model not in names:
        raise user_error(f"Unknown model {model!r}: choose one of {', '.join(names)}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise user_error("Prompt must not be empty: type a prompt or pick an example.")
    if drafter not in config.drafters:
        raise user_error(f"Unknown drafter {drafter!r}: choose one of {', '.join(config.drafters)}.")
    if not available(drafter):
        raise user_error(unavailable_message(drafter))
    sampling = check_sampling(config, max_new_tokens, temperature, top_p, top_k, seed)
    chat = check_flag(opts, "chat", True)
    adaptive = check_flag(opts, "adaptive_length", False)
    options = drafter_options(config, drafter, extra_options, opts)
    return RunSettings(model, prompt, drafter, options, *sampling, chat, adaptive)
