"""The Step tab's explanation handlers (specviz.ui.teach) as plain functions on a session, no browser."""

from __future__ import annotations

import pytest

from specviz import api
from specviz.ui import teach as ui_teach
from specviz.ui.session import Session, detok_for

gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def clasp_session(tiny_model_dir):
    loaded, gen = api.start(tiny_model_dir, "clasp", "def add(a, b):\n", max_new_tokens=12,
                            options={"skip_ratio": 0.4, "dp_interval": 2, "k": 4, "threshold": 0.0})
    for _ in gen:
        pass
    session = Session()
    session.trace, session.decode, session.model_ref = gen.trace, detok_for(loaded), (tiny_model_dir, None, None)
    return session


def test_on_step_explains_the_step_and_sets_the_lens_range(clasp_session):
    clasp_session.selected_step = 1
    lesson, cell, lens_update = ui_teach.on_step(None, None, clasp_session)
    assert "greedy acceptance" in lesson and "what the verifier reused" in lesson
    assert "DP table used from step 1" in cell and "on the chosen path" in cell  # blank = the final cell
    assert lens_update["maximum"] == len(clasp_session.trace.generated)


def test_explain_cell_follows_the_picked_cell(clasp_session):
    clasp_session.selected_step = 1
    assert "cell (i = 2, j = 1)" in ui_teach.explain_cell(2, 1, clasp_session)
    assert "inside the table" in ui_teach.explain_cell(99, 0, clasp_session)


def test_explanations_follow_the_step_the_views_show_not_the_slider(clasp_session):
    """A run's updates and a pick on the slider set the session's step; the Explain views read it
    there (the slider's value in the browser lagged a run, and after a shorter run Gradio refused
    the old value as above the slider's new maximum)."""
    from specviz.ui.handlers import rerender_step
    from specviz.ui.render import render, step_to_show

    render(clasp_session, {"plots"})
    shown = step_to_show(clasp_session.trace, clasp_session.mode)
    assert clasp_session.selected_step == shown
    assert f"<h4>Step {shown}:" in ui_teach.on_step(None, None, clasp_session)[0]
    rerender_step(1, clasp_session)
    assert clasp_session.selected_step == 1
    assert "<h4>Step 1:" in ui_teach.on_step(None, None, clasp_session)[0]


def test_after_a_run_the_step_views_open_on_the_last_step_that_drafted(clasp_session):
    """A run's last step often has no room left to draft; the views open on the last that did
    (in step mode, on the step just taken)."""
    from types import SimpleNamespace

    from specviz.ui.render import step_to_show

    steps = [SimpleNamespace(index=i, draft_tokens=d) for i, d in enumerate([[], [5, 6], [7], [], []])]
    trace = SimpleNamespace(steps=steps)
    assert step_to_show(trace, "run") == 2
    assert step_to_show(trace, "step") == 4
    assert step_to_show(SimpleNamespace(steps=steps[:1]), "run") == 0  # nothing drafted at all: the last
    assert step_to_show(None, "run") == 0
    real = clasp_session.trace
    assert real.steps[step_to_show(real, "run")].draft_tokens


def test_handlers_without_a_run_say_what_to_do():
    assert "Run or Step" in ui_teach.explain_step(0, None)
    assert "Run CLaSp" in ui_teach.explain_cell(1, 1, Session())
    fig = ui_teach.lens(None, 1, Session())
    assert "Pick a position" in fig.layout.annotations[0].text


def test_lens_runs_the_model_on_the_runs_tokens(clasp_session):
    fig = ui_teach.lens(None, 3, clasp_session)
    heat = fig.data[0]
    n_layers = clasp_session.trace.num_layers
    assert len(heat.y) == n_layers and heat.y[-1] == f"{n_layers} (full model)"
    # greedy run: the full model's top token at position 3 is the token the run chose there
    assert heat.text[-1][0].endswith("✓")
    with pytest.raises(gr.Error, match="between 1 and"):
        ui_teach.lens(None, 0, clasp_session)
