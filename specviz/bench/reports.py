"""The benchmark's report: built from samples, merged from shards, written as markdown (stdout),
JSON and HTML.

A report keeps its raw samples, so shards of one setup run on different prompts
(`--prompt-start` / `--limit-prompts`) merge into exactly the report one run over all prompts
would have given.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .baselines import HF_COUNTERPART
from .stats import Sample, by_prompt_and_repeat, empty_record, paired_median, ratio, summarise

# meta fields two shards must share to be one run
MERGE_KEYS = ("model", "draft_model", "device", "dtype", "max_new_tokens", "temperature", "top_k", "top_p",
              "record", "clock", "prompts_file")


# -- building ----------------------------------------------------------------------------------
def counterparts(methods: list[dict[str, Any]]) -> dict[str, str]:
    """Method name -> the transformers method it is compared with. Reports written before methods
    named their counterpart paired each drafter with HF_COUNTERPART's."""
    pairs = {}
    for m in methods:
        counterpart = m["counterpart"] if "counterpart" in m else HF_COUNTERPART.get(m["drafter"])
        if counterpart:
            pairs[m["drafter"]] = counterpart
    return pairs


def _compare_records(records: list[dict[str, Any]], by_method: dict[str, list[Sample]],
                     pairs: dict[str, str]) -> None:
    """Add each record's speedups (vs generate(), vs the AR loop, paired), its verification-cost
    corrected prediction and its ratio to its transformers counterpart (`pairs`)."""
    by_name = {r["drafter"]: r for r in records}
    base = by_name.get("generate", {}).get("tokens_per_s")
    ar = by_name.get("ar", {})
    base_samples = by_prompt_and_repeat(by_method.get("generate", []))
    ar_step = ar.get("verify_ms_per_verification")  # one target forward of one token
    for record in records:
        tps = record["tokens_per_s"]
        record["speedup_vs_generate"] = ratio(tps, base)
        record["speedup_vs_ar"] = ratio(tps, ar.get("tokens_per_s"))
        record["speedup_paired_median"] = paired_median(by_method[record["drafter"]], base_samples)
        if record.get("predicted_speedup") is not None and ar_step:
            # the formula counts a verification as one target step; rescale by what it really cost
            record["predicted_speedup_verify_corrected"] = (
                record["predicted_speedup"] * ar_step / record["verify_ms_per_verification"])
            if record.get("speedup_vs_ar"):  # how close the drafter runs to its own ceiling
                record["measured_over_ceiling"] = record["speedup_vs_ar"] / record["predicted_speedup_verify_corrected"]
        counterpart = pairs.get(record["drafter"])
        if counterpart in by_name and by_name[counterpart]["tokens_per_s"]:
            hf = by_name[counterpart]
            record["vs_transformers"] = {"method": counterpart, "ratio": ratio(tps, hf["tokens_per_s"]),
                                         "transformers_tokens_per_s": hf["tokens_per_s"]}


def _trace_overhead(meta: dict[str, Any], methods: list[dict[str, Any]], by_name: dict[str, dict[str, Any]],
                    by_method: dict[str, list[Sample]]) -> dict[str, Any] | None:
    """tok/s without trace recording / with it, for the drafter run both ways (None if it was not)."""
    name = meta.get("trace_overhead_drafter")
    twin = next((m for m in methods if m["kind"] == "trace-overhead"), None)
    if not (name and twin and by_name.get(name, {}).get("tokens_per_s") and by_name[twin["drafter"]]["tokens_per_s"]):
        return None
    on, off = (name, twin["drafter"]) if meta.get("record") else (twin["drafter"], name)
    median = paired_median(by_method[on], by_prompt_and_repeat(by_method[off]))  # (off s/tok) / (on s/tok)
    return {
        "drafter": name,
        "tokens_per_s_record_off": by_name[off]["tokens_per_s"],
        "tokens_per_s_record_on": by_name[on]["tokens_per_s"],
        "ratio": by_name[off]["tokens_per_s"] / by_name[on]["tokens_per_s"],  # > 1: recording costs time
        "paired_median": 1.0 / median if median is not None else None,
        "goal": "ratio <= 1.05",
    }


def _adaptive_length(methods: list[dict[str, Any]], by_name: dict[str, dict[str, Any]],
                     by_method: dict[str, list[Sample]]) -> list[dict[str, Any]]:
    """Per drafter run both ways (`--adaptive-length`): tok/s with the cost model's draft length
    over tok/s with the drafter's own k, as a ratio of means and as the paired median."""
    out = []
    for m in methods:
        fixed = m.get("of")
        if not (m["settings"].get("adaptive_length") and fixed in by_name):
            continue
        on, off = by_name[m["drafter"]].get("tokens_per_s"), by_name[fixed].get("tokens_per_s")
        out.append({
            "drafter": fixed, "method": m["drafter"], "tokens_per_s_fixed": off, "tokens_per_s_adaptive": on,
            "ratio": ratio(on, off),  # > 1: the cost model's length is faster
            "paired_median": paired_median(by_method[m["drafter"]], by_prompt_and_repeat(by_method[fixed])),
            "gamma_fixed": by_name[fixed].get("mean_draft_length"),
            "gamma_adaptive": by_name[m["drafter"]].get("mean_draft_length"),
        })
    return out


def _ar_vs_generate(by_name: dict[str, dict[str, Any]], by_method: dict[str, list[Sample]]) -> dict[str, Any] | None:
    """The engine's AR loop against generate(): is our baseline loop a fair one?"""
    base = by_name.get("generate", {}).get("tokens_per_s")
    ar_tps = by_name.get("ar", {}).get("tokens_per_s")
    if not (base and ar_tps):
        return None
    median = paired_median(by_method.get("ar", []), by_prompt_and_repeat(by_method.get("generate", [])))
    return {"ratio": ar_tps / base, "paired_median": median,
            "goal": "ratio >= 0.90 (AR loop at most 10% slower than generate())"}


def build_report(meta: dict[str, Any], methods: list[dict[str, Any]], samples: list[Sample],
                 skipped: list[dict[str, str]]) -> dict[str, Any]:
    """The report of one run (or of merged shards): one record per method, then the skipped ones."""
    by_method: dict[str, list[Sample]] = {m["drafter"]: [] for m in methods}
    for s in samples:
        by_method.setdefault(s.method, []).append(s)
    records = [summarise(m, by_method[m["drafter"]]) for m in methods]
    by_name = {r["drafter"]: r for r in records}
    _compare_records(records, by_method, counterparts(methods))
    records += [empty_record(drafter=item["drafter"], kind="skipped", status="skipped", reason=item["reason"])
                for item in skipped]
    return {
        "meta": meta,
        "records": records,
        "trace_overhead": _trace_overhead(meta, methods, by_name, by_method),
        "ar_vs_generate": _ar_vs_generate(by_name, by_method),
        "adaptive_length": _adaptive_length(methods, by_name, by_method),
        "methods": methods,
        "skipped": skipped,
        "samples": [s.to_dict() for s in samples],
    }


# -- merging shards ----------------------------------------------------------------------------
def _merged_samples(reports: list[dict[str, Any]]) -> list[Sample]:
    """Every shard's samples; a (method, prompt, repeat) measured twice means the shards overlap."""
    seen = set()
    samples = []
    for report in reports:
        for data in report["samples"]:
            sample = Sample(**data)
            if (sample.method, sample.prompt, sample.repeat) in seen:
                raise ValueError(f"runs overlap: {sample.method} prompt {sample.prompt} repeat {sample.repeat} twice")
            seen.add((sample.method, sample.prompt, sample.repeat))
            samples.append(sample)
    return samples


def _merged_methods(reports: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(methods, skipped) of all shards: a method once (its settings must agree), failed if it
    failed in any shard; a drafter skipped only where no shard measured it."""
    methods, skipped, names = [], [], set()
    for report in reports:
        for m in report["methods"]:
            if m["drafter"] in names:
                known = next(x for x in methods if x["drafter"] == m["drafter"])
                if known["settings"] != m["settings"]:
                    raise ValueError(f"cannot merge runs whose {m['drafter']} settings differ: "
                                     f"{known['settings']} vs {m['settings']}")
                known["failed"] = known.get("failed") or m.get("failed")
            else:
                names.add(m["drafter"])
                methods.append(dict(m))
        for item in report["skipped"]:
            if item["drafter"] not in {s["drafter"] for s in skipped} | names:
                skipped.append(item)
    return methods, skipped


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs of the same setup on different prompts (`--prompt-start` shards)."""
    if not reports:
        raise ValueError("nothing to merge")
    meta = dict(reports[0]["meta"])
    for other in reports[1:]:
        diff = [k for k in MERGE_KEYS if other["meta"].get(k) != meta.get(k)]
        if diff:
            raise ValueError(f"cannot merge runs that differ in {', '.join(diff)}")
    samples = _merged_samples(reports)
    methods, skipped = _merged_methods(reports)
    meta["command"] = " && ".join(r["meta"]["command"] for r in reports)
    meta["prompts"] = len({s.prompt for s in samples})
    meta["prompt_tokens"] = [t for r in reports for t in r["meta"]["prompt_tokens"]]
    meta["prompt_start"] = min(r["meta"].get("prompt_start", 0) for r in reports)
    meta["merged_from"] = len(reports)
    return build_report(meta, methods, samples, skipped)


# -- writing -----------------------------------------------------------------------------------
def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    """A table cell: '–' for missing values, yes / **NO** for booleans."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    return f"{value:{spec}}{suffix}"


def _setup_line(meta: dict[str, Any]) -> str:
    return (
        f"model `{meta['model']}` ({meta['num_layers']} layers, {meta['dtype']}) on {meta['device']} "
        f"({meta['device_name']}, {meta['threads']} threads); {meta['prompts']} prompts × {meta['repeats']} "
        f"repeat(s) from {Path(meta['prompts_file']).name if meta.get('prompts_file') else '?'}, "
        f"max_new_tokens {meta['max_new_tokens']}, "
        + ("greedy" if meta["greedy"] else f"T={meta['temperature']} top_k={meta['top_k']} top_p={meta['top_p']}")
        + f"; torch {meta['torch']}, transformers {meta['transformers']}"
        + ("; times are CPU seconds (--clock cpu), not wall" if meta.get("clock") == "cpu" else ""))


def _method_row(r: dict[str, Any]) -> str:
    split = r.get("time_split_ms_per_token")
    split_text = ("{draft:.2f} / {verify:.2f} / {search:.2f} / {rest:.2f}".format(
        rest=split["other"] + split["prefill"], **split) if split else "–")
    name = r["drafter"] if r["status"] == "ok" else f"{r['drafter']} (failed)"
    return (
        f"| {name} | {fmt(r['tokens_per_s'], '.1f')} | {fmt(r['speedup_vs_generate'], '.2f', '×')} | "
        f"{fmt(r['speedup_vs_ar'], '.2f', '×')} | {fmt(r['tau'])} | {fmt(r['acceptance_rate'], '.0%')} | "
        f"{fmt(r['alpha'])} | {fmt(r['mean_draft_length'], '.1f')} | {fmt(r['draft_cost_c'])} | "
        f"{fmt(r['predicted_speedup'], '.2f', '×')} | "
        f"{fmt(r.get('predicted_speedup_verify_corrected'), '.2f', '×')} | {fmt(r.get('measured_over_ceiling'))} | "
        f"{split_text} | {fmt(r['peak_memory_mb'], '.2f')} | "
        f"{fmt(r['matched_generate'])} |"
    )


def _vs_transformers_table(records: list[dict[str, Any]]) -> list[str]:
    pairs = [r for r in records if r.get("vs_transformers")]
    if not pairs:
        return []
    lines = ["", "| ours vs transformers | ours tok/s | transformers tok/s | ours / transformers |",
             "|---|---:|---:|---:|"]
    for r in pairs:
        v = r["vs_transformers"]
        lines.append(f"| {r['drafter']} vs {v['method']} | {fmt(r['tokens_per_s'], '.1f')} | "
                     f"{fmt(v['transformers_tokens_per_s'], '.1f')} | {fmt(v['ratio'], '.2f', '×')} |")
    return lines


def _notes(report: dict[str, Any]) -> list[str]:
    """The lines under the tables: the AR-loop and tracing checks, skipped / failed methods, memory."""
    lines = []
    if report.get("ar_vs_generate"):
        a = report["ar_vs_generate"]
        lines.append(f"AR loop / generate(): {fmt(a['ratio'], '.3f')} (ratio of mean tok/s; paired median "
                     f"{fmt(a['paired_median'], '.3f')}; goal ≥ 0.90)")
    if report.get("trace_overhead"):
        o = report["trace_overhead"]
        lines.append(f"tracing overhead ({o['drafter']}): tok/s record=False / record=True = {fmt(o['ratio'], '.3f')} "
                     f"(paired median {fmt(o['paired_median'], '.3f')}; goal ≤ 1.05)")
    for a in report.get("adaptive_length") or []:
        lines.append(f"cost-model draft length ({a['drafter']}): tok/s {a['method']} / {a['drafter']} = "
                     f"{fmt(a['ratio'], '.3f')} (paired median {fmt(a['paired_median'], '.3f')}; "
                     f"γ {fmt(a['gamma_fixed'], '.2f')} → {fmt(a['gamma_adaptive'], '.2f')})")
    for r in report["records"]:
        if r["status"] in ("skipped", "failed"):
            lines.append(f"- {r['drafter']}: {r['status']} — {r['reason']}")
    lines.append(f"- peak memory: {report['meta']['memory_method']}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: set-up line, the method table, ours vs transformers, notes."""
    lines = [
        _setup_line(report["meta"]),
        "",
        "| method | tok/s | × generate | × AR loop | τ | accept | α | γ | c | Leviathan S | S·t_AR/t_ver | "
        "measured ÷ ceiling | draft / verify / search / other ms/tok | peak MB | = generate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|:---:|",
    ]
    lines += [_method_row(r) for r in report["records"] if r["status"] != "skipped"]
    lines += _vs_transformers_table(report["records"])
    lines.append("")
    lines += _notes(report)
    return "\n".join(lines)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path`, creating its folders: the one way the bench and its sweeps write files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_report(report: dict[str, Any], json_path: str | None, html_path: str | None) -> None:
    """Print the markdown; write the JSON and the HTML report where asked."""
    text = markdown(report)
    print(text)
    if json_path:
        write_text(json_path, json.dumps(report, indent=1, default=str))
    if html_path:
        from .report_html import html_report  # imported here: it imports fmt from this module

        write_text(html_path, html_report(report, text))
