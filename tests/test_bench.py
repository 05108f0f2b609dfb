"""Smoke test of `python -m specviz.bench` on a tiny model and two prompts, plus its pure helpers."""

from __future__ import annotations

import json
import re

import pytest

from specviz import bench
from specviz.trace import StepEvent, Trace

PROMPTS = [
    'def add(a, b):\n    """Add two numbers."""\n',
    "for i in range(10):\n    print(i)\nfor j in range(",
]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


@pytest.fixture(scope="module")
def greedy_run(tiny_model_dir, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    argv = ["--model", tiny_model_dir, "--draft-model", tiny_model_dir, "--prompts", prompts_file,
            "--max-new-tokens", "10", "--warmup-tokens", "2", "--repeats", "1", "--quiet", "--threads", "1",
            "--set", "draft-model.k=3", "--set", "prompt-lookup.max_ngram=2",
            "--json", str(out / "bench.json"), "--html", str(out / "bench.html")]
    code = bench.main(argv)
    return code, json.loads((out / "bench.json").read_text()), (out / "bench.html").read_text()


def test_bench_greedy_smoke(greedy_run):
    code, report, _ = greedy_run
    assert code == 0
    records = {r["drafter"]: r for r in report["records"]}
    # baselines, every registered drafter (measured or skipped with a reason) and the transformers twins
    from specviz.drafters import DRAFTERS

    for name in ["generate", "ar", *DRAFTERS, "hf:early-exit", "hf:prompt-lookup", "hf:draft-model",
                 "static-skip+record"]:
        assert name in records, f"no record for {name}"
    for record in report["records"]:
        assert set(bench.RECORD_FIELDS) <= set(record), f"{record['drafter']} lacks fields"
        if record["status"] == "skipped":
            assert record["reason"], f"{record['drafter']} skipped without a reason"
            continue
        assert record["status"] == "ok", f"{record['drafter']}: {record['reason']}"
        assert record["samples"] == len(PROMPTS)
        assert record["tokens_per_s"] > 0
        assert record["speedup_vs_generate"] > 0
        # greedy decoding is lossless: every method reproduces generate() token for token
        assert record["matched_generate"] is True, (record["drafter"], record["mismatched_samples"])
        if record["kind"] in ("drafter", "trace-overhead") or record["drafter"] == "ar":
            assert record["tau"] >= 1.0
            assert record["time_split_ms_per_token"]["verify"] > 0
    assert records["generate"]["speedup_vs_generate"] == pytest.approx(1.0)
    assert records["ar"]["tau"] == pytest.approx(1.0)
    assert records["ar"]["acceptance_rate"] is None
    # the draft model is the target itself: every draft token is accepted
    dm = records["draft-model"]
    assert dm["acceptance_rate"] == pytest.approx(1.0) and dm["alpha"] == pytest.approx(1.0)
    assert dm["settings"]["k"] == 3 and dm["mean_draft_length"] <= 3
    assert all(a == pytest.approx(1.0) for a in dm["acceptance_per_position"])
    assert dm["predicted_speedup"] > 0 and dm["draft_cost_c"] > 0
    # measured ÷ ceiling: the measured speedup over the AR loop against the verify-cost-corrected S
    assert dm["measured_over_ceiling"] == pytest.approx(dm["speedup_vs_ar"] / dm["predicted_speedup_verify_corrected"])
    assert records["hf:prompt-lookup"]["settings"]["max_matching_ngram_size"] == 2
    assert dm["vs_transformers"]["method"] == "hf:draft-model" and dm["vs_transformers"]["ratio"] > 0
    assert report["ar_vs_generate"]["ratio"] > 0
    assert report["trace_overhead"]["drafter"] == "static-skip" and report["trace_overhead"]["ratio"] > 0
    assert report["meta"]["greedy"] is True and report["meta"]["prompts"] == len(PROMPTS)
    assert report["meta"]["packed_linears"] == {}  # a tiny model's linears are all under packed_linears.MIN_SIZE


def test_bench_merge_of_shards_equals_the_whole(greedy_run):
    _, report, _ = greedy_run
    shards = []
    for prompt in range(len(PROMPTS)):
        shard = json.loads(json.dumps(report))
        shard["samples"] = [s for s in shard["samples"] if s["prompt"] == prompt]
        shards.append(shard)
    merged = bench.merge_reports(shards)
    for a, b in zip(report["records"], merged["records"]):
        assert a["drafter"] == b["drafter"]
        for key in ("tokens_per_s", "tau", "acceptance_rate", "speedup_vs_generate", "matched_generate"):
            assert a[key] == pytest.approx(b[key]) if isinstance(a[key], float) else a[key] == b[key], key
    with pytest.raises(ValueError, match="overlap"):
        bench.merge_reports([report, report])
    changed = json.loads(json.dumps(shards[1]))
    next(m for m in changed["methods"] if m["drafter"] == "draft-model")["settings"]["k"] = 5
    with pytest.raises(ValueError, match="settings differ"):
        bench.merge_reports([shards[0], changed])


def test_bench_html_is_self_contained(greedy_run):
    _, _, html = greedy_run
    assert html.startswith("<!doctype html>")
    assert "plotly.js" in html.lower() or "Plotly" in html  # the library is inlined
    assert len(html) > 1_000_000  # plotly.js (~4.5 MB) is inlined, not fetched
    assert not re.findall(r"<script[^>]*\bsrc=", html)  # no external script
    assert html.count("Plotly.newPlot") >= 4  # speedups, tau, per-position acceptance, time split


def test_bench_sampling_and_bad_options(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "s.json"
    code = bench.main(["--model", tiny_model_dir, "--prompts", prompts_file, "--limit-prompts", "1",
                       "--drafters", "prompt-lookup,static-skip,no-such-drafter", "--temperature", "0.8",
                       "--top-k", "20", "--max-new-tokens", "6", "--warmup-tokens", "2", "--quiet", "--threads", "1",
                       "--trace-overhead", "none", "--set", "static-skip.k=0", "--json", str(out)])
    assert code == 0
    records = {r["drafter"]: r for r in json.loads(out.read_text())["records"]}
    assert records["static-skip"]["status"] == "skipped" and "k" in records["static-skip"]["reason"]
    assert records["no-such-drafter"]["status"] == "skipped"
    for name in ("generate", "ar", "prompt-lookup", "hf:prompt-lookup"):
        assert records[name]["status"] == "ok", records[name]["reason"]
        assert records[name]["matched_generate"] is None  # sampling: nothing to match
    printed = capsys.readouterr().out
    assert "| prompt-lookup |" in printed and "T=0.8" in printed


def test_leviathan_formula_matches_the_worked_table():
    # ALGORITHMS.md §1.1 worked values
    assert bench.leviathan_speedup(0.8, 4, 0.55) == pytest.approx(1.05, abs=0.01)
    assert bench.leviathan_speedup(0.9, 6, 0.5) == pytest.approx(1.30, abs=0.01)
    assert bench.leviathan_speedup(0.95, 8, 0.5) == pytest.approx(1.48, abs=0.01)
    assert bench.leviathan_speedup(1.0, 4, 0.25) == pytest.approx(5 / 2)


def test_trace_metrics_pooling():
    def trace(steps):
        t = Trace("x", {}, "m", 4, [1, 2], t_prefill=0.01)
        t.steps.append(StepEvent(0, [], 0, 5, [5], t_end=0.01))
        for i, (draft, accepted) in enumerate(steps, 1):
            committed = draft[:accepted] + [9]
            t.steps.append(StepEvent(i, draft, accepted, 9, committed, t_draft=0.001 * len(draft), t_verify=0.01,
                                     t_end=0.01 + 0.02 * i))
        return t

    m = bench.pool_stats([bench.trace_stats(trace([([1, 2, 3], 3), ([1, 2, 3], 1)])),
                          bench.trace_stats(trace([([4, 5], 0), ([], 0)]))])
    assert m["acceptance_rate"] == pytest.approx(4 / 8)
    assert m["alpha"] == pytest.approx(4 / (4 + 2))  # two rejections
    assert m["acceptance_per_position"] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert m["drafted_per_position"] == [3, 3, 2]
    assert m["mean_draft_length"] == pytest.approx(8 / 4)
    assert m["tau"] == pytest.approx((4 + 2 + 1 + 1) / 4)  # the two prefills are not verifications
    assert m["draft_cost_c"] == pytest.approx((0.008 / 8) / (0.04 / 4))


def test_parse_overrides_and_prompts(tmp_path):
    assert bench.parse_overrides(["clasp.skip_ratio=0.4", "static-skip.skip=[1,3]", "draft-model.model_name=x"]) == {
        "clasp": {"skip_ratio": 0.4}, "static-skip": {"skip": [1, 3]}, "draft-model": {"model_name": "x"}}
    with pytest.raises(ValueError):
        bench.parse_overrides(["skip_ratio=0.4"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match="prompt"):
        bench.load_prompts(bad)


def test_bench_adaptive_length_runs_each_drafter_both_ways(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "a.json"
    code = bench.main(["--model", tiny_model_dir, "--prompts", prompts_file, "--drafters", "early-exit,prompt-lookup",
                       "--max-new-tokens", "16", "--warmup-tokens", "2", "--quiet", "--threads", "1",
                       "--trace-overhead", "none", "--no-transformers", "--adaptive-length", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    records = {r["drafter"]: r for r in report["records"]}
    assert "ar+cost-k" not in records  # plain decoding has no draft length to choose
    for name in ("early-exit", "prompt-lookup"):
        twin = records[f"{name}+cost-k"]
        assert twin["status"] == "ok" and twin["kind"] == "drafter", twin["reason"]
        assert twin["settings"]["adaptive_length"] is True and "adaptive_length" not in records[name]["settings"]
        assert twin["matched_generate"] is True  # still lossless
    pairs = {a["drafter"]: a for a in report["adaptive_length"]}
    assert set(pairs) == {"early-exit", "prompt-lookup"} and all(a["ratio"] > 0 for a in pairs.values())
    assert "cost-model draft length (early-exit)" in capsys.readouterr().out


def test_bench_one_pass_twins_every_drafter_row(tiny_model_dir, prompts_file, tmp_path):
    """--one-pass: each of our drafter rows again with the two-pass verify off (on by default), the
    '@hf' row included (its A/B against transformers' settings)."""
    out = tmp_path / "o.json"
    code = bench.main(["--model", tiny_model_dir, "--prompts", prompts_file, "--drafters", "prompt-lookup",
                       "--set", "prompt-lookup.min_ngram=2", "--max-new-tokens", "16", "--warmup-tokens", "2",
                       "--quiet", "--threads", "1", "--trace-overhead", "none", "--one-pass", "--json", str(out)])
    assert code == 0
    records = {r["drafter"]: r for r in json.loads(out.read_text())["records"]}
    assert "ar+one-pass" not in records
    for row in ("prompt-lookup", "prompt-lookup@hf"):
        twin = records[f"{row}+one-pass"]
        assert twin["status"] == "ok" and twin["settings"]["verify_split"] is False and twin["matched_generate"]
        assert "verify_split" not in records[row]["settings"]


def test_bench_kernel_twins_switch_one_kernel_off(tiny_model_dir, prompts_file, tmp_path):
    """--unpacked / --full-head / --hf-layers: each of our drafters (the AR loop too) again on an
    engine with the decoder linears' kernels / the LM head's greedy screen / the lean layers off,
    lossless, with the switch in its settings."""
    out = tmp_path / "k.json"
    code = bench.main(["--model", tiny_model_dir, "--prompts", prompts_file, "--drafters", "ar,prompt-lookup",
                       "--max-new-tokens", "12", "--warmup-tokens", "2", "--quiet", "--threads", "1",
                       "--trace-overhead", "none", "--no-transformers", "--unpacked", "--full-head",
                       "--hf-layers", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    records = {r["drafter"]: r for r in report["records"]}
    for name in ("ar", "prompt-lookup"):
        assert records[f"{name}+F.linear"]["settings"]["pack_linears"] is False
        assert records[f"{name}+full-head"]["settings"]["screen_head"] is False
        assert records[f"{name}+hf-layers"]["settings"]["lean"] is False
        assert all(records[f"{name}{suffix}"]["matched_generate"]
                   for suffix in ("", "+F.linear", "+full-head", "+hf-layers"))
    assert "greedy_screen" in report["meta"]
    assert report["meta"]["lean_layers_refused"] is None


def test_bench_compares_with_transformers_at_settings_it_can_express(tiny_model_dir, prompts_file, tmp_path, capsys):
    """Ours stops at 2-grams and drafts by match length, which transformers cannot express: it runs
    at min_ngram 1 / fixed length, and so does a second instance of ours, the one paired with it."""
    out = tmp_path / "m.json"
    code = bench.main(["--model", tiny_model_dir, "--prompts", prompts_file, "--drafters", "prompt-lookup",
                       "--set", "prompt-lookup.min_ngram=2", "--set", "prompt-lookup.max_ngram=3",
                       "--set", "prompt-lookup.length=match", "--set", "prompt-lookup.k=6",
                       "--max-new-tokens", "12", "--warmup-tokens", "2", "--quiet", "--threads", "1",
                       "--trace-overhead", "none", "--json", str(out)])
    assert code == 0
    records = {r["drafter"]: r for r in json.loads(out.read_text())["records"]}
    ours, matched, hf = records["prompt-lookup"], records["prompt-lookup@hf"], records["hf:prompt-lookup"]
    assert all(r["status"] == "ok" and r["matched_generate"] is True for r in (ours, matched, hf))
    assert ours["settings"] == {"k": 6, "max_ngram": 3, "min_ngram": 2, "length": "match", "answers": False}
    assert matched["settings"] == {"k": 6, "max_ngram": 3, "min_ngram": 1, "length": "fixed", "answers": False}
    assert hf["settings"] == {"prompt_lookup_num_tokens": 6, "max_matching_ngram_size": 3}
    assert ours["vs_transformers"] is None  # different settings: not a comparison of implementations
    assert matched["vs_transformers"]["method"] == "hf:prompt-lookup" and matched["vs_transformers"]["ratio"] > 0
    assert "| prompt-lookup@hf vs hf:prompt-lookup |" in capsys.readouterr().out


def test_settings_transformers_lacks():
    from specviz.bench.baselines import NoCounterpart, assisted_generation

    assert bench.settings_transformers_lacks("prompt-lookup", {"k": 4, "max_ngram": 3, "min_ngram": 1}) == {}
    assert bench.settings_transformers_lacks("prompt-lookup", {"min_ngram": 2, "length": "match"}) == {
        "min_ngram": 1, "length": "fixed"}
    # transformers searches the context only: a run that also drafts from past answers gets a twin without
    assert bench.settings_transformers_lacks("prompt-lookup", {"k": 4, "max_ngram": 3, "min_ngram": 1,
                                                               "answers": True}) == {"answers": False}
    assert bench.settings_transformers_lacks("draft-model", {"k": 3}) == {}
    with pytest.raises(NoCounterpart, match="min_ngram=1"):
        assisted_generation("prompt-lookup", {"k": 4, "max_ngram": 3, "min_ngram": 2}, {}, None)


def test_prompt_sets_by_name(tmp_path, capsys):
    assert bench.resolve_prompts("grounded") == bench.PROMPTS_DIR / "grounded.jsonl"
    assert bench.resolve_prompts("chat") == bench.PROMPTS_DIR / "chat.jsonl"
    own = tmp_path / "grounded"  # an existing file wins over the set of the same name
    own.write_text('{"prompt": "x"}\n')
    assert bench.resolve_prompts(str(own)) == own
    with pytest.raises(ValueError, match="bundled sets: chat, code, grounded"):
        bench.resolve_prompts("no-such-set")
    assert bench.main(["--prompts", "no-such-set", "--quiet"]) == 2
    assert "bundled sets: chat, code, grounded" in capsys.readouterr().err


def test_grounded_prompts_are_input_grounded_and_held_out():
    records = [json.loads(line) for line in (bench.PROMPTS_DIR / "grounded.jsonl").read_text().splitlines()]
    assert len(records) == 8 and len({r["category"] for r in records}) == 8
    for r in records:
        assert set(r) == {"id", "category", "label", "grounded", "prompt"} and r["grounded"] is True
        passage = r["prompt"].split("\n\n", 1)[1]  # the instruction, then the text to work from
        assert 60 <= len(passage.split()) <= 250, r["id"]
    from specviz.train.instructions import GROUNDED, TEMPLATES

    # no prompt's instruction (its first line) is an instance of a training template's first line
    lines = [t.split("\n")[0] for ts in TEMPLATES.values() for t in ts] + [t.split("\n")[0] for t in GROUNDED.values()]
    patterns = [re.compile(re.escape(line).replace(r"\{t\}", ".+").replace(r"\{p\}", ".+")) for line in lines]
    assert patterns[0].fullmatch(TEMPLATES["explain"][0].format(t="tea"))  # the check can match
    assert not [r["id"] for r in records for p in patterns if p.fullmatch(r["prompt"].split("\n")[0])]


def test_sweep_defaults_keep_the_current_default_unless_clearly_beaten():
    from specviz.bench.sweeps.defaults import KEEP_MARGIN, choose_defaults
    rows = [{"drafter": "ctc", "options": {"k": 2}, "speedup": 1.092},
            {"drafter": "ctc", "options": {"k": 4}, "speedup": 1.088},
            {"drafter": "eagle", "options": {"k": 1}, "speedup": 1.30},
            {"drafter": "eagle", "options": {"k": 3}, "speedup": 1.30 * (1 + KEEP_MARGIN) + 0.001}]
    current = {"ctc": {"k": 4}, "eagle": {"k": 1}}
    assert choose_defaults(rows, ["ctc", "eagle"], current) == {"ctc": {"k": 4}, "eagle": {"k": 3}}
    assert choose_defaults(rows, ["ctc", "eagle"], {}) == {"ctc": {"k": 2}, "eagle": {"k": 3}}  # none yet: the fastest
    assert choose_defaults(rows, ["ctc"], {"ctc": {"k": 6}}) == {"ctc": {"k": 2}}  # the current one was not measured


def test_sweep_defaults_merge_keeps_other_drafters_rows_with_their_provenance(tmp_path):
    from specviz.bench.sweeps.defaults import merge_existing
    path = tmp_path / "drafter_defaults.json"
    old_row = {"drafter": "clasp", "options": {"k": 3}, "speedup": 0.7, "command": "old sweep", "clock": "48 tokens"}
    stale = {"drafter": "prompt-lookup", "options": {"k": 4}, "speedup": 1.1, "command": "old sweep"}
    path.write_text(json.dumps({"results": [old_row, stale], "defaults": {"clasp": {"k": 3}, "prompt-lookup": {"k": 4}}}))
    new_row = {"drafter": "prompt-lookup", "options": {"k": 16}, "speedup": 1.6, "command": "new sweep"}
    merged = merge_existing(path, {"results": [new_row], "defaults": {"prompt-lookup": {"k": 16}}})
    assert merged["results"] == [old_row, new_row]  # the swept drafter's old rows are replaced
    assert merged["defaults"] == {"clasp": {"k": 3}, "prompt-lookup": {"k": 16}}
    assert merge_existing(tmp_path / "none.json", {"results": [], "defaults": {}}) == {"results": [], "defaults": {}}


def test_bench_variants_run_a_drafter_at_other_settings_in_the_same_run(tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "v.json"
    code = bench.main(["--model", tiny_model_dir, "--prompts", prompts_file, "--drafters", "clasp",
                       "--set", "clasp.k=3", "--variant", "clasp.ride_verify=false", "--variant",
                       "clasp.dp_interval=1;threshold=0", "--max-new-tokens", "12", "--warmup-tokens", "2", "--quiet",
                       "--threads", "1", "--trace-overhead", "none", "--no-transformers", "--json", str(out)])
    assert code == 0
    records = {r["drafter"]: r for r in json.loads(out.read_text())["records"]}
    base, off, every = records["clasp"], records["clasp[ride_verify=false]"], records["clasp[dp_interval=1;threshold=0]"]
    assert all(r["status"] == "ok" and r["matched_generate"] is True for r in (base, off, every))
    assert base["settings"]["ride_verify"] is True and off["settings"]["ride_verify"] is False
    assert off["settings"]["k"] == every["settings"]["k"] == 3  # --set applies to the variants too
    assert every["settings"]["dp_interval"] == 1 and every["settings"]["threshold"] == 0


def test_bench_variant_errors_name_the_problem():
    from specviz.bench.methods import parse_variants
    assert parse_variants(["clasp.k=2;dp_interval=1"]) == [("clasp", {"k": 2, "dp_interval": 1}, "clasp[k=2;dp_interval=1]")]
    with pytest.raises(ValueError, match="--variant takes DRAFTER.OPTION=VALUE"):
        parse_variants(["clasp"])
    for bad in ("clasp.k", "clasp.", ".k=2", "clasp.=2"):
        with pytest.raises(ValueError, match="--variant takes DRAFTER.OPTION=VALUE"):
            parse_variants([bad])
