"""One declaration per drafter: a toy drafter declared only here shows up in `make_drafter`, the
CLI (`--help`, its flag, a run) and the UI (drafter list, panel, API parameters, validation),
with no other edit; and the built-in declarations agree with their drafters' constructors."""

from __future__ import annotations

import inspect
import json

import gradio as gr
import pytest

from specviz import cli, ui
from specviz.drafters import DRAFTERS, Declaration, Draft, Option, make_drafter, register, unregister
from specviz.ui import handlers
from specviz.ui.config import AppConfig
from tests.tiny import tiny_model

PROMPT = "def add(a, b):\n    return a + b\n"


class Echo:
    """Drafts the pending token again, `width` times (deterministic, so verification is exact)."""

    name = "toy-echo"
    wants_states = False

    def __init__(self, width: int = 2):
        if not isinstance(width, int) or not 1 <= width <= 8:
            raise ValueError(f"width must be an integer in [1, 8], got {width!r}")
        self.width = width

    def start(self, state, states) -> None:
        pass

    def propose(self, state) -> Draft:
        n = min(self.width, state.max_draft)
        return Draft(tokens=[state.tokens[-1]] * n, token_probs=[1.0] * n)

    def observe(self, result) -> None:
        pass

    def settings(self) -> dict:
        return {"width": self.width}


TOY = Declaration(
    Echo.name, "Echo (toy)", "Proposes the last token again, a few times.",
    lambda target, **options: Echo(**options),
    (Option("width", "int", 2, "how many copies to draft", flag="--echo-width", label="echo width", ui_default=3,
            minimum=1, maximum=8, step=1),))


@pytest.fixture
def toy():
    register(TOY)
    try:
        yield TOY
    finally:
        unregister(TOY.name)
    assert TOY.name not in DRAFTERS and "--echo-width" not in cli.drafter_flags()


def test_toy_builds_by_name(toy):
    drafter = make_drafter("toy-echo", tiny_model("llama", num_layers=2), width=4)
    assert isinstance(drafter, Echo) and drafter.width == 4
    with pytest.raises(ValueError, match="bad option for drafter 'toy-echo'"):
        make_drafter("toy-echo", tiny_model("llama", num_layers=2), depth=3)


def test_toy_is_on_the_command_line(toy, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one help line per flag
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "--echo-width ECHO_WIDTH" in out and "toy-echo: how many copies to draft (default 2)" in out
    assert f"one of: {', '.join(DRAFTERS)}" in out and DRAFTERS and list(DRAFTERS)[-1] == "toy-echo"
    code = cli.main(["generate", "--model", tiny_model_dir, "--drafter", "toy-echo", "--echo-width", "3",
                     "--prompt", PROMPT, "--max-new-tokens", "6", "--raw", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["trace"]["drafter"] == "toy-echo" and data["trace"]["settings"]["width"] == 3


def test_toy_has_a_ui_panel(toy, tiny_model_dir):
    assert "toy-echo" in ui.drafter_names()
    assert ui.spec_for("toy-echo").controls == (ui.Control("width", "int", "echo width", 3, 1, 8, 1),)
    assert ui.control_values(tiny_model_dir, "toy-echo") == {"width": 3}
    with pytest.raises(ValueError, match="width must be between 1 and 8, got 9"):
        ui.check_ranges("toy-echo", {"width": 9})

    demo = ui.build_app(model_names=[tiny_model_dir])
    params = [p["parameter_name"] for p in demo.get_api_info()["named_endpoints"]["/run"]["parameters"]]
    assert ui.param_name("toy-echo", "width") == "toy_echo_width" and "toy_echo_width" in params
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sv-drafter")
    assert ("toy-echo · Echo (toy)", "toy-echo") in dropdown.choices, dropdown.choices


def test_toy_runs_through_the_handlers(toy, tiny_model_dir):
    """The handlers are plain functions: Step with the toy's panel value, no app, no browser."""
    config = AppConfig([tiny_model_dir], tiny_model_dir)
    args = (tiny_model_dir, PROMPT, "toy-echo", 8, 0.0, 1.0, 0, 0, "", None)
    out = handlers.step(config, *args, toy_echo_width=5, chat=False)
    session = out[-1]
    assert session.trace.drafter == "toy-echo" and session.trace.settings["width"] == 5
    with pytest.raises(gr.Error, match="width must be between 1 and 8"):
        handlers.step(config, *args, toy_echo_width=9)
    message, same = handlers.stop(session)  # nothing streams in step mode: Stop ends it and says so
    assert "Step mode ended" in message and same is session and session.gen is None


def _constructor(name: str, target):
    """The class a built-in drafter's factory builds (with what it needs to build at all)."""
    needs = {"draft-model": {"draft_model": target}, "ctc": {"random_head": True},
             "eagle": {"random_head": True}, "lookup-then-head": {"random_head": True}}.get(name, {})
    return type(make_drafter(name, target, **needs))


@pytest.mark.parametrize("name", [n for n in DRAFTERS if n != TOY.name])
def test_declared_defaults_are_the_constructors(name):
    """A declaration's `default` is what the drafter uses when the option is not given."""
    target = tiny_model("llama", num_layers=6)
    params = inspect.signature(_constructor(name, target)).parameters
    for option in DRAFTERS[name].options:
        if option.name in params:
            assert params[option.name].default == option.default, (name, option.name)


def test_every_flag_means_one_option():
    flags = cli.drafter_flags()
    assert {"--k", "--threshold", "--skip", "--skip-ratio", "--exit-layer", "--draft-model", "--max-ngram",
            "--min-ngram", "--dp-interval", "--draft-exit", "--verify-exit", "--validate-every", "--head",
            "--adapter", "--draft-vocab", "--lookup-length", "--answers", "--answer-confidence", "--then",
            "--then-k", "--then-threshold"} == set(flags)
    assert flags["--k"].drafters == [n for n in DRAFTERS if "k" in DRAFTERS[n].option_names()]
