"""The app's event handlers, as plain functions of (app config, inputs) -> outputs.

`layout.build_app` binds each to its `AppConfig` (`functools.partial`, which keeps the signature
Gradio reads: the `gr.Progress` default and the `**opts` that receive the drafter panels'
values) and wires it to components; a test can call one directly with a config of its own.

Model events (run, step, compare) take the session (`gr.State`) last and, for run and step,
return it as an extra output: on ZeroGPU every call runs in a fresh worker process, so only what
comes back survives. Stop runs in the main process and reaches a generation in a worker through
the session's flag files.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable, Iterator

import gradio as gr

from .. import api, figures
from ..figures import CompareRow, PlainRun
from ..models import hub_download_source, prefetch_hub, unobtainable_reason
from .catalog import has_chat_template, model_markdown
from .config import AppConfig
from .controls import available, control_values, drafter_note_text, slider_maximum, unavailable_message
from .errors import as_int, user_error
from .generation import (GenerationWorker, attach, explain_difference, finish_plain, reference_key, replay_steps,
                         start_generation)
from .render import compare_outputs, render, status_only
from .session import Session, StopSignal, plain_generate
from .settings import RunSettings, settings_from

log = logging.getLogger(__name__)

LOADING = "loading {model} (first use; the default model's first start converts it, about 20-40 s)…"
WARMING = ("warming up {model}: measuring this CPU's kernels and loading its drafting parts, so that the speed "
           "shown is the real one (a few seconds after the app starts)…")
WARM_UP_WAIT_S = 180  # at most; the warm-up takes ~10 s on SmolLM2 once its weights are converted


# -- model events ------------------------------------------------------------------------------

def run(config: AppConfig, model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options,
        session, progress=gr.Progress(), **opts) -> Iterator[tuple]:
    """Stream one generation: tokens as each verification lands, plots every few steps."""
    s = settings_from(config, model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options,
                      opts)
    session = Session.of(session)
    session.gen, session.key, session.mode = None, None, "run"
    loading = not api.is_loaded(s.model, config.device, config.dtype)
    if loading:
        ensure_loadable(s.model)
        # a drafter this model has no part for is refused now, not after "loading…" (which would
        # stay on the line under Run, beneath the error)
        reason = api.missing_part(s.drafter, s.model, s.options)
        if reason:
            raise user_error(reason)
    # the default model's background warm-up (ui.loading) measures the kernels a run would otherwise
    # measure inside its own timed passes: a run that started before it ends waits for it
    warming = s.model == config.default_model and not config.load_status.done.is_set()
    flags = session.flags
    flags.started()
    stop_signal = StopSignal(flags)
    worker = None
    try:
        if warming:
            yield (*status_only(WARMING.format(model=s.model)), session)
            config.load_status.done.wait(timeout=WARM_UP_WAIT_S)
            loading = not api.is_loaded(s.model, config.device, config.dtype)
        if loading:
            yield (*status_only(LOADING.format(model=s.model)), session)
        loaded, gen = start_generation(config, s, stop_signal)
        attach(config, session, s, loaded, gen)
        worker = GenerationWorker(gen)
        worker.start()
        yield (*render(session, {"tokens"}, streaming=True, status="starting…"), session)
        for parts in worker.updates(config.plot_every, stopping=lambda: flags.stop_requested):
            progress((len(gen.trace.generated), s.max_new_tokens), desc="decoding", unit="tokens")
            yield (*render(session, parts, streaming=True), session)
        worker.join()
        worker.raise_error()
        finish_plain(session, loaded, s, progress)
        flags.finished()  # over before its last update is delivered: a Stop now finds nothing running
        yield (*render(session, {"tokens", "plots", "export"}, config.export_dir), session)
    finally:
        stop_signal.set()  # a closed stream (client gone) stops the worker at its next step
        if worker is not None:
            worker.join(timeout=30)
        flags.finished()


def ensure_loadable(model: str) -> None:
    """Refuse at once a model that cannot load here, or whose load would download while holding
    the shared model slot (the download is started in the background instead)."""
    reason = unobtainable_reason(model)
    if reason:  # say so at once, rather than "loading…" and then an error under it
        raise user_error(f"{reason}.")
    hub_id = hub_download_source(model)
    if hub_id:
        raise user_error(f"{hub_id} is being downloaded in the background ({prefetch_hub(hub_id)}); "
                         "press Run again in a minute.")


def step(config: AppConfig, model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options,
         session, progress=gr.Progress(), **opts) -> tuple:
    """One speculation cycle (the first call prefills). Settings changes start over."""
    s = settings_from(config, model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options,
                      opts)
    session = Session.of(session)
    gen = step_generation(config, session, s)
    try:
        event = gen.step()
    except ValueError as err:
        raise user_error(str(err)) from None
    except Exception as err:  # noqa: BLE001
        log.exception("step failed")
        session.gen = None
        raise user_error(f"Step failed: {type(err).__name__}: {err}") from None
    n = len(gen.trace.steps)
    if gen.done:
        finish_plain(session, session.loaded, s, progress)
        session.gen = None
        status = f"step {n - 1}: generation finished — the next Step starts over"
        return (*render(session, {"tokens", "plots", "export"}, config.export_dir, status=status), session)
    kind = "prefill" if event is not None and event.index == 0 else "verification"
    status = f"step mode: {kind} {n - 1} done — press Step for the next cycle (times are engine time)"
    return (*render(session, {"tokens", "plots"}, streaming=True, status=status), session)


def step_generation(config: AppConfig, session: Session, s: RunSettings):
    """The session's Step generation for settings `s`: the live one, or a new one that replays the
    steps already recorded with the same settings (a ZeroGPU worker keeps nothing between calls)."""
    same = session.mode == "step" and session.key == s.key()
    if same and session.gen is not None and not session.gen.done:
        return session.gen
    done_before = [] if not same or session.trace is None or session.trace.finish_reason else session.trace.steps
    loaded, gen = start_generation(config, s, None)
    replay_steps(gen, session.trace, len(done_before))
    attach(config, session, s, loaded, gen)
    session.gen, session.key, session.mode = gen, s.key(), "step"
    return gen


STOP_WAIT = 3.0  # seconds Stop waits for the run to end, to answer with its final state


def stop(session, wait: float = STOP_WAIT) -> tuple[str, Any]:
    """Stop this session's running generation (and drop its Step generation). Runs in the
    main process: it reaches a generation in a ZeroGPU worker through the session's flag file.

    It answers once the run has ended (the engine stops at its next step): an answer sent at
    once could reach the browser after the run's final update and leave "Stopping…" on the
    progress line for good. The button's own JS shows "Stopping…" meanwhile."""
    if not isinstance(session, Session):
        return figures.progress_html(None, None, "Nothing is running."), session
    flags = session.flags
    running = flags.running
    stepping = session.gen is not None or session.mode == "step" and session.key is not None
    if running:
        flags.request_stop()
    session.gen, session.key = None, None
    if running:
        deadline = time.monotonic() + wait
        while flags.running and time.monotonic() < deadline:
            time.sleep(0.02)
        status = "stopping… (the current step finishes first)" if flags.running else "stopped"
        return figures.progress_html(session.trace if session.mode == "run" else None, session.plain, status), session
    if stepping:
        return figures.progress_html(None, None, "Step mode ended: the next Step starts over."), session
    return figures.progress_html(None, None, "Nothing is running."), session


COMPARE_ROUNDS = 3  # default repetitions: a spread from one run on a shared machine is noise


def compare(config: AppConfig, model, prompt, max_new_tokens, temperature, top_p, top_k, seed, chosen, session,
            progress=gr.Progress(), **opts) -> Iterator[tuple]:
    """Run every chosen drafter on the prompt with its panel settings, in `compare_rounds`
    interleaved rounds: each round runs the drafters (in a rotated order) and then times
    generate(), so every speedup compares runs made moments apart; rows show the median and
    the min–max over rounds."""
    chosen = [d for d in (chosen or []) if d in config.drafters]
    if not chosen:
        raise user_error("Choose at least one drafter to compare.")
    rounds = as_int("compare_rounds", opts.pop("compare_rounds", COMPARE_ROUNDS), 1, 5)

    def settings_for(drafter: str) -> RunSettings:  # its panel settings; sampling and length shared
        return settings_from(config, model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, "",
                             opts)

    settings_for("ar")  # validates the shared settings before any drafter runs
    flags = Session.of(session).flags
    flags.started()
    stop_signal = StopSignal(flags)
    tally = CompareTally(chosen)
    try:
        for r in range(rounds):
            order = chosen[r % len(chosen):] + chosen[: r % len(chosen)]
            runs = {}
            for i, name in enumerate(order):
                progress((r * len(chosen) + i, rounds * len(chosen)), desc=f"round {r + 1}/{rounds}: {name}")
                runs[name] = run_to_end(config, name, settings_for, stop_signal)
            progress((r * len(chosen) + len(chosen), rounds * len(chosen)), desc=f"round {r + 1}: timing generate()")
            tally.add_round(runs, stop_signal)
            yield compare_outputs(tally.rows(), tally.plain)
    finally:
        flags.finished()
    yield compare_outputs(tally.rows(), tally.plain)


def run_to_end(config: AppConfig, name: str, settings_for: Callable[[str], RunSettings], stop_signal: StopSignal):
    """(loaded, trace, settings) of one complete run of drafter `name`, or an error message."""
    if stop_signal.is_set():
        return "stopped"
    if not available(name):
        return unavailable_message(name)
    try:
        s = settings_for(name)
        loaded, gen = start_generation(config, s, stop_signal)
        for _ in gen:
            pass
    except gr.Error as err:
        return str(err.message)
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"
    return loaded, gen.trace, s


class CompareTally:
    """Compare's rounds: per drafter its traces and the speedup against the generate() timed in
    the same round; rows are the median with the min–max."""

    def __init__(self, names: list[str]):
        self.names = names
        self.traces: dict[str, list] = {n: [] for n in names}
        self.speedups: dict[str, list[float]] = {n: [] for n in names}
        self.errors: dict[str, str] = {}
        self.plain: PlainRun | None = None
        self.plain_rates: list[float] = []

    def add_round(self, runs: dict, stop_signal: StopSignal) -> None:
        done = {n: r for n, r in runs.items() if not isinstance(r, str)}
        self.errors.update({n: r for n, r in runs.items() if isinstance(r, str)})
        if not done or stop_signal.is_set():
            return
        loaded, trace, s = next(iter(done.values()))
        plain = plain_generate(loaded, trace.prompt_ids, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed,
                               key=reference_key(s, trace.prompt_ids), fresh=True)
        self.plain = plain
        self.plain_rates.append(plain.tokens_per_s)
        for name, (loaded, trace, _) in done.items():
            explain_difference(trace, plain, loaded)
            self.traces[name].append(trace)
            row = figures.compare_row(trace, plain)
            if row.speedup is not None:
                self.speedups[name].append(row.speedup)

    def rows(self) -> list[CompareRow]:
        out = []
        for name in self.names:
            if not self.traces[name]:
                out.append(CompareRow(name, error=self.errors.get(name, "did not run")))
                continue
            row = figures.compare_row(self.traces[name][-1], self.plain)
            speeds = self.speedups[name]
            if speeds:
                row.speedup = statistics.median(speeds)
                row.speedup_range = (min(speeds), max(speeds)) if len(speeds) > 1 else None
            out.append(row)
        return out


# -- views of the last run (no model involved) -------------------------------------------------

def rerender_step(step_index, session) -> tuple:
    """Pick a step for the DP grid / details / heatmap marker."""
    session = session if isinstance(session, Session) else None
    trace = session.trace if session else None
    decode = session.decoder() if session else None
    try:
        idx = int(step_index)
    except (TypeError, ValueError):
        idx = None
    if session is not None:
        session.selected_step = idx  # the Step tab's views follow it (they run on the details' change)
    return (figures.dp_grid_figure(trace, idx), figures.step_details_html(trace, idx, decode),
            figures.skip_heatmap(trace, idx))


def rerender_tokens(show_rejected, session) -> str:
    if not isinstance(session, Session) or session.trace is None:
        return figures.token_html(None)
    return figures.token_html(session.trace, session.decoder(), bool(show_rejected), session.prompt_text)


# -- control changes -----------------------------------------------------------------------------

# The results tab that shows what a drafter does: its layers for the layer-skip drafters; for the
# others (whose layer panels would be empty) what was accepted, and for plain decoding its speed.
LAYER_DRAFTERS = ("static-skip", "early-exit", "clasp", "hispec")


def first_tab(drafter: str) -> str:
    """The id of the tab (layout's `TAB_IDS`) to show first for `drafter`."""
    if drafter in LAYER_DRAFTERS:
        return "skip"
    return "speed" if drafter == "ar" else "step"


def on_drafter(config: AppConfig, name, model) -> list:
    """The drafter's note, of the drafter panels only its own visible, and the results tab that
    fits it (prompt lookup opened on two empty layer panels)."""
    note = drafter_note_text(name, config.known_model(model))
    return ([gr.update(value=note)] + [gr.update(visible=(d == name)) for d in config.drafters]
            + [gr.Tabs(selected=first_tab(name))])


def on_model(config: AppConfig, model, drafter, prompt) -> list:
    """A new model: its layer count, its drafter defaults, its chat toggle and its examples.
    Names outside the app's list are ignored (nothing is looked up for them)."""
    control_keys = config.control_keys()
    if model not in config.model_names:
        return [gr.skip()] * (6 + len(control_keys))
    exs = config.examples_of(model)
    known = {e.prompt for m in config.model_names for e in config.examples_of(m)}
    first_example = bool(exs) and (not (prompt or "").strip() or prompt in known)  # else keep the visitor's text
    return [model_markdown(model), model_status_text(config, model), gr.update(visible=has_chat_template(model)),
            gr.update(choices=[(e.label, i) for i, e in enumerate(exs)], value=0 if first_example else None),
            exs[0].prompt if first_example else gr.skip(),
            drafter_note_text(drafter, model)] + control_updates(config, model)


def control_updates(config: AppConfig, model: str) -> list:
    """Every panel control's value for `model` (and the ranges that follow the model: the layer
    sliders span its depth, the draft-vocabulary ones its vocabulary)."""
    values = {d: control_values(model, d) for d in config.drafters}
    updates = []
    for d, c in config.control_keys():
        maximum = slider_maximum(c, model)
        value = values[d][c.kwarg]
        updates.append(gr.update(value=value) if maximum is None else gr.update(maximum=maximum, value=value))
    return updates


def on_example(config: AppConfig, index, model):
    exs = config.examples_of(config.known_model(model))
    if isinstance(index, int) and 0 <= index < len(exs):
        return exs[index].prompt
    return gr.skip()


def model_status_text(config: AppConfig, model: str) -> str:
    """The status line after a model change: loaded, loads on first Run, or why it cannot."""
    status = config.load_status
    if model == config.default_model and not status.done.is_set():
        return status.message
    if api.is_loaded(model, config.device, config.dtype):
        return f"✓ {model} is loaded."
    reason = unobtainable_reason(model)
    return f"⚠️ {reason}" if reason else f"{model} loads on the first Run (a few seconds)."


def poll_status(config: AppConfig) -> tuple:
    """The status line while the default model loads; the timer stops once it is done."""
    status = config.load_status
    if status.done.is_set():
        return status.message, gr.update(active=False)
    return status.message, gr.skip()
