"""Step and Stop as on a ZeroGPU Space, where every @spaces.GPU call runs in a forked worker
process: nothing the worker keeps in memory survives the call, only what it returns (the session
state among its outputs) comes back, and Stop runs in the main process.

A stand-in `spaces.GPU` runs each decorated handler in a fresh fork and pipes its outputs
(or its error) back pickled, which is what ZeroGPU does."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pickle
import struct
import sys
import time
import types

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from specviz import api  # noqa: E402
from specviz.drafters import make_drafter  # noqa: E402
from specviz.engine import GenerationConfig  # noqa: E402

PROMPT = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n"
CALLS: list[int] = []  # pids of the workers that ran a handler


def _send(fd: int, item) -> None:
    data = pickle.dumps(item)
    os.write(fd, struct.pack("<Q", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _in_fork(fn, args, kwargs):
    """Run fn in a forked child; yield ("item", x) per output, then ("done", None) or ("error", e)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_fd)
        code = 0
        try:
            _send(write_fd, ("pid", os.getpid()))
            result = fn(*args, **kwargs)
            items = result if inspect.isgenerator(result) else [result]
            for item in items:
                _send(write_fd, ("item", item))
            _send(write_fd, ("done", None))
        except BaseException as err:  # noqa: BLE001 - handed to the parent
            try:
                _send(write_fd, ("error", err))
            except Exception:  # noqa: BLE001 - unpicklable error
                _send(write_fd, ("error", RuntimeError(repr(err))))
            code = 1
        finally:
            os.close(write_fd)
            os._exit(code)
    os.close(write_fd)
    try:
        while True:
            size = struct.unpack("<Q", _read_exact(read_fd, 8))[0]
            kind, payload = pickle.loads(_read_exact(read_fd, size))
            if kind == "pid":
                CALLS.append(payload)
                continue
            yield kind, payload
            if kind in ("done", "error"):
                return
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)


def fork_gpu(duration=None):
    def deco(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def streaming(*args, **kwargs):
                for kind, payload in _in_fork(fn, args, kwargs):
                    if kind == "error":
                        raise payload
                    if kind == "item":
                        yield payload
            return streaming

        @functools.wraps(fn)
        def single(*args, **kwargs):
            result = None
            for kind, payload in _in_fork(fn, args, kwargs):
                if kind == "error":
                    raise payload
                if kind == "item":
                    result = payload
            return result
        return single
    return deco


@pytest.fixture(scope="module")
def zerogpu_app(tiny_model_dir):
    from specviz import ui

    threads = torch.get_num_threads()
    sys.modules["spaces"] = types.SimpleNamespace(GPU=fork_gpu)
    try:
        importlib.reload(ui)
        assert ui.ZERO_GPU
        api.get_model(tiny_model_dir)  # as on a Space: loaded in the main process, inherited by workers
        demo = ui.build_app(model_names=[tiny_model_dir], examples=[PROMPT], preload=False, torch_threads=1)
        _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        yield ui, Client(url, verbose=False), tiny_model_dir
        demo.close()
    finally:
        del sys.modules["spaces"]
        importlib.reload(ui)
        torch.set_num_threads(threads)


def test_step_resumes_in_a_fresh_worker_each_call(zerogpu_app):
    ui, client, model_dir = zerogpu_app
    settings = dict(model=model_dir, prompt=PROMPT, drafter="static-skip", max_new_tokens=24,
                    static_skip_skip="alternate", static_skip_k=3, api_name="/step")
    text_at = ui.OUTPUT_KEYS.index("text")
    before = len(CALLS)
    texts = [client.predict(**settings)[text_at] for _ in range(4)]
    workers = CALLS[before:]
    assert len(workers) == 4 and len(set(workers)) == 4 and os.getpid() not in workers

    loaded = api.get_model(model_dir)
    _, gen = api.start(model_dir, "static-skip", PROMPT, 24, options={"skip": "alternate", "k": 3})
    expected = []
    for _ in range(4):
        gen.step()
        expected.append(api.decode(loaded, gen.trace.generated))
    assert texts == expected, "each Step must continue the same generation, not restart it"
    assert len(texts[-1]) > len(texts[0])


def test_stop_reaches_a_run_in_a_worker(zerogpu_app):
    ui, client, model_dir = zerogpu_app
    cards_at = ui.OUTPUT_KEYS.index("cards")
    job = client.submit(model=model_dir, prompt=PROMPT, drafter="ar", max_new_tokens=480, api_name="/run")
    deadline = time.time() + 60
    while len(job.outputs()) < 2 and time.time() < deadline:
        time.sleep(0.02)
    t0 = time.time()
    answer = client.predict(api_name="/stop")  # answered once the worker's run has ended
    assert "stopped" in answer and "Stopping" not in answer, answer
    final = job.result(timeout=120)
    assert "stopped by you" in final[cards_at], final[cards_at][-400:]
    assert time.time() - t0 < 10
    assert "Nothing is running." in client.predict(api_name="/stop")
