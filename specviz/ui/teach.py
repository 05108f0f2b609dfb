"""Handlers of the Step tab's explanation views (issue 14, teach): plain functions of the selected step,
the picked DP cell and the session, drawn by `specviz.teach`. Only the logit lens touches the
model (one forward pass over the run's own tokens)."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from .. import api, teach
from ..drafters.draft_heads import build_head, trained_adapters
from ..lens import logit_lens
from .config import AppConfig
from .errors import user_error
from .session import Session

log = logging.getLogger(__name__)

LENS_TOP = 3  # top tokens per exit (more do not fit a phone's width)

LENS_NOTE = (
    "Exit *e* = the first *e* layers, then the model's own final norm and LM head: exactly what an early-exit "
    "draft at E = *e* would predict. A model trained with an early-exit loss (the bundled specviz-tiny) predicts "
    "well from its middle exits; one never trained for it (SmolLM2) seldom puts the right token on top before "
    "its last layers, which is why early exit and HiSpec get few drafts accepted there. A trained *exit adapter* (a small "
    "layer applied before the norm) would show as an extra row “e + adapter”.")


def _trace_and_decode(session: Any):
    if not isinstance(session, Session) or session.trace is None:
        return None, None
    return session.trace, session.decoder()


def _index(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def explain_step(step_index, session) -> str:
    """The selected step explained: the acceptance rule on its numbers, plus the verifier's reuse,
    HiSpec's rounds or CTC's frames where the drafter has them."""
    trace, decode = _trace_and_decode(session)
    return teach.step_lesson_html(trace, _index(step_index), decode)


def selected_step(session: Any) -> int | None:
    """The step the step views show (the session keeps it: see `Session.selected_step`)."""
    return session.selected_step if isinstance(session, Session) else None


def explain_cell(layer_i, skipped_j, session) -> str:
    """How cell (i, j) of the CLaSp DP in force at the selected step was decided (blank inputs: the
    final cell (L, M))."""
    trace, decode = _trace_and_decode(session)
    return teach.dp_cell_html(trace, selected_step(session), _index(layer_i), _index(skipped_j), decode)


def on_step(layer_i, skipped_j, session) -> tuple:
    """A new selected step (picked, or set by a run): both explanations, and the lens slider's
    range (the run's generated tokens)."""
    trace, _ = _trace_and_decode(session)
    n = len(trace.generated) if trace is not None else 0
    return (explain_step(selected_step(session), session), explain_cell(layer_i, skipped_j, session),
            gr.update(maximum=max(1, n)))


def adapter_heads(model) -> dict[int, tuple[str, Any]]:
    """The model's trained exit adapters, each as the draft head an early exit uses (adapter, then
    the vocabulary it was trained over): what an adapter changes at its exit."""
    heads = {}
    for exit_layer in trained_adapters(model):
        head = build_head(model, exit_layer, "on", 0, "logit lens")
        vocab = head.describe()["draft_vocab"]
        heads[exit_layer] = (f"adapter ({vocab} tokens)" if vocab else "adapter", head)
    return heads


def lens(config: AppConfig, position, session) -> Any:
    """The logit lens at generated token `position` (1-based) of the session's last run: one
    forward pass of the run's own tokens through its model."""
    trace, decode = _trace_and_decode(session)
    if trace is None or session.model_ref is None:
        return teach.lens_figure(None)
    generated = trace.generated
    p = _index(position)
    if p is None or not 1 <= p <= len(generated):
        raise user_error(f"Pick a generated token between 1 and {len(generated)}.")
    try:
        loaded = api.get_model(*session.model_ref)
        result = logit_lens(loaded.model, list(trace.prompt_ids) + generated[: p - 1], generated[p - 1],
                            position=p - 1, top=LENS_TOP, exit_heads=adapter_heads(loaded.model))
    except Exception as err:  # noqa: BLE001 - say what failed on the page, not in a dead component
        log.exception("logit lens failed")
        raise user_error(f"The logit lens failed: {type(err).__name__}: {err}") from None
    return teach.lens_figure(result, decode)
