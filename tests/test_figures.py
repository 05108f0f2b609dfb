"""specviz.figures on hand-built traces: no model, no UI."""

from __future__ import annotations

import html
import json
import math
import re

import plotly.graph_objects as go
import pytest

from specviz import figures
from specviz.figures import PlainRun
from specviz.trace import StepEvent, Trace, compute_metrics

VOCAB = {10: "def", 11: " f", 12: "(x", 13: "):", 14: "\n", 15: "    return", 16: " x", 17: " <b>&", 18: "\n",
         19: "!", 20: " y", 2: "</s>"}


def decode(ids):
    return "".join(VOCAB.get(i, f"⟨{i}⟩") for i in ids)


def make_trace(drafter="static-skip", num_layers=4, info=None, temperature=0.0) -> Trace:
    """prefill -> 10; step 1 drafts 11 12 13, accepts 2, target 19; step 2 drafts 14 15, accepts
    both, bonus 16; step 3 drafts 17 18, accepts 0, target 20."""
    info = info or (lambda i: {"skipped_layers": [1, 2]})
    steps = [
        StepEvent(0, [], 0, 10, [10], t_end=0.010),
        StepEvent(1, [11, 12, 13], 2, 19, [11, 12, 19], [0.9, 0.8, 0.7], [0.95, 0.6, 0.1], 0.004, 0.006, 0.0, 0.020, info(1)),
        StepEvent(2, [14, 15], 2, 16, [14, 15, 16], [0.99, 0.97], [0.98, 0.9], 0.003, 0.006, 0.001, 0.030, info(2)),
        StepEvent(3, [17, 18], 0, 20, [20], [0.5, 0.4], [0.01, 0.2], 0.003, 0.006, 0.0, 0.040, info(3)),
    ]
    return Trace(drafter=drafter, settings={"temperature": temperature, "k": 3}, model="hand", num_layers=num_layers,
                 prompt_ids=[1, 10], t_prefill=0.010, steps=steps, finish_reason="length")


def ar_trace() -> Trace:
    steps = [StepEvent(i, [], 0, 10 + i, [10 + i], t_end=0.01 * (i + 1)) for i in range(4)]
    return Trace("ar", {"temperature": 0.0}, "hand", 4, [1], 0.01, steps, "length")


def plain_for(trace: Trace, wall=0.08) -> PlainRun:
    n = len(trace.generated)
    return PlainRun(list(trace.generated), [wall * (i + 1) / n for i in range(n)], wall)


def plain_text(markup: str) -> str:
    """Plotly markup as one line of the text it shows (line breaks read as spaces)."""
    return re.sub(r"<[^>]+>", "", markup.replace("<br>", " "))


def annotations_text(fig: go.Figure) -> str:
    return " ".join(plain_text(a.text) for a in fig.layout.annotations)


# -- tokens -----------------------------------------------------------------------------------------

def test_token_html_classes_titles_and_escaping():
    trace = make_trace()
    out = figures.token_html(trace, decode, prompt_text="<prompt>")
    assert out.count('class="sv-acc sv-tok"') == 4  # 2 + 2 accepted drafts
    assert out.count('class="sv-tgt sv-tok"') == 4  # prefill + one per verification
    assert out.count('class="sv-rej sv-tok"') == 3  # 13, then 17 and 18
    assert "&lt;prompt&gt;" in out and "<prompt>" not in out
    assert "&lt;b&gt;&amp;" in out and "<b>&" not in out  # rejected draft text escaped
    assert "p (target) = 0.950 · q (draft) = 0.900" in out
    assert "bonus token: all 2 drafts accepted" in out
    assert "rejected by the target" in out and "discarded: comes after a rejected token" in out
    assert "white-space: pre-wrap" in out
    # newline token: a visible marker plus a real line break inside an accepted span
    assert '<span class="sv-nl">↵</span>\n' in out


def test_token_html_without_rejected_and_plain_text_order():
    trace = make_trace()
    out = figures.token_html(trace, decode, show_rejected=False, prompt_text="")
    assert 'class="sv-rej sv-tok"' not in out
    text = re.sub(r"<style>.*?</style>", "", out, flags=re.S)
    text = re.sub(r'<span class="sv-nl">↵</span>', "", text)
    text = re.sub(r"<[^>]+>", "", text)
    import html

    assert html.unescape(text) == decode(trace.generated)


def test_token_html_empty_and_streaming():
    assert "Press Run" in figures.token_html(None)
    assert "sv-caret" in figures.token_html(make_trace(), decode, streaming=True)


def test_token_pieces_diff_decoding():
    spaced = {1: "a", 2: "b"}

    def sp_decode(ids):  # a sentencepiece-like decoder: strips the leading space of the text
        return " ".join(spaced[i] for i in ids)

    assert figures.token_pieces(sp_decode, [1], [2, 1]) == [" b", " a"]
    assert figures.token_pieces(None, [], [5]) == ["⟨5⟩"]


# -- cards -------------------------------------------------------------------------------------------

def test_cards_and_lossless_badge():
    trace = make_trace()
    plain = plain_for(trace)
    out = figures.cards_html(trace, plain)
    m = compute_metrics(trace)
    assert f"{m.tokens_per_s:.1f}" in out
    assert f"{m.tokens_per_s / plain.tokens_per_s:.2f}×" in out
    assert f"{m.tau:.2f}" in out
    assert "57%" in out  # 4 of 7 drafts accepted
    assert "✓ lossless" in out and "equals plain greedy generate()" in out

    wrong = PlainRun([10, 11, 12, 99, 15, 16, 20], [0.01] * 7, 0.07)
    assert figures.lossless_check(trace, wrong)[0] == "differs"
    assert "✗ differs" in figures.cards_html(trace, wrong)
    assert figures.lossless_check(trace, None)[0] == "pending"
    assert figures.lossless_check(make_trace(temperature=0.7), plain)[0] == "na"
    stopped = make_trace()
    stopped.steps = stopped.steps[:2]
    stopped.finish_reason = "stopped"
    assert figures.lossless_check(stopped, plain)[0] == "prefix"


@pytest.mark.parametrize("dtype, margin, state", [
    ("bfloat16", 0.06, "near-tie"),    # within bf16 rounding of a logit of 18: a near-tie, not a bug
    ("bfloat16", 3.0, "differs"),      # a wide margin: a real difference, still a failure
    ("float16", 0.06, "differs"),      # fp16 rounds 8x finer: 0.06 is beyond it at this logit size
    ("float32", 0.0, "differs"),       # fp32 is exact: any difference is a failure
    ("bfloat16", None, "differs"),     # margin not measured: no excuse
])
def test_half_precision_difference_at_a_near_tie(dtype, margin, state):
    trace = make_trace()
    ref = list(trace.generated)
    ref[3] = 99
    margins = {} if margin is None else {3: (margin, 18.0)}
    plain = PlainRun(ref, [0.01] * len(ref), 0.07, dtype=dtype, margins=margins)
    got, message = figures.lossless_check(trace, plain)
    assert got == state, message
    if state == "near-tie":
        assert "identical up to bf16 rounding at a near-tie: position 3, margin 0.06" in message
        assert "≈ lossless (near-tie)" in figures.cards_html(trace, plain)
    else:
        assert "✗ differs" in figures.cards_html(trace, plain)


def test_cards_step_mode_uses_engine_time():
    trace = make_trace()
    trace.finish_reason = ""
    out = figures.cards_html(trace, plain_for(trace), clock="busy")
    busy = figures.busy_times(trace)[-1]
    assert math.isclose(busy, 0.010 + 0.010 + 0.010 + 0.009)
    assert f"{len(trace.generated) / busy:.1f}" in out
    assert "step mode" in out


# -- skip layers ----------------------------------------------------------------------------------------

def test_skip_heatmap_static():
    fig = figures.skip_heatmap(make_trace())
    heat = fig.data[0]
    assert list(heat.x) == [1, 2, 3]
    z = [list(row) for row in heat.z]
    assert z == [[0, 0, 0], [1, 1, 1], [1, 1, 1], [0, 0, 0]]


def test_skip_heatmap_leaves_a_step_that_drafted_nothing_blank():
    """The cost model's plain steps skipped nothing, whatever layers the drafter would have used."""
    trace = make_trace()
    trace.steps[2].draft_tokens, trace.steps[2].accepted = [], 0
    fig = figures.skip_heatmap(trace)
    assert [list(row) for row in fig.data[0].z] == [[0, None, 0], [1, None, 1], [1, None, 1], [0, None, 0]]
    assert "nothing drafted" in fig.data[0].text[0][1]
    assert "blank columns: steps that drafted nothing" in plain_text(fig.layout.title.text)
    assert "blank" not in figures.skip_heatmap(make_trace()).layout.title.text


def test_skip_heatmap_hispec_levels_and_early_exit():
    fig = figures.skip_heatmap(make_trace("hispec", 8, info=lambda i: {"exit_layer": 1, "verify_exit": 3,
                                                                         "skipped_layers": list(range(1, 8))}))
    column = [row[0] for row in fig.data[0].z]
    assert column == [0, 2, 2, 1, 1, 1, 1, 1]
    assert list(fig.data[0].colorbar.ticktext) == figures.LAYER_STATES
    plan = figures.layer_plan({"exit_layer": 2}, 4)
    assert plan == [0, 0, 1, 1]


def test_skip_heatmap_ar_says_so():
    fig = figures.skip_heatmap(ar_trace())
    assert not fig.data and "does not skip layers" in annotations_text(fig)


def clasp_info(step):
    grid = [[1.0, None], [0.99, 0.97], [0.98, 0.96], [None, 0.95]]
    ran = step in (1, 3)
    return {"skipped_layers": [1], "dp_ran": ran, "dp_grid": grid if ran else None,
            "dp_path": [[0, 0], [1, 0], [2, 1], [3, 1]] if ran else None, "dp_time": 0.002 if ran else 0.0}


def test_dp_grid_figure_path_and_persistence():
    trace = make_trace("clasp", 3, info=clasp_info)
    fig = figures.dp_grid_figure(trace, 3)
    heat, path = fig.data
    assert heat.z[0][1] is None and heat.z[3][1] == 0.95
    assert list(path.x) == [0, 0, 1, 1] and list(path.y) == [0, 1, 2, 3]
    assert "used from step 3 searched after step 2: 2.0 ms, counted as step 3's search time" in plain_text(fig.layout.title.text)
    # step 2 had no DP run: the grid from step 1 is in force
    assert figures.dp_step(trace, 2) == 1
    assert "used from step 1 still in force at step 2 searched after the prefill" in plain_text(figures.dp_grid_figure(trace, 2).layout.title.text)
    assert "No DP search had run yet at step 0" in annotations_text(figures.dp_grid_figure(trace, 0))
    assert "DP ran" in [t.name for t in figures.skip_heatmap(trace).data]
    assert "runs no layer search" in annotations_text(figures.dp_grid_figure(make_trace(), 2))
    trace.steps[3].info["dp_rode_verify"] = True
    title = plain_text(figures.dp_grid_figure(trace, 3).layout.title.text)
    assert "used from step 3 searched during step 2's verify pass: its layer calls and 2.0 ms" in title
    assert "rode step 2's verify pass" in figures.step_times_text(trace, trace.steps[3])
    # the step whose verify pass carried that DP says so (its verify time includes the DP's layer calls)
    assert "also carried the layer DP that step 3 drafts with" in figures.step_times_text(trace, trace.steps[2])
    assert "carried" not in figures.step_times_text(trace, trace.steps[1])


def test_step_details_ctc_frames_and_hispec_rounds():
    frames = [{"token": 14, "blank": False, "p": 0.9, "alt": 14, "kept": 0},
              {"token": 14, "blank": False, "p": 0.8, "alt": 14, "kept": None},
              {"token": None, "blank": True, "p": 0.7, "alt": 15, "kept": None},
              {"token": 15, "blank": False, "p": 0.6, "alt": 15, "kept": 1}]
    trace = make_trace("ctc", info=lambda i: {"head": "ctc", "frames": frames, "collapsed": [14, 15], "cut": "k"})
    out = figures.step_details_html(trace, 2, decode)
    assert "∅" in out and "draft token 1" in out and "merged repeat" in out
    assert "\\n |     return" in out  # collapsed draft shown as text
    rounds = [{"drafts": [14, 15], "accepted": 1, "correction": 16, "bonus": False}]
    trace = make_trace("hispec", 8, info=lambda i: {"exit_layer": 1, "verify_exit": 2, "rounds": rounds,
                                                     "tentative_source": ["draft", "verify", "draft"]})
    out = figures.step_details_html(trace, 1, decode)
    assert "round 1" in out and "1/2 passed exit v" in out
    assert "HiSpec: exit-v intermediate token" in figures.token_html(trace, decode)


# -- speed ------------------------------------------------------------------------------------------------

def test_speed_and_speedup_figures():
    trace = make_trace()
    plain = plain_for(trace, wall=0.08)
    fig = figures.speed_figure(trace, plain)
    spec, ref = fig.data
    assert list(spec.x) == [0.0, 0.010, 0.020, 0.030, 0.040]
    assert list(spec.y) == [0, 1, 4, 7, 8]
    assert list(ref.y) == list(range(9))
    up = figures.speedup_figure(trace, plain)
    # at step 1 we had 4 tokens at 20 ms; plain needed 40 ms for 4 tokens
    assert up.data[0].y[1] == pytest.approx(0.04 / 0.02)
    assert "measured once" in annotations_text(figures.speedup_figure(trace, None))
    assert "timed once the run ends" in annotations_text(figures.speed_figure(trace, None))


# -- acceptance -------------------------------------------------------------------------------------

def test_acceptance_figures():
    trace = make_trace()
    fig = figures.acceptance_figure(trace)
    m = compute_metrics(trace)
    assert list(fig.data[0].y) == m.acceptance_per_position == [2 / 3, 2 / 3, 0.0]
    hist = figures.accepted_histogram(trace)
    assert list(hist.data[0].x) == [0, 1, 2, 3] and list(hist.data[0].y) == [1, 0, 2, 0]
    some_empty = make_trace()
    some_empty.steps.append(StepEvent(4, [], 0, 21, [21], t_end=0.05))
    hist = figures.accepted_histogram(some_empty)
    assert list(hist.data[0].y) == [1, 0, 2, 0] and list(hist.data[1].x) == [-1] and list(hist.data[1].y) == [1]
    assert "drafted nothing" in annotations_text(figures.acceptance_figure(ar_trace()))
    assert "drafted nothing" in annotations_text(figures.accepted_histogram(ar_trace()))


def test_acceptance_labels_fit_a_phone():
    """A few bars say rate and sample size; more bars only the rate (the size is in the hover); past
    a dozen the labels would overlap at 390 px, so the hover alone carries them."""
    trace = make_trace()
    fig = figures.acceptance_figure(trace)
    assert list(fig.data[0].text) == ["67%<br>n=3", "67%<br>n=3", "0%<br>n=1"]
    assert list(fig.data[0].customdata) == compute_metrics(trace).drafted_per_position
    assert figures.acceptance_labels([0.5] * 7, [2] * 7) == ["50%"] * 7
    assert figures.acceptance_labels([0.5] * 13, [2] * 13) == [""] * 13


# -- Leviathan --------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, gamma, c, expected", [(0.8, 4, 0.55, 1.05), (0.9, 6, 0.5, 1.30), (0.95, 8, 0.5, 1.48)])
def test_leviathan_worked_values(alpha, gamma, c, expected):
    assert figures.leviathan_speedup(alpha, gamma, c) == pytest.approx(expected, abs=0.006)


def test_leviathan_inputs_from_trace():
    trace = make_trace()
    plain = plain_for(trace, wall=0.08)
    x = figures.leviathan_inputs(trace, plain)
    # 4 accepted, 2 rejections (steps 1 and 3) -> alpha = 4/6; gamma = 7/3 drafts per verification
    assert x.alpha == pytest.approx(4 / 6)
    assert x.gamma == pytest.approx(7 / 3)
    assert x.mean_draft_time == pytest.approx(0.010 / 7)
    assert x.mean_verify_time == pytest.approx(0.006)
    assert x.c == pytest.approx((0.010 / 7) / 0.006)
    assert x.predicted_speedup == pytest.approx(figures.leviathan_speedup(4 / 6, 7 / 3, x.c))
    assert x.measured_speedup == pytest.approx((8 / 0.04) / (8 / 0.08))
    md = figures.leviathan_markdown(trace, plain)
    assert "0.667" in md and f"{x.predicted_speedup:.2f}×" in md and "2.00×" in md
    assert "drafted nothing" in figures.leviathan_markdown(ar_trace())
    fig = figures.leviathan_figure(trace, plain)
    assert "measured" in [t.name for t in fig.data]


# -- compare --------------------------------------------------------------------------------------

def test_compare_rows_and_figure():
    trace = make_trace()
    plain = plain_for(trace)
    rows = [figures.compare_row(ar_trace(), plain), figures.compare_row(trace, plain),
            figures.CompareRow("ctc", error="missing head")]
    table = figures.compare_table(rows)
    assert [r[0] for r in table] == ["ar", "static-skip", "ctc"]
    assert table[1][7] == "yes" and table[0][7] == "NO"  # ar_trace produced other tokens
    assert table[2][8] == "missing head"
    fig = figures.compare_figure(rows, plain)
    assert list(fig.data[0].x) == ["ar", "static-skip"]
    assert "Press" in annotations_text(figures.compare_figure([]))


def test_methods_figure():
    fig = figures.methods_figure(16)
    assert len(fig.data[0].z) == 16 and len(fig.data[0].x) == 4


# -- phone widths -----------------------------------------------------------------------------------
# A 390 px phone leaves a figure about 325 px, and Plotly never wraps text: a title line of more
# than ~40 characters at 14 px (~56 in the smaller <sup> notes) ran off the right edge.
PHONE_TITLE_CHARS, PHONE_NOTE_CHARS = 40, 56


def every_figure() -> dict[str, go.Figure]:
    """Each figure the app shows, on traces whose titles carry their longest wording."""
    from specviz import teach
    from specviz.lens import LensResult, LensRow

    def clasp_riding(step):
        return {**clasp_info(step), "dp_rode_verify": step == 3}

    trace = make_trace("static-skip", 30)
    clasp = make_trace("clasp", 3, info=clasp_riding)
    plain = plain_for(trace)
    rows = [figures.CompareRow("prompt-lookup", 25.0, 1.2, 1.5, 0.4, 16, 0.6, "yes", speedup_range=(1.1, 1.3))]
    lens = LensResult(11, 16, 30, [LensRow(e, f"exit after layer {e}", [(16, 0.4), (17, 0.3)], 0.4, 1)
                                   for e in (8, 16, 30)])
    return {"heatmap": figures.skip_heatmap(trace), "dp riding": figures.dp_grid_figure(clasp, 3),
            "dp in force": figures.dp_grid_figure(clasp, 2), "speed": figures.speed_figure(trace, plain),
            "speedup": figures.speedup_figure(trace, plain), "no speedup yet": figures.speedup_figure(trace),
            "acceptance": figures.acceptance_figure(trace), "histogram": figures.accepted_histogram(trace),
            "compare": figures.compare_figure(rows), "leviathan": figures.leviathan_figure(trace, plain),
            "methods": figures.methods_figure(30), "lens": teach.lens_figure(lens, decode),
            "no DP": figures.dp_grid_figure(trace, 2)}


def shown_lines(fig: go.Figure) -> list[tuple[str, int]]:
    """(line, budget) for every line of a title, x-axis title or message the figure shows (a y-axis
    title runs up the plot's height, which a phone does not narrow)."""
    layout = fig.layout
    texts = [layout.title.text, layout.xaxis.title.text] + [a.text for a in layout.annotations]
    lines = []
    for text in filter(None, texts):
        for line in text.split("<br>"):
            small = line.startswith("<sup>")
            lines.append((html.unescape(re.sub(r"<[^>]+>", "", line)), PHONE_NOTE_CHARS if small else PHONE_TITLE_CHARS))
    return lines


@pytest.mark.parametrize("name", list(every_figure()))
def test_every_title_line_fits_a_phone(name):
    fig = every_figure()[name]
    too_long = [line for line, budget in shown_lines(fig) if len(line) > budget]
    assert not too_long, too_long
    assert not any("could not be drawn" in line for line, _ in shown_lines(fig))


def test_a_wrapped_title_gets_the_room_it_needs():
    """The plot area starts below the title's last line (a multi-line title overlapped the plot)."""
    clasp = make_trace("clasp", 3, info=clasp_info)
    short, tall = figures.speed_figure(clasp, plain_for(clasp)), figures.dp_grid_figure(clasp, 2)
    assert tall.layout.title.text.count("<br>") >= 2 and tall.layout.title.yref == "container"
    assert tall.layout.margin.t > short.layout.margin.t >= 45
    assert tall.layout.margin.t == figures.title_top_margin(tall.layout.title.text, legend=True)


# -- robustness -----------------------------------------------------------------------------------

def test_failsafe_turns_errors_into_messages():
    broken = make_trace("clasp", 3, info=lambda i: {"dp_grid": "not a grid", "dp_path": [[1]], "skipped_layers": 5})
    for fn in (figures.skip_heatmap, figures.dp_grid_figure):
        fig = fn(broken)
        assert isinstance(fig, go.Figure) and "could not be drawn" in annotations_text(fig)
    html_out = figures.token_html(broken, lambda ids: 1 / 0)
    assert "could not be drawn" in html_out and "ZeroDivisionError" in html_out

    @figures.failsafe("markdown")
    def bad():
        raise RuntimeError("boom")

    assert "boom" in bad()


def test_figures_from_json_round_trip():
    trace = make_trace("clasp", 3, info=clasp_info)
    again = Trace.from_json(trace.to_json())
    assert figures.token_html(again, decode) == figures.token_html(trace, decode)
    assert figures.dp_grid_figure(again, 3).to_json() == figures.dp_grid_figure(trace, 3).to_json()
    assert figures.skip_heatmap(again).to_json() == figures.skip_heatmap(trace).to_json()


def test_empty_trace_everywhere():
    for fn in (figures.skip_heatmap, figures.dp_grid_figure, figures.speed_figure, figures.speedup_figure,
               figures.acceptance_figure, figures.accepted_histogram, figures.leviathan_figure):
        fig = fn(None)
        assert isinstance(fig, go.Figure)
    assert "No run yet" in figures.cards_html(None)
    assert "appear here" in figures.step_details_html(None, None)


def test_step_mode_after_the_prefill_says_nothing_was_drafted_yet():
    """Step mode shows step 0 (the prefill) first: the layer views must not claim the drafter
    never skips layers or runs no search (issue: CLaSp / static skip were told so)."""
    for drafter in ("clasp", "static-skip"):
        trace = make_trace(drafter)
        trace.steps = trace.steps[:1]
        for fig in (figures.skip_heatmap(trace, 0), figures.dp_grid_figure(trace, 0)):
            text = json.dumps(fig.to_plotly_json()["layout"].get("annotations", []))
            assert "prefill" in text and "does not skip" not in text and "runs no layer search" not in text


def test_step_details_show_readable_values():
    trace = make_trace("clasp", 4, info=lambda i: {"skipped_layers": [1, 2], "dp_ran": False, "dp_path": None,
                                                  "dp_time": 0.01869822200001181, "dp_score": 0.987654321})
    out = figures.step_details_html(trace, 1)
    assert "None" not in out and "False" not in out and "0.01869822200001181" not in out
    assert "18.7 ms" in out and "0.9877" in out and ">no<" in out and "1, 2" in out
    lookup = figures.step_details_html(make_trace("prompt-lookup", 3, info=lambda i: {"source": "past <answers>"}), 1)
    assert ">past &lt;answers&gt;<" in lookup and "'past" not in lookup  # text as text, escaped, not a repr


def test_step_details_read_as_words_not_raw_trace_keys():
    """The info table showed the trace's keys and raw lists (dp_path as [[0, 0], [1, 0], ...]), and
    dp_rode_verify read "no" on the step whose verify pass carried the DP (the key is about the DP
    behind a step's own skip set)."""
    path = [[0, 0]] + [[i, min(3, i // 8)] for i in range(1, 31)]  # skips layers 7, 15 and 23

    def info(step):
        return {"skipped_layers": [2, 4, 6, 7, 8, 10, 12, 15, 23, 25], "dp_ran": step == 3, "dp_grid": [[1.0]],
                "dp_path": path if step == 3 else None, "dp_time": 0.0012, "dp_rode_verify": step == 3,
                "dp_score": 0.987654, "dp_age": 0, "dp_budget": 3, "dp_run_cos": [[1.0, None]] * 31,
                "surprise <key>": "<b>&"}

    trace = make_trace("clasp", 30, info=info)
    carrier, rider = (figures.step_details_html(trace, i, decode) for i in (2, 3))
    for out in (carrier, rider):
        assert "dp_path" not in out and "dp_rode_verify" not in out and "[[" not in out and "[1.0" not in out
        assert "10 of 30 layers skipped: 2, 4, 6, 7, 8, 10, 12, 15…" in out and "0.9877" in out
        assert "a 31 × 2 table" in out and "surprise &lt;key&gt;" in out and "&lt;b&gt;&amp;" in out
    assert "31 cells from (0, 0) to (30, 3); 3 of 30 layers skipped: 7, 15, 23" in rider
    assert "skip set chosen by a DP that rode a verify pass</b></td><td>yes: step 2&#x27;s verify pass" in rider
    assert "skip set chosen by a DP that rode a verify pass</b></td><td>no" in carrier
    assert "this step&#x27;s verify pass carried the next DP</b></td><td>yes: step 3 drafts with" in carrier
    assert "carried the next DP" not in rider  # the last step: no next DP to carry
    assert "carried the next DP</b></td><td>no" in figures.step_details_html(trace, 1, decode)


def test_a_stopped_run_does_not_promise_a_comparison():
    """After Stop, the badge and the speedup card must not say "comparing…" forever."""
    trace = make_trace()
    trace.finish_reason = "stopped"
    state, message = figures.lossless_check(trace, None)
    assert state == "stopped" and "run it to the end" in message
    cards = figures.cards_html(trace, None)
    assert "comparing" not in cards and "timed when the run ends" not in cards and "stopped" in cards


def test_hispec_panel_states_the_default_levels_the_code_uses():
    from specviz.drafters.hispec import default_levels
    from specviz.ui import spec_for

    labels = {c.kwarg: c.label for c in spec_for("hispec").controls}
    d, v = default_levels(32)
    assert f"L/{32 // d}" in labels["d"] and f"L/{32 // v}" in labels["v"]


def test_dp_cells_never_evaluated_show_no_cosine():
    """Cells no path reaches are None in the trace: blank, with no hover (it read "cosine 0.0000")."""
    grid = [[1.0, None], [0.9, 0.8], [None, 0.7]]
    trace = make_trace("clasp", 2, info=lambda i: {"skipped_layers": [1], "dp_ran": i == 1, "dp_grid": grid,
                                                   "dp_path": [[0, 0], [1, 1], [2, 1]], "dp_time": 0.001})
    fig = figures.dp_grid_figure(trace, 1)
    heat = fig.data[0]
    assert heat.hoverongaps is False and heat.z[0][1] is None and heat.z[2][0] is None
    assert "never evaluated" in fig.layout.xaxis.title.text


def test_progress_line_by_the_run_button():
    assert "results" not in figures.progress_html(None)  # nothing to point at yet
    trace = make_trace()
    trace.finish_reason = ""
    running = figures.progress_html(trace)
    assert "static-skip: 8 tokens" in running and "running" in running and 'href="#sv-cards"' in running
    trace.finish_reason = "length"
    plain = plain_for(trace)
    done = figures.progress_html(trace, plain)
    m = compute_metrics(trace)
    assert f"{m.tokens_per_s / plain.tokens_per_s:.2f}× generate()" in done and "done" in done
    assert "&lt;b&gt;" in figures.progress_html(None, None, "<b>queued</b>")


def test_learn_picture_uses_the_values_runs_use():
    """The Learn tab's picture came from a second copy of the defaults (E=4, v=4 while runs used
    E=6, v=8) and drew CLaSp as one block: it now resolves them through the drafters themselves."""
    from specviz.drafters.early_exit import EarlyExit
    from specviz.drafters.hispec import default_levels

    plans = {name.split(" (")[0]: plan for name, plan, _ in figures.method_plans(16)}
    assert plans["early exit"].index(1) == EarlyExit(16).exit_layer == 6
    d, v = default_levels(16)
    assert plans["HiSpec"].index(2) == d and plans["HiSpec"].index(1) == v
    skipped = [i for i, x in enumerate(plans["CLaSp"]) if x]
    assert max(skipped) - min(skipped) + 1 > len(skipped), "CLaSp's example set should not be one block"
    custom = figures.method_plans(30, {"static-skip": {"skip": "ratio", "skip_ratio": 0.1}})
    assert sum(custom[0][1]) == 3  # SmolLM2's swept static-skip default: the middle 3 of 30 layers


def test_speedup_is_only_shown_against_a_reference_timed_after_the_run():
    trace = make_trace()
    plain = plain_for(trace)
    assert "timed right after" in figures.cards_html(trace, plain)
    m = compute_metrics(trace)
    shown = f"{m.tokens_per_s / plain.tokens_per_s:.2f}×"
    assert shown in figures.cards_html(trace, plain)
    trace.finish_reason = ""  # still streaming: an older reference must not stand in for the speedup
    cards = figures.cards_html(trace, plain)
    assert shown not in cards and "timed right after the run" in cards


def test_compare_shows_the_spread_over_rounds():
    rows = [figures.CompareRow("ar", 20.0, 1.0, 1.0, None, 16, 0.8, "yes", speedup_range=(0.95, 1.04)),
            figures.CompareRow("prompt-lookup", 25.0, 1.2, 1.5, 0.4, 16, 0.6, "yes", speedup_range=(1.1, 1.3))]
    table = figures.compare_table(rows)
    assert table[1][2] == "1.20 (1.10–1.30)"
    bar = figures.compare_figure(rows).data[0]
    assert list(bar.error_y.array) == pytest.approx([0.04, 0.1]) and list(bar.error_y.arrayminus) == pytest.approx([0.05, 0.1])
    single = [figures.CompareRow("ar", 20.0, 1.0, 1.0, None, 16, 0.8, "yes")]
    assert figures.compare_table(single)[0][2] == "1.00" and figures.compare_figure(single).data[0].error_y.array is None


# -- issue 14 items 1 and 6: HiSpec's levels, CTC's q and frames, time with nothing drafted -----------------

def hispec_trace() -> Trace:
    """make_trace's steps as HiSpec's: step 1's tentative [11 12 13] = exit-d draft, exit-v token,
    exit-d draft (3 exit-d drafts, 2 passed); step 2's [14 15] = two exit-v tokens (2 drafts, none
    passed); step 3's [17 18] = exit-d draft + exit-v token (1 drafted, 1 passed)."""
    plan = {1: ([[11, 99], [13]], [1, 1], ["draft", "verify", "draft"]),
            2: ([[7, 8]], [0], ["verify", "verify"]),
            3: ([[17]], [1], ["draft", "verify"])}

    def info(i):
        drafts, accepted, sources = plan[i]
        rounds = [{"drafts": d, "accepted": a, "correction": None, "bonus": False} for d, a in zip(drafts, accepted)]
        return {"exit_layer": 1, "verify_exit": 2, "rounds": rounds, "tentative_source": sources}

    return make_trace("hispec", 8, info=info)


def test_hispec_counts_each_level_apart():
    """The header and the acceptance card counted every tentative token as "drafted"."""
    trace = hispec_trace()
    c = figures.hispec_levels(trace)
    # step 1: accepted 2 of [d, v, d]; step 2: 2 of [v, v]; step 3: 0 of [d, v]
    assert (c.drafted_d, c.passed_v, c.from_v) == (6, 3, 4)
    assert (c.full_from_d, c.full_from_v) == (1, 3)
    cards = figures.cards_html(trace, plain_for(trace))
    assert "3 of 6 exit-d drafts" in cards and "exit v added 4 tokens" in cards
    assert "4 of 7 tentative: 1/3 from exit d, 3/4 from exit v" in cards
    assert "of 7 drafts" not in cards  # no longer counted as drafts
    head = figures.step_details_html(trace, 1, decode)
    assert "3 tentative: 2 exit-d drafts that passed exit v (of 3 drafted) + 1 from exit v" in head
    assert "the full model accepted 1 + 1" in head and "3 drafted, 2 accepted" not in head
    assert "accepted (exit-d draft)" in head and "accepted (exit-v token)" in head and "q (exit v)" in head
    # other drafters keep the plain counts
    assert "3 drafted, 2 accepted, 3 committed" in figures.step_details_html(make_trace(), 1, decode)
    assert "2 of 7 drafts" not in figures.cards_html(make_trace(), None) and figures.hispec_levels(make_trace()) is None


def test_ctc_q_is_explained_and_frames_cut_by_k_are_marked():
    """CTC's q read 1.000 beside p = 0 with no word why, and 10 frames showed as if k were 10."""
    frames = [{"token": 14, "blank": False, "p": 0.9, "alt": 14, "kept": 0, "used": True},
              {"token": None, "blank": True, "p": 0.7, "alt": 15, "kept": None, "used": False},
              {"token": 15, "blank": False, "p": 0.43, "alt": 15, "kept": 1, "used": True},
              {"token": 16, "blank": False, "p": 0.3, "alt": 16, "kept": 2, "used": False}]
    trace = make_trace("ctc", info=lambda i: {"head": "ctc", "frames": frames, "collapsed": [14, 15, 16], "cut": "k",
                                              "token_frame_p": [0.9, 0.43]})
    for s in trace.steps[1:]:
        s.draft_probs = [1.0] * len(s.draft_tokens)
    out = figures.step_details_html(trace, 2, decode)
    assert "q (one-hot) · frame p" in out and "1.000 · 0.430" in out
    assert "deterministic" in out and "one-hot q" in out
    assert "collapsed token 3: cut by the draft length k" in out and "dotted = cut by the draft length k (1 of" in out
    assert out.count("solid") == 2 or out.count("2px solid") == 2
    assert "q (one-hot) · frame p = 1.000 · 0.900" in figures.token_html(trace, decode)
    # a trace made before "used" existed reads every kept frame as used
    old = [{k: v for k, v in f.items() if k != "used"} for f in frames]
    assert "cut by" not in figures.frame_cells(old, "k", decode)


def test_time_with_nothing_drafted_is_explained():
    trace = make_trace("ctc")
    s = trace.steps[3]
    s.draft_tokens, s.accepted, s.draft_probs, s.target_probs = [], 0, [], []
    out = figures.step_details_html(trace, 3, decode)
    assert "nothing drafted, yet drafting took time" in out and "below the threshold" in out
    # CLaSp's draft ends after an unsure token (still verified): no confidence stop to blame
    trace.drafter = "clasp"
    out = figures.step_details_html(trace, 3, decode)
    assert "nothing drafted, yet drafting took time" in out and "threshold" not in out
    s.t_draft = 0.00002  # a draft budget of 0 at the end: bookkeeping, nothing to explain
    assert "nothing drafted" not in figures.step_details_html(trace, 3, decode)
    assert "nothing drafted" not in figures.step_details_html(trace, 2, decode)


def test_a_step_the_cost_model_switched_off_says_so():
    """With --adaptive-length each step's header gives the cost model's length; a 0 with room left
    is the model's choice (plain decoding), a 0 at the end is the length limit."""
    trace = make_trace("draft-model")
    trace.settings["max_new_tokens"] = 10  # 1 + 3 + 3 made before step 3: room for 2 drafts and the target's token
    s = trace.steps[3]
    s.draft_tokens, s.accepted, s.draft_probs, s.target_probs, s.draft_cap = [], 0, [], [], 0
    out = figures.step_details_html(trace, 3, decode)
    assert "0 drafted (length chosen by the cost model: 0)" in out and "cost model switched drafting off" in out
    assert "what the drafter would have drafted with" in out  # its info rows are settings, not what ran
    trace.settings["max_new_tokens"] = 8  # only the target's own token fits: not the model's doing
    assert figures.switched_off(trace, s) is False and "switched" not in figures.step_details_html(trace, 3, decode)
    trace.steps[1].draft_cap = 3
    assert "3 drafted (length chosen by the cost model: 3)" in figures.step_details_html(trace, 1, decode)
    assert "cost model" not in figures.step_details_html(make_trace(), 1, decode)  # a fixed length: not mentioned
    trace.settings.update(adaptive_length=True, max_new_tokens=10)
    assert "1 of 3 steps were plain decoding steps" in figures.leviathan_markdown(trace)
    assert "cost model" not in figures.leviathan_markdown(make_trace())


def test_a_split_verify_pass_says_which_rows_ran():
    trace = make_trace("prompt-lookup")
    trace.steps[1].verify_split = 1  # 3 drafts, 2 accepted: drafts 1-2 checked by the first pass, the second ran
    trace.steps[3].verify_split = 0  # 2 drafts, none accepted: one row ran
    assert "verified in two passes: the pending token and 1 draft(s) first, then the other 2" in \
        figures.step_details_html(trace, 1, decode)
    out = figures.step_details_html(trace, 3, decode)
    assert "verified 1 of 3 rows: their logits already rejected draft 1" in out
    assert figures.split_text(trace.steps[2]) == ""  # one pass: nothing to say


def test_a_tap_pins_token_details_with_the_layers_it_ran():
    """The details were a `title` only (hover, no touch): every token is focusable, CSS :focus pins
    the same escaped text, and layer-skip tokens say which layers their draft ran."""
    trace = make_trace("static-skip", 4, info=lambda i: {"skipped_layers": [1, 2]})
    out = figures.token_html(trace, decode)
    tokens = re.findall(r'<span class="sv-(?:acc|tgt|rej) sv-tok" tabindex="0" title="([^"]*)">', out)
    assert len(tokens) == 11 and ".sv-tok:focus::after" in out and "content: attr(title)" in out
    assert "draft ran layers 0, 3 (2 of 4), skipped 1–2" in tokens[1]  # step 1's first accepted draft
    assert "the target ran all 4 layers" in tokens[0]
    hispec = figures.token_html(hispec_trace(), decode)
    assert "layers 0–0 drafted it, layers 1–1 checked it (exit v)" in hispec
    assert "layers 0–1 produced it (exit v)" in hispec
    assert "draft ran" not in figures.token_html(make_trace("ctc", info=lambda i: {"head": "ctc"}), decode)
    assert figures._ranges([0, 1, 2, 5, 7, 8]) == "0–2, 5, 7–8"


def test_learn_measures_a_step_mode_run_on_the_engine_clock_like_the_cards():
    """Step mode: the wall clock counts the visitor's pauses between Step presses, so the cards
    use the engine's own time; the Learn tab's measured speedup must use the same clock."""
    trace = make_trace()
    plain = plain_for(trace, wall=0.08)
    busy = figures.busy_times(trace)[-1]
    trace.steps[-1].t_end += 100.0  # a long pause before the last Step
    paused = figures.leviathan_inputs(trace, plain, "wall").measured_speedup
    engine = figures.leviathan_inputs(trace, plain, "busy").measured_speedup
    assert engine == pytest.approx((8 / busy) / plain.tokens_per_s)
    assert paused < 0.01 < engine
    assert f"**{engine:.2f}×**" in figures.leviathan_markdown(trace, plain, "busy")
    assert f"{engine:.2f}×" in figures.cards_html(trace, plain, "busy")
