"""The drafter panels: one control per option a drafter declares for the panel (see
`specviz.drafters.registry`), the values a request carries for them, and their validation.

Every UI parameter of a drafter option is named `param_name(drafter, option)`, e.g.
``static_skip_k`` or ``clasp_dp_interval``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .. import api
from ..drafters import DRAFTERS, Option
from ..models import REGISTRY
from .catalog import num_layers, vocab_size
from .errors import fmt_num, parse_int, user_error

# The dropdown's order (a presentation choice: plain decoding, then the model's own layers, then
# outside help). Named drafters show even when their module is absent from a build ("not
# available"); any other registered drafter follows in registration order.
DRAFTER_ORDER = ["ar", "static-skip", "early-exit", "clasp", "hispec", "ctc", "eagle", "draft-model", "prompt-lookup",
                 "lookup-then-head"]

# the preferred first drafter (a layer-skip one shows the most), if it fits the model
INITIAL_DRAFTERS = ("static-skip", "clasp", "prompt-lookup")

MAX_EXTRA_CHARS = 2000


@dataclass(frozen=True)
class Control:
    """One panel control: a drafter option as the panel shows it (`kwarg` is the factory's keyword)."""

    kwarg: str
    kind: str  # "int" | "float" | "choice" | "bool" | "text" | "model" | "layer"
    label: str
    default: Any  # the panel's start value
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    info: str = ""
    capped_by_vocab: bool = False  # the slider ends at the model's vocabulary where it is known

    @classmethod
    def of(cls, option: Option) -> Control:
        return cls(option.name, option.kind, option.label, option.panel_default, option.minimum, option.maximum,
                   option.step, option.choices, option.info, option.capped_by_vocab)


LAYER_MAXIMUM = 15  # a layer slider's end where the model's depth is unknown (a 16-layer model)


def slider_maximum(c: Control, model: str) -> float | None:
    """Where control `c`'s slider ends on `model`: a layer at its last layer, a vocabulary-capped
    count at its vocabulary (the declared cap where unknown); None: the slider keeps its range."""
    if c.kind == "layer":
        layers = num_layers(model)
        return max(1, layers - 1) if layers else None
    if c.capped_by_vocab:
        return vocab_size(model) or c.maximum
    return None


@dataclass(frozen=True)
class DrafterSpec:
    """A drafter as the UI shows it, derived from its declaration."""

    title: str
    blurb: str
    controls: tuple[Control, ...] = ()
    module: str | None = None  # specviz/drafters/<module>.py, named when the drafter is not available
    to_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    to_panel: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def drafter_names() -> list[str]:
    """Every drafter the UI offers: the known ones (available or not) and any other registered one."""
    return DRAFTER_ORDER + [n for n in DRAFTERS if n not in DRAFTER_ORDER]


def spec_for(name: str) -> DrafterSpec:
    declared = DRAFTERS.get(name)
    if declared is None:
        return DrafterSpec(name, "", module=slug(name))
    return DrafterSpec(declared.title, declared.blurb, tuple(Control.of(o) for o in declared.panel_options()),
                       slug(name), declared.to_options, declared.to_panel)


def slug(name: str) -> str:
    return re.sub(r"\W", "_", name)


def param_name(drafter: str, kwarg: str) -> str:
    return f"{slug(drafter)}_{kwarg}"


def available(name: str) -> bool:
    return name in DRAFTERS


def drafter_choice(name: str) -> tuple[str, str]:
    """The drafter list's entry: its name (what the CLI, the API and the cards call it) and its
    title, so a visitor knows what "ar" or "ctc" is before picking it."""
    label = f"{name} · {spec_for(name).title}"
    return (label if available(name) else f"{label} (not available)", name)


def unavailable_message(name: str) -> str:
    return (f"Drafter '{name}' is not available in this build: specviz/drafters/{spec_for(name).module}.py is "
            "missing or did not register.")


def initial_drafter(model: str, drafters: Sequence[str]) -> str:
    """The drafter selected at start: the model's own choice, else a layer-skip one (it shows the
    most), if it fits the model."""
    info = REGISTRY.get(model)
    preferred = (info.default_drafter,) if info and info.default_drafter else ()
    for name in preferred + INITIAL_DRAFTERS:
        if name in drafters and available(name) and not api.missing_part(name, model):
            return name
    return drafters[0]


def drafter_note_text(drafter: str, model: str) -> str:
    """The drafter's description, plus why it would not pay on `model` when it lacks a trained part."""
    spec = spec_for(drafter)
    note = f"**{spec.title}.** {spec.blurb}"
    if not available(drafter):
        return note + f"\n\n⚠️ {unavailable_message(drafter)}"
    reason = api.missing_part(drafter, model)
    if reason:
        return note + f"\n\n⚠️ {reason[0].upper() + reason[1:]}."
    if not spec.controls:  # the extra-options JSON takes the panel's options only, so none either
        return note + "\n\n*No options to set.*"
    return note


def control_values(model: str, drafter: str) -> dict[str, Any]:
    """The panel values of `drafter` for `model`: the model's swept defaults over the panel's own."""
    spec = spec_for(drafter)
    values = {c.kwarg: c.default for c in spec.controls}
    swept = api.drafter_defaults(model, drafter)
    if spec.to_panel is not None:
        swept = spec.to_panel(swept)
    values.update((key, value) for key, value in swept.items() if key in values)
    return values


def parse_extra(drafter: str, extra: Any) -> dict[str, Any]:
    """The "extra options" JSON: an object whose keys are options the drafter declares (the same
    ones its panel shows, validated the same way), so no file path or model outside the app's
    list can reach a loader through it."""
    if extra is None or (isinstance(extra, str) and not extra.strip()):
        return {}
    if not isinstance(extra, str) or len(extra) > MAX_EXTRA_CHARS:
        raise user_error(f"Extra options must be a JSON object of at most {MAX_EXTRA_CHARS} characters.")
    try:
        parsed = json.loads(extra)
    except (json.JSONDecodeError, RecursionError) as err:
        raise user_error(f'Extra options must be a JSON object such as {{"k": 4}}: {err}') from None
    if not isinstance(parsed, dict):
        raise user_error('Extra options must be a JSON object such as {"k": 4}.')
    declared = {c.kwarg: c for c in spec_for(drafter).controls}
    unknown = [k for k in parsed if k not in declared]
    if unknown:
        allowed = ", ".join(declared) or "none"
        raise user_error(f"Extra options for {drafter}: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"this drafter takes: {allowed}.")
    for key, value in parsed.items():
        if isinstance(value, (dict, list)):
            raise user_error(f"Extra option {key!r} must be a single value, not {type(value).__name__}.")
    return parsed


def check_ranges(drafter: str, options: dict[str, Any]) -> None:
    """Numeric options within their control's range; choices among the control's choices."""
    for c in spec_for(drafter).controls:
        v = options.get(c.kwarg)
        if v is None or isinstance(v, (list, bool)):
            continue
        if c.kind in ("int", "float") and c.minimum is not None and not c.minimum <= v <= c.maximum:
            raise ValueError(f"{c.kwarg} must be between {fmt_num(c.minimum)} and {fmt_num(c.maximum)}, got {v}")
        if c.kind == "choice" and isinstance(v, str) and v not in c.choices:
            raise ValueError(f"{c.kwarg} must be one of {', '.join(c.choices)}, got {v!r}")


_SKIP = object()  # a control value that means "the drafter's own default" (auto layer, default model)


def _read_value(c: Control, v: Any, model_names: Sequence[str]) -> Any:
    """One control value -> the option's value, or _SKIP to leave the option to the drafter."""
    if c.kind in ("int", "layer"):
        v = parse_int(c.kwarg, v)
        return _SKIP if c.kind == "layer" and v == 0 else v  # layer 0: auto
    if c.kind == "float":
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{c.kwarg} must be a number, got {v!r}") from None
    if c.kind == "bool":
        return bool(v)
    if c.kind == "model":
        if not v or v == "(default)":
            return _SKIP
        if v not in model_names:
            raise ValueError(f"draft model {v!r} is not in this app's model list: {', '.join(model_names)}")
    return v


def options_from_values(name: str, values: dict[str, Any], model_names: Sequence[str]) -> dict[str, Any]:
    """Control values (by kwarg) -> the drafter's constructor options."""
    spec = spec_for(name)
    out: dict[str, Any] = {}
    for c in spec.controls:
        if values.get(c.kwarg) is None:
            continue
        value = _read_value(c, values[c.kwarg], model_names)
        if value is not _SKIP:
            out[c.kwarg] = value
    return spec.to_options(out) if spec.to_options is not None else out
