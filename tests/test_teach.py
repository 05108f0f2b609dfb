"""specviz.teach (views that explain one step on its own numbers) and specviz.lens (the logit lens).

The views are tested on hand-built traces; what the engine and CLaSp record for them, and the
logit lens, on tiny random models."""

from __future__ import annotations

import html
import math
import re

import pytest
import torch

from specviz import teach
from specviz.drafters import make_drafter
from specviz.engine import Engine, GenerationConfig
from specviz.lens import logit_lens
from specviz.sampling import SamplingConfig
from specviz.trace import StepEvent, Trace
from tests.tiny import random_prompt, tiny_model

VOCAB = {10: "def", 11: " f", 12: "(x", 13: "):", 14: "\n", 15: " <b>&", 16: " x", 19: "!", 20: " y", 21: "a", 22: "b"}


def decode(ids):
    return "".join(VOCAB.get(i, f"⟨{i}⟩") for i in ids)


def trace_of(steps, temperature=0.0, num_layers=6, drafter="static-skip", **settings) -> Trace:
    prefill = StepEvent(0, [], 0, 10, [10])
    return Trace(drafter, {"temperature": temperature, **settings}, "hand", num_layers, [1, 10], 0.01,
                 [prefill] + steps, "length")


def text(html_out: str) -> str:
    """The visible text of an HTML fragment (tags and the style block dropped)."""
    html_out = re.sub(r"<style>.*?</style>", "", html_out, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html_out)))


# -- acceptance rule -----------------------------------------------------------------------------

def test_greedy_rule_shows_the_prefix_match_and_where_it_stopped():
    step = StepEvent(1, [11, 12, 13], 1, 19, [11, 19], [0.9, 0.8, 0.7], [0.95, 0.2, 0.1])
    out = text(teach.acceptance_html(trace_of([step]), 1, decode))
    assert "longest matching prefix" in out
    assert "also the target's top: accept" in out and "top is" in out and "after the stop: not scored" in out
    assert "correction" in out and "bonus" not in out
    assert "commits 1 draft token + 1 = 2" in out


def test_greedy_rule_names_the_bonus_when_every_draft_passes():
    step = StepEvent(1, [11, 12], 2, 13, [11, 12, 13], [0.9, 0.8], [0.95, 0.9])
    out = text(teach.acceptance_html(trace_of([step]), 1, decode))
    assert "bonus" in out and "✗" not in out


def test_sampling_rule_shows_ratio_draw_and_residual():
    # token 1: p/q = 0.5 and u = 0.3 -> accept; token 2: p/q = 0.25 and u = 0.9 -> reject
    step = StepEvent(1, [11, 12, 13], 1, 19, [11, 19], [0.4, 0.8, 0.5], [0.2, 0.2, 0.9],
                     draws=[0.3, 0.9], accept_detail={"p": 0.6, "q": 0.1, "residual": 0.625, "residual_mass": 0.8})
    out = text(teach.acceptance_html(trace_of([step], temperature=0.8), 1, decode))
    assert "rejection sampling" in out
    assert "0.500" in out and "0.300" in out  # min(1, p/q) and u of token 1
    assert "0.250" in out and "0.900" in out  # of token 2
    assert "✗ u ≥ min(1, p/q): reject" in out and "✓ u < min(1, p/q): accept" in out
    assert "residual" in out and "0.625" in out and "0.800" in out
    assert "after the rejection: not checked" in out


def test_sampling_rule_bonus_and_deterministic_drafter():
    step = StepEvent(1, [11, 12], 2, 13, [11, 12, 13], [1.0, 1.0], [0.7, 0.9], draws=[0.2, 0.5],
                     accept_detail={"p": 0.42})
    out = text(teach.acceptance_html(trace_of([step], temperature=1.0, drafter="ctc"), 1, decode))
    assert "bonus" in out and "0.420" in out
    assert "kept with probability p(x)" in out


def test_acceptance_escapes_token_text_and_handles_prefill_and_empty_drafts():
    step = StepEvent(1, [15], 0, 16, [16], [0.9], [0.1])
    empty = StepEvent(2, [], 0, 20, [20])
    trace = trace_of([step, empty])
    raw = teach.acceptance_html(trace, 1, decode)
    assert "<b>&" not in raw and "&lt;b&gt;&amp;" in raw
    assert "prefill" in text(teach.acceptance_html(trace, 0, decode))
    assert "nothing drafted" in text(teach.acceptance_html(trace, 2, decode))
    lookup = text(teach.acceptance_html(trace_of([step, empty], drafter="prompt-lookup"), 2, decode))
    assert "last n-gram occurs nowhere earlier" in lookup and "CTC" not in lookup  # the drafter's own reason
    off = StepEvent(2, [], 0, 20, [20], draft_cap=0)
    last = StepEvent(3, [], 0, 21, [21], draft_cap=0)  # 3 of 4 tokens made: no room left, whatever the model says
    switched = trace_of([step, off, last], drafter="draft-model", max_new_tokens=4)
    assert "cost model switched drafting off" in text(teach.acceptance_html(switched, 2, decode))
    assert "no room left" in text(teach.acceptance_html(switched, 3, decode))
    running = trace_of([step, off], drafter="draft-model", max_new_tokens=4)  # mid-run: the newest step too
    assert "cost model switched drafting off" in text(teach.acceptance_html(running, 2, decode))
    assert "Run or Step" in text(teach.acceptance_html(None, None))


def test_engine_records_the_draws_the_rule_used():
    """Every recorded draw agrees with the verdict: u < min(1, p/q) for the accepted drafts and
    u >= it at the rejection; one draw per token checked; the resampled token's detail is sane."""
    target = tiny_model("llama", seed=0, damp={2: 0.05, 3: 0.3, 4: 0.05})
    engine = Engine(target)
    drafter = make_drafter("early-exit", target, exit_layer=3, k=4)
    config = GenerationConfig(max_new_tokens=40, sampling=SamplingConfig(temperature=0.9, seed=3))
    trace = engine.generate(random_prompt(1), drafter, config)
    checked = rejected = 0
    for s in trace.steps[1:]:
        n = len(s.draft_tokens)
        assert len(s.draws) == min(n, s.accepted + 1)
        for i, u in enumerate(s.draws):
            ratio = min(1.0, s.target_probs[i] / s.draft_probs[i]) if s.draft_probs[i] > 0 else 1.0
            assert (u < ratio) == (i < s.accepted)
            checked += 1
        if s.accepted < n:
            rejected += 1
            d = s.accept_detail
            assert d["p"] > d["q"] - 1e-6 and 0 < d["residual"] <= 1 and 0 < d["residual_mass"] <= 1
        else:
            assert set(s.accept_detail) == {"p"}
        if n:
            assert s.reuse is not None and s.reuse[0] == 3 and s.reuse[1] in (n, n + 1)
    assert checked and rejected


def test_greedy_runs_record_no_draws():
    target = tiny_model("llama", seed=0)
    trace = Engine(target).generate(random_prompt(1), make_drafter("prompt-lookup", target), GenerationConfig(20))
    assert all(not s.draws and not s.accept_detail and s.reuse is None for s in trace.steps)


# -- CLaSp DP cell -------------------------------------------------------------------------------

def dp_info():
    """L = 4, M = 1, layers 1 and 2 skippable (ends protected); the DP skipped layer 2."""
    nan = None
    grid = [[1.0, nan], [1.0, nan], [1.0, 0.90], [1.0, 0.95], [nan, 0.97]]
    run = [[nan, nan], [nan, nan], [nan, nan], [nan, 0.93], [nan, 0.97]]
    skip = [[nan, nan], [nan, nan], [nan, 0.90], [nan, 0.95], [nan, nan]]
    return {"skipped_layers": [2], "dp_ran": True, "dp_grid": grid, "dp_path": [[0, 0], [1, 0], [2, 0], [3, 1], [4, 1]],
            "dp_run_cos": run, "dp_skip_cos": skip, "dp_budget": 1}


def dp_trace(info):
    steps = [StepEvent(1, [11, 12], 1, 19, [11, 19], [0.9, 0.8], [0.9, 0.1], info=info),
             StepEvent(2, [14], 1, 16, [14, 16], [0.9], [0.9], info={"skipped_layers": [2], "dp_ran": False})]
    return trace_of(steps, num_layers=4, drafter="clasp", protect_ends=True)


def test_dp_cell_shows_both_candidates_and_the_winner():
    out = text(teach.dp_cell_html(dp_trace(dp_info()), 1, 3, 1, decode))
    assert "0.9300" in out and "0.9500" in out
    assert "skip wins: layer 2 is skipped" in out and "on the chosen path" in out
    # x_i of the DP reported at step 1 come from the prefill's last prompt token
    assert "last prompt token" in out and "4 single-layer calls" in out


def test_dp_cell_run_wins_protected_layer_and_the_dp_in_force_later():
    trace = dp_trace(dp_info())
    out = text(teach.dp_cell_html(trace, 2, 4, 1, decode))  # step 2 uses step 1's DP
    assert "DP table used from step 1" in out
    assert "run wins: layer 3 runs" in out and "protected" in out


def test_dp_cell_special_cells():
    trace = dp_trace(dp_info())
    assert "never evaluated" in text(teach.dp_cell_html(trace, 1, 1, 1))
    assert "Column 0 skips nothing" in text(teach.dp_cell_html(trace, 1, 2, 0))
    assert "embedding" in text(teach.dp_cell_html(trace, 1, 0, 0))
    assert "inside the table" in text(teach.dp_cell_html(trace, 1, 9, 0))
    old = dp_info()
    del old["dp_run_cos"], old["dp_skip_cos"]
    assert "does not hold the losing candidate" in text(teach.dp_cell_html(dp_trace(old), 1, 3, 1))
    assert "pick the CLaSp drafter" in text(teach.dp_cell_html(trace_of([StepEvent(1, [11], 1, 12, [11, 12])]), 1, 1, 1))


def test_dp_source_token_is_the_last_accepted_token_of_the_previous_verification():
    info = dp_info()
    steps = [StepEvent(1, [11, 12], 1, 19, [11, 19], info=dict(info)),
             StepEvent(2, [14, 15], 2, 16, [14, 15, 16], info={"dp_ran": False}),
             StepEvent(3, [20], 0, 21, [21], info=dict(info))]
    trace = trace_of(steps, num_layers=4, drafter="clasp")
    context, token, _ = teach.dp_source_token(trace, 3)
    assert token == 15 and context == [1, 10, 10, 11, 19, 14]  # prompt, prefill's token, step 1, d1
    steps[1].accepted, steps[1].committed = 0, [16]
    context, token, where = teach.dp_source_token(trace, 3)
    assert token == 19 and "no draft was accepted" in where


def test_clasp_records_both_candidates_and_the_cell_keeps_the_better():
    target = tiny_model("llama", seed=0, num_layers=8, damp={2: 0.05, 3: 0.3, 4: 0.05, 5: 0.3})
    drafter = make_drafter("clasp", target, skip_ratio=0.4, dp_interval=2, k=4)
    trace = Engine(target).generate(random_prompt(2), drafter, GenerationConfig(max_new_tokens=24))
    grids = [s.info for s in trace.steps if s.info.get("dp_grid") is not None]
    assert grids
    compared = 0
    for info in grids:
        for i, row in enumerate(info["dp_grid"]):
            for j, value in enumerate(row):
                if i == 0 or j == 0 or value is None:
                    continue
                cands = [c for c in (info["dp_run_cos"][i][j], info["dp_skip_cos"][i][j]) if c is not None]
                assert cands and math.isclose(value, max(cands), abs_tol=1e-6)
                compared += 1
    assert compared


# -- reuse -------------------------------------------------------------------------------------

def test_reuse_cells_exact_below_the_first_skipped_layer():
    # 6 layers, layers 2 and 4 skipped; the draft fed 3 inputs (pending, d1, d2); d3 never fed
    step = StepEvent(1, [11, 12, 13], 2, 19, [11, 12, 19], [0.9] * 3, [0.9] * 3,
                     info={"skipped_layers": [2, 4]}, reuse=[2, 3])
    trace = trace_of([step])
    cells = teach.reuse_cells(trace, step)
    assert [row[0] for row in cells] == ["exact", "exact", "verify", "approx", "verify", "approx"]
    assert all(row[3] == "verify" for row in cells)  # the last draft never went through the draft
    out = text(teach.reuse_html(trace, 1, decode))
    assert "reused 6 of 24" in out and "never fed back" in out and "Below layer 2" in out


def test_reuse_hispec_has_no_approximate_cells_and_other_drafters_reuse_nothing():
    step = StepEvent(1, [11, 12], 2, 19, [11, 12, 19], [0.9] * 2, [0.9] * 2,
                     info={"exit_layer": 2, "verify_exit": 4}, reuse=[4, 2])
    cells = teach.reuse_cells(trace_of([step]), step)
    assert {c for row in cells for c in row} == {"exact", "verify"}
    assert all(row[c] == "exact" for row in cells[:4] for c in range(2))
    lookup = StepEvent(1, [11], 1, 12, [11, 12], [1.0], [0.9], info={"match": 3})
    assert "nothing to reuse" in text(teach.reuse_html(trace_of([lookup], drafter="prompt-lookup"), 1))


# -- HiSpec rounds ---------------------------------------------------------------------------------

def test_hispec_rounds_count_each_level():
    rounds = [{"drafts": [11, 12], "accepted": 2, "correction": 13, "bonus": True, "unsure_stop": False},
              {"drafts": [], "accepted": 0, "correction": 14, "bonus": True, "unsure_stop": True},
              {"drafts": [15, 16], "accepted": 1, "correction": 20, "bonus": False, "unsure_stop": False}]
    info = {"exit_layer": 2, "verify_exit": 4, "n": 6, "rounds": rounds,
            "tentative": [11, 12, 13, 14, 15, 20], "tentative_source": ["draft", "draft", "verify", "verify", "draft",
                                                                        "verify"]}
    step = StepEvent(1, [11, 12, 13, 14, 15, 20], 4, 22, [11, 12, 13, 14, 22], [0.9] * 6, [0.9] * 6, info=info)
    out = text(teach.hispec_rounds_html(trace_of([step], drafter="hispec"), 1, decode))
    assert "3 rounds: exit d drafted 4, exit v passed 3 and added 3 of its own" in out
    assert "accepted 4 of the 6 buffered tokens (2 from exit d, 2 from exit v)" in out
    assert "unsure" in out and "d = 2, v = 4, n = 6" in out
    assert "committed 2 exit-d tokens, 2 exit-v tokens and 1 full-model tokens" in out


# -- CTC ------------------------------------------------------------------------------------------

def frames_of(seq):
    return [{"token": None if t is None else t, "blank": t is None, "p": 0.9} for t in seq]


def test_ctc_collapse_keeps_a_repeat_separated_by_a_blank():
    frames = frames_of([21, 21, None, 21, 22, 22, None])
    assert teach.ctc_collapse(frames) == [21, 21, 22]
    assert teach.ctc_runs(frames)[:3] == [(0, 1, 21), (2, 2, None), (3, 3, 21)]
    step = StepEvent(1, [21, 21, 22], 3, 19, [21, 21, 22, 19], [1.0] * 3, [0.9] * 3,
                     info={"frames": frames, "collapsed": [21, 21, 22], "cut": "frames"})
    out = text(teach.ctc_html(trace_of([step], drafter="ctc"), 1, decode))
    assert "keeps both copies" in out and "2 merged" in out and "dropped" in out


def test_ctc_without_a_blank_separated_repeat_points_to_a_step_that_has_one():
    plain = StepEvent(1, [21, 22], 1, 19, [21, 19], [1.0] * 2, [0.9] * 2,
                      info={"frames": frames_of([21, None, 22]), "cut": "frames"})
    doubled = StepEvent(2, [21, 21], 0, 19, [19], [1.0] * 2, [0.1] * 2,
                        info={"frames": frames_of([21, None, 21]), "cut": "frames"})
    out = text(teach.ctc_html(trace_of([plain, doubled], drafter="ctc"), 1, decode))
    assert "step 2 has one" in out


def test_ctc_runs_match_the_drafters_own_collapse():
    target = tiny_model("llama", seed=0)
    drafter = make_drafter("ctc", target, random_head=True, k=5)
    trace = Engine(target).generate(random_prompt(3), drafter, GenerationConfig(max_new_tokens=20))
    drafted = [s for s in trace.steps[1:] if s.info.get("frames")]
    assert drafted
    for s in drafted:
        assert teach.ctc_collapse(s.info["frames"]) == s.info["collapsed"]


def test_step_lesson_picks_the_sections_of_the_drafter():
    step = StepEvent(1, [21, 22], 1, 19, [21, 19], [1.0] * 2, [0.9] * 2,
                     info={"frames": frames_of([21, None, 22]), "cut": "frames"})
    out = text(teach.step_lesson_html(trace_of([step], drafter="ctc"), 1, decode))
    assert "greedy acceptance" in out and "CTC frames" in out and "what the verifier reused" not in out


# -- logit lens ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lens_model():
    return tiny_model("llama", seed=4, num_layers=4)


def test_the_last_exit_is_the_models_own_prediction(lens_model):
    ids = random_prompt(4, length=9)
    with torch.no_grad():
        probs = lens_model(torch.tensor([ids])).logits[0, -1].softmax(-1)
    chosen = int(probs.argmax())
    result = logit_lens(lens_model, ids, chosen, position=3, top=3)
    assert [r.exit for r in result.rows] == [1, 2, 3, 4]
    last = result.rows[-1]
    assert last.top[0][0] == chosen and last.chosen_rank == 1
    assert math.isclose(last.chosen_p, float(probs[chosen]), rel_tol=1e-5)
    assert [t for t, _ in last.top] == torch.topk(probs, 3).indices.tolist()


def test_an_early_exit_is_norm_and_head_on_that_layers_state(lens_model):
    ids = random_prompt(5, length=7)
    with torch.no_grad():
        hidden = lens_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, -1]
        probs = lens_model.lm_head(lens_model.model.norm(hidden)).softmax(-1)
    row = logit_lens(lens_model, ids, 5).rows[1]
    assert row.exit == 2 and math.isclose(row.chosen_p, float(probs[5]), rel_tol=1e-5)
    assert row.chosen_rank == int((probs > probs[5]).sum()) + 1


def test_exit_adapters_add_a_row(lens_model):
    ids = random_prompt(6, length=7)
    plain = logit_lens(lens_model, ids, 7)
    same = logit_lens(lens_model, ids, 7, adapters={2: lambda h: h})
    assert [r.label for r in same.rows] == ["1", "2", "2 + adapter", "3", "4 (full model)"]
    assert same.rows[2].adapted and same.rows[2].top == plain.rows[1].top
    scaled = logit_lens(lens_model, ids, 7, adapters={2: lambda h: -h})
    assert scaled.rows[2].top != plain.rows[1].top
    with pytest.raises(ValueError, match="exit adapter"):
        logit_lens(lens_model, ids, 7, adapters={4: lambda h: h})


def test_lens_figure_one_row_per_exit_and_escapes(lens_model):
    result = logit_lens(lens_model, random_prompt(7, length=5), 9, adapters={1: lambda h: h * 2})
    fig = teach.lens_figure(result, lambda ids: "<i>" if ids[0] == 9 else "t")
    heat = fig.data[0]
    assert list(heat.y) == [r.label for r in result.rows] and len(heat.z) == 5
    assert heat.x[-1] == "p('&lt;i&gt;')"
    assert "could not be drawn" not in str(fig.layout.annotations)
    assert "Pick a position" in str(teach.lens_figure(None).layout.annotations[0].text)
    broken = teach.lens_figure(result, lambda ids: 1 / 0)  # a failing decoder: a message, not a crash
    assert "could not be drawn" in str(broken.layout.annotations) and "ZeroDivisionError" in str(broken.layout.annotations)


def test_exit_heads_show_a_draft_head_over_its_vocabulary(lens_model, tmp_path):
    """A trained adapter is shown as the drafter uses it: over its vocabulary subset only."""
    from specviz.drafters.draft_heads import DraftHead, ExitAdapter
    ids = random_prompt(6, length=7)
    subset = torch.tensor([3, 7, 11, 19])
    head = DraftHead(lens_model, ExitAdapter(lens_model.config.hidden_size, 8), subset)
    result = logit_lens(lens_model, ids, 7, exit_heads={2: ("adapter (4 tokens)", head)})
    row = next(r for r in result.rows if r.label == "2 + adapter (4 tokens)")
    assert row.adapted and {t for t, _ in row.top} <= set(subset.tolist())
    assert math.isclose(sum(p for _, p in logit_lens(lens_model, ids, 7, top=4, exit_heads={2: ("a", head)})
                            .rows[2].top), 1.0, rel_tol=1e-5)  # all probability inside the subset
    with pytest.raises(ValueError, match="exit adapter"):
        logit_lens(lens_model, ids, 7, exit_heads={0: ("a", head)})
