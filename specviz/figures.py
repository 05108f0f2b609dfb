"""Pure functions from a `Trace` to plotly figures and HTML, for the UI and for reports.

Nothing here runs a model. Token text comes from a `decode(ids) -> str` callable the caller
passes in (a tokenizer's decode); without one, tokens show as ``⟨id⟩``.

Every public figure/HTML function is wrapped in `failsafe`: if it raises, it returns a figure
(or HTML) that says what went wrong instead of killing the component it feeds.

Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies) and every
colour is doubled by a shape: accepted draft tokens are underlined, rejected drafts are struck
through, the target's own tokens are plain.
"""

from __future__ import annotations

import functools
import html
import logging
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import plotly.graph_objects as go

from .trace import Metrics, Trace, compute_metrics

log = logging.getLogger(__name__)

Decode = Callable[[list[int]], str]

# Okabe-Ito
BLUE = "#0072B2"
ORANGE = "#E69F00"
SKY = "#56B4E9"
GREEN = "#009E73"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
YELLOW = "#F0E442"
GREY = "#999999"

FIG_FONT = dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12)


# -- titles that fit a phone -----------------------------------------------------------------------
# Plotly never wraps text, and a 390 px phone leaves a figure about 325 px: at the 14 px title
# font that is ~46 average characters, at the ~10 px <sup> size ~66, and at the 13 px message
# font ~50. The budgets keep a margin for wide glyphs; a line that fits them fits a desktop too.
TITLE_CHARS = 38
NOTE_CHARS = 54
MESSAGE_CHARS = 40
TITLE_LINE_PX, NOTE_LINE_PX, LEGEND_ROW_PX = 19, 14, 24
TITLE_TOP_PX = 44  # the title starts below the label Gradio lays over a plot's top left corner
BASE_TOP_MARGIN = 45  # the margin figures were sized with: a taller one adds to their height


def wrap_lines(text: str, width: int) -> list[str]:
    """`text` cut at spaces into lines of at most `width` characters (a longer word stays whole)."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def fig_title(head: str, *notes: str) -> str:
    """A figure title as Plotly markup: `head` wrapped to the title budget, then each note in
    the smaller <sup> size wrapped to its own. Long explanations go in the notes, so the head
    stays a short name that reads at a glance."""
    lines = wrap_lines(head, TITLE_CHARS)
    lines += [f"<sup>{line}</sup>" for note in notes for line in wrap_lines(note, NOTE_CHARS)]
    return "<br>".join(lines)


def title_top_margin(title: str, legend: bool) -> int:
    """The top margin that holds `title` (from `fig_title`) and, under it, a legend row."""
    lines = title.split("<br>")
    notes = sum(line.startswith("<sup>") for line in lines)
    return (TITLE_TOP_PX + 6 + TITLE_LINE_PX * (len(lines) - notes) + NOTE_LINE_PX * notes
            + (LEGEND_ROW_PX if legend else 0))


# -- failsafe ---------------------------------------------------------------------------------

def message_figure(text: str, height: int = 260) -> go.Figure:
    fig = go.Figure()
    lines = [line for paragraph in text.split("\n") for line in wrap_lines(paragraph, MESSAGE_CHARS)]
    fig.add_annotation(text="<br>".join(html.escape(line) for line in lines), x=0.5, y=0.5, xref="paper",
                       yref="paper", showarrow=False, font=dict(size=13, color="#666"), align="center")
    fig.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=10, r=10, t=10, b=10), font=FIG_FONT,
                      paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")
    return fig


def message_html(text: str, error: bool = False) -> str:
    colour = VERMILLION if error else "#666"
    return (f'<div class="sv-msg" style="padding:.6em .8em;color:{colour};border:1px dashed {colour};'
            f'border-radius:6px;font-size:.9em">{html.escape(text)}</div>')


def failsafe(kind: str = "figure"):
    """Decorator: an exception becomes a figure / HTML / markdown saying what failed."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a figure must never kill its component
                log.exception("figure %s failed", fn.__name__)
                text = f"{fn.__name__} could not be drawn: {type(err).__name__}: {err}"
                if kind == "figure":
                    return message_figure(text)
                if kind == "markdown":
                    return f"*{text}*"
                return message_html(text, error=True)

        return wrapper

    return deco


# -- plain generate() reference -----------------------------------------------------------------

@dataclass
class PlainRun:
    """A plain `model.generate()` run on the same prompt and settings: the tokens it produced and
    when each appeared (seconds since the call started; the first includes the prefill)."""

    tokens: list[int]
    times: list[float]
    wall_time: float
    greedy: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"  # the dtype both runs used (the comparison is always in one dtype)
    # new-token index -> (top-1 minus top-2 logit, top-1 logit) of the reference there: filled in
    # where a half-precision run parts from generate(), to tell rounding at a near-tie from a bug
    margins: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.wall_time if self.wall_time > 0 else 0.0


# -- small helpers --------------------------------------------------------------------------------

def _default_decode(ids: list[int]) -> str:
    return "".join(f"⟨{i}⟩" for i in ids)


def token_pieces(decode: Decode | None, context: Sequence[int], tokens: Sequence[int], window: int = 6) -> list[str]:
    """The text each token adds after `context` (diff of decodes over a short window, so byte-level
    and sentencepiece tokenizers both get their spaces right); falls back to decoding alone."""
    decode = decode or _default_decode
    out: list[str] = []
    ctx = list(context[-window:]) if window else []
    for tok in tokens:
        tok = int(tok)
        piece = None
        if ctx:
            base = decode(ctx)
            full = decode(ctx + [tok])
            if full.startswith(base) and not base.endswith("\ufffd"):
                piece = full[len(base):]
        if piece is None:
            piece = decode([tok])
        out.append(piece)
        ctx = (ctx + [tok])[-window:] if window else []
    return out


def _fmt_p(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _get(seq, i):
    return seq[i] if seq is not None and 0 <= i < len(seq) else None


LEVEL_NAMES = {"draft": "exit-d draft", "verify": "exit-v token"}  # HiSpec's tentative sources


def q_header(s) -> str:
    """What a step's q is: the draft's probability, HiSpec's exit-v probability (the q its full
    check uses), or CTC's one-hot q beside the head's frame probability."""
    info = s.info or {}
    if "token_frame_p" in info:
        return "q (one-hot) · frame p"
    if "tentative_source" in info:
        return "q (exit v)"
    return "q (draft)"


def q_text(s, j: int) -> str:
    q = _fmt_p(_get(s.draft_probs, j))
    frame_p = _get((s.info or {}).get("token_frame_p"), j)
    return q if frame_p is None else f"{q} · {_fmt_p(frame_p)}"


def q_note(s) -> str:
    """Why CTC's q is 1 for every token while its p may be 0 (else nothing)."""
    if "token_frame_p" not in (s.info or {}):
        return ""
    return ("<div style='font-size:11.5px;opacity:.8'>q = 1 for every CTC token: the draft is the frames' argmax, "
            "collapsed, so it is deterministic and the accept rule uses a one-hot q (accept with probability p). "
            "The frame p is the head's own confidence in the token, shown for comparison.</div>")


def busy_times(trace: Trace) -> list[float]:
    """Cumulative engine time at the end of each step (prefill + draft + verify + search),
    without the time spent between steps (e.g. between Step clicks)."""
    out, total = [], 0.0
    for i, s in enumerate(trace.steps):
        total += trace.t_prefill if i == 0 else (s.t_draft + s.t_verify + s.t_search)
        out.append(total)
    return out


def step_times(trace: Trace, clock: str = "wall") -> list[float]:
    return busy_times(trace) if clock == "busy" else [s.t_end for s in trace.steps]


def spec_steps(trace: Trace):
    """Verification steps (the prefill step, index 0, drafts nothing)."""
    return [s for s in trace.steps if s.index > 0]


def _layout(fig: go.Figure, title: str, height: int = 320, legend_below: bool = False, **kwargs) -> go.Figure:
    """The shared look. `title` comes from `fig_title`: pinned to the top, with room made for all
    its lines and a legend row under them; a title taller than one line with a legend makes the
    figure taller, so the plot area keeps its size. `legend_below`: the legend goes under the
    x axis instead, for legends of long entries: on a phone a horizontal legend above the plot
    wraps to more rows and grows upward into the title."""
    shown = kwargs.get("showlegend")  # unset: Plotly shows a legend for two or more traces
    legend = bool(shown) if shown is not None else len(fig.data) > 1
    top = title_top_margin(title, legend and not legend_below)
    bottom = 45 + (2 * LEGEND_ROW_PX + 20 if legend and legend_below else 0)
    height += max(0, top - BASE_TOP_MARGIN) + (bottom - 45)
    # below: its top 48 px under the plot area (paper units are fractions of the plot's height), clear of the axis title
    placement = (dict(orientation="h", yanchor="top", y=-48 / (height - top - bottom), xanchor="left", x=0.0)
                 if legend_below
                 else dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", y=1 - TITLE_TOP_PX / height, yref="container",
                                 yanchor="top", font=dict(size=14)),
                      height=height,
                      margin=dict(l=55, r=20, t=top, b=bottom), font=FIG_FONT, legend=placement,
                      paper_bgcolor="rgba(0,0,0,0)", **kwargs)
    return fig


# -- HiSpec's levels ------------------------------------------------------------------------------

@dataclass
class LevelCounts:
    """HiSpec's three levels counted apart (its tentative tokens are not all "drafts"): exit-d
    drafts proposed and how many passed exit v; tokens exit v produced itself (corrections and
    bonus tokens); and how many of each kind the full model then accepted."""

    drafted_d: int = 0  # tokens the exit-d draft proposed
    passed_v: int = 0  # of them, accepted at exit v (they became tentative)
    from_v: int = 0  # tentative tokens exit v produced (correction or bonus)
    full_from_d: int = 0  # of the tentative exit-d tokens, accepted by the full model
    full_from_v: int = 0  # of the tentative exit-v tokens, accepted by the full model

    @property
    def tentative(self) -> int:
        return self.passed_v + self.from_v

    def add(self, other: "LevelCounts") -> None:
        for name in ("drafted_d", "passed_v", "from_v", "full_from_d", "full_from_v"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def step_levels(s) -> LevelCounts | None:
    """One step's level counts, or None when its info is not HiSpec's (no tentative sources)."""
    sources = (s.info or {}).get("tentative_source")
    if sources is None:
        return None
    rounds = s.info.get("rounds") or []
    c = LevelCounts(drafted_d=sum(len(r.get("drafts") or []) for r in rounds))
    for j, source in enumerate(sources[: len(s.draft_tokens)]):
        full = j < s.accepted
        if source == "draft":
            c.passed_v += 1
            c.full_from_d += full
        else:
            c.from_v += 1
            c.full_from_v += full
    return c


def hispec_levels(trace: Trace) -> LevelCounts | None:
    """The run's level counts (None when no step came from HiSpec)."""
    total, seen = LevelCounts(), False
    for s in trace.steps:
        c = step_levels(s)
        if c is not None:
            total.add(c)
            seen = True
    return total if seen else None


def levels_text(c: LevelCounts) -> str:
    """One sentence: each level's tokens, then what the full model kept of each kind."""
    return (f"exit d drafted {c.drafted_d}, {c.passed_v} passed exit v; exit v produced {c.from_v} itself "
            f"(corrections and bonus tokens); the full model accepted {c.full_from_d} of {c.passed_v} exit-d "
            f"and {c.full_from_v} of {c.from_v} exit-v tokens")


# -- coloured tokens ------------------------------------------------------------------------------

TOKEN_CSS = f"""
.sv-scroll {{ display: flex; flex-direction: column-reverse; max-height: 480px; overflow-y: auto;
  border: 1px solid rgba(128,128,128,.35); border-radius: 8px; }}
.sv-out {{ font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace;
  white-space: pre-wrap; word-break: break-word; line-height: 1.55; font-size: 13.5px;
  padding: 10px 12px; tab-size: 4; }}
.sv-out span {{ border-radius: 2px; }}
.sv-prompt {{ opacity: .55; }}
.sv-acc {{ background: rgba(0,114,178,.20); border-bottom: 2px solid {BLUE}; }}
.sv-tgt {{ background: rgba(230,159,0,.32); }}
.sv-rej {{ color: {VERMILLION}; text-decoration: line-through; text-decoration-thickness: 1.5px; opacity: .7;
  font-size: .9em; }}
.sv-nl {{ opacity: .45; font-size: .85em; }}
.sv-tok {{ cursor: pointer; }}
.sv-tok:focus {{ outline: 2px solid {BLUE}; outline-offset: 1px; }}
/* a tap (or Tab) pins the token's details at the bottom of the screen: touch has no hover; the
   text comes from the title attribute, so it is the same escaped text and is never copied */
.sv-tok:focus::after {{ content: attr(title); position: fixed; left: 8px; right: 8px; bottom: 8px; z-index: 1000;
  max-width: 560px; margin: 0 auto; padding: 8px 10px; border-radius: 8px; white-space: pre-wrap;
  font: 12.5px/1.4 system-ui, sans-serif; color: #fff; background: rgba(20,20,30,.93);
  text-decoration: none; opacity: 1; box-shadow: 0 2px 10px rgba(0,0,0,.3); pointer-events: none; }}
.sv-caret {{ display:inline-block; width:.55em; height:1.1em; vertical-align:text-bottom;
  background: {GREY}; opacity:.5; animation: sv-blink 1s steps(1) infinite; }}
@keyframes sv-blink {{ 50% {{ opacity: 0; }} }}
.sv-legend {{ display:flex; flex-wrap:wrap; gap:14px; font-size:12.5px; margin: 2px 0 6px 0; align-items:center; }}
.sv-legend .sv-sw {{ font-family: ui-monospace, monospace; padding: 0 4px; }}
"""


def _span(cls: str, piece: str, title: str, inline_newlines: bool = True) -> str:
    text = html.escape(piece)
    if "\n" in text:
        marker = '<span class="sv-nl">↵</span>'
        text = text.replace("\n", marker + ("\n" if inline_newlines else ""))
    if text == "":
        text = "∅"
    # focusable, so that a tap pins the details (CSS :focus) where there is no hover
    return f'<span class="{cls} sv-tok" tabindex="0" title="{html.escape(title, quote=True)}">{text}</span>'


def _ranges(layers: Sequence[int]) -> str:
    """0, 1, 2, 5, 7, 8 -> '0–2, 5, 7–8'."""
    out, run = [], []
    for i in sorted(layers):
        if run and i != run[-1] + 1:
            out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def layers_line(s, j: int, num_layers: int) -> str:
    """For a layer-skip draft token: the layers its draft ran ('' for other drafters)."""
    info = s.info or {}
    source = _get(info.get("tentative_source"), j)
    if source is not None:  # HiSpec: an exit-d draft checked at exit v, or exit v's own token
        d, v = int(info.get("exit_layer", 0)), int(info.get("verify_exit", 0))
        return (f"\nlayers 0–{d - 1} drafted it, layers {d}–{v - 1} checked it (exit v)" if source == "draft"
                else f"\nlayers 0–{v - 1} produced it (exit v)")
    plan = layer_plan(info, num_layers)
    if plan is None:
        return ""
    ran = [i for i, x in enumerate(plan) if x == 0]
    return f"\ndraft ran layers {_ranges(ran)} ({len(ran)} of {num_layers}), skipped {_ranges([i for i, x in enumerate(plan) if x])}"


@failsafe("html")
def legend_html() -> str:
    return (
        f"<style>{TOKEN_CSS}</style>"
        '<div class="sv-legend">'
        '<span><span class="sv-sw sv-acc">accepted</span> draft token the target accepted (blue, underlined)</span>'
        '<span><span class="sv-sw sv-tgt">target</span> the target\'s own token: correction or bonus (orange)</span>'
        '<span><span class="sv-sw sv-rej">rejected</span> draft the target refused (struck through)</span>'
        '<span><span class="sv-sw sv-prompt">prompt</span></span>'
        "<span>hover or tap a token for step, position, p, q and the layers it ran</span>"
        "</div>"
    )


@failsafe("html")
def token_html(trace: Trace | None, decode: Decode | None = None, show_rejected: bool = True,
               prompt_text: str | None = None, streaming: bool = False) -> str:
    """The output as coloured monospace text. Hover (title) shows step, draft position, p and q."""
    if trace is None:
        return (f"<style>{TOKEN_CSS}</style>" + '<div class="sv-scroll"><div class="sv-out"><span class="sv-prompt">'
                "Press Run (whole generation) or Step (one speculation cycle).</span></div></div>")
    # the scroll box is column-reverse, so it stays scrolled to the newest tokens while streaming
    parts = [f"<style>{TOKEN_CSS}</style>", '<div class="sv-scroll"><div class="sv-out">']
    if prompt_text is None:
        prompt_text = (decode or _default_decode)(list(trace.prompt_ids))
    parts.append(f'<span class="sv-prompt" title="prompt ({len(trace.prompt_ids)} tokens)">{html.escape(prompt_text)}</span>')
    context = list(trace.prompt_ids)
    for s in trace.steps:
        acc = s.accepted
        # accepted drafts that were committed (EOS may cut the commit short)
        for j, tok in enumerate(s.committed):
            (piece,) = token_pieces(decode, context, [tok])
            if j < acc and j < len(s.draft_tokens):
                source = _get(s.info.get("tentative_source") if s.info else None, j)
                origin = {"draft": " (HiSpec: exit-d draft)", "verify": " (HiSpec: exit-v intermediate token)"}.get(source, "")
                title = (f"step {s.index} · draft position {j + 1} · accepted{origin}\n"
                         f"p (target) = {_fmt_p(_get(s.target_probs, j))} · {q_header(s)} = {q_text(s, j)}"
                         + layers_line(s, j, trace.num_layers))
                parts.append(_span("sv-acc", piece, title))
            else:
                if show_rejected and s.rejected and j == len(s.committed) - 1:
                    ctx_r = list(context)
                    rej_pieces = token_pieces(decode, ctx_r, s.rejected)
                    for r, (rtok, rp) in enumerate(zip(s.rejected, rej_pieces)):
                        pos = acc + r
                        if r == 0:
                            why = "rejected by the target"
                        else:
                            why = "discarded: comes after a rejected token"
                        title = (f"step {s.index} · draft position {pos + 1} · {why}\n"
                                 f"p (target) = {_fmt_p(_get(s.target_probs, pos))} · {q_header(s)} = {q_text(s, pos)}"
                                 + layers_line(s, pos, trace.num_layers))
                        parts.append(_span("sv-rej", rp, title, inline_newlines=False))
                if s.index == 0:
                    title = "step 0 (prefill) · the target's own first token"
                elif not s.draft_tokens:
                    title = f"step {s.index} · the target's own token (no draft)"
                elif acc < len(s.draft_tokens):
                    title = f"step {s.index} · the target's correction at draft position {acc + 1} ({acc} of {len(s.draft_tokens)} accepted)"
                else:
                    title = f"step {s.index} · bonus token: all {len(s.draft_tokens)} drafts accepted"
                parts.append(_span("sv-tgt", piece, title + f"\nthe target ran all {trace.num_layers} layers"))
            context.append(int(tok))
    if streaming:
        parts.append('<span class="sv-caret"></span>')
    parts.append("</div></div>")
    return "".join(parts)


# -- cards and badges -----------------------------------------------------------------------------

def _card(label: str, value: str, sub: str = "", colour: str = "") -> str:
    style = f"border-left:4px solid {colour};" if colour else ""
    return (f'<div class="sv-card" style="{style}"><div class="sv-card-l">{html.escape(label)}</div>'
            f'<div class="sv-card-v">{value}</div><div class="sv-card-s">{sub}</div></div>')


CARD_CSS = """
.sv-cards { display:grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap:8px; margin-bottom:4px; }
.sv-card:last-child { grid-column: span 2; }
.sv-card { border:1px solid rgba(128,128,128,.3); border-radius:8px; padding:6px 10px; min-height:62px; }
.sv-card-l { font-size:11.5px; opacity:.75; letter-spacing:.02em; }
.sv-card-v { font-size:21px; font-weight:600; line-height:1.25; font-variant-numeric: tabular-nums; }
.sv-card-s { font-size:11.5px; opacity:.75; }
.sv-split { display:flex; height:10px; border-radius:4px; overflow:hidden; margin-top:5px; }
.sv-badge { display:inline-block; padding:3px 10px; border-radius:12px; font-size:12.5px; font-weight:600; margin:2px 6px 4px 0; }
.sv-status { font-size:12.5px; opacity:.8; margin: 2px 0 6px 0; }
"""

SPLIT_COLOURS = {"prefill": GREY, "draft": BLUE, "verify": ORANGE, "search": PURPLE, "other": "#DDDDDD"}


# Unit roundoff of the half-precision dtypes: a batched verify pass and a one-token step can round
# a logit differently by a few of these (relative to its size), so two tokens whose logits are
# closer than NEAR_TIE_ULPS of them (relative) may swap order.
UNIT_ROUNDOFF = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
NEAR_TIE_ULPS = 4  # unit roundoffs, i.e. 2 ulps: the audit saw flips at 1-2 ulps


def near_tie_tolerance(dtype: str, top_logit: float) -> float | None:
    """The logit margin below which `dtype` rounding can flip the argmax (None: exact dtype)."""
    unit = UNIT_ROUNDOFF.get(dtype)
    return None if unit is None else NEAR_TIE_ULPS * unit * max(1.0, abs(top_logit))


def first_difference(ours: Sequence[int], ref: Sequence[int]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), None)


def lossless_check(trace: Trace, plain: PlainRun | None) -> tuple[str, str]:
    """(state, message): state is 'equal', 'differs', 'near-tie' (differs where half-precision
    rounding can flip the argmax), 'prefix' (stopped early but equal so far), 'stopped' (stopped before
    generate() was timed), 'na' (sampling) or 'pending'."""
    greedy = float(trace.settings.get("temperature", 0.0) or 0.0) == 0.0
    if not greedy:
        return "na", "sampling: lossless in distribution (rejection sampling), not token for token"
    if plain is None and trace.finish_reason == "stopped":
        return "stopped", "stopped before the end: run it to the end to compare with greedy generate()"
    if plain is None:
        return "pending", "comparing with plain greedy generate() when the run ends"
    ours, ref = trace.generated, plain.tokens
    i = first_difference(ours, ref)
    if i is not None:
        margin, top = plain.margins.get(i, (None, 0.0))
        tolerance = near_tie_tolerance(plain.dtype, top)
        if margin is not None and tolerance is not None and margin <= tolerance:
            name = {"bfloat16": "bf16", "float16": "fp16"}[plain.dtype]
            return "near-tie", (f"identical up to {name} rounding at a near-tie: position {i}, margin {margin:.3g} "
                                f"(≤ {tolerance:.2g}, what {name} rounding can flip); exact in float32")
        at = f" (margin {margin:.3g})" if margin is not None else ""
        return "differs", f"differs from greedy generate() at new token {i} (ours {ours[i]}, generate {ref[i]}){at}"
    if len(ours) == len(ref):
        return "equal", f"output equals plain greedy generate() ({len(ours)} tokens)"
    if trace.finish_reason == "stopped" or len(ours) < len(ref):
        return "prefix", f"equal to greedy generate() for the {len(ours)} tokens produced (generate made {len(ref)})"
    return "differs", f"longer than greedy generate() ({len(ours)} vs {len(ref)} tokens)"


@failsafe("html")
def run_speed(trace: Trace, m: Metrics, clock: str) -> tuple[float, float]:
    """The run's (seconds, tokens/s) on `clock`: "wall", or "busy" (the engine's own time: step
    mode, where the wall clock would count the visitor's pauses between Step presses)."""
    elapsed = busy_times(trace)[-1] if clock == "busy" else m.wall_time
    return elapsed, (m.new_tokens / elapsed if elapsed > 0 else 0.0)


def cards_html(trace: Trace | None, plain: PlainRun | None = None, clock: str = "wall",
               status: str = "") -> str:
    """Metric cards: tokens/s, speedup vs plain generate(), τ, acceptance, time split, and the
    losslessness badge."""
    head = f"<style>{CARD_CSS}</style>"
    if trace is None or not trace.steps:
        if trace is not None and trace.finish_reason == "stopped":
            status = status or "Stopped before the first token."
        return head + f'<div class="sv-status">{html.escape(status or "No run yet.")}</div>'
    m = compute_metrics(trace)
    elapsed, tps = run_speed(trace, m, clock)
    cards = []
    sub = f"{m.new_tokens} tokens in {elapsed:.2f} s" + (" (engine time)" if clock == "busy" else "")
    cards.append(_card("tokens / s", f"{tps:.1f}", sub, BLUE))
    if clock == "busy" and not trace.finish_reason:
        cards.append(_card("speedup", "…", "step mode: shown when the generation ends", ORANGE))
    elif not trace.finish_reason:  # the reference is timed right after the run, under the same conditions
        cards.append(_card("speedup", "…", "generate() is timed right after the run", ORANGE))
    elif plain is not None and plain.tokens_per_s > 0 and tps > 0:
        speed = tps / plain.tokens_per_s
        cards.append(_card("speedup", f"{speed:.2f}×", f"vs generate(): {plain.tokens_per_s:.1f} tok/s, timed right after", ORANGE))
    elif trace.finish_reason == "stopped":
        cards.append(_card("speedup", "–", "stopped: no generate() timing for a partial run", ORANGE))
    else:
        cards.append(_card("speedup", "…", "plain generate() is timed when the run ends", ORANGE))
    cards.append(_card("τ (tokens / verification)", f"{m.tau:.2f}",
                       f"{m.verifications} verifications after the prefill; plain = 1.00", GREEN))
    levels = hispec_levels(trace)
    if levels is not None:  # HiSpec: its tentative tokens come from two levels, counted apart
        cards += levels_cards(levels)
    elif m.acceptance_rate is None:
        cards.append(_card("acceptance", "–", "nothing drafted", SKY))
    else:
        drafted = sum(len(s.draft_tokens) for s in trace.steps)
        accepted = sum(s.accepted for s in trace.steps)
        cards.append(_card("acceptance", f"{100 * m.acceptance_rate:.0f}%", f"{accepted} of {drafted} drafts", SKY))
    split = dict(m.time_split)
    if clock == "busy":  # step mode: the wall clock includes the time between clicks
        split.pop("other", None)
    total = sum(split.values()) or 1.0
    bar = "".join(
        f'<div title="{k}: {v * 1000:.0f} ms ({100 * v / total:.0f}%)" style="width:{100 * v / total:.2f}%;background:{SPLIT_COLOURS[k]}"></div>'
        for k, v in split.items() if v > 0)
    legend = " ".join(f'<span style="white-space:nowrap"><span style="color:{SPLIT_COLOURS[k]}">■</span>{k} {100 * v / total:.0f}%</span>'
                      for k, v in split.items() if v > 0 and (k != "other" or v / total >= 0.01))
    cards.append(_card("time split", f'<div class="sv-split">{bar}</div>', legend, PURPLE))

    state, message = lossless_check(trace, plain)
    styles = {"equal": (GREEN, "✓ lossless"), "prefix": (GREEN, "✓ lossless so far"), "differs": (VERMILLION, "✗ differs"),
              "near-tie": (GREEN, "≈ lossless (near-tie)"), "stopped": (GREY, "stopped"),
              "na": (GREY, "≈ sampled"), "pending": (GREY, "… lossless?")}
    colour, label = styles[state]
    badge = (f'<span class="sv-badge" style="background:{colour};color:white" title="{html.escape(message, quote=True)}">'
             f"{label}</span><span style='font-size:12.5px'>{html.escape(message)}</span>")
    finish = {"eos": "stopped at EOS", "length": "reached max new tokens", "stopped": "stopped by you"}.get(
        trace.finish_reason, "paused between steps" if clock == "busy" else "running…")
    status_line = f'<div class="sv-status">{html.escape(trace.drafter)} · {html.escape(finish)}'
    if status:
        status_line += f" · {html.escape(status)}"
    status_line += "</div>"
    return head + status_line + f'<div class="sv-cards">{"".join(cards)}</div><div>{badge}</div>'


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "–"


def levels_cards(c: LevelCounts) -> list[str]:
    """HiSpec's acceptance as two cards: exit v checking the exit-d drafts, and the full model
    checking the tentative tokens, each split by the level that produced them."""
    full = c.full_from_d + c.full_from_v
    return [
        _card("exit v passed exit-d drafts", _share(c.passed_v, c.drafted_d),
              f"{c.passed_v} of {c.drafted_d} exit-d drafts; exit v added {c.from_v} tokens of its own", SKY),
        _card("full model accepted", _share(full, c.tentative),
              f"{full} of {c.tentative} tentative: {c.full_from_d}/{c.passed_v} from exit d, "
              f"{c.full_from_v}/{c.from_v} from exit v", SKY),
    ]


# -- skip layers ----------------------------------------------------------------------------------

LAYER_STATES = ["runs in the draft", "skipped by the draft", "intermediate verifier (HiSpec)"]


def layer_plan(info: dict[str, Any], num_layers: int) -> list[int] | None:
    """Per layer: 0 runs in the draft, 1 skipped by the draft, 2 run by HiSpec's intermediate
    verifier; None when the step's info says nothing about layers."""
    if not info:
        return None
    d, v = info.get("exit_layer"), info.get("verify_exit")
    if d is not None and v is not None:
        d, v = int(d), int(v)
        return [0 if i < d else (2 if i < v else 1) for i in range(num_layers)]
    skipped = info.get("skipped_layers")
    if skipped is None and d is not None:
        skipped = list(range(int(d), num_layers))
    if skipped is None:
        return None
    skipped = set(int(i) for i in skipped)
    return [1 if i in skipped else 0 for i in range(num_layers)]


NO_DRAFT_YET = ("Step 0 was the prefill: it runs every layer and drafts nothing. "
                "The next step drafts, and its layers (and any layer search) appear here.")


@failsafe("figure")
def skip_heatmap(trace: Trace | None, selected_step: int | None = None) -> go.Figure:
    """Layer × step map of which layers each draft skipped (static skip, early exit, CLaSp, HiSpec)."""
    if trace is None or not trace.steps:
        return message_figure("Run something to see which layers each draft skipped.")
    L = int(trace.num_layers)
    steps = [s for s in trace.steps if s.index > 0]
    if not steps:  # step mode right after the prefill: nothing has been drafted yet
        return message_figure(NO_DRAFT_YET)
    plans = [(s.index, layer_plan(s.info, L)) for s in steps]
    if not any(p is not None for _, p in plans):
        return message_figure(f"The '{trace.drafter}' drafter does not skip layers: it drafts "
                              f"{'nothing (plain decoding)' if trace.drafter == 'ar' else 'without the target’s layers'}.")
    # a step that drafted nothing (the cost model's plain steps, no room left) skipped nothing: blank
    drafted = {s.index for s in steps if s.draft_tokens}
    plans = [(i, p if i in drafted else None) for i, p in plans]
    xs = [i for i, _ in plans]
    z = [[(p[layer] if p is not None else None) for _, p in plans] for layer in range(L)]
    used = sorted({v for row in z for v in row if v is not None})
    n_states = 3 if 2 in used else 2
    colours = [SKY, ORANGE, GREEN][:n_states]
    scale = []
    for k, c in enumerate(colours):
        scale += [[k / n_states, c], [(k + 1) / n_states, c]]
    acc = {s.index: (s.accepted, len(s.draft_tokens)) for s in steps}
    text = [[f"step {x} · layer {layer}: "
             f"{LAYER_STATES[v] if v is not None else ('no info' if x in drafted else 'nothing drafted')}"
             f"<br>accepted {acc[x][0]}/{acc[x][1]}" for x, v in zip(xs, row)] for layer, row in enumerate(z)]
    fig = go.Figure(go.Heatmap(
        z=z, x=xs, y=list(range(L)), zmin=-0.5, zmax=n_states - 0.5, colorscale=scale, xgap=1 if len(xs) < 80 else 0, ygap=1,
        text=text, hoverinfo="text",
        colorbar=dict(tickvals=list(range(n_states)), ticktext=LAYER_STATES[:n_states], len=0.9, thickness=12),
    ))
    dp_steps = [s.index for s in steps if s.info.get("dp_ran")]
    if dp_steps:
        fig.add_trace(go.Scatter(x=dp_steps, y=[L - 0.5 + 0.35] * len(dp_steps), mode="markers", name="DP ran",
                                 marker=dict(symbol="triangle-down", size=8, color=PURPLE),
                                 hovertemplate="step %{x} drafts with a freshly searched skip set<extra></extra>"))
    if selected_step is not None and selected_step in acc:
        fig.add_vline(x=selected_step, line=dict(color="black", width=1, dash="dot"))
    fig.update_xaxes(title_text="verification step")
    fig.update_yaxes(title_text="layer", dtick=max(1, L // 8), range=[-0.5, L + 0.2])
    blank = ("blank columns: steps that drafted nothing",) if len(drafted) < len(steps) else ()
    title = fig_title("Skipped layers per step", f"{trace.drafter} drafts; the target has {L} layers", *blank)
    return _layout(fig, title, height=340, showlegend=bool(dp_steps))


def dp_step(trace: Trace, step: int | None) -> int | None:
    """The latest step <= `step` whose info holds a DP grid (the grid in force at `step`)."""
    best = None
    for s in trace.steps:
        if s.info.get("dp_grid") is not None and (step is None or s.index <= step):
            best = s.index
    return best


@failsafe("figure")
def dp_grid_figure(trace: Trace | None, step: int | None = None) -> go.Figure:
    """CLaSp's DP table at a step: cosine(g[i][j], x_i) per (layer i, layers skipped so far j),
    with the chosen path."""
    if trace is None or not trace.steps:
        return message_figure("CLaSp's layer-search table appears here.")
    found = dp_step(trace, step)
    if found is None:
        if all(s.index == 0 for s in trace.steps):
            return message_figure(NO_DRAFT_YET)
        if any(s.info.get("dp_grid") is not None for s in trace.steps):
            return message_figure(f"No DP search had run yet at step {step} (the first draft is step 1).")
        return message_figure(f"The '{trace.drafter}' drafter runs no layer search; pick CLaSp to see its DP table.")
    s = trace.steps[found]
    grid = s.info["dp_grid"]
    z = [[(float(v) if v is not None else None) for v in row] for row in grid]
    rows, cols = len(z), max(len(r) for r in z)
    z = [r + [None] * (cols - len(r)) for r in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(cols)), y=list(range(rows)), colorscale="Cividis", colorbar=dict(title="cos", thickness=12),
        hovertemplate="layer i=%{y}, skipped j=%{x}<br>cosine %{z:.4f}<extra></extra>", xgap=1, ygap=1,
        hoverongaps=False,  # blank cells were never evaluated (on no path): no "cosine 0.0000" for them
    ))

    path = s.info.get("dp_path") or []
    if path:
        pi = [int(p[0]) for p in path]
        pj = [int(p[1]) for p in path]
        fig.add_trace(go.Scatter(x=pj, y=pi, mode="lines+markers", name="chosen path",
                                 line=dict(color=VERMILLION, width=2), marker=dict(size=6, color=VERMILLION),
                                 hovertemplate="path: layer %{y}, skipped %{x}<extra></extra>"))
    # CLaSp reports a DP in the info of the first draft that uses it: it ran after the previous
    # verification (after the prefill for step 1)
    when = "the prefill" if found <= 1 else f"step {found - 1}"
    in_force = (f"still in force at step {step}",) if found != step and step is not None else ()
    # the head says which steps draft with this table; the notes, smaller, until when and where
    # the search ran and its time is counted
    ms = 1000 * float(s.info.get("dp_time") or 0)
    searched = f"searched after {when}: {ms:.1f} ms, counted as step {found}'s search time"
    if s.info.get("dp_rode_verify"):
        searched = (f"searched during step {found - 1}'s verify pass: its layer calls and {ms:.1f} ms of "
                    "bookkeeping are in that pass's time")
    fig.update_xaxes(title_text="layers skipped so far (j)<br><sup>blank cells: never evaluated (no path reaches them)</sup>",
                     dtick=1 if cols <= 20 else None, range=[-0.5, cols - 0.5])
    fig.update_yaxes(title_text="after layer i (row i = the first i layers)", dtick=1 if rows <= 20 else None,
                     range=[-0.5, rows - 0.5])
    fig = _layout(fig, fig_title(f"CLaSp DP table: used from step {found}", *in_force, searched), height=390)
    return fig.update_layout(margin=dict(b=60))  # the x title's two lines


@failsafe("html")
def progress_html(trace: Trace | None, plain: PlainRun | None = None, status: str = "") -> str:
    """One line under the Run button: where the run is and what it bought, with a link down to
    the results (on a phone they start far below the button)."""
    link = ' · <a href="#sv-cards">results ↓</a>'
    if trace is None or not trace.steps:
        return f'<div class="sv-progress">{html.escape(status)}{link if status else ""}</div>'
    m = compute_metrics(trace)
    parts = [f"{trace.drafter}: {m.new_tokens} tokens", f"τ {m.tau:.2f}"]
    if plain is not None and plain.tokens_per_s > 0 and m.tokens_per_s > 0 and trace.finish_reason:
        parts.append(f"{m.tokens_per_s / plain.tokens_per_s:.2f}× generate()")
    state = {"eos": "done (EOS)", "length": "done", "stopped": "stopped"}.get(trace.finish_reason, status or "running…")
    parts.append(state)
    return f'<div class="sv-progress">{html.escape(" · ".join(parts))}{link}</div>'


@failsafe("html")
def step_details_html(trace: Trace | None, step: int | None, decode: Decode | None = None) -> str:
    """One step in detail: drafts with verdicts and p/q, the target's token, timings, the drafter's
    info (CTC frames, HiSpec buffers, prompt-lookup match ...)."""
    if trace is None or not trace.steps:
        return message_html("Step details appear here after a run.")
    if step is None or not 0 <= int(step) < len(trace.steps):
        step = len(trace.steps) - 1
    s = trace.steps[int(step)]
    context = list(trace.prompt_ids) + [t for x in trace.steps[: s.index] for t in x.committed]
    rows = []
    pieces = token_pieces(decode, context, s.draft_tokens)
    sources = (s.info or {}).get("tentative_source")
    for j, (tok, piece) in enumerate(zip(s.draft_tokens, pieces)):
        verdict = "accepted" if j < s.accepted else ("rejected" if j == s.accepted else "discarded")
        colour = BLUE if verdict == "accepted" else VERMILLION
        level = LEVEL_NAMES.get(_get(sources, j), "")
        # the verdict right after the text: on a phone the columns after it scroll out of sight
        rows.append(f"<tr><td>{j + 1}</td><td><code>{html.escape(repr(piece))}</code></td>"
                    f'<td style="color:{colour}">{verdict}{html.escape(level and f" ({level})")}</td>'
                    f"<td>{html.escape(q_text(s, j))}</td><td>{_fmt_p(_get(s.target_probs, j))}</td><td>{tok}</td></tr>")
    tctx = context + s.draft_tokens[: s.accepted]
    (tpiece,) = token_pieces(decode, tctx, [s.target_token])
    rows.append(f"<tr><td>target</td><td><code>{html.escape(repr(tpiece))}</code></td>"
                f'<td style="color:{ORANGE}">target\'s own token</td><td></td><td></td><td>{s.target_token}</td></tr>')
    table = ("<div style='overflow-x:auto'><table class='sv-step-table' style='font-size:12.5px;"
             "border-collapse:collapse' cellpadding='3'>"
             f"<tr><th>pos</th><th>text</th><th>verdict</th><th>{html.escape(q_header(s))}</th><th>p (target)</th>"
             "<th>id</th></tr>" + "".join(rows) + "</table></div>" + q_note(s))
    times = html.escape(step_times_text(trace, s))
    info = info_table_html(trace, s, decode)
    if switched_off(trace, s) and s.info:
        info = ("<i>The cost model switched drafting off at this step: the rows below are what the drafter "
                "would have drafted with.</i>" + info)
    return (f"<div style='font-size:13px'><b>Step {s.index}</b> · {html.escape(step_counts(s))} · {times}</div>"
            f"{table}<div style='margin-top:6px'>{info}</div>")


# why a drafter that ran can propose nothing. Not the confidence stop of the others: their draft
# ends after the unsure token (it is still verified), so it never empties a draft
EMPTY_DRAFT_REASONS = {"ctc": ": its confidence cut drops a token below the threshold, here the first one",
                       "prompt-lookup": ": the context's last n-gram occurs nowhere earlier (and, with past answers "
                                        "on, no past answer continues it likely enough)"}
# a step whose draft the cost model (GenerationConfig.adaptive_length) capped at 0 tokens
OFF_BY_COST_MODEL = (": the cost model switched drafting off for this step, because plain decoding was expected to "
                     "be faster at the acceptance seen so far (it drafts again every few steps to check)")


def switched_off(trace: Trace, s) -> bool:
    """Whether the cost model, not the length limit, gave step `s` a draft length of 0: the
    engine offers the drafter the room left minus the target's own token, and the model's choice
    is at most that."""
    if s.draft_cap != 0:
        return False
    made = sum(len(x.committed) for x in trace.steps[: s.index])
    return int(trace.settings.get("max_new_tokens") or 0) - made - 1 > 0


def empty_draft_reason(trace: Trace, s, fallback: str = "") -> str:
    """Why step `s` drafted nothing, as a clause starting with ': ' or ' (' ('' when unknown)."""
    if switched_off(trace, s):
        return OFF_BY_COST_MODEL
    return EMPTY_DRAFT_REASONS.get(trace.drafter, fallback)


def step_times_text(trace: Trace, s) -> str:
    """A step's time split, saying what a draft time with nothing drafted and a search time mean."""
    if s.index == 0:
        return f"prefill {1000 * trace.t_prefill:.1f} ms"
    text = f"draft {1000 * s.t_draft:.1f} ms · verify {1000 * s.t_verify:.1f} ms · search {1000 * s.t_search:.1f} ms"
    if not s.draft_tokens and s.t_draft >= 0.0005 and trace.drafter != "ar":  # below 0.5 ms: bookkeeping only
        why = empty_draft_reason(trace, s)
        text += (f" (nothing drafted, yet drafting took time: the drafter ran but proposed nothing{why}; "
                 "the target then added its own token)")
    text += split_text(s)
    if (s.info or {}).get("dp_rode_verify"):
        text += (f" (the layer DP whose skip set this step drafts with rode step {s.index - 1}'s verify pass: "
                 "its layer calls and bookkeeping are in that step's verify time)")
    elif (s.info or {}).get("dp_ran"):
        text += " (search: the layer DP whose skip set this step drafts with, run right before it)"
    carried = _next_step(trace, s)
    if carried is not None and (carried.info or {}).get("dp_rode_verify"):  # the pass that ran the DP, not the user
        text += (f" (this verify pass also carried the layer DP that step {carried.index} drafts with: "
                 "its time includes the DP's layer calls)")
    return text


def split_text(s) -> str:
    """What a verify pass split in two (specviz.verify_split) ran, '' for one pass."""
    first = s.verify_split
    if first is None:
        return ""
    rows = len(s.draft_tokens) + 1
    if s.accepted > first:
        return (f" (verified in two passes: the pending token and {first} draft(s) first, then the other "
                f"{rows - first - 1}, because every draft in the first pass was accepted)")
    return (f" (verified {first + 1} of {rows} rows: their logits already rejected draft {s.accepted + 1}, so "
            f"the other {rows - first - 1} rows never ran; the plan split this draft because it looked likely to "
            "fail early)")


def _next_step(trace: Trace, s):
    return next((x for x in trace.steps if x.index == s.index + 1), None)


def step_counts(s) -> str:
    """A step's header counts: drafted / accepted / committed, or HiSpec's tokens per level."""
    c = step_levels(s)
    if c is None:
        chosen = "" if s.draft_cap is None else f" (length chosen by the cost model: {s.draft_cap})"
        return f"{len(s.draft_tokens)} drafted{chosen}, {s.accepted} accepted, {len(s.committed)} committed"
    return (f"{c.tentative} tentative: {c.passed_v} exit-d drafts that passed exit v (of {c.drafted_d} drafted) "
            f"+ {c.from_v} from exit v; the full model accepted {c.full_from_d} + {c.full_from_v}, "
            f"{len(s.committed)} committed")


def _piece(decode: Decode | None, tok) -> str:
    if tok is None:
        return "∅"
    return repr((decode or _default_decode)([int(tok)]))[1:-1] or "∅"


def _plain_value(value: Any) -> str | None:
    """None / booleans / short text / floats / number lists as a reader would write them (no raw `None`,
    `False` or 0.01869822200001181; a long list as its count and first items), or None for
    anything else."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) <= 80:  # a word or a phrase (a drafter's source, a mode)
        return html.escape(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    if _is_number_list(value) and value:
        shown = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in value]
        return html.escape(", ".join(shown) if len(shown) <= LIST_PREVIEW else f"{len(shown)} values: {_preview(shown)}")
    return None


def _is_number_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


CUT_REASONS = {"k": "the draft length k", "eos": "an end-of-sequence token", "threshold": "the confidence threshold",
               "frames": "the last frame"}


def frame_cells(frames: list[dict], cut: str | None, decode: Decode | None) -> str:
    """CTC's frames as cells: solid = a token the draft proposed, dotted = a token the collapse
    kept but the draft cut (k, EOS or threshold), dashed = a merged repeat or a blank."""
    cells, n_cut = [], 0
    for i, f in enumerate(frames):
        blank = bool(f.get("blank"))
        text = "∅" if blank else _piece(decode, f.get("token"))
        kept = f.get("kept") is not None
        used = bool(f.get("used", kept))  # traces made before "used" existed: every kept token
        n_cut += kept and not used
        if used:
            border, verdict = f"2px solid {BLUE}", f", draft token {f.get('kept') + 1}"
        elif kept:
            border, verdict = f"2px dotted {VERMILLION}", f", collapsed token {f.get('kept') + 1}: cut by {CUT_REASONS.get(cut, 'the draft limit')}"
        else:
            border, verdict = f"1px dashed {GREY}", ("" if blank else ", merged repeat (dropped by the collapse)")
        title = (f"frame {i}: " + ("blank" if blank else f"token {f.get('token')}") + f", p = {_fmt_p(f.get('p'))}"
                 + (f", best non-blank: {_piece(decode, f.get('alt'))!s}" if blank and f.get("alt") is not None else "")
                 + verdict)
        cells.append(f'<span title="{html.escape(title, quote=True)}" style="border:{border};border-radius:3px;'
                     f'padding:0 3px;font-family:ui-monospace,monospace;white-space:pre">{html.escape(text)}</span>')
    note = "∅ blank · solid = in the draft · dashed = merged repeat or blank"
    if n_cut:
        note += f" · dotted = cut by {CUT_REASONS.get(cut, 'the draft limit')} ({n_cut} of the collapsed tokens)"
    return ('<div style="display:flex;flex-wrap:wrap;gap:3px">' + "".join(cells) +
            f"</div><div style='font-size:11px;opacity:.7'>{html.escape(note)}</div>")


# The drafter info keys (a trace's serialised names, kept as they are) as a learner reads them;
# a key not listed shows under its own name. dp_grid is drawn as the DP table above instead.
INFO_LABELS = {
    "skipped_layers": "layers the draft skipped",
    "dp_ran": "skip set freshly searched for this draft (a layer DP ran)",
    "dp_rode_verify": "skip set chosen by a DP that rode a verify pass",
    "dp_path": "the DP's chosen path",
    "dp_time": "DP time (its own bookkeeping when it rode a verify pass)",
    "dp_score": "final-layer cosine of the chosen path",
    "dp_age": "verifications since the skip set was searched",
    "dp_budget": "layers the DP skips (M)",
    "dp_run_cos": "cosines of the “run the layer” candidates",
    "dp_skip_cos": "cosines of the “skip the layer” candidates",
    # E counts layers: exit E runs layers 0 … E − 1 (the heatmap numbers layers from 0)
    "exit_layer": "the draft's exit E: it runs this many layers, 0 to E − 1",
    "verify_exit": "the intermediate check's exit v: it runs this many layers, 0 to v − 1",
    "draft_model": "draft model",
    "ngram": "matched n-gram length",
    "match_start": "the match starts at context position",
    "source": "where the draft came from",
    "answer_count": "times the matched n-gram occurs in the past answers",
    "answer_estimates": "estimated chance of each drafted token (its count in the past answers)",
    "head": "draft head",
    "head_weights": "the head's weights",
    "collapsed": "collapsed draft",
    "cut": "why the draft ended",
    "tentative": "tentative tokens",
    "drafted": "tokens drafted at exit d",
    "accepted_intermediate": "tokens that passed exit v",
    "t_draft_level": "time drafting at exit d",
    "t_intermediate": "time checking at exit v",
}
HIDDEN_INFO = ("dp_grid",)
LIST_PREVIEW = 8  # a long list shows its first items and how many there are


def info_table_html(trace: Trace, s, decode: Decode | None) -> str:
    """A step's drafter info as labelled rows, plus whether its verify pass carried the next DP."""
    info = s.info or {}
    rows = []
    for key, value in info.items():
        if key in HIDDEN_INFO:
            continue
        shown = _riding_text(s) if key == "dp_rode_verify" else _info_value(key, value, decode, info, trace.num_layers)
        rows.append((INFO_LABELS.get(key, key.replace("_", " ")), shown))
    carried = _carried_text(trace, s)
    if carried:
        rows.append(("this step's verify pass carried the next DP", carried))
    if not rows:
        return "<i>no drafter info</i>"
    cells = "".join(f"<tr><td><b>{html.escape(label)}</b></td><td>{shown}</td></tr>" for label, shown in rows)
    return f"<div style='overflow-x:auto'><table style='font-size:12.5px' cellpadding='2'>{cells}</table></div>"


def _riding_text(s) -> str:
    """dp_rode_verify describes the DP behind this step's skip set, not this step's own pass."""
    if not (s.info or {}).get("dp_rode_verify"):
        return "no"
    return html.escape(f"yes: step {s.index - 1}'s verify pass")


def _carried_text(trace: Trace, s) -> str:
    """Whether this step's verify pass ran the next step's DP ('' when the drafter runs none)."""
    following = _next_step(trace, s)
    if following is None or "dp_rode_verify" not in (following.info or {}):
        return ""
    if not following.info["dp_rode_verify"]:
        return "no"
    return html.escape(f"yes: step {following.index} drafts with the skip set it searched")


def _preview(values: Sequence[Any]) -> str:
    shown = ", ".join(map(str, values[:LIST_PREVIEW]))
    return shown + ("…" if len(values) > LIST_PREVIEW else "")


def _layers_text(layers: Sequence[int], num_layers: int) -> str:
    if not layers:
        return f"none of {num_layers} layers skipped"
    return f"{len(layers)} of {num_layers} layers skipped: {_preview(sorted(layers))}"


def _path_text(path: Sequence[Sequence[int]], num_layers: int) -> str:
    """The DP path as what it decides: a step (i, j) -> (i+1, j+1) skips layer i."""
    skipped = [int(a[0]) for a, b in zip(path, path[1:]) if int(b[1]) == int(a[1]) + 1]
    end = path[-1]
    return f"{len(path)} cells from (0, 0) to ({end[0]}, {end[1]}); {_layers_text(skipped, num_layers)}"


def _grid_text(grid: Sequence[Sequence[Any]]) -> str:
    cols = max((len(row) for row in grid), default=0)
    return f"a {len(grid)} × {cols} table: pick a cell under “How one cell of the DP table is computed”"


def _info_value(key: str, value: Any, decode: Decode | None, info: dict | None = None, num_layers: int = 0) -> str:
    """Drafter info, readable: CTC frames as cells, token lists as text, HiSpec rounds per round,
    layer sets and the DP's path as counts with their first layers, tables by their size."""
    if key == "skipped_layers" and _is_number_list(value):
        return html.escape(_layers_text(value, num_layers))
    if key == "dp_path" and isinstance(value, list) and value and all(_is_number_list(p) and len(p) == 2 for p in value):
        return html.escape(_path_text(value, num_layers))
    if key in ("dp_run_cos", "dp_skip_cos") and isinstance(value, list) and value and isinstance(value[0], list):
        return html.escape(_grid_text(value))
    if key == "frames" and isinstance(value, list) and value and isinstance(value[0], dict):
        return frame_cells(value, (info or {}).get("cut"), decode)
    if key == "token_frame_p":
        return "<i>see the q · frame p column</i>"
    if key == "cut" and value in CUT_REASONS:
        return html.escape(f"the draft ended at {CUT_REASONS[value]}")
    if key in ("collapsed", "tentative") and isinstance(value, list) and all(isinstance(t, int) for t in value):
        return "<code>" + html.escape(" | ".join(_piece(decode, t) for t in value)) + "</code>"
    if key == "rounds" and isinstance(value, list) and value and isinstance(value[0], dict):
        lines = []
        for r, rd in enumerate(value):
            drafts = rd.get("drafts") or []
            acc = int(rd.get("accepted") or 0)
            shown = " ".join(f"<u>{html.escape(_piece(decode, t))}</u>" if i < acc else f"<s>{html.escape(_piece(decode, t))}</s>"
                             for i, t in enumerate(drafts))
            corr = rd.get("correction")
            extra = "" if corr is None else f" → exit-v token <b>{html.escape(_piece(decode, corr))}</b>"
            lines.append(f"round {r + 1}: {shown} ({acc}/{len(drafts)} passed exit v){extra}")
        return "<br>".join(lines)
    if key in ("round_drafts", "round_accepted", "round_correction"):
        return "<i>see rounds</i>"
    if key.endswith("_time") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{1000 * float(value):.1f} ms"
    plain = _plain_value(value)
    if plain is not None:
        return plain
    text = repr(value)
    if len(text) > 400:
        text = text[:400] + " …"
    return f"<code>{html.escape(text)}</code>"


# -- speed ----------------------------------------------------------------------------------------

def spec_curve(trace: Trace, clock: str = "wall") -> tuple[list[float], list[int]]:
    times = step_times(trace, clock)
    xs, ys, n = [0.0], [0], 0
    for t, s in zip(times, trace.steps):
        n += len(s.committed)
        xs.append(t)
        ys.append(n)
    return xs, ys


@failsafe("figure")
def speed_figure(trace: Trace | None, plain: PlainRun | None = None, clock: str = "wall") -> go.Figure:
    """Tokens generated vs time, speculative and plain generate()."""
    if trace is None or not trace.steps:
        return message_figure("Tokens vs time appear here while the run streams.")
    xs, ys = spec_curve(trace, clock)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", name=f"speculative ({trace.drafter})",
                             line=dict(color=BLUE, width=2.5), marker=dict(size=4),
                             hovertemplate="%{x:.3f} s: %{y} tokens<extra>speculative</extra>"))
    if plain is not None and plain.tokens:
        fig.add_trace(go.Scatter(x=[0.0] + list(plain.times), y=list(range(len(plain.tokens) + 1)), mode="lines",
                                 line_shape="hv", name="plain generate()", line=dict(color=ORANGE, width=2, dash="dash"),
                                 hovertemplate="%{x:.3f} s: %{y} tokens<extra>generate()</extra>"))
    else:
        fig.add_annotation(text="plain generate() is timed once the run ends", x=0.99, y=0.02, xref="paper",
                           yref="paper", showarrow=False, xanchor="right", font=dict(size=11, color="#777"))
    fig.update_xaxes(title_text="seconds" + (" (engine time)" if clock == "busy" else ""), rangemode="tozero")
    fig.update_yaxes(title_text="tokens generated", rangemode="tozero")
    return _layout(fig, fig_title("Tokens vs time"), height=320)


@failsafe("figure")
def speedup_figure(trace: Trace | None, plain: PlainRun | None = None, clock: str = "wall") -> go.Figure:
    """Speedup over time: time plain generate() needed for the first n tokens ÷ time the
    speculative run needed for them, at each step's n."""
    if trace is None or not trace.steps:
        return message_figure("Speedup over time appears here.")
    if plain is None or not plain.tokens:
        return message_figure("Speedup over time needs the plain generate() timing,\nmeasured once per prompt and settings when the run ends.")
    xs, ys = spec_curve(trace, clock)
    px, py = [], []
    for t, n in zip(xs[1:], ys[1:]):
        if 0 < n <= len(plain.times) and t > 0:
            px.append(t)
            py.append(plain.times[n - 1] / t)
    if not px:
        return message_figure("No overlap between the speculative and the plain run yet.")
    fig = go.Figure(go.Scatter(x=px, y=py, mode="lines+markers", line=dict(color=GREEN, width=2), marker=dict(size=4),
                               name="speedup", hovertemplate="%{x:.3f} s: %{y:.2f}×<extra></extra>"))
    fig.add_hline(y=1.0, line=dict(color=GREY, dash="dot"), annotation_text="plain = 1×", annotation_position="bottom right")
    fig.update_xaxes(title_text="seconds since start", rangemode="tozero")
    fig.update_yaxes(title_text="speedup vs generate()", rangemode="tozero")
    return _layout(fig, fig_title("Speedup over time", "time generate() needed ÷ time we needed, same token count"),
                   height=300)


# -- acceptance -----------------------------------------------------------------------------------

# labels above the bars must fit a phone's plot (about 300 px): the sample size goes into the
# hover past a few bars, and past a dozen the percentages too, where the labels would overlap
LABEL_N_UP_TO, LABEL_UP_TO = 6, 12


def acceptance_labels(rates: list[float], counts: list[int]) -> list[str]:
    """Each bar's label: its rate, with the sample size while there are only a few bars."""
    if len(rates) > LABEL_UP_TO:
        return [""] * len(rates)
    if len(rates) > LABEL_N_UP_TO:
        return [f"{100 * a:.0f}%" for a in rates]
    return [f"{100 * a:.0f}%<br>n={n}" for a, n in zip(rates, counts)]


@failsafe("figure")
def acceptance_figure(trace: Trace | None) -> go.Figure:
    """P(draft position i accepted | a draft reached i), with sample sizes."""
    if trace is None or not trace.steps:
        return message_figure("Acceptance per draft position appears here.")
    m = compute_metrics(trace)
    if not m.acceptance_per_position:
        return message_figure(f"The '{trace.drafter}' run drafted nothing, so there is no acceptance to show.")
    pos = list(range(1, len(m.acceptance_per_position) + 1))
    fig = go.Figure(go.Bar(
        x=pos, y=m.acceptance_per_position, marker_color=BLUE, name="accepted",
        text=acceptance_labels(m.acceptance_per_position, m.drafted_per_position),
        # a fixed size: Plotly shrinks outside labels to the bar's width, unreadable on a phone
        textposition="outside", cliponaxis=False, constraintext="none", textfont=dict(size=11),
        customdata=m.drafted_per_position,
        hovertemplate="position %{x}: %{y:.1%} of %{customdata} drafts accepted<extra></extra>",
    ))
    fig.update_xaxes(title_text="draft position", dtick=1)
    fig.update_yaxes(title_text="accepted", range=[0, 1.15], tickformat=".0%")
    note = "positions a draft did not reach are not counted" + (
        "; hover a bar for its sample size" if len(pos) > LABEL_N_UP_TO else "")
    return _layout(fig, fig_title("Acceptance per draft position", note), height=320)


@failsafe("figure")
def accepted_histogram(trace: Trace | None) -> go.Figure:
    """How many drafts each verification accepted."""
    if trace is None or not trace.steps:
        return message_figure("The accepted-length histogram appears here.")
    steps = spec_steps(trace)
    if not steps or not any(s.draft_tokens for s in steps):
        return message_figure(f"The '{trace.drafter}' run drafted nothing: every step adds exactly one token.")
    longest = max(len(s.draft_tokens) for s in steps)
    counts = [0] * (longest + 1)
    empty = 0  # steps whose drafter proposed nothing (e.g. CTC's confidence cut at the first token)
    for s in steps:
        if s.draft_tokens:
            counts[s.accepted] += 1
        else:
            empty += 1
    mean = sum(s.accepted for s in steps) / len(steps)
    tau = compute_metrics(trace).tau
    fig = go.Figure(go.Bar(x=list(range(longest + 1)), y=counts, marker_color=ORANGE, text=counts, textposition="outside",
                           cliponaxis=False, name="drafted", hovertemplate="%{y} steps accepted %{x} drafts<extra></extra>"))
    ticks = list(range(longest + 1))
    labels = [str(t) for t in ticks]
    if empty:
        fig.add_trace(go.Bar(x=[-1], y=[empty], marker_color=GREY, text=[empty], textposition="outside", cliponaxis=False,
                             name="no draft", hovertemplate="%{y} steps drafted nothing<extra></extra>"))
        ticks, labels = [-1] + ticks, ["no draft"] + labels
    fig.update_xaxes(title_text="draft tokens accepted in a step", tickvals=ticks, ticktext=labels)
    fig.update_yaxes(title_text="steps")
    title = fig_title("Accepted drafts per verification",
                      f"mean {mean:.2f}, so τ = {tau:.2f} tokens per verification (the target adds one)")
    return _layout(fig, title, height=300, showlegend=False)


# -- compare --------------------------------------------------------------------------------------

@dataclass
class CompareRow:
    drafter: str
    tokens_per_s: float | None = None
    speedup: float | None = None
    tau: float | None = None
    acceptance: float | None = None
    new_tokens: int | None = None
    wall_time: float | None = None
    lossless: str = ""
    error: str = ""
    speedup_range: tuple[float, float] | None = None  # min and max over Compare's rounds (speedup: the median)


def compare_row(trace: Trace, plain: PlainRun | None) -> CompareRow:
    m = compute_metrics(trace)
    state, _ = lossless_check(trace, plain)
    speed = (m.tokens_per_s / plain.tokens_per_s) if plain is not None and plain.tokens_per_s > 0 else None
    labels = {"equal": "yes", "prefix": "yes (prefix)", "differs": "NO", "near-tie": "yes (near-tie rounding)",
              "stopped": "not compared (stopped)",
              "na": "n/a (sampled)", "pending": "?"}
    return CompareRow(trace.drafter, m.tokens_per_s, speed, m.tau, m.acceptance_rate, m.new_tokens, m.wall_time, labels[state])


def compare_table(rows: Sequence[CompareRow]) -> list[list[Any]]:
    def f(x, fmt):
        return "" if x is None else format(x, fmt)
    def speed(r: CompareRow) -> str:
        if r.speedup is None or r.speedup_range is None:
            return f(r.speedup, ".2f")
        return f"{r.speedup:.2f} ({r.speedup_range[0]:.2f}–{r.speedup_range[1]:.2f})"
    return [[r.drafter, f(r.tokens_per_s, ".1f"), speed(r), f(r.tau, ".2f"),
             "" if r.acceptance is None else f"{100 * r.acceptance:.0f}%", "" if r.new_tokens is None else r.new_tokens,
             f(r.wall_time, ".2f"), r.lossless, r.error] for r in rows]


COMPARE_HEADERS = ["drafter", "tokens/s", "speedup × (median, min–max)", "τ", "acceptance", "new tokens", "seconds",
                   "lossless", "error"]


@failsafe("figure")
def compare_figure(rows: Sequence[CompareRow], plain: PlainRun | None = None) -> go.Figure:
    ok = [r for r in rows if not r.error and r.tokens_per_s is not None]
    if not ok:
        return message_figure("Press 'Run every drafter' to compare them on this prompt.")
    use_speedup = all(r.speedup is not None for r in ok)
    ys = [r.speedup if use_speedup else r.tokens_per_s for r in ok]
    colours = [GREY if r.drafter == "ar" else (BLUE if (r.speedup or 0) >= 1 or not use_speedup else VERMILLION) for r in ok]
    spread = use_speedup and any(r.speedup_range for r in ok)
    error_y = dict(type="data", symmetric=False, color="#555", thickness=1.5, width=6,
                   array=[(r.speedup_range[1] - r.speedup) if r.speedup_range else 0 for r in ok],
                   arrayminus=[(r.speedup - r.speedup_range[0]) if r.speedup_range else 0 for r in ok]) if spread else None
    fig = go.Figure(go.Bar(
        x=[r.drafter for r in ok], y=ys, marker_color=colours, error_y=error_y,
        text=[(f"{y:.2f}×" if use_speedup else f"{y:.0f}") + (f"<br>τ {r.tau:.2f}" if r.tau is not None else "") for y, r in zip(ys, ok)],
        textposition="outside", cliponaxis=False,
        hovertemplate="%{x}: %{y:.2f}<extra></extra>",
    ))
    if use_speedup:
        fig.add_hline(y=1.0, line=dict(color=GREY, dash="dot"), annotation_text="generate()", annotation_position="top left")
    top = max([r.speedup_range[1] for r in ok if spread and r.speedup_range] + ys) if ys else 1
    fig.update_yaxes(title_text="speedup vs generate()" if use_speedup else "tokens / s", range=[0, top * 1.25 + 1e-9])
    notes = ("median of the rounds; bars: min–max",) if spread else ()
    return _layout(fig, fig_title("Every drafter on this prompt", *notes), height=340)


# -- Leviathan --------------------------------------------------------------------------------------

@dataclass
class LeviathanInputs:
    alpha: float | None  # per-token acceptance probability (geometric MLE)
    gamma: float  # mean draft length per verification
    c: float | None  # draft cost per token / verification cost per step
    expected_tokens: float | None  # E[#tokens per verification]
    predicted_speedup: float | None
    measured_tau: float
    measured_speedup: float | None
    acceptance_rate: float | None
    mean_draft_time: float | None  # seconds per draft token
    mean_verify_time: float | None  # seconds per verification


def leviathan_expected_tokens(alpha: float, gamma: float) -> float:
    if alpha >= 1.0:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def leviathan_speedup(alpha: float, gamma: float, c: float) -> float:
    return leviathan_expected_tokens(alpha, gamma) / (gamma * c + 1)


def leviathan_inputs(trace: Trace, plain: PlainRun | None = None, clock: str = "wall") -> LeviathanInputs:
    """Plug a run into Leviathan et al.'s formula.

    α: each verification tests draft positions until the first rejection, so under the i.i.d.
    model α̂ = accepted / (accepted + rejections) (the geometric maximum-likelihood estimate).
    c = mean draft time per draft token / mean verification time per step."""
    steps = spec_steps(trace)
    m = compute_metrics(trace)
    drafted = sum(len(s.draft_tokens) for s in steps)
    accepted = sum(s.accepted for s in steps)
    rejections = sum(1 for s in steps if s.accepted < len(s.draft_tokens))
    alpha = accepted / (accepted + rejections) if (accepted + rejections) else None
    gamma = drafted / len(steps) if steps else 0.0
    t_draft = sum(s.t_draft for s in steps)
    t_verify = sum(s.t_verify for s in steps)
    mean_draft = t_draft / drafted if drafted else None
    mean_verify = t_verify / len(steps) if steps else None
    c = mean_draft / mean_verify if (mean_draft is not None and mean_verify) else None
    expected = leviathan_expected_tokens(alpha, gamma) if alpha is not None else None
    predicted = leviathan_speedup(alpha, gamma, c) if (alpha is not None and c is not None) else None
    _, tps = run_speed(trace, m, clock)  # the cards' clock: in step mode, not the pauses between Steps
    measured = (tps / plain.tokens_per_s) if plain is not None and plain.tokens_per_s > 0 and tps > 0 else None
    return LeviathanInputs(alpha, gamma, c, expected, predicted, m.tau, measured, m.acceptance_rate, mean_draft, mean_verify)


@failsafe("markdown")
def leviathan_markdown(trace: Trace | None, plain: PlainRun | None = None, clock: str = "wall") -> str:
    head = ("### The speedup formula (Leviathan et al., 2023)\n\n"
            "With per-token acceptance probability $\\alpha$, $\\gamma$ draft tokens per verification and a draft "
            "token costing $c$ target steps:\n\n"
            "$$E[\\text{tokens per verification}] = \\frac{1-\\alpha^{\\gamma+1}}{1-\\alpha}$$\n\n"
            # two displays, not one with both: side by side they ran off a phone's screen
            "$$S = \\frac{1-\\alpha^{\\gamma+1}}{(1-\\alpha)(\\gamma c+1)}$$\n\n")
    if trace is None or not trace.steps:
        return head + "*Run a drafter to plug in this run's measured α and c.*"
    x = leviathan_inputs(trace, plain, clock)
    if x.alpha is None:
        return head + (f"*This run ('{trace.drafter}') drafted nothing, so α is undefined: "
                       "plain decoding is the formula's baseline, S = 1.*")
    fmt = lambda v, f=".3f": "–" if v is None else format(v, f)  # noqa: E731
    lines = [
        head,
        "| quantity | this run |",
        "|---|---|",
        f"| α (accepted ÷ (accepted + rejections)) | **{fmt(x.alpha)}** |",
        f"| raw acceptance rate (accepted ÷ drafted) | {fmt(x.acceptance_rate)} |",
        f"| γ (mean draft length) | **{fmt(x.gamma, '.2f')}** |",
        f"| draft time per token | {fmt(None if x.mean_draft_time is None else 1000 * x.mean_draft_time, '.2f')} ms |",
        f"| verify time per step | {fmt(None if x.mean_verify_time is None else 1000 * x.mean_verify_time, '.2f')} ms |",
        f"| c = draft per token ÷ verify per step | **{fmt(x.c)}** |",
        f"| predicted tokens per verification | {fmt(x.expected_tokens, '.2f')} |",
        f"| measured τ | {fmt(x.measured_tau, '.2f')} |",
        f"| **predicted speedup S** | **{fmt(x.predicted_speedup, '.2f')}×** |",
        f"| **measured speedup vs generate()** | **{fmt(x.measured_speedup, '.2f')}×** |",
        "",
    ]
    if x.alpha is not None and x.c is not None:
        lines.append(f"Plugged in: $S = \\frac{{1-{x.alpha:.3f}^{{{x.gamma:.2f}+1}}}}{{(1-{x.alpha:.3f})({x.gamma:.2f}\\cdot{x.c:.3f}+1)}}"
                     f" = {x.predicted_speedup:.2f}$" if x.alpha < 1 else
                     f"Plugged in (α = 1, every draft accepted): $S = \\frac{{\\gamma+1}}{{\\gamma c+1}} = {x.predicted_speedup:.2f}$")
    lines.append("\nThe formula assumes i.i.d. acceptance, a fixed γ and that verifying γ+1 tokens costs one target "
                 "step; it ignores prefill, the drafter's search time and Python overhead, and on a CPU a "
                 "verification of γ+1 tokens costs more than one step, so the measured number can land on either "
                 "side of it. For layer-skip drafters c is roughly (layers run) ÷ L, so α has to be high to gain "
                 "anything.")
    if trace.settings.get("adaptive_length"):
        lines.append("\n" + cost_model_sentence(trace))
    return "\n".join(lines)


def cost_model_sentence(trace: Trace) -> str:
    """How the cost model (adaptive_length) spent this run's steps, for the Learn tab."""
    steps = [s for s in trace.steps if s.index > 0]
    off = sum(switched_off(trace, s) for s in steps)
    return (f"This run chose each step's draft length with the cost model (at most the drafter's k): "
            f"{off} of {len(steps)} steps were plain decoding steps, because at the acceptance and costs measured "
            "so far a draft was expected to cost more than it saves; the others drafted, some of them as probes "
            "that keep the acceptance up to date. γ above is the mean over every step, those included.")


@failsafe("figure")
def leviathan_figure(trace: Trace | None, plain: PlainRun | None = None, clock: str = "wall") -> go.Figure:
    """S(γ) for this run's α and c, with the run's γ and its measured speedup marked."""
    if trace is None or not trace.steps:
        alpha, c, inputs = 0.8, 0.5, None
    else:
        inputs = leviathan_inputs(trace, plain, clock)
        if inputs.alpha is None or inputs.c is None:
            alpha, c, inputs = 0.8, 0.5, None
        else:
            alpha, c = inputs.alpha, inputs.c
    gammas = list(range(0, 17))
    fig = go.Figure()
    for a, dash, name in ((alpha, "solid", f"α = {alpha:.2f} (this run)" if inputs else f"α = {alpha:.2f} (example)"),
                          (min(0.99, alpha + (1 - alpha) / 2), "dash", None), (max(0.0, alpha - 0.2), "dot", None)):
        fig.add_trace(go.Scatter(x=gammas, y=[leviathan_speedup(a, g, c) for g in gammas], mode="lines",
                                 name=name or f"α = {a:.2f}", line=dict(color=BLUE, dash=dash, width=2.5 if dash == "solid" else 1.5),
                                 hovertemplate="γ=%{x}: S=%{y:.2f}<extra></extra>"))
    if inputs is not None:
        fig.add_trace(go.Scatter(x=[inputs.gamma], y=[inputs.predicted_speedup], mode="markers", name="predicted at this γ",
                                 marker=dict(size=11, color=ORANGE, symbol="circle")))
        if inputs.measured_speedup is not None:
            fig.add_trace(go.Scatter(x=[inputs.gamma], y=[inputs.measured_speedup], mode="markers", name="measured",
                                     marker=dict(size=13, color=VERMILLION, symbol="star")))
    fig.add_hline(y=1.0, line=dict(color=GREY, dash="dot"))
    fig.update_xaxes(title_text="γ (draft tokens per verification)", dtick=2)
    fig.update_yaxes(title_text="speedup S", rangemode="tozero")
    return _layout(fig, fig_title("Leviathan speedup vs draft length", f"c = {c:.2f}: a draft token's cost ÷ a verification's"),
                   height=330, legend_below=True)


def method_plans(num_layers: int, options: dict[str, dict[str, Any]] | None = None
                 ) -> list[tuple[str, list[int], str]]:
    """Which layers each layer-skip drafter's draft runs (0 runs in the draft, 1 skipped, 2 HiSpec's
    intermediate verifier) for a model with `num_layers` layers, under `options` (per drafter; the
    drafters' own defaults where absent). The layers are the drafters' own resolution of those
    options, built without a model, so the picture cannot drift from what a run uses. CLaSp's set
    is re-chosen by its DP: an example of that many layers, spread as searches tend to pick them."""
    from .drafters.clasp import CLaSp
    from .drafters.early_exit import EarlyExit
    from .drafters.hispec import HiSpec
    from .drafters.static_skip import StaticSkip

    L, options = int(num_layers), options or {}

    def opts(name: str, *keys: str) -> dict[str, Any]:
        return {k: v for k, v in options.get(name, {}).items() if k in keys}

    static = StaticSkip(L, **opts("static-skip", "skip", "skip_ratio"))
    early = EarlyExit(L, **opts("early-exit", "exit_layer"))
    clasp = CLaSp(L, **opts("clasp", "skip_ratio", "dp_interval", "protect_ends"))
    hispec = HiSpec(L, **opts("hispec", "d", "v", "n"))
    m, spread = clasp.budget, clasp.skippable
    example = {spread[round(i * (len(spread) - 1) / max(1, m - 1))] for i in range(m)} if m > 1 else {spread[len(spread) // 2]}
    d, v = hispec.d, hispec.v
    return [
        (f"static skip ({static.preset})", [1 if i in set(static.skip) else 0 for i in range(L)],
         f"{len(static.skip)} layers bypassed: {', '.join(map(str, sorted(static.skip)))}"),
        (f"early exit (E = {early.exit_layer})", [0 if i < early.exit_layer else 1 for i in range(L)],
         f"first {early.exit_layer} layers, then the shared head"),
        (f"CLaSp (M = {m})", [1 if i in example else 0 for i in range(L)],
         f"an example of {m} layers: the DP re-chooses them every {clasp.dp_interval} verifications"),
        (f"HiSpec (d = {d}, v = {v})", [0 if i < d else (2 if i < v else 1) for i in range(L)],
         f"draft exits at {d}, checked at {v}, full model every {hispec.n} tokens"),
    ]


@failsafe("figure")
def methods_figure(num_layers: int = 16, options: dict[str, dict[str, Any]] | None = None) -> go.Figure:
    """Teaching figure: what each layer-skip drafter's draft runs with the settings a run uses."""
    plans = method_plans(num_layers, options)
    L = int(num_layers)
    z = [[p[i] for _, p, _ in plans] for i in range(L)]
    n_states = 3
    scale = []
    for k, c in enumerate([SKY, ORANGE, GREEN]):
        scale += [[k / n_states, c], [(k + 1) / n_states, c]]
    names = [n for n, _, _ in plans]
    text = [[f"{names[j]} · layer {i}: {LAYER_STATES[z[i][j]]}<br>{plans[j][2]}" for j in range(len(plans))] for i in range(L)]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=list(range(L)), zmin=-0.5, zmax=2.5, colorscale=scale, xgap=6, ygap=1,
                               text=text, hoverinfo="text",
                               colorbar=dict(tickvals=[0, 1, 2], ticktext=LAYER_STATES, thickness=12, len=0.9)))
    fig.update_yaxes(title_text="layer", dtick=max(1, L // 8))
    return _layout(fig, fig_title("What each draft runs", f"{L}-layer model, with the panels' settings"), height=360)


__all__ = ["method_plans", "methods_figure", "fig_title", "wrap_lines",
    "PlainRun", "CompareRow", "LeviathanInputs", "failsafe", "message_figure", "message_html", "token_pieces",
    "token_html", "legend_html", "cards_html", "progress_html", "lossless_check", "near_tie_tolerance", "first_difference", "layer_plan", "skip_heatmap", "dp_grid_figure",
    "dp_step", "step_details_html", "speed_figure", "speedup_figure", "acceptance_figure", "accepted_histogram",
    "compare_row", "compare_table", "compare_figure", "COMPARE_HEADERS", "leviathan_inputs", "leviathan_markdown",
    "leviathan_figure", "leviathan_speedup", "leviathan_expected_tokens", "busy_times", "spec_curve",
]
