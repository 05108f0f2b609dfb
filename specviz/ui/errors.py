"""Bad input as a readable `gr.Error`, and the readers of numeric settings that raise it."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr


def user_error(message: str) -> gr.Error:
    """A gr.Error for bad input: shown to the user as a toast, not logged as a server traceback.
    The toast renders HTML and messages echo user input, so & and < are escaped (no tag can form;
    the rest, e.g. ">=", reads as written)."""
    return gr.Error(message.replace("&", "&amp;").replace("<", "&lt;"), print_exception=False)


def parse_int(name: str, value: Any) -> int:
    """`value` as an int (3, 3.0, "3"); ValueError naming `name` for text, fractions, NaN, infinity."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(f)


def as_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi] (either bound optional, `hi` only with `lo`), else a gr.Error."""
    try:
        v = parse_int(name, value)
    except ValueError as err:
        raise user_error(str(err)) from None
    if lo is not None and (v < lo or (hi is not None and v > hi)):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise user_error(f"{name} must be {rng}, got {v}")
    return v


def as_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise user_error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise user_error(f"{name} must be a finite number, got {value!r}")
    return v


def fmt_num(x: float) -> str:
    """3.0 -> "3", 0.5 -> "0.5": ranges in messages read as the sliders show them."""
    return str(int(x)) if float(x).is_integer() else str(x)
