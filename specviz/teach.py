"""Views that teach a mechanism on the current run's own numbers (issue 14, "teach what is only
stated"): the acceptance rule of one step, how one cell of CLaSp's DP was decided, which of the
draft's work the verifier reused, HiSpec's rounds, CTC's frames and collapse, and a logit lens.

Like `figures`, everything here is a pure function of a `Trace` (or of a `LensResult`, which
`specviz.lens` computes with the model) and returns HTML or a plotly figure; nothing runs a model.
All text that reaches HTML is escaped.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any, Sequence

import plotly.graph_objects as go

from .figures import (BLUE, GREEN, GREY, ORANGE, SKY, VERMILLION, Decode, _fmt_p, _get, _layout, dp_step,
                      empty_draft_reason, failsafe, fig_title, message_figure, message_html, title_top_margin,
                      token_pieces)
from .trace import StepEvent, Trace

if TYPE_CHECKING:
    from .lens import LensResult

TEACH_CSS = """
.sv-teach { font-size: 13px; line-height: 1.45; }
.sv-teach h4 { margin: .7em 0 .25em 0; font-size: 13.5px; }
.sv-teach table { border-collapse: collapse; font-size: 12.5px; }
.sv-teach table td, .sv-teach table th { padding: 3px 6px !important; text-align: left; vertical-align: middle;
  font-variant-numeric: tabular-nums; }
.sv-teach .sv-why { opacity: .8; font-size: 12px; margin: .3em 0; }
.sv-teach code { font-size: 12px; }
.sv-tk { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre; padding: 0 3px;
  border-radius: 3px; border: 1px solid rgba(128,128,128,.35); display: inline-block; min-width: 1.2em; }
.sv-grid { display: grid; gap: 2px; margin: .3em 0; width: max-content; }
.sv-grid > div { font-size: 11px; text-align: center; min-width: 1.6em; padding: 1px 3px; border-radius: 2px; }
.sv-scrollx { overflow-x: auto; max-width: 100%; }
.sv-teach table.sv-rule td:last-child, .sv-teach th { white-space: nowrap; }
@media (max-width: 600px) {  /* a phone: the verdict column wraps instead of running off the screen */
  .sv-teach table.sv-rule td:last-child { white-space: normal; min-width: 6.5em; }
}
"""


def _wrap(body: str) -> str:
    return f"<style>{TEACH_CSS}</style><div class='sv-teach'>{body}</div>"


def _tok(piece: str, colour: str = "", title: str = "") -> str:
    """One token as a small monospace box (repr keeps spaces and newlines visible)."""
    style = f' style="background:{colour}"' if colour else ""
    tip = f' title="{html.escape(title, quote=True)}"' if title else ""
    return f'<span class="sv-tk"{style}{tip}>{html.escape(repr(piece)[1:-1] or "∅")}</span>'


def _context(trace: Trace, s: StepEvent) -> list[int]:
    """The token ids before step `s`'s verify inputs (prompt + everything committed earlier)."""
    return list(trace.prompt_ids) + [t for x in trace.steps[: s.index] for t in x.committed]


def _step(trace: Trace | None, step: int | None) -> StepEvent | None:
    if trace is None or not trace.steps:
        return None
    if step is None or not 0 <= int(step) < len(trace.steps):
        return trace.steps[-1]
    return trace.steps[int(step)]


def _greedy(trace: Trace) -> bool:
    return float(trace.settings.get("temperature", 0.0) or 0.0) == 0.0


# -- 1. the acceptance rule on this step's numbers ----------------------------------------------------

@failsafe("html")
def acceptance_html(trace: Trace | None, step: int | None, decode: Decode | None = None) -> str:
    """The acceptance rule replayed on step `step`: greedy prefix match, or rejection sampling with
    each token's p, q, min(1, p/q) and the uniform draw, the residual resample and the bonus token."""
    s = _step(trace, step)
    if s is None:
        return message_html("Run or Step to see the acceptance rule worked through on a step's own numbers.")
    assert trace is not None
    context = _context(trace, s)
    if s.index == 0:
        (first,) = token_pieces(decode, context, [s.target_token])
        return _wrap(f"<h4>Step 0: the prefill</h4>The target reads the prompt in one pass and picks its first token "
                     f"{_tok(first, 'rgba(230,159,0,.32)')} itself. Nothing was drafted, so no rule applies yet: "
                     "pick a later step.")
    if not s.draft_tokens:
        (own,) = token_pieces(decode, context, [s.target_token])
        why = empty_draft_reason(trace, s, " (e.g. the length limit: no room left for a draft)")
        return _wrap(f"<h4>Step {s.index}: nothing drafted</h4>The drafter proposed no token here{html.escape(why)}, "
                     f"so the verify pass added only the target's own token {_tok(own)}.")
    pieces = token_pieces(decode, context, s.draft_tokens)
    (target_piece,) = token_pieces(decode, context + s.draft_tokens[: s.accepted], [s.target_token])
    body = _greedy_rule(s, pieces, target_piece) if _greedy(trace) else _sampling_rule(trace, s, pieces, target_piece)
    if len(s.committed) < s.accepted + 1:
        body += ("<div class='sv-why'>An end-of-sequence token was accepted, so the commit stopped there "
                 f"({len(s.committed)} of {s.accepted + 1} tokens kept).</div>")
    return _wrap(body)


def _greedy_rule(s: StepEvent, pieces: list[str], target_piece: str) -> str:
    deterministic = (" Here q = 1: this drafter picks its tokens by rule (copying, collapsing frames), not from a "
                     "distribution." if s.draft_probs and all(abs(q - 1.0) < 1e-9 for q in s.draft_probs) else "")
    rows = []
    for i, (tok, piece) in enumerate(zip(s.draft_tokens, pieces)):
        p, q = _get(s.target_probs, i), _get(s.draft_probs, i)
        if i < s.accepted:
            check = f'<span style="color:{BLUE}">✓ also the target\'s top: accept</span>'
        elif i == s.accepted:
            check = f'<span style="color:{VERMILLION}">✗ the target\'s top is {_tok(target_piece)}: stop</span>'
        else:
            check = "<span style='opacity:.6'>– after the stop: not scored</span>"
        rows.append(f"<tr><td>{i + 1}</td><td>{_tok(piece)}</td><td>{_fmt_p(q)}</td><td>{_fmt_p(p)}</td>"
                    f"<td>{check}</td></tr>")
    n = len(s.draft_tokens)
    if s.accepted == n:
        last = (f"{'All ' + str(n) + ' drafts' if n > 1 else 'The draft'} matched, so the verify pass's last "
                "position (it saw every draft) gives a "
                f"<b>bonus</b> token for free: the target's top token there, {_tok(target_piece)}.")
    else:
        last = (f"The target adds its own top token at the first mismatch, {_tok(target_piece)} (the "
                "<b>correction</b>); the drafts after it are thrown away.")
    return (f"<h4>Step {s.index}: greedy acceptance = longest matching prefix</h4>"
            "<div class='sv-why'>With temperature 0 the target would write its top (argmax) token at every "
            "position. One verify pass over [last token, drafts] gives the target's top token after each prefix; "
            "a draft is kept only while it equals that token, so the output is exactly what the target alone "
            "writes. p (target) and q (draft) below are softmax probabilities at T = 1, shown for intuition: the rule looks "
            "only at which token is on top. The verifier applies the LM head to the first two positions, and to the "
            "rest only if both drafts there were accepted, so a draft that fails early never pays for scoring the "
            "positions behind it (their p shows –)."
            f"{deterministic}</div>"
            "<div class='sv-scrollx'><table class='sv-rule'><tr><th>#</th><th>draft x</th><th>q(x)</th><th>p(x)</th>"
            f"<th>check</th></tr>{''.join(rows)}</table></div>"
            f"<div>{last} This step commits {s.accepted} draft token{'s' if s.accepted != 1 else ''} + 1 = "
            f"{s.accepted + 1}.</div>")


def _sampling_rule(trace: Trace, s: StepEvent, pieces: list[str], target_piece: str) -> str:
    rows = []
    deterministic = bool(s.draft_probs) and all(abs(q - 1.0) < 1e-9 for q in s.draft_probs)
    for i, (tok, piece) in enumerate(zip(s.draft_tokens, pieces)):
        p, q = _get(s.target_probs, i), _get(s.draft_probs, i)
        ratio = None if p is None or q is None else (1.0 if q <= 0 else min(1.0, p / q))
        u = _get(s.draws, i)
        if i > s.accepted:
            verdict, u_text = "<span style='opacity:.6'>– after the rejection: not checked</span>", "–"
        else:
            u_text = _fmt_p(u) if u is not None else "not recorded"
            if i < s.accepted:
                verdict = f'<span style="color:{BLUE}">✓ u &lt; min(1, p/q): accept</span>'
            else:
                verdict = f'<span style="color:{VERMILLION}">✗ u ≥ min(1, p/q): reject</span>'
        rows.append(f"<tr><td>{i + 1}</td><td>{_tok(piece)}</td><td>{_fmt_p(p)}</td><td>{_fmt_p(q)}</td>"
                    f"<td>{_fmt_p(ratio)}</td><td>{u_text}</td><td>{verdict}</td></tr>")
    d = s.accept_detail or {}
    n = len(s.draft_tokens)
    if s.accepted == n:
        last = (f"Every draft passed, so the verify pass's last position gives a <b>bonus</b> token drawn from the "
                f"target's own distribution there: {_tok(target_piece)}"
                + (f" (p = {_fmt_p(d.get('p'))})." if d.get("p") is not None else "."))
    else:
        pq = ""
        if d.get("residual") is not None:
            pq = (f" It had p = {_fmt_p(d.get('p'))} and q = {_fmt_p(d.get('q'))}, so its share of the residual is "
                  f"max(0, p − q) / {_fmt_p(d.get('residual_mass'))} = {_fmt_p(d.get('residual'))}. The residual's mass "
                  f"Σ max(0, p − q) = {_fmt_p(d.get('residual_mass'))} is also the chance that this position rejects "
                  "at all (the distance between p and q).")
        last = (f"At the rejection the target draws its own token from the <b>residual</b> norm(max(0, p − q)): the "
                f"part of p the draft under-covers. It drew {_tok(target_piece)}.{pq} The drafts after the rejection "
                "are thrown away.")
    why = ("The drafter picks tokens deterministically (q = 1 for the token it chose), so a draft token is kept "
           "with probability p(x)." if deterministic else
           "A draft token x was sampled from the draft's distribution q; the target keeps it with probability "
           "min(1, p(x)/q(x)) — always where the target likes x at least as much as the draft did.")
    temp = trace.settings.get("temperature")
    return (f"<h4>Step {s.index}: rejection sampling (temperature {html.escape(str(temp))})</h4>"
            f"<div class='sv-why'>{why} Together, accept-or-resample gives tokens distributed exactly as the target "
            "alone would sample them. p (target) and q (draft) are after the same temperature / top-k / top-p; u is the uniform "
            "draw the rule made for that token.</div>"
            "<div class='sv-scrollx'><table class='sv-rule'><tr><th>#</th><th>draft x</th><th>p(x)</th><th>q(x)</th>"
            f"<th>min(1, p/q)</th><th>u</th><th>verdict</th></tr>{''.join(rows)}</table></div>"
            f"<div>{last}</div>")


# -- 2. CLaSp's DP: one cell --------------------------------------------------------------------------

def _cell(grid: Any, i: int, j: int) -> float | None:
    if not isinstance(grid, list) or not 0 <= i < len(grid) or not isinstance(grid[i], list):
        return None
    return grid[i][j] if 0 <= j < len(grid[i]) else None


def dp_source_token(trace: Trace, dp_step_index: int) -> tuple[list[int], int, str]:
    """(context, token id, where it comes from) of the token whose full-model states x_0..x_L the
    DP reported at step `dp_step_index` compared with: it ran after the previous verification, on
    that pass's last accepted token (after the prefill: the last prompt token)."""
    if dp_step_index <= 1:
        ctx = list(trace.prompt_ids)
        return ctx[:-1], ctx[-1], "the last prompt token, from the prefill pass"
    prev = trace.steps[dp_step_index - 1]
    context = _context(trace, prev)  # ends with the pending token of that verification
    if prev.accepted == 0:
        return context[:-1], context[-1], (f"the last token committed before step {prev.index} (its verify pass's "
                                           "first input; no draft was accepted)")
    return (context + prev.draft_tokens[: prev.accepted - 1], prev.draft_tokens[prev.accepted - 1],
            f"the last draft token step {prev.index}'s verification accepted")


@failsafe("html")
def dp_cell_html(trace: Trace | None, step: int | None, i: int | None, j: int | None,
                 decode: Decode | None = None) -> str:
    """How cell (i, j) of the DP in force at `step` was computed: its two candidates (skip layer
    i-1: the state passes through; run layer i-1: the state goes through it), their cosines to
    x_i and which won; where x_i comes from; why the table costs one layer call per row."""
    if trace is None or not trace.steps:
        return message_html("Run CLaSp, then pick a cell (layer i, skipped j) to see how the DP filled it in.")
    found = dp_step(trace, step)
    if found is None:
        return message_html("No CLaSp layer search at this step: pick the CLaSp drafter (and a step from 1 on).")
    info = trace.steps[found].info
    grid = info.get("dp_grid")
    L, M = len(grid) - 1, len(grid[0]) - 1
    try:
        i, j = int(i), int(j)
    except (TypeError, ValueError):
        i, j = L, M
    if not (0 <= i <= L and 0 <= j <= M):
        return message_html(f"Pick a cell inside the table: layer i in 0..{L}, skipped j in 0..{M}.")
    path = {(int(a), int(b)) for a, b in (info.get("dp_path") or [])}
    skipped = sorted(int(x) for x in info.get("skipped_layers") or [])
    on_path = " It is on the chosen path." if (i, j) in path else ""
    src_ctx, src_tok, src_where = dp_source_token(trace, found)
    (src_piece,) = token_pieces(decode, src_ctx, [src_tok])
    head = (f"<h4>DP table used from step {found}: cell (i = {i}, j = {j})</h4>"
            f"<div class='sv-why'>g[i][j] is the best hidden state the DP found after the first {i} layers with {j} "
            f"of them skipped; best means highest cosine to x<sub>{i}</sub>, the full model's state at that "
            "depth.</div>")
    value = _cell(grid, i, j)
    if value is None:
        body = (f"This cell was never evaluated: no way of skipping exactly {M} of the {L} layers passes through "
                f"it (after {i} layers either {j} skips are not yet possible, or too few skippable layers remain "
                f"to reach {M}). The table leaves it blank.")
    elif i == 0:
        body = "The start: no layer has run, so g[0][0] = x<sub>0</sub>, the token's embedding (cosine 1)."
    elif j == 0:
        body = (f"Column 0 skips nothing, so g[{i}][0] is x<sub>{i}</sub> itself (cosine 1): running every layer "
                "reproduces the full model, and the DP takes it from the verify pass instead of recomputing it.")
    else:
        protected = bool(trace.settings.get("protect_ends", True)) and i - 1 in (0, L - 1)
        body = _dp_candidates(info, i, j, value, protected) + on_path
    combos = math.comb(max(0, L - 2), M) if M <= L else 0
    where = (f"<div class='sv-why'><b>Where x<sub>i</sub> comes from.</b> The DP compares with the full model's "
             f"residual-stream states x<sub>0</sub>..x<sub>{L}</sub> (x<sub>i</sub> = the input of layer i; "
             f"x<sub>{L}</sub> = the last layer's output before the final norm) of one token: {_tok(src_piece)}, "
             f"{html.escape(src_where)}. The verifier computed these states anyway, so they cost nothing extra. "
             f"This search chose to skip layers {html.escape(', '.join(map(str, skipped)) or 'none')}.</div>"
             "<div class='sv-why'><b>Why one layer call per row.</b> Every cell of row i comes from row i−1: "
             "skip candidates are row i−1's states as they are (free), and all of row i−1's run candidates go "
             "through layer i−1 together, as one batch (copies of the same token at the same position, each "
             f"attending to the real context's cache). So the whole table costs {L} single-layer calls — about one "
             f"forward pass of one token — although it compares about {combos:,} ways of skipping {M} layers "
             "(if only the first and last layer are protected).</div>")
    return _wrap(head + f"<div>{body}</div>" + where)


def _dp_candidates(info: dict[str, Any], i: int, j: int, value: float, protected: bool) -> str:
    run = _cell(info.get("dp_run_cos"), i, j)
    skip = _cell(info.get("dp_skip_cos"), i, j)
    layer = i - 1
    if info.get("dp_run_cos") is None:
        return (f"Its value is cos = {value:.4f}. This trace does not hold the losing candidate's cosine (it was "
                "recorded before the app kept both); run CLaSp again to see both candidates.")
    run_txt = (f"cos(layer {layer}(g[{i - 1}][{j}]), x<sub>{i}</sub>) = <b>{run:.4f}</b>" if run is not None else
               f"not possible: cell ({i - 1}, {j}) is off every path")
    skip_txt = (f"cos(g[{i - 1}][{j - 1}], x<sub>{i}</sub>) = <b>{skip:.4f}</b>" if skip is not None else
                f"not possible: layer {layer} may not be skipped (the first and last layers are protected)"
                if protected else
                f"not possible: cell ({i - 1}, {j - 1}) is off every path")
    if run is not None and (skip is None or run >= skip):
        winner = f"<b>run</b> wins{' (a tie keeps run)' if skip is not None and run == skip else ''}: layer {layer} runs"
    else:
        winner = f"<b>skip</b> wins: layer {layer} is skipped on the way to this cell"
    colour_run = BLUE if "run" in winner[:12] else GREY
    colour_skip = ORANGE if "skip" in winner[:13] else GREY
    return ("<table>"
            f"<tr><td style='color:{colour_run}'>run layer {layer}</td><td>the state g[{i - 1}][{j}] goes through "
            f"layer {layer}</td><td>{run_txt}</td></tr>"
            f"<tr><td style='color:{colour_skip}'>skip layer {layer}</td><td>the state g[{i - 1}][{j - 1}] passes "
            f"through unchanged</td><td>{skip_txt}</td></tr></table>"
            f"<div>{winner}; g[{i}][{j}] keeps that candidate (cos {value:.4f}).</div>")


# -- 3. what the verifier reused --------------------------------------------------------------------

REUSE_KINDS = {
    "exact": ("exact: the draft computed it, the verifier reused it", "rgba(0,158,115,.75)"),
    "approx": ("approximate: the draft ran it on a state that had skipped layers; cropped and recomputed",
               "rgba(230,159,0,.75)"),
    "verify": ("computed by the verifier only (the draft skipped it, or never fed this token)",
               "rgba(86,180,233,.35)"),
}


def reuse_cells(trace: Trace, s: StepEvent) -> list[list[str]] | None:
    """Per layer (row) and verify input (column: the pending token, then each draft) whether the
    verifier reused exact draft work, recomputed the draft's approximate work, or computed it
    alone; None when the draft ran none of the target's layers."""
    from .figures import layer_plan

    L = int(trace.num_layers)
    plan = layer_plan(s.info or {}, L)
    if s.reuse is None or plan is None:
        return None
    exact_layers, fed = int(s.reuse[0]), int(s.reuse[1])
    columns = len(s.draft_tokens) + 1
    cells = []
    for layer in range(L):
        row = []
        for c in range(columns):
            if c < fed and layer < exact_layers:
                row.append("exact")
            elif c < fed and plan[layer] != 1:
                row.append("approx")
            else:
                row.append("verify")
        cells.append(row)
    return cells


@failsafe("html")
def reuse_html(trace: Trace | None, step: int | None, decode: Decode | None = None) -> str:
    """Layers × verify inputs of step `step`, coloured exact (reused) / approximate (recomputed) /
    verifier only, with why the cells below the first skipped layer are exact."""
    s = _step(trace, step)
    if s is None:
        return message_html("Run a layer-skip drafter to see which of the draft's work the verifier reused.")
    assert trace is not None
    if s.index == 0 or not s.draft_tokens:
        return message_html(f"Step {s.index} verified no draft: pick a step with drafts.")
    cells = reuse_cells(trace, s)
    if cells is None:
        return message_html(f"The '{trace.drafter}' draft does not run the target's own layers, so the verifier "
                            "computes every layer for every token itself: nothing to reuse.")
    L = len(cells)
    context = _context(trace, s)
    heads = [context[-1]] + s.draft_tokens
    pieces = token_pieces(decode, context[:-1], heads)
    cols = len(heads)
    out = [f"<div class='sv-grid' style='grid-template-columns: 4.5em repeat({cols}, minmax(2.2em, auto))'>"]
    for layer in range(L - 1, -1, -1):
        out.append(f"<div style='text-align:right'>layer {layer}</div>")
        for c in range(cols):
            kind = cells[layer][c]
            label, colour = REUSE_KINDS[kind]
            title = f"layer {layer}, input {c} ({repr(pieces[c])}): {label}"
            out.append(f'<div style="background:{colour}" title="{html.escape(title, quote=True)}">&nbsp;</div>')
    out.append("<div></div>")
    for c, piece in enumerate(pieces):
        name = "last" if c == 0 else f"d{c}"
        out.append(f"<div title='{html.escape(repr(piece), quote=True)}'>{name}<br>{_tok(piece)}</div>")
    out.append("</div>")
    counts = {k: sum(row.count(k) for row in cells) for k in REUSE_KINDS}
    total = sum(counts.values())
    legend = " · ".join(f'<span style="background:{c};padding:0 6px">&nbsp;</span> {html.escape(label)}'
                        for _, (label, c) in REUSE_KINDS.items())
    e, fed = s.reuse
    hispec = s.info.get("verify_exit") is not None
    why = (f"<b>Why the green cells are exact.</b> Layer l's work on a token depends only on the layers below l, "
           f"at that token and the tokens before it. Below layer {e} the draft ran "
           + ("every layer (HiSpec: layers below d while drafting, d..v−1 in its intermediate check)" if hispec else
              f"exactly the full model's layers (its first skipped layer is {e})")
           + " on the very same tokens, so those states and their KV cache are bit-identical to what the verifier "
           f"would compute: it keeps them and starts at layer {e}. From layer {e} up, the draft's states had skipped "
           "a layer — close, not equal — so that KV is cropped and recomputed.")
    fed_note = ("" if fed >= cols else f" The last draft token was never fed back into the draft (nothing was drafted "
                "after it), so the verifier runs it through every layer.")
    return _wrap(f"<h4>Step {s.index}: what the verifier reused</h4>"
                 f"<div class='sv-why'>Columns: the verify pass's inputs (the last committed token, then the drafts); "
                 f"rows: layers. The verifier reused {counts['exact']} of {total} layer-token cells "
                 f"({100 * counts['exact'] / total:.0f}%).{fed_note}</div>"
                 f"<div class='sv-scrollx'>{''.join(out)}</div><div class='sv-why'>{legend}</div>"
                 f"<div class='sv-why'>{why}</div>")


# -- 4. HiSpec as rounds --------------------------------------------------------------------------

@failsafe("html")
def hispec_rounds_html(trace: Trace | None, step: int | None, decode: Decode | None = None) -> str:
    """Step `step` of a HiSpec run as its rounds: exit d drafts, exit v checks each round, the full
    model checks the buffer once (every n tentative tokens)."""
    s = _step(trace, step)
    if s is None or trace is None:
        return message_html("Run HiSpec to see its rounds.")
    rounds = (s.info or {}).get("rounds")
    if s.index == 0 or not isinstance(rounds, list):
        return message_html("HiSpec's rounds show here for a HiSpec step from 1 on.")
    d, v, n = s.info.get("exit_layer"), s.info.get("verify_exit"), s.info.get("n")
    L = trace.num_layers
    context = _context(trace, s)
    cells_d, cells_v, cells_full = [], [], []
    ctx = list(context)
    slot = 0  # index into the tentative buffer
    for r, rd in enumerate(rounds):
        drafts = [int(t) for t in rd.get("drafts") or []]
        acc = int(rd.get("accepted") or 0)
        corr = rd.get("correction")
        pieces = token_pieces(decode, ctx, drafts)
        width = max(len(drafts), acc + (corr is not None))
        sep = "border-left:2px solid rgba(128,128,128,.7);" if r else ""
        for c in range(width):
            style = sep if c == 0 else ""
            if c < len(drafts):
                colour = "rgba(0,114,178,.2)" if c < acc else ("rgba(213,94,0,.18)" if c == acc else "")
                cells_d.append(f"<td style='{style}'>{_tok(pieces[c], colour)}</td>")
            elif c == len(drafts) and rd.get("unsure_stop"):
                cells_d.append(f"<td style='{style};opacity:.6' title='exit d was not confident enough (below the "
                               "threshold): it stopped, and exit v supplies this token'>unsure</td>")
            else:
                cells_d.append(f"<td style='{style}'></td>")
            if c < acc:
                cells_v.append(f"<td style='{style}'>✓</td>")
            elif c == acc and corr is not None:
                (cp,) = token_pieces(decode, ctx + drafts[:acc], [int(corr)])
                kind = "bonus" if c == len(drafts) else "correction"
                cells_v.append(f"<td style='{style}' title='{kind} from exit v'>{_tok(cp, 'rgba(0,158,115,.25)')}</td>")
            else:
                cells_v.append(f"<td style='{style}'>✗</td>" if c == acc else f"<td style='{style}'></td>")
            if c < acc + (corr is not None):
                if slot < s.accepted:
                    cells_full.append(f"<td style='{style}'>✓</td>")
                elif slot == s.accepted:
                    cells_full.append(f"<td style='{style};color:{VERMILLION}'>✗</td>")
                else:
                    cells_full.append(f"<td style='{style};opacity:.5'>–</td>")
                slot += 1
            else:
                cells_full.append(f"<td style='{style}'></td>")
        ctx += drafts[:acc] + ([] if corr is None else [int(corr)])
    (tp,) = token_pieces(decode, context + s.draft_tokens[: s.accepted], [s.target_token])
    cells_d.append("<td></td>")
    cells_v.append("<td></td>")
    cells_full.append(f"<td title=\"the full model's own token\">{_tok(tp, 'rgba(230,159,0,.32)')}</td>")
    rows = (f"<tr><th title='draft with the first d layers'>d = {d} drafts</th>{''.join(cells_d)}</tr>"
            f"<tr><th title='check each round with the first v layers'>v = {v} checks</th>{''.join(cells_v)}</tr>"
            f"<tr><th title='the full model checks the buffer'>all {L} check</th>{''.join(cells_full)}</tr>")
    drafted = sum(len(rd.get("drafts") or []) for rd in rounds)
    passed_v = sum(int(rd.get("accepted") or 0) for rd in rounds)
    from_v = sum(rd.get("correction") is not None for rd in rounds)
    sources = s.info.get("tentative_source") or []
    kept_d = sum(1 for x in sources[: s.accepted] if x == "draft")
    summary = (f"{len(rounds)} round{'s' if len(rounds) != 1 else ''}: exit d drafted {drafted}, exit v passed "
               f"{passed_v} and added {from_v} of its own; the full model accepted {s.accepted} of the "
               f"{len(s.draft_tokens)} buffered tokens ({kept_d} from exit d, {s.accepted - kept_d} from exit v) "
               "and added its own token.")
    run_wide = _hispec_run_summary(trace)
    return _wrap(f"<h4>Step {s.index}: HiSpec's rounds (d = {d}, v = {v}, n = {n})</h4>"
                 "<div class='sv-why'>Each round, the first d layers draft a few tokens; layers d..v−1 then check "
                 "them in one pass (exit v), keep the matching prefix and add exit v's own token. Tentative tokens "
                 f"pile up until n = {n} are buffered; then all {L} layers check the buffer at once, reusing the "
                 "exact work of the layers below v.</div>"
                 f"<div class='sv-scrollx'><table>{rows}</table></div><div>{html.escape(summary)}</div>"
                 f"<div class='sv-why'>{html.escape(run_wide)}</div>")


def _hispec_run_summary(trace: Trace) -> str:
    steps = [x for x in trace.steps if x.index > 0 and isinstance((x.info or {}).get("rounds"), list)]
    if not steps:
        return ""
    rounds = sum(len(x.info["rounds"]) for x in steps)
    drafted = sum(len(r.get("drafts") or []) for x in steps for r in x.info["rounds"])
    from_d = sum(1 for x in steps for src in (x.info.get("tentative_source") or [])[: x.accepted] if src == "draft")
    from_v = sum(x.accepted for x in steps) - from_d
    return (f"Whole run: {len(steps)} full checks, {rounds} rounds, {drafted} tokens drafted at exit d; committed "
            f"{from_d} exit-d tokens, {from_v} exit-v tokens and {len(steps)} full-model tokens.")


# -- 5. CTC: frames, blanks, collapse ------------------------------------------------------------

def ctc_runs(frames: Sequence[dict[str, Any]]) -> list[tuple[int, int, int | None]]:
    """Best-path CTC decoding as runs: (first frame, last frame, token or None for blank) for each
    run of equal adjacent frames. The collapse keeps one token per non-blank run, so a token
    repeated across a blank survives twice, and a repeat in adjacent frames only once."""
    runs: list[tuple[int, int, int | None]] = []
    for i, f in enumerate(frames):
        tok = None if f.get("blank") else f.get("token")
        if runs and runs[-1][2] == tok:
            runs[-1] = (runs[-1][0], i, tok)
        else:
            runs.append((i, i, tok))
    return runs


def ctc_collapse(frames: Sequence[dict[str, Any]]) -> list[int]:
    return [int(tok) for _, _, tok in ctc_runs(frames) if tok is not None]


def _blank_separated_repeat(runs: list[tuple[int, int, int | None]]) -> int | None:
    """Index of a token run whose token equals the previous token run's, with a blank between."""
    for r in range(2, len(runs)):
        if runs[r][2] is not None and runs[r - 1][2] is None and runs[r - 2][2] == runs[r][2]:
            return r
    return None


@failsafe("html")
def ctc_html(trace: Trace | None, step: int | None, decode: Decode | None = None) -> str:
    """Step `step` of a CTC run: its frames (blanks ∅), the runs the collapse merges, the draft."""
    s = _step(trace, step)
    if s is None or trace is None:
        return message_html("Run the CTC drafter to see its frames collapse into a draft.")
    frames = (s.info or {}).get("frames")
    if s.index == 0 or not isinstance(frames, list) or not frames:
        return message_html("CTC's frames show here for a CTC step from 1 on.")
    runs = ctc_runs(frames)
    context = _context(trace, s)
    collapsed = ctc_collapse(frames)
    col_pieces = token_pieces(decode, context, collapsed)
    frame_cells, run_cells = [], []
    k = 0
    for a, b, tok in runs:
        for i in range(a, b + 1):
            f = frames[i]
            text = "∅" if tok is None else col_pieces[k]
            title = f"frame {i}: {'blank' if tok is None else 'token ' + str(tok)}, p = {_fmt_p(f.get('p'))}"
            colour = "" if tok is None else "rgba(0,114,178,.18)"
            frame_cells.append(f"<td>{_tok(text, colour, title)}</td>")
        span = b - a + 1
        if tok is None:
            run_cells.append(f"<td colspan='{span}' style='opacity:.6'>dropped</td>")
        else:
            merged = f" ({span} merged)" if span > 1 else ""
            used = k < len(s.draft_tokens) and s.draft_tokens[k] == tok
            mark = f"→ d{k + 1}" if used else "→ cut"
            run_cells.append(f"<td colspan='{span}' style='border-top:2px solid {BLUE}'>{mark}{merged}</td>")
            k += 1
    rep = _blank_separated_repeat(runs)
    if rep is not None:
        token = runs[rep][2]
        idx = sum(1 for r in runs[:rep] if r[2] is not None)
        example = (f"Here a blank separates two runs of {_tok(col_pieces[idx])}: the collapse keeps both copies, "
                   "because merging only joins adjacent equal frames. That blank is how CTC writes a doubled token.")
    else:
        other = next((x.index for x in trace.steps if x.index > 0 and _blank_separated_repeat(
            ctc_runs((x.info or {}).get("frames") or [])) is not None), None)
        example = ("No token repeats across a blank in this step" + (f"; step {other} has one." if other is not None
                   else " (none in this run): a doubled token would need frames like a ∅ a."))
    cut = (s.info or {}).get("cut")
    cut_text = {"k": "at the length limit k", "eos": "at an end-of-sequence token", "threshold": "at the confidence stop",
                "frames": "with the last frame"}.get(str(cut), str(cut))
    return _wrap(f"<h4>Step {s.index}: CTC frames → draft</h4>"
                 f"<div class='sv-why'>The CTC head reads the last hidden state once and emits {len(frames)} frames "
                 "together, each a token or a blank ∅. Best-path decoding takes each frame's top choice, merges runs "
                 "of equal adjacent frames and drops blanks; what remains is the draft, cut to at most k tokens.</div>"
                 f"<div class='sv-scrollx'><table><tr><th>frames</th>{''.join(frame_cells)}</tr>"
                 f"<tr><th>collapse</th>{''.join(run_cells)}</tr></table></div>"
                 f"<div>{example} The draft ({len(s.draft_tokens)} tokens) ended {html.escape(cut_text)}; the "
                 f"target accepted {s.accepted}.</div>")


@failsafe("html")
def step_lesson_html(trace: Trace | None, step: int | None, decode: Decode | None = None) -> str:
    """Everything that explains step `step` for this drafter, in one block: the acceptance rule,
    then (where they apply) the verifier's reuse, HiSpec's rounds or CTC's frames."""
    parts = [acceptance_html(trace, step, decode)]
    s = _step(trace, step)
    if s is not None and s.index > 0 and s.draft_tokens:
        info = s.info or {}
        if isinstance(info.get("rounds"), list):
            parts.append(hispec_rounds_html(trace, step, decode))
        if isinstance(info.get("frames"), list):
            parts.append(ctc_html(trace, step, decode))
        if s.reuse is not None:
            parts.append(reuse_html(trace, step, decode))
    return "".join(parts)


# -- 6. logit lens -----------------------------------------------------------------------------------

def _visible(piece: str) -> str:
    """A token's text with spaces and control characters visible (a leading space matters)."""
    return (repr(piece)[1:-1].replace(" ", "␣")) or "∅"


def _plotly_escape(text: str) -> str:
    """Plotly renders <, > and & as markup but shows entities such as &quot; literally: escape only those."""
    return html.escape(text, quote=False)


@failsafe("figure")
def lens_figure(result: "LensResult | None", decode: Decode | None = None) -> go.Figure:
    """One row per exit (and per adapted exit): its top tokens coloured by probability, and the
    probability and rank of the token the run actually chose."""
    if result is None:
        return message_figure("Pick a position in the generated text to see what each layer's exit would predict.")
    show = decode or (lambda ids: f"⟨{ids[0]}⟩")
    rows = result.rows
    top = max(len(r.top) for r in rows)
    labels = [r.label for r in rows]
    z, text, hover = [], [], []
    for r in rows:
        zr, tr, hr = [], [], []
        for c in range(top):
            if c < len(r.top):
                tok, p = r.top[c]
                piece = _visible(show([tok]))
                mark = " ✓" if tok == result.chosen else ""
                zr.append(p)
                tr.append(_plotly_escape(piece[:10]) + mark)
                hr.append(f"{_plotly_escape(r.label)} · top {c + 1}: {_plotly_escape(repr(piece))} p = {p:.3f}")
            else:
                zr.append(None); tr.append(""); hr.append("")
        chosen_piece = _visible(show([result.chosen]))
        zr.append(r.chosen_p)
        tr.append(f"{r.chosen_p:.2f} #{r.chosen_rank}")
        hr.append(f"{_plotly_escape(r.label)} · the chosen token {_plotly_escape(repr(chosen_piece))}: "
                  f"p = {r.chosen_p:.3f}, rank {r.chosen_rank}")
        z.append(zr); text.append(tr); hover.append(hr)
    chosen = _plotly_escape(_visible(show([result.chosen])))
    xs = [f"top {c + 1}" for c in range(top)] + [f"p('{chosen}')"]
    # no colour bar and a fixed text size: on a 390 px phone every pixel goes to the cells
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=labels, text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", colorscale="Blues", zmin=0, zmax=1,
                               xgap=2, ygap=2, showscale=False, textfont=dict(size=11)))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(side="top", type="category")
    title = fig_title(f"Logit lens at generated token {result.position + 1} ('{chosen}')",
                      "rows: exit e (the first e layers); colour: probability", "✓ = the token the run chose; last column: its p and rank")
    _layout(fig, title, height=max(260, 26 * len(rows) + 120))
    # the row a legend would take under the title holds the column labels (the x axis is on top)
    fig.update_layout(margin=dict(l=8, r=8, t=title_top_margin(title, legend=True), b=10))
    fig.update_yaxes(automargin=True)
    return fig
