"""The Gradio Blocks: `build_app(...) -> gr.Blocks`. It lays out the components and wires each
event to a handler of `handlers` bound to the app's `AppConfig`; no logic of its own.

Events and their API names (`gradio_client`):

* ``/run``     stream a whole generation (tokens appear as each verification lands)
* ``/step``    one speculation cycle per call (the Generation lives in the session's gr.State)
* ``/stop``    stop this session's running generation
* ``/compare`` run every chosen drafter on the prompt, table + bar chart

``/run``, ``/step`` and ``/compare`` take: model, prompt, drafter (not /compare),
max_new_tokens, temperature, top_p, top_k, seed, extra_options (JSON object, /run and /step),
and one keyword per drafter option, named ``<drafter>_<option>`` with '-' as '_'
(``static_skip_k``, ``clasp_dp_interval``, ``hispec_d`` ...). Every model-running event shares
``concurrency_id="model"``, so one generation at a time touches the shared model.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import gradio as gr
import torch

from .. import api, figures, teach
from . import handlers
from . import teach as ui_teach
from .catalog import has_chat_template, model_label, model_markdown, num_layers
from .components import control_component, named_number, named_slider
from .config import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_LIMIT, PLOT_EVERY, AppConfig
from .controls import (available, control_values, drafter_choice, initial_drafter, options_from_values, param_name, spec_for,
                       unavailable_message)
from .gpu import gpu_decorator
from .loading import preload_in_background
from .render import OUTPUT_KEYS, initial_figures
from .session import Session
from .text import CSS, INTRO, LEARN_MD

Components = dict[str, Any]  # the page's components by role ("model", "prompt", "tokens", ...)

PRIVATE = dict(api_visibility="private", show_progress="hidden")  # UI-only events: not in the API
# Instant feedback on Stop (the server answers once the run has ended): a mark on the progress
# line's wrapper that CSS shows while the run still streams; the DOM Gradio renders is left alone
STOP_JS = "() => { document.querySelector('#sv-progress')?.setAttribute('data-stopping', ''); }"
RUN_JS = "() => { document.querySelector('#sv-progress')?.removeAttribute('data-stopping'); }"
# A slider's number box: Gradio's page clamps a typed value into [min, max] when the box loses
# focus, before any handler sees it, so the server cannot refuse it. This says so instead of
# clamping silently: a capture-phase blur listener reads the typed value before Gradio's own
# handler clamps it and shows a notice (text only, built with textContent) naming the setting,
# the value, the bound and what it became.
CLAMP_NOTICE_JS = """() => {
  if (window.svClampNotice) return;
  window.svClampNotice = true;
  const show = (text) => {
    let box = document.getElementById('sv-clamp-notice');
    if (!box) {
      box = document.createElement('div');
      box.id = 'sv-clamp-notice';
      box.setAttribute('role', 'alert');
      document.body.appendChild(box);
    }
    box.textContent = text;
    box.hidden = false;
    clearTimeout(window.svClampTimer);
    window.svClampTimer = setTimeout(() => { box.hidden = true; }, 9000);
  };
  document.addEventListener('blur', (event) => {
    const box = event.target;
    if (!(box instanceof HTMLInputElement) || box.type !== 'number' || box.value === '') return;
    if (!box.closest('.wrap')?.querySelector('input[type=range]')) return;  // sliders only
    const value = Number(box.value), low = Number(box.min), high = Number(box.max);
    if (!(value < low || value > high)) return;
    const bound = value < low ? low : high;
    const name = (box.getAttribute('aria-label') || 'this setting').replace(/^number input for /, '');
    show(`${name}: ${value} is ${value < low ? 'below the minimum' : 'above the maximum'} ${bound}, ` +
         `so it was set to ${bound}.`);
  }, true);
}"""


def build_app(model_names: Sequence[str] | None = None, *, default_model: str | None = None,
              examples: Sequence[str] | None = None, max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
              default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, device: str | None = None,
              dtype: str | None = None, plot_every: int = PLOT_EVERY, preload: bool = False,
              torch_threads: int | None = None,
              title: str = "specviz — speculative decoding, made visible") -> gr.Blocks:
    """Build the app. `model_names` is the allowlist the model dropdown offers (registry names,
    local directories or allowlisted hub ids); `preload` loads the default model now so the first
    run streams at once; `torch_threads` sets torch's intra-op threads for the process (1 is much
    faster for small models on a small shared CPU: 2 threads that compete for 2 busy cores stall
    every one of the many small ops a layer-by-layer drafter runs)."""
    if torch_threads is not None:
        torch.set_num_threads(int(torch_threads))
    config = AppConfig.create(model_names, default_model, examples=list(examples) if examples is not None else None,
                              max_new_tokens_limit=max_new_tokens_limit, default_max_new_tokens=default_max_new_tokens,
                              device=device, dtype=dtype, plot_every=plot_every)
    if preload:
        preload_in_background(config.default_model, config.load_status, device, dtype)
    with gr.Blocks(title="specviz", analytics_enabled=False) as demo:
        c: Components = {"session": gr.State(Session())}
        gr.Markdown(f"## {title}\n{INTRO}")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=330):
                _inputs_column(config, c)
            with gr.Column(scale=7, min_width=420):
                _outputs_column(config, c)
        _wire_model_events(config, c)
        _wire_view_events(config, c, demo)
    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.specviz_model_names = config.model_names  # type: ignore[attr-defined]
    demo.specviz_default_model = config.default_model  # type: ignore[attr-defined]
    demo.specviz_output_keys = OUTPUT_KEYS  # type: ignore[attr-defined]
    return demo


def launch_kwargs() -> dict[str, Any]:
    """What `app.py` passes to `launch()`: Spaces-compatible host/port from the environment, and CSS."""
    kwargs: dict[str, Any] = {"server_name": os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), "css": CSS}
    port = os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT")
    if port:
        kwargs["server_port"] = int(port)
    return kwargs


def panel_options(config: AppConfig) -> dict[str, dict[str, Any]]:
    """The options a Run from the panels would give each layer-skip drafter on the default model,
    for the Learn tab's picture (drawn from the same values as the runs, not a second copy)."""
    names = ("static-skip", "early-exit", "clasp", "hispec")
    return {d: options_from_values(d, control_values(config.default_model, d), config.model_names)
            for d in names if d in config.drafters}


def bind(handler: Callable, config: AppConfig) -> functools.partial:
    """`handler` with the app's config bound. A partial keeps the signature Gradio reads (the
    gr.Progress default, **opts), which a wrapper with `__wrapped__` would lose; the name is
    copied because Gradio and `spaces.GPU` read it and a partial has none."""
    bound = functools.partial(handler, config)
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(bound, attr, getattr(handler, attr))
    return bound


# -- layout ------------------------------------------------------------------------------------

def _inputs_column(config: AppConfig, c: Components) -> None:
    default_model = config.default_model
    first_examples = config.examples_of(default_model)
    # custom values reach the handlers, which refuse names outside the list with a clear message
    c["model"] = gr.Dropdown([(model_label(n), n) for n in config.model_names], value=default_model, label="model",
                             allow_custom_value=True, elem_id="sv-model")
    c["model_info"] = gr.Markdown(model_markdown(default_model))
    c["model_status"] = gr.Markdown(config.load_status.message, elem_id="sv-model-status")
    # the prompt box starts with the first example, so the list says so
    c["examples"] = gr.Dropdown([(e.label, i) for i, e in enumerate(first_examples)], value=0 if first_examples else None,
                                label="example prompts", info="pick one to fill the prompt box", elem_id="sv-examples")
    c["prompt"] = gr.Textbox(label="prompt", lines=7, max_lines=20,
                             value=first_examples[0].prompt if first_examples else "",
                             placeholder="Ask something, or pick an example above", elem_id="sv-prompt")
    c["chat"] = gr.Checkbox(value=True, label="chat: send the prompt as a user message (the model's chat "
                            "template); off = raw text", visible=has_chat_template(default_model), elem_id="sv-chat")
    c["drafter"] = gr.Dropdown([drafter_choice(n) for n in config.drafters],
                               value=initial_drafter(default_model, config.drafters), label="drafter",
                               allow_custom_value=True, elem_id="sv-drafter")
    c["drafter_note"] = gr.Markdown()
    with gr.Row():
        c["run"] = gr.Button("Run", variant="primary", elem_id="sv-run")
        c["step"] = gr.Button("Step", variant="secondary", elem_id="sv-step")
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="sv-stop")
    c["progress"] = gr.HTML(figures.progress_html(None), elem_id="sv-progress")  # the run's state, by the button
    _drafter_panels(config, c)
    _sampling_controls(config, c)


def _drafter_panels(config: AppConfig, c: Components) -> None:
    """One hidden group per drafter with its controls (`on_drafter` shows the chosen one)."""
    c["groups"], c["controls"] = [], {}
    for d in config.drafters:
        with gr.Group(visible=False) as group:
            if not available(d):
                gr.Markdown(f"⚠️ {unavailable_message(d)} Its panel will fill in once it lands.")
            start_values = control_values(config.default_model, d)
            for control in spec_for(d).controls:
                c["controls"][param_name(d, control.kwarg)] = control_component(
                    control, config.model_names, config.default_model, start_values[control.kwarg])
        c["groups"].append(group)


def _sampling_controls(config: AppConfig, c: Components) -> None:
    with gr.Accordion("sampling & length", open=True):
        with gr.Row():
            c["max_new"] = named_slider(1, config.max_new_tokens_limit, value=config.default_max_new_tokens, step=1,
                                        label="max new tokens", name="max_new_tokens")
            c["temperature"] = named_slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)",
                                            name="temperature")
        with gr.Row():
            c["top_p"] = named_slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", name="top_p")
            c["top_k"] = named_number(value=0, precision=0, label="top-k (0 = off)", name="top_k")
            c["seed"] = named_number(value=0, precision=0, label="seed", name="seed")
        c["adaptive_length"] = gr.Checkbox(
            value=False, elem_id="sv-adaptive-length",
            label="draft length from the cost model: each step drafts only as many tokens as the measured costs "
                  "and acceptance say will pay, up to the drafter's k (0 = a plain decoding step)")
    with gr.Accordion("extra options (JSON, merged over the panel)", open=False):
        c["extra"] = gr.Textbox(value="", label="extra drafter options", placeholder='{"k": 4}', lines=1)


def _outputs_column(config: AppConfig, c: Components) -> None:
    c["cards"] = gr.HTML(figures.cards_html(None), elem_id="sv-cards")
    gr.HTML(figures.legend_html())
    c["tokens"] = gr.HTML(figures.token_html(None), elem_id="sv-tokens")
    c["show_rejected"] = gr.Checkbox(value=True, label="show rejected drafts inline (struck through)")
    # above the tabs: the step picked here is the one the Step and Skip layers tabs show
    c["step_sel"] = gr.Slider(0, 1, value=0, step=1, label="step to inspect (Step tab, DP table)",
                              elem_id="sv-step-sel")
    with gr.Tabs(selected=handlers.first_tab(initial_drafter(config.default_model, config.drafters)),
                 elem_id="sv-tabs") as c["tabs"]:
        with gr.Tab("Step", id="step", elem_id="sv-tab-step"):
            _step_tab(c)
        with gr.Tab("Skip layers", id="skip", elem_id="sv-tab-skip"):
            c["heatmap"] = gr.Plot(label="skipped layers per step", elem_id="sv-heatmap")
            c["dp"] = gr.Plot(label="CLaSp DP table", elem_id="sv-dp")
            _dp_cell_picker(c)
        with gr.Tab("Speed", id="speed", elem_id="sv-tab-speed"):
            c["speed"] = gr.Plot(label="tokens vs time", elem_id="sv-speed")
            c["speedup"] = gr.Plot(label="speedup over time", elem_id="sv-speedup")
        with gr.Tab("Acceptance", id="acceptance", elem_id="sv-tab-acc"):
            c["accpos"] = gr.Plot(label="acceptance per draft position")
            c["hist"] = gr.Plot(label="accepted length")
        with gr.Tab("Compare", elem_id="sv-tab-compare"):
            _compare_tab(config, c)
        with gr.Tab("Learn", elem_id="sv-tab-learn"):
            c["learn_md"] = gr.Markdown(figures.leviathan_markdown(None), elem_id="sv-learn-md",
                                        latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                          {"left": "$", "right": "$", "display": False}])
            c["learn_fig"] = gr.Plot(label="speedup formula")
            gr.Markdown(LEARN_MD)
            gr.Plot(figures.methods_figure(num_layers(config.default_model) or 16, panel_options(config)),
                    label="what each drafter's draft runs")
        with gr.Tab("Export", elem_id="sv-tab-export"):
            gr.Markdown("The last run's full trace (every step: drafts, verdicts, p and q, timings, drafter "
                        "info) as JSON; `specviz.trace.Trace.from_json` reads it back.")
            c["export"] = gr.File(label="trace JSON", interactive=False)
            c["text"] = gr.Textbox(label="generated text (exact, whitespace kept)", lines=8, max_lines=30,
                                   interactive=False, buttons=["copy"], elem_id="sv-text")


def _dp_cell_picker(c: Components) -> None:
    """A DP cell by its coordinates (gr.Plot has no click event), explained below the table."""
    with gr.Accordion("How one cell of the DP table is computed", open=False, elem_id="sv-dp-cell-box"):
        with gr.Row():
            c["dp_i"] = gr.Number(value=None, precision=0, label="layer i (row; blank = last)", minimum=0,
                                  elem_id="sv-dp-i")
            c["dp_j"] = gr.Number(value=None, precision=0, label="skipped j (column; blank = last)", minimum=0,
                                  elem_id="sv-dp-j")
        c["dp_cell"] = gr.HTML(teach.dp_cell_html(None, None, None, None), elem_id="sv-dp-cell")


def _step_tab(c: Components) -> None:
    """The selected step, for every drafter: its drafts with verdicts and where they came from,
    then the same step explained on its own numbers, and the logit lens of the run's tokens."""
    c["details"] = gr.HTML(figures.step_details_html(None, None), elem_id="sv-details")
    c["lesson"] = gr.HTML(teach.step_lesson_html(None, None), elem_id="sv-lesson")
    with gr.Accordion("Logit lens: what each layer's exit would predict", open=False, elem_id="sv-lens-box"):
        gr.Markdown(ui_teach.LENS_NOTE)
        with gr.Row():
            c["lens_pos"] = gr.Slider(1, 2, value=1, step=1, label="generated token #", elem_id="sv-lens-pos")
            c["lens_run"] = gr.Button("Show the lens", variant="secondary", elem_id="sv-lens-run")
        c["lens"] = gr.Plot(label="logit lens", elem_id="sv-lens")


def _compare_tab(config: AppConfig, c: Components) -> None:
    gr.Markdown("Runs each chosen drafter on the prompt with its panel settings (same sampling and length), in "
                "rounds: each round runs every drafter (in a rotated order) and then times plain `generate()` right "
                "after, so each speedup compares runs made moments apart. The table and chart show the median over "
                "the rounds and its min–max.")
    usable = [d for d in config.drafters if available(d)]
    c["compare_choice"] = gr.CheckboxGroup(
        usable, value=[d for d in usable if not api.missing_part(d, config.default_model)], label="drafters")
    c["compare_rounds"] = named_slider(1, 5, value=handlers.COMPARE_ROUNDS, step=1, name="compare_rounds",
                                       label="rounds (each runs every drafter, then times generate() right after)")
    c["compare_run"] = gr.Button("Run every drafter", variant="primary", elem_id="sv-compare-run")
    c["compare_df"] = gr.Dataframe(headers=figures.COMPARE_HEADERS, interactive=False, wrap=True,
                                   elem_id="sv-compare-df")
    c["compare_fig"] = gr.Plot(label="comparison", elem_id="sv-compare-fig")


# -- events ------------------------------------------------------------------------------------

def _wire_model_events(config: AppConfig, c: Components) -> None:
    """Run, Step, Stop and Compare: the API's events. One generation at a time touches the model;
    queue position, progress and errors show on the cards and the line under Run (not on all outputs)."""
    gpu = gpu_decorator()
    session = c["session"]
    outputs = [c[k] for k in OUTPUT_KEYS] + [session]
    common = [c[k] for k in ("model", "prompt", "drafter", "max_new", "temperature", "top_p", "top_k", "seed",
                             "extra")] + [session]
    run_kwargs = {**c["controls"], "chat": c["chat"], "adaptive_length": c["adaptive_length"]}
    model_event = dict(inputs_kwargs=run_kwargs, concurrency_id="model", concurrency_limit=1)
    # Gradio's full tracker on the line under Run says "queue: 2/3" to a waiting visitor (the
    # minimal one only faded the cards' "No run yet."), then the progress; nothing else fades
    near_run = [c["progress"]]
    c["run"].click(gpu(bind(handlers.run, config)), common, outputs, api_name="run", show_progress="full",
                   show_progress_on=near_run, **model_event)
    c["step"].click(gpu(bind(handlers.step, config)), common, outputs, api_name="step", show_progress="full",
                    show_progress_on=near_run, **model_event)
    # Stop answers on the progress line once the run has ended; its JS says "Stopping…" at once
    c["stop"].click(handlers.stop, [session], [c["progress"], session], api_name="stop", concurrency_limit=None,
                    queue=False)
    c["stop"].click(None, None, None, js=STOP_JS, **PRIVATE)
    for button in (c["run"], c["step"]):
        button.click(None, None, None, js=RUN_JS, **PRIVATE)
    compare_inputs = [c[k] for k in ("model", "prompt", "max_new", "temperature", "top_p", "top_k", "seed",
                                     "compare_choice")] + [session]
    compare_event = dict(model_event, inputs_kwargs={**run_kwargs, "compare_rounds": c["compare_rounds"]})
    c["compare_run"].click(gpu(bind(handlers.compare, config)), compare_inputs, [c["compare_df"], c["compare_fig"]],
                           api_name="compare", show_progress_on=[c["compare_df"]], **compare_event)


def _wire_explain_events(config: AppConfig, c: Components) -> None:
    """The Step tab's explanation and the DP cell follow the step details (which every run update and every step pick
    redraw: a run that ends on the same step number as the last one still refreshes them)."""
    session = c["session"]
    cell = [c["dp_i"], c["dp_j"], session]  # the step comes from the session (Session.selected_step)
    c["details"].change(ui_teach.on_step, cell, [c["lesson"], c["dp_cell"], c["lens_pos"]], concurrency_limit=4,
                        **PRIVATE)
    for box in (c["dp_i"], c["dp_j"]):
        box.change(ui_teach.explain_cell, cell, [c["dp_cell"]], concurrency_limit=4, **PRIVATE)
    c["lens_run"].click(gpu_decorator()(bind(ui_teach.lens, config)), [c["lens_pos"], session], [c["lens"]],
                        concurrency_id="model", concurrency_limit=1, **PRIVATE)


def _wire_view_events(config: AppConfig, c: Components, demo: gr.Blocks) -> None:
    """UI-only events: redraws of the last run, control changes, the status line, first paint."""
    session = c["session"]
    c["step_sel"].input(handlers.rerender_step, [c["step_sel"], session], [c["dp"], c["details"], c["heatmap"]],
                        concurrency_limit=4, **PRIVATE)
    _wire_explain_events(config, c)
    c["show_rejected"].change(handlers.rerender_tokens, [c["show_rejected"], session], [c["tokens"]],
                              concurrency_limit=4, **PRIVATE)
    on_drafter = bind(handlers.on_drafter, config)
    drafter_outputs = [c["drafter_note"]] + c["groups"] + [c["tabs"]]
    c["drafter"].change(on_drafter, [c["drafter"], c["model"]], drafter_outputs, concurrency_limit=4, **PRIVATE)
    control_outputs = [c["controls"][param_name(d, k.kwarg)] for d, k in config.control_keys()]
    c["model"].change(bind(handlers.on_model, config), [c["model"], c["drafter"], c["prompt"]],
                      [c[k] for k in ("model_info", "model_status", "chat", "examples", "prompt", "drafter_note")]
                      + control_outputs, concurrency_limit=4, **PRIVATE)
    c["examples"].input(bind(handlers.on_example, config), [c["examples"], c["model"]], [c["prompt"]],
                        concurrency_limit=4, **PRIVATE)
    poll_status = bind(handlers.poll_status, config)
    status_timer = gr.Timer(1.0, active=not config.load_status.done.is_set())
    status_outputs = [c["model_status"], status_timer]
    status_timer.tick(poll_status, None, status_outputs, concurrency_limit=None, queue=False, **PRIVATE)
    demo.load(None, None, None, js=CLAMP_NOTICE_JS, **PRIVATE)
    demo.load(on_drafter, [c["drafter"], c["model"]], drafter_outputs, **PRIVATE)
    demo.load(poll_status, None, status_outputs, queue=False, **PRIVATE)
    demo.load(initial_figures, None, [c[k] for k in ("heatmap", "dp", "speed", "speedup", "accpos", "hist",
                                                      "learn_fig", "compare_fig")], **PRIVATE)
