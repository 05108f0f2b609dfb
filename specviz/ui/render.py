"""A session's trace as the app's outputs: the token view, the cards, the plots and the export
file, in the order of `OUTPUT_KEYS` (the outputs of /run and /step), with `gr.skip()` for the
parts an update leaves alone. Drawing is `specviz.figures`' job; this only picks what to draw."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from .. import figures
from ..figures import PlainRun
from ..trace import Trace
from .controls import slug
from .session import Session

OUTPUT_KEYS = ("tokens", "cards", "text", "heatmap", "dp", "step_sel", "details", "speed", "speedup", "accpos", "hist",
               "learn_md", "learn_fig", "export", "progress")

Decode = Callable[[list[int]], str]

MAX_EXPORTS = 32  # trace files kept on disk (oldest deleted first); a download is served at once


def outputs(parts: dict[str, Any]) -> tuple:
    """`parts` in OUTPUT_KEYS order, gr.skip() for every output not in it."""
    return tuple(parts.get(k, gr.skip()) for k in OUTPUT_KEYS)


def _token_parts(session: Session, decode: Decode | None, streaming: bool, status: str, clock: str) -> dict[str, Any]:
    trace = session.trace
    parts = {"tokens": figures.token_html(trace, decode, True, session.prompt_text, streaming=streaming),
             "cards": figures.cards_html(trace, session.plain, clock, status),
             "progress": figures.progress_html(trace, session.plain, status)}
    if not (streaming and session.mode == "run"):  # a Run's plain text once, at the end: streamed copies only add browser work
        parts["text"] = (decode or figures._default_decode)(trace.generated) if trace else ""
    return parts


def _speed_parts(session: Session, clock: str) -> dict[str, Any]:
    return {"speed": figures.speed_figure(session.trace, session.plain, clock),
            "speedup": figures.speedup_figure(session.trace, session.plain, clock)}


def step_to_show(trace: Trace | None, mode: str) -> int:
    """The step the step views open on: in step mode the one just taken; after a run the last step
    that drafted something (a run's last step often has no room left to draft, and "nothing
    drafted" teaches nothing), else the last."""
    last = max(0, (len(trace.steps) if trace else 0) - 1)
    if mode == "step" or not trace:
        return last
    return next((s.index for s in reversed(trace.steps) if s.draft_tokens), last)


def _plot_parts(session: Session, decode: Decode | None, clock: str) -> dict[str, Any]:
    trace = session.trace
    last = max(0, (len(trace.steps) if trace else 0) - 1)
    shown = session.selected_step = step_to_show(trace, session.mode)
    return {"heatmap": figures.skip_heatmap(trace, last if session.mode == "step" else None),
            "dp": figures.dp_grid_figure(trace, shown),
            "step_sel": gr.update(maximum=max(1, last), value=shown),
            "details": figures.step_details_html(trace, shown, decode),
            **_speed_parts(session, clock),
            "accpos": figures.acceptance_figure(trace),
            "hist": figures.accepted_histogram(trace),
            "learn_md": figures.leviathan_markdown(trace, session.plain, clock),
            "learn_fig": figures.leviathan_figure(trace, session.plain, clock)}


def render(session: Session, parts: set[str], export_dir: Path | None = None, streaming: bool = False,
           status: str = "") -> tuple:
    """All outputs for `parts` ("tokens", "speed": the speed charts, "plots": every plot, "export":
    the trace file, which needs `export_dir`)."""
    clock = "busy" if session.mode == "step" else "wall"  # step mode: engine time, not the user's pauses
    decode = session.decoder()
    out: dict[str, Any] = {}
    if "tokens" in parts:
        out.update(_token_parts(session, decode, streaming, status, clock))
    if "plots" in parts:
        out.update(_plot_parts(session, decode, clock))
    elif "speed" in parts:
        out.update(_speed_parts(session, clock))
    if "export" in parts and export_dir is not None:
        out["export"] = write_export(session.trace, export_dir) if session.trace else None
    return outputs(out)


def status_only(status: str) -> tuple:
    """Every output unchanged but the cards, which say `status` (e.g. while a model loads)."""
    return outputs({"cards": figures.cards_html(None, None, "wall", status),
                    "progress": figures.progress_html(None, None, status)})


def write_export(trace: Trace, folder: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"specviz-trace-{slug(trace.drafter)}-{stamp}-{os.getpid()}-{id(trace) % 10_000}.json"
    path.write_text(trace.to_json(indent=1), encoding="utf-8")
    prune_exports(folder)
    return str(path)


def prune_exports(folder: Path, keep: int = MAX_EXPORTS) -> None:
    files = sorted(folder.glob("specviz-trace-*.json"), key=lambda p: p.stat().st_mtime)
    for old in files[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass


def initial_figures() -> tuple:
    """The empty figures the page shows before any run (drawn at load, not at build)."""
    return (figures.skip_heatmap(None), figures.dp_grid_figure(None), figures.speed_figure(None),
            figures.speedup_figure(None), figures.acceptance_figure(None), figures.accepted_histogram(None),
            figures.leviathan_figure(None), figures.compare_figure([]))


def compare_outputs(rows: list[figures.CompareRow], plain: PlainRun | None) -> tuple:
    """The Compare tab's table (plain generate() first, as the reference: its last round) and bar chart."""
    table = [["generate()", f"{plain.tokens_per_s:.1f}", "1.00", "1.00", "", len(plain.tokens),
              f"{plain.wall_time:.2f}", "reference", ""]] if plain is not None else []
    return table + figures.compare_table(rows), figures.compare_figure(rows, plain)
