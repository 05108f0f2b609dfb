"""Driving a generation for the handlers: start it from validated settings, point the session at
it, stream its progress from a worker thread, and attach the plain `generate()` reference."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator

import gradio as gr

from .. import api, figures
from ..engine import Generation
from ..figures import PlainRun
from ..trace import Trace
from .config import AppConfig
from .errors import user_error
from .session import Session, cached_plain, detok_for, plain_generate, plain_key
from .settings import RunSettings

log = logging.getLogger(__name__)

HTML_INTERVAL = 0.25  # seconds between streamed token updates (more often slows the engine: GIL)
# The speed charts redraw by time alone, so they move at least once a second however long a step
# takes or however many steps pass (a step-count throttle left them still for seconds on slow steps):
# an update goes out on the first token update at least SPEED_INTERVAL after the last, i.e. within
# SPEED_INTERVAL + HTML_INTERVAL = 1 s.
SPEED_INTERVAL = 0.75
PLOT_INTERVAL = 1.5  # and at least this many seconds between the other plots (~40 ms each to build)
POLL = 0.25  # seconds between checks that the worker thread is still alive


def start_generation(config: AppConfig, s: RunSettings, stop: threading.Event | None):
    """(loaded model, Generation) for `s`; bad settings the engine finds become a gr.Error."""
    try:
        return api.start(s.model, s.drafter, s.prompt, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed,
                         s.options, device=config.device, dtype=config.dtype, stop=stop, chat=s.chat,
                         adaptive_length=s.adaptive_length)
    except ValueError as err:
        raise user_error(str(err)) from None
    except gr.Error:
        raise
    except Exception as err:  # noqa: BLE001 - show, don't crash
        log.exception("could not start a generation")
        raise user_error(f"Could not start: {type(err).__name__}: {err}") from None


def reference_key(s: RunSettings, prompt_ids: list[int]) -> tuple:
    """The plain generate() cache key of a run with settings `s`."""
    return plain_key(s.model, prompt_ids, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed)


def attach(config: AppConfig, session: Session, s: RunSettings, loaded, gen: Generation) -> None:
    """Point the session at a new generation (its trace, tokenizer and cached reference)."""
    session.loaded, session.model_ref = loaded, (s.model, config.device, config.dtype)
    session.trace, session.decode = gen.trace, detok_for(loaded)
    session.prompt_text = session.decode(gen.trace.prompt_ids)
    session.plain = cached_plain(reference_key(s, gen.trace.prompt_ids))


def replay_steps(gen: Generation, recorded: Trace | None, n: int) -> None:
    """Re-run the first `n` steps of a Step-mode generation in this process (ZeroGPU workers keep
    no live generation between calls) and check they commit what was recorded."""
    for _ in range(n):
        gen.step()
    if n and recorded is not None and gen.trace.generated != recorded.generated[: len(gen.trace.generated)]:
        raise user_error("Could not resume step mode: replaying the recorded steps gave other tokens. "
                         "Press Step again to start over.")


def explain_difference(trace: Trace, plain: PlainRun | None, loaded) -> None:
    """Where a half-precision run parts from generate(), measure how near a tie the reference
    was there, so the badge can tell dtype rounding from a real bug."""
    if plain is None or not plain.greedy or plain.dtype == "float32":
        return
    i = figures.first_difference(trace.generated, plain.tokens)
    if i is not None and i not in plain.margins:
        plain.margins[i] = api.reference_margin(loaded, list(trace.prompt_ids) + plain.tokens[:i])


def finish_plain(session: Session, loaded, s: RunSettings, progress: Callable) -> None:
    """Attach the plain generate() reference, timed right after the run (same machine load, same
    threads), so the speedup compares two runs made under the same conditions."""
    trace = session.trace
    key = reference_key(s, trace.prompt_ids)
    session.plain = None
    if trace.finish_reason != "stopped":
        progress(None, desc="timing plain generate() right after the run, for the speedup")
        try:
            session.plain = plain_generate(loaded, trace.prompt_ids, s.max_new_tokens, s.temperature, s.top_p,
                                           s.top_k, s.seed, key=key, fresh=True)
        except Exception as err:  # noqa: BLE001 - the run itself succeeded
            log.exception("plain generate() failed")
            gr.Warning(f"plain generate() failed, no speedup shown: {err}")
    explain_difference(session.trace, session.plain, loaded)


class GenerationWorker:
    """Runs a Generation on its own thread, so that the handler streams updates at its own pace
    (rendering between steps would slow the engine) and always sees the latest state."""

    def __init__(self, gen: Generation):
        self.gen = gen
        self.events: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drive, name="specviz-generation", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _drive(self) -> None:
        try:
            for _ in self.gen:
                self.events.put(("step", None))
            self.events.put(("done", None))
        except BaseException as err:  # noqa: BLE001 - handed to the handler's thread
            self.events.put(("error", err))

    def _advanced(self) -> bool:
        """Wait for the next step(s), drain what queued up; False once the generation has ended
        (done, failed: `error` is set, or its thread is gone)."""
        while True:
            try:
                kind, payload = self.events.get(timeout=POLL)
            except queue.Empty:
                if not self.thread.is_alive():
                    return False
                continue
            ended = False
            while True:  # drain: only the latest state is worth drawing
                if kind == "error":
                    self.error = payload
                ended = ended or kind in ("done", "error")
                try:
                    kind, payload = self.events.get_nowait()
                except queue.Empty:
                    return not ended

    def updates(self, plot_every: int, stopping: Callable[[], bool] = lambda: False) -> Iterator[set[str]]:
        """The parts worth redrawing as the generation advances: the tokens at most every
        HTML_INTERVAL seconds, the speed charts every SPEED_INTERVAL seconds, the other plots
        once `plot_every` more steps and PLOT_INTERVAL seconds have passed. Ends with the
        generation, or at once when `stopping()` says a stop was requested: an update sent then
        would only delay the final one in the browser, which draws updates in order."""
        last_html = last_speed = last_plot = 0.0
        plotted_steps = 0
        while self._advanced():
            if stopping():
                return
            now = time.perf_counter()
            if now - last_html < HTML_INTERVAL:
                continue
            last_html = now
            parts = {"tokens"}
            if now - last_speed >= SPEED_INTERVAL:
                parts.add("speed")
                last_speed = now
            n = len(self.gen.trace.steps)
            if n - plotted_steps >= plot_every and now - last_plot >= PLOT_INTERVAL:
                parts.add("plots")
                plotted_steps, last_plot = n, now
            yield parts

    def raise_error(self) -> None:
        """The generation's failure, if any, as a gr.Error."""
        error = self.error
        if error is None:
            return
        if isinstance(error, ValueError):
            raise user_error(str(error))
        log.error("generation failed", exc_info=error)
        raise user_error(f"Generation failed: {type(error).__name__}: {error}")
