"""Gradio components with the app's own input checks, and a drafter control's component."""

from __future__ import annotations

import math
from typing import Any, Sequence

import gradio as gr

from .controls import LAYER_MAXIMUM, Control, slider_maximum
from .errors import as_int, fmt_num, user_error


def named_slider(*args, name: str, **kwargs) -> gr.Slider:
    """A slider whose out-of-range error names the setting (Gradio's own says only "Value 0 is
    less than minimum value 1."). Not a subclass: Gradio writes a .pyi stub next to any module
    that defines a component class."""
    slider = gr.Slider(*args, **kwargs)
    plain = slider.preprocess

    def preprocess(payload):
        if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
            raise user_error(f"{name} must be a number, got {payload!r}")
        if payload < slider.minimum or payload > slider.maximum:
            raise user_error(f"{name} must be between {fmt_num(slider.minimum)} and {fmt_num(slider.maximum)}, got {fmt_num(payload)}")
        return plain(payload)

    slider.preprocess = preprocess  # type: ignore[method-assign]
    return slider


def named_number(*, name: str, **kwargs) -> gr.Number:
    """An integer box whose bad values (text, NaN, infinity) get an error naming the setting
    instead of Gradio's generic one."""
    box = gr.Number(**kwargs)
    plain = box.preprocess

    def preprocess(payload):
        if payload is None:
            return plain(payload)
        if isinstance(payload, bool):
            raise user_error(f"{name} must be an integer, got {payload!r}")
        return plain(as_int(name, payload))

    box.preprocess = preprocess  # type: ignore[method-assign]
    return box


def control_component(c: Control, model_names: Sequence[str], model: str, value: Any = None) -> gr.components.Component:
    """The panel component of control `c` for `model` (a "layer" slider spans its depth, a
    vocabulary-capped one its vocabulary)."""
    info = c.info or None
    value = c.default if value is None else value
    if c.kind in ("int", "float"):
        maximum = slider_maximum(c, model) or c.maximum
        return named_slider(c.minimum, maximum, value=value, step=c.step, label=c.label, info=info, name=c.kwarg)
    if c.kind == "layer":
        maximum = slider_maximum(c, model) or LAYER_MAXIMUM
        return named_slider(0, maximum, value=value, step=1, label=c.label, info=info, name=c.kwarg)
    if c.kind == "choice":
        return gr.Dropdown(list(c.choices), value=value, label=c.label, info=info)
    if c.kind == "bool":
        return gr.Checkbox(value=bool(value), label=c.label, info=info)
    if c.kind == "model":
        # "(default)" is what reaches the handlers; the label says what it picks
        default = ("(default) the model's own draft model, from its registry entry", "(default)")
        return gr.Dropdown([default] + [(n, n) for n in model_names], value=value, label=c.label, info=info)
    return gr.Textbox(value=value, label=c.label, info=info)
