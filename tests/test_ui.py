"""The Gradio app through its HTTP API (gradio_client), on a tiny random model.

For every drafter: the streamed /run's final text equals what the engine produces directly
(specviz.api with the same settings); bad input comes back as a readable AppError.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from specviz import api  # noqa: E402
from specviz.trace import Trace  # noqa: E402
from specviz.drafters import DRAFTERS  # noqa: E402
from specviz.ui import OUTPUT_KEYS, build_app, param_name  # noqa: E402

PROMPT = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n"
MAX_NEW = 16
TEXT = OUTPUT_KEYS.index("text")
CARDS = OUTPUT_KEYS.index("cards")
TOKENS = OUTPUT_KEYS.index("tokens")
EXPORT = OUTPUT_KEYS.index("export")


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    threads = torch.get_num_threads()  # build_app(torch_threads=1) changes it process-wide
    demo = build_app(model_names=[tiny_model_dir], examples=[PROMPT], preload=True, torch_threads=1, max_new_tokens_limit=512)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield Client(url, verbose=False), tiny_model_dir
    finally:
        demo.close()
        torch.set_num_threads(threads)


def drafter_cases(model_dir: str):
    """(drafter, options the engine gets directly, the same options as UI parameters)."""
    return [
        ("ar", {}, {}),
        ("static-skip", {"skip": "alternate", "k": 3}, {"skip": "alternate", "k": 3}),
        ("static-skip", {"skip": [2, 3], "k": 5}, {"skip": "custom", "skip_layers": "2, 3", "k": 5}),
        ("early-exit", {"exit_layer": 2, "k": 4}, {"exit_layer": 2, "k": 4}),
        ("clasp", {"skip_ratio": 0.4, "dp_interval": 2, "k": 4, "threshold": 0.0},
         {"skip_ratio": 0.4, "dp_interval": 2, "k": 4, "threshold": 0.0}),
        ("hispec", {"d": 1, "v": 3, "n": 6, "k": 3}, {"d": 1, "v": 3, "n": 6, "k": 3}),
        ("ctc", {"random_head": True, "k": 4}, {"random_head": True, "k": 4}),
        ("eagle", {"random_head": True, "k": 3}, {"random_head": True, "k": 3}),
        ("lookup-then-head", {"random_head": True, "then_k": 2}, {"random_head": True, "then_k": 2}),
        ("draft-model", {"draft_model_name": model_dir, "k": 3}, {"draft_model_name": model_dir, "k": 3}),
        ("prompt-lookup", {"k": 6}, {"k": 6}),
    ]


def ui_kwargs(drafter: str, values: dict) -> dict:
    return {param_name(drafter, k): v for k, v in values.items()}


def engine_run(model_dir: str, drafter: str, options: dict) -> tuple[str, list[int]]:
    """The same generation straight through specviz.api: (text, token ids)."""
    loaded, gen = api.start(model_dir, drafter, PROMPT, MAX_NEW, 0.0, 1.0, 0, 0, dict(options))
    for _ in gen:
        pass
    return api.decode(loaded, gen.trace.generated), gen.trace.generated


def test_endpoints(app):
    client, _ = app
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/run", "/step", "/stop", "/compare"} <= set(named)
    params = [p["parameter_name"] for p in named["/run"]["parameters"]]
    assert params[:9] == ["model", "prompt", "drafter", "max_new_tokens", "temperature", "top_p", "top_k", "seed",
                          "extra_options"]
    assert "clasp_dp_interval" in params and "static_skip_k" in params
    assert not [n for n in named if n not in {"/run", "/step", "/stop", "/compare"}], named.keys()


@pytest.mark.parametrize("case", range(11))
def test_run_streams_engine_output(app, case):
    client, model_dir = app
    drafter, direct, ui_values = drafter_cases(model_dir)[case]
    if drafter not in DRAFTERS:
        pytest.skip(f"drafter {drafter} is not registered in this build")
    job = client.submit(model=model_dir, prompt=PROMPT, drafter=drafter, max_new_tokens=MAX_NEW,
                        api_name="/run", **ui_kwargs(drafter, ui_values))
    updates = list(job)
    final = job.outputs()[-1]
    assert len(job.outputs()) >= 2, "expected streamed intermediate updates before the final one"
    text, ids = engine_run(model_dir, drafter, direct)
    assert final[TEXT] == text
    assert "sv-tgt" in final[TOKENS]  # coloured spans arrived
    assert "✓ lossless" in final[CARDS]  # greedy: equal to plain generate()
    exported = Trace.from_json(Path(final[EXPORT]).read_text())
    assert exported.generated == ids and exported.drafter == drafter
    assert updates


def test_sampled_run_matches_engine(app):
    client, model_dir = app
    final = client.predict(model=model_dir, prompt=PROMPT, drafter="static-skip", max_new_tokens=MAX_NEW,
                           temperature=0.9, top_p=0.95, seed=7, api_name="/run", **ui_kwargs("static-skip", {"k": 3}))
    loaded, gen = api.start(model_dir, "static-skip", PROMPT, MAX_NEW, 0.9, 0.95, 0, 7, {"k": 3})
    for _ in gen:
        pass
    assert final[TEXT] == api.decode(loaded, gen.trace.generated)
    assert "sampled" in final[CARDS]


def test_cost_model_draft_length_reaches_the_engine(app):
    """The "draft length from the cost model" box runs the engine with adaptive_length: the same
    text as the engine run with it, each step's chosen length in the exported trace."""
    client, model_dir = app
    options = {"exit_layer": 2, "k": 4}
    final = client.predict(model=model_dir, prompt=PROMPT, drafter="early-exit", max_new_tokens=MAX_NEW,
                           adaptive_length=True, api_name="/run", **ui_kwargs("early-exit", options))
    loaded, gen = api.start(model_dir, "early-exit", PROMPT, MAX_NEW, 0.0, 1.0, 0, 0, dict(options),
                            adaptive_length=True)
    for _ in gen:
        pass
    assert final[TEXT] == api.decode(loaded, gen.trace.generated) and "✓ lossless" in final[CARDS]
    exported = Trace.from_json(Path(final[EXPORT]).read_text())
    caps = [s.draft_cap for s in exported.steps[1:]]
    assert exported.settings["adaptive_length"] is True and caps and all(c is not None and 0 <= c <= 4 for c in caps)


def test_step_one_cycle_at_a_time(app):
    client, model_dir = app
    kwargs = dict(model=model_dir, prompt=PROMPT, drafter="static-skip", max_new_tokens=MAX_NEW, api_name="/step",
                  **ui_kwargs("static-skip", {"k": 3}))
    loaded, gen = api.start(model_dir, "static-skip", PROMPT, MAX_NEW, 0.0, 1.0, 0, 0,
                            {"skip": "alternate", "k": 3, "threshold": 0.0, "skip_ratio": 0.5})
    events = list(gen)
    committed: list[int] = []
    for i in range(3):
        out = client.predict(**kwargs)
        committed += events[i].committed
        assert out[TEXT] == api.decode(loaded, committed), f"after step {i}"
        assert "step mode" in out[CARDS]
    # changing a setting starts over: one step is the prefill again
    out = client.predict(**dict(kwargs, max_new_tokens=MAX_NEW - 1))
    assert out[TEXT] == api.decode(loaded, events[0].committed)


def test_stop(app):
    client, model_dir = app
    job = client.submit(model=model_dir, prompt=PROMPT, drafter="ar", max_new_tokens=480, api_name="/run")
    import time

    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline:
        time.sleep(0.02)
    t0 = time.perf_counter()
    answer = client.predict(api_name="/stop")
    final = job.result(timeout=120)
    ended = time.perf_counter() - t0
    if "stopped by you" in final[CARDS]:
        # Stop answers once the run has ended, with its final state (an immediate "Stopping…" could
        # arrive after the run's last update and stay on the progress line for good)
        assert "stopped" in answer and "Stopping" not in answer, answer
        assert ended < 5, ended  # the run ends at its next step (it took ~4 s to stop in the browser)
    else:
        assert "stopped at EOS" in final[CARDS] and "Nothing is running" in answer


def test_compare(app):
    client, model_dir = app
    table, fig = client.predict(model=model_dir, prompt=PROMPT, max_new_tokens=MAX_NEW,
                                chosen=["ar", "static-skip", "prompt-lookup"], api_name="/compare")
    rows = table["data"]
    assert [r[0] for r in rows] == ["generate()", "ar", "static-skip", "prompt-lookup"]
    assert all(r[7] in ("yes", "reference") for r in rows), rows
    assert fig["type"] == "plotly"


@pytest.mark.parametrize("override, message", [
    ({"prompt": "   "}, "Prompt must not be empty"),
    ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and 512"),
    ({"model": "no/such-model"}, "Unknown model 'no/such-model'"),
    ({"drafter": "nope"}, "Unknown drafter 'nope'"),
    ({"temperature": -1}, "temperature must be between 0"),
    ({"top_k": -3}, "top_k must be >= 0"),
    ({"extra_options": "{k: 4"}, "Extra options must be a JSON object"),
    ({"static_skip_skip": "custom", "static_skip_skip_layers": "a,b"}, "custom skip layers must be integers"),
    ({"drafter": "early-exit", "early_exit_exit_layer": 9}, "exit_layer"),
])
def test_bad_input_is_a_readable_error(app, override, message):
    client, model_dir = app
    kwargs = dict(model=model_dir, prompt=PROMPT, drafter="static-skip", max_new_tokens=8)
    kwargs.update(override)
    for endpoint in ("/run", "/step"):
        with pytest.raises(AppError, match=message):
            client.predict(api_name=endpoint, **kwargs)


def test_app_module_imports():
    """`python app.py` / Spaces entry point: importing it builds the app without arguments."""
    import gradio as gr

    threads = torch.get_num_threads()
    try:
        import app  # noqa: PLC0415 - the repo root is on sys.path (pytest pythonpath)

        assert isinstance(app.demo, gr.Blocks)
    finally:
        torch.set_num_threads(threads)


def test_zero_gpu_decorates_model_events(monkeypatch, tiny_model_dir):
    """With `spaces` importable (ZeroGPU), run/step/compare and the logit lens go through spaces.GPU."""
    import specviz.ui as ui

    decorated = []

    def gpu(duration=None):
        def deco(fn):
            decorated.append((fn.__name__, duration))
            return fn
        return deco

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    try:
        importlib.reload(ui)
        assert ui.ZERO_GPU
        ui.build_app(model_names=[tiny_model_dir])
        assert {name for name, _ in decorated} == {"run", "step", "compare", "lens"}
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(ui)
    assert not ui.ZERO_GPU


@pytest.mark.parametrize("override, message", [
    ({"top_k": "NaN"}, "top_k must be an integer"),
    ({"seed": "inf"}, "seed must be an integer"),
    ({"temperature": 1e-38}, "at least 0.001"),
    ({"extra_options": "[" * 3000 + "]" * 3000}, "at most 2000 characters"),
    ({"extra_options": '{"k": {"a": {"b": 1}}}'}, "must be a single value"),
    ({"drafter": "ctc", "extra_options": '{"path": "/etc/shadow"}'}, "unknown option"),
    ({"drafter": "draft-model", "extra_options": '{"draft_model_name": "/etc"}'}, "not in this app's model list"),
    ({"drafter": "draft-model", "draft_model_draft_model_name": "mistralai/Mistral-7B-v0.1"}, "not in the list of choices"),
    ({"model": "<img src=x onerror=alert(1)>"}, "Unknown model '&lt;img src=x"),
    ({"prompt": "for i in range(10):\n" * 400}, "prompt too long"),
])
def test_adversarial_inputs_are_readable_errors(app, override, message):
    """The audit's inputs (issue 17): each a message naming the problem, never a generic error."""
    test_bad_input_is_a_readable_error(app, override, message)
