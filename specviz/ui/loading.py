"""Loading the default model in the background while the page already serves, and what the
status line says meanwhile."""

from __future__ import annotations

import logging
import threading

from .. import api, figures
from ..figures import PlainRun
from ..layers import CPUHead
from ..models import REGISTRY
from .session import detok_for

log = logging.getLogger(__name__)


class LoadStatus:
    """What the app's status line says while the default model loads in the background."""

    def __init__(self):
        self.message = ""
        self.fallback = ""  # why the default model is not the first in the list, kept in every status
        # set while no background load runs: a Run of the default model waits for it to be set
        self.done = threading.Event()
        self.done.set()

    def set(self, message: str) -> None:
        self.message = message


def preload_in_background(model: str, status: LoadStatus, device: str | None = None, dtype: str | None = None
                          ) -> threading.Thread:
    """Load and warm up `model` while the page already serves: the status line shows each stage
    (a first run converts the default model's GGUF, ~20-40 s) and Run waits for the load."""
    status.done.clear()

    def work():
        try:
            status.set(f"Loading {model}…")
            warm_up(model, device, dtype, progress=status.set)
            loaded = api.get_model(model, device, dtype)
            notes = "".join(f" ⚠️ {n}." for n in loaded.notes)
            earlier = f"{status.fallback} " if status.fallback else ""
            status.set(f"{earlier}✓ {model} ready ({loaded.source}).{notes}")
        except Exception as err:  # noqa: BLE001 - the app still serves; Run will show the error
            log.warning("could not preload %s: %s", model, err)
            status.set(f"⚠️ {model} could not be loaded: {err}")
        finally:
            status.done.set()

    thread = threading.Thread(target=work, name="specviz-preload", daemon=True)
    thread.start()
    return thread


def warm_default_drafter(model: str, device: str | None, dtype: str | None) -> None:
    """A few steps of the drafter the page opens on, so its parts (a head file, its draft
    vocabulary) are loaded before the first visitor's run, not during it."""
    info = REGISTRY.get(model)
    drafter = info.default_drafter if info else None
    if drafter is None or api.missing_part(drafter, model):
        return
    _, gen = api.start(model, drafter, "Say hello.", 4, device=device, dtype=dtype)
    for _ in gen:
        pass


def warm_up(model: str, device: str | None = None, dtype: str | None = None, progress=None) -> None:
    """Load the model, run a few decoding steps and draw every figure once, so the first real run
    is not slowed by first-call costs (kernel setup, plotly's lazily loaded validators)."""
    loaded, gen = api.start(model, "ar", "def f(x):\n    return x\n", 3, device=device, dtype=dtype, chat=False,
                            progress=progress)
    for _ in gen:
        pass
    # the LM head's layout (layers.CPUHead) and the decoder linears' kernel (packed_linears) per row
    # count are timed on first use, ~0.1-0.2 s each: measured here, a visitor's run is not slowed by it
    api.get_engine(model, device, dtype).runner.prepare_kernels(CPUHead.WARM_ROWS)
    warm_default_drafter(model, device, dtype)
    trace, decode = gen.trace, detok_for(loaded)
    plain = PlainRun(list(trace.generated), [s.t_end for s in trace.steps], trace.wall_time)
    figures.token_html(trace, decode)
    figures.cards_html(trace, plain)
    for fig in (figures.skip_heatmap(trace), figures.dp_grid_figure(trace), figures.speed_figure(trace, plain),
                figures.speedup_figure(trace, plain), figures.acceptance_figure(trace), figures.accepted_histogram(trace),
                figures.leviathan_figure(trace, plain), figures.methods_figure(8)):
        fig.to_json()
