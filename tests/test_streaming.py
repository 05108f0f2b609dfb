"""How a Run streams (GenerationWorker.updates), on a fake generation: no model, no browser."""

from __future__ import annotations

import time
from types import SimpleNamespace

from specviz.ui.generation import GenerationWorker


class FakeGeneration:
    """`steps` steps of `seconds` each; `trace.steps` grows as they land."""

    def __init__(self, steps: int, seconds: float):
        self.trace = SimpleNamespace(steps=[])
        self.n, self.seconds = steps, seconds

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.seconds)
            self.trace.steps.append(i)
            yield i


def stream(gen, plot_every=8, stopping=lambda: False):
    worker = GenerationWorker(gen)
    worker.start()
    t0 = time.perf_counter()
    out = [(time.perf_counter() - t0, parts) for parts in worker.updates(plot_every, stopping)]
    worker.join()
    return out


def test_speed_charts_update_at_least_every_second():
    """Plots waited for 8 steps and 1.5 s: with slow steps the speed chart stood still for seconds."""
    updates = stream(FakeGeneration(steps=12, seconds=0.3), plot_every=8)
    times = [0.0] + [t for t, parts in updates if "speed" in parts]
    assert len(times) >= 4
    assert max(b - a for a, b in zip(times, times[1:])) <= 1.1, times
    assert all("tokens" in parts for _, parts in updates)


def test_no_update_after_a_stop_request():
    """Updates sent after Stop only delay the final one in the browser, which draws them in order."""
    gen = FakeGeneration(steps=40, seconds=0.05)
    asked = {"stop": False}

    def stopping():
        asked["stop"] = asked["stop"] or len(gen.trace.steps) >= 10
        return asked["stop"]

    updates = stream(gen, stopping=stopping)
    assert updates and len(gen.trace.steps) == 40  # the fake ignores the stop; the stream does not
    assert updates[-1][0] < 40 * 0.05 * 0.6, "the stream should end at the stop request, not with the generation"
