"""The benchmark report as one self-contained HTML page: the markdown tables plus plotly charts
(speedups with both predictions, τ, per-position acceptance, time split), plotly.js inlined so the
page works offline."""

from __future__ import annotations

import html
from typing import Any

from .reports import fmt
from .stats import SPLIT_PARTS

KIND_COLORS = {"baseline": "#7f7f7f", "drafter": "#1f77b4", "transformers": "#ff7f0e", "trace-overhead": "#9467bd"}
DEFAULT_COLOR = "#1f77b4"
PAGE_STYLE = ("<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:1em}"
              "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ddd;padding:3px 7px}"
              "th{background:#f6f8fa}td{text-align:right}td:first-child{text-align:left}</style>")


def _colors(records: list[dict[str, Any]]) -> list[str]:
    return [KIND_COLORS.get(r["kind"], DEFAULT_COLOR) for r in records]


def _speedup_figure(ok: list[dict[str, Any]]):
    """Measured speedup over generate() per method, with the Leviathan predictions as markers."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=[r["drafter"] for r in ok], y=[r["speedup_vs_generate"] for r in ok],
                marker_color=_colors(ok), name="measured",
                text=[fmt(r["speedup_vs_generate"], ".2f", "×") for r in ok], textposition="outside")
    predicted = [r for r in ok if r.get("predicted_speedup") is not None and r.get("speedup_vs_ar")]
    for key, label, symbol in (("predicted_speedup", "Leviathan S", "diamond"),
                               ("predicted_speedup_verify_corrected", "S × t_AR step / t_verify", "x")):
        shown = [r for r in predicted if r.get(key) is not None]
        if shown:
            # S is relative to one target step per token (the AR loop); rescale to generate() for one axis
            fig.add_scatter(x=[r["drafter"] for r in shown],
                            y=[r[key] * r["speedup_vs_generate"] / r["speedup_vs_ar"] for r in shown],
                            mode="markers", marker=dict(symbol=symbol, size=12), name=label)
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(title="Speedup over model.generate() (ratio of mean tokens/s)", yaxis_title="×",
                      height=420)
    return fig


def _tau_figure(drafted: list[dict[str, Any]]):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[r["drafter"] for r in drafted], y=[r["tau"] for r in drafted],
                           marker_color=_colors(drafted),
                           text=[fmt(r["tau"]) for r in drafted], textposition="outside"))
    fig.update_layout(title="τ: mean tokens committed per target verification (target's own token included)",
                      height=380)
    return fig


def _acceptance_figure(drafted: list[dict[str, Any]]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in drafted:
        if r.get("acceptance_per_position"):
            n = r["drafted_per_position"]
            fig.add_scatter(x=list(range(1, len(n) + 1)), y=r["acceptance_per_position"], mode="lines+markers",
                            name=r["drafter"], customdata=n,
                            hovertemplate="position %{x}: %{y:.0%} of %{customdata} drafts<extra>%{fullData.name}</extra>")
    fig.update_layout(title="Acceptance per draft position (given a draft reached it)", xaxis_title="draft position",
                      yaxis=dict(title="accepted", tickformat=".0%", range=[0, 1.05]), height=400)
    return fig


def _time_split_figure(drafted: list[dict[str, Any]]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for part in SPLIT_PARTS:
        fig.add_bar(x=[r["drafter"] for r in drafted], y=[r["time_split_ms_per_token"][part] for r in drafted],
                    name=part)
    fig.update_layout(barmode="stack", title="Where the time goes (ms per generated token)", yaxis_title="ms / token",
                      height=400)
    return fig


def html_report(report: dict[str, Any], markdown_text: str) -> str:
    """The page: the command, the markdown report as HTML, then the four charts."""
    ok = [r for r in report["records"] if r["status"] == "ok"]
    drafted = [r for r in ok if r.get("tau") is not None]
    figures = [_speedup_figure(ok), _tau_figure(drafted), _acceptance_figure(drafted), _time_split_figure(drafted)]
    meta = report["meta"]
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>specviz benchmark</title>",
        PAGE_STYLE + "</head><body>",
        "<h1>specviz benchmark</h1>",
        f"<p><code>{html.escape(meta['command'])}</code> — {html.escape(meta['time'])}</p>",
        markdown_to_html(markdown_text),
    ]
    for i, fig in enumerate(figures):
        body.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    body.append("</body></html>")
    return "\n".join(body)


def _table_html(table: list[str]) -> str:
    """Markdown pipe-table lines as an HTML table (the separator line dropped, bold marks removed)."""
    rows = [[html.escape(c.strip().replace("**", "")) for c in line.strip().strip("|").split("|")]
            for line in table if not set(line.strip()) <= set("|-:")]
    head, body = rows[0], rows[1:]
    return ("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
            + "</table>")


def markdown_to_html(text: str) -> str:
    """The report's markdown (pipe tables, bullet lines, paragraphs) as HTML."""
    out: list[str] = []
    table: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out.append(_table_html(table))
            table = []
        if line.strip():
            out.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    if table:
        out.append(_table_html(table))
    return "\n".join(out)
