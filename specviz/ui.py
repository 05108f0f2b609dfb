"""The Gradio app: `build_app(...) -> gr.Blocks`.

Everything model-related goes through `specviz.api`; everything drawn comes from the pure
functions in `specviz.figures`. This module only validates inputs, drives a `Generation` and
streams what it produces.

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

import json
import logging
import math
import os
import queue
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
import torch

from . import api, figures
from .drafters import DRAFTERS
from .engine import eos_ids
from .figures import PlainRun
from .models import DEFAULT_MODEL, HUB_ALLOWLIST, REGISTRY, hub_reachable, in_hub_cache, unobtainable_reason
from .sampling import MIN_TEMPERATURE
from .trace import Trace

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PROMPTS_DIR = ASSETS / "prompts"

MAX_NEW_TOKENS_LIMIT = 512
DEFAULT_MAX_NEW_TOKENS = 96
HTML_INTERVAL = 0.25  # seconds between streamed token updates (more often slows the engine: GIL)
PLOT_EVERY = 8  # steps between streamed plot updates (the final update always draws)
PLOT_INTERVAL = 1.5  # and at least this many seconds between them (plots cost ~40 ms each to build)

try:  # ZeroGPU on Spaces; elsewhere the decorator is a no-op or absent
    import spaces  # type: ignore

    _gpu: Callable = spaces.GPU(duration=120)
    ZERO_GPU = True
except ImportError:  # pragma: no cover - depends on the environment
    def _gpu(fn):
        return fn

    ZERO_GPU = False

# Models offered by default: the registry's targets (the default first), then small allowlisted
# hub models, which are offered only where they can load (in the hub cache, or the hub reachable).
DEFAULT_UI_MODELS = [DEFAULT_MODEL] + [n for n, i in REGISTRY.items() if not i.hidden and n != DEFAULT_MODEL]
HUB_UI_MODELS = [m for m in ("HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-Coder-0.5B") if m in HUB_ALLOWLIST]


def default_model_names() -> list[str]:
    """The app's model list: registry targets, plus hub models that can load here (checked once)."""
    online = None
    names = list(DEFAULT_UI_MODELS)
    for hub_id in HUB_UI_MODELS:
        if in_hub_cache(hub_id):
            names.append(hub_id)
            continue
        online = hub_reachable() if online is None else online
        if online:
            names.append(hub_id)
    return names


def replay_steps(gen, recorded: Trace | None, n: int) -> None:
    """Re-run the first `n` steps of a Step-mode generation in this process (ZeroGPU workers keep
    no live generation between calls) and check they commit what was recorded."""
    for _ in range(n):
        gen.step()
    if n and recorded is not None and gen.trace.generated != recorded.generated[: len(gen.trace.generated)]:
        raise user_error("Could not resume step mode: replaying the recorded steps gave other tokens. "
                         "Press Step again to start over.")


def first_obtainable(names: Sequence[str]) -> tuple[str, str]:
    """The first model in `names` that can load here, and a note when earlier ones cannot (e.g. a
    Space without the default model's wheel and without network falls back to specviz-tiny)."""
    skipped = []
    for name in names:
        reason = unobtainable_reason(name)
        if reason is None:
            note = " ".join(skipped) + (f" Running on {model_label(name)} instead." if skipped else "")
            return name, note.strip()
        skipped.append(f"⚠️ {reason}")
    return names[0], " ".join(skipped)


def model_label(name: str) -> str:
    info = REGISTRY.get(name)
    return (info.label or info.name) if info else name


# =============================================================================================
# drafter controls


@dataclass(frozen=True)
class Control:
    """One drafter option: `kwarg` is the drafter's constructor keyword."""

    kwarg: str
    kind: str  # "int" | "float" | "choice" | "bool" | "text" | "model" | "layer"
    label: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    info: str = ""


@dataclass(frozen=True)
class DrafterSpec:
    title: str
    blurb: str
    controls: tuple[Control, ...] = ()
    module: str | None = None  # specviz/drafters/<module>.py, for drafters that live in their own module
    to_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def _k(default: int, maximum: int = 16, label: str = "k: max draft tokens per verification") -> Control:
    return Control("k", "int", label, default, 1, maximum, 1)


def _threshold(default: float = 0.0) -> Control:
    return Control("threshold", "float", "confidence threshold (stop drafting below; 0 = off)", default, 0.0, 1.0, 0.05,
                   info="adaptive draft length: stop before a token whose top-1 probability is below this")


def _static_options(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    custom = str(out.pop("skip_layers", "") or "")
    if out.get("skip") == "custom":
        try:
            out["skip"] = [int(x) for x in re.split(r"[,\s]+", custom.strip()) if x]
        except ValueError:
            raise ValueError(f"custom skip layers must be integers separated by commas, e.g. 2,4,6; got {custom!r}") from None
        if not out["skip"]:
            raise ValueError("preset 'custom' needs a list of layers to skip, e.g. 2,4,6")
    return out


DRAFTER_SPECS: dict[str, DrafterSpec] = {
    "ar": DrafterSpec(
        "Plain decoding", "No draft: the target adds one token per forward pass. The baseline every drafter is compared with."),
    "static-skip": DrafterSpec(
        "Static layer skip (Draft & Verify / Self-SD)",
        "Draft with the same model but a fixed set of its layers bypassed; verify with all layers.",
        (Control("skip", "choice", "skip preset", "alternate", choices=("alternate", "ratio", "custom"),
                 info="alternate: every other middle layer · ratio: the middle fraction · custom: your list"),
         Control("skip_ratio", "float", "skip ratio (preset 'ratio')", 0.5, 0.05, 0.95, 0.05),
         Control("skip_layers", "text", "layers to skip (preset 'custom'), e.g. 2,4,6", ""),
         _k(4), _threshold()),
        to_options=_static_options),
    "early-exit": DrafterSpec(
        "Early exit (LayerSkip)",
        "Draft with only the first E layers and the shared LM head; verification reuses their cache.",
        (Control("exit_layer", "layer", "exit layer E (0 = auto: 3L/8)", 0, 0, 63, 1), _k(4), _threshold())),
    "clasp": DrafterSpec(
        "CLaSp (in-context layer skip)",
        "After verification, a dynamic program picks which M layers to skip so the draft's hidden states stay "
        "closest to the full model's; the search reruns every N verifications.",
        (Control("skip_ratio", "float", "skip ratio (M = ratio × L layers skipped)", 0.4, 0.05, 0.9, 0.05),
         Control("dp_interval", "int", "DP interval N (rerun the layer search every N verifications)", 4, 1, 32, 1),
         _k(6), _threshold(0.5),
         Control("protect_ends", "bool", "never skip the first and last layer", True)),
        module="clasp"),
    "hispec": DrafterSpec(
        "HiSpec (hierarchical speculation)",
        "Draft at exit d, check cheaply at an intermediate exit v, and let the full model validate the "
        "buffered tentative tokens every n tokens.",
        (Control("d", "layer", "draft exit d (0 = auto: L/8)", 0, 0, 63, 1),
         Control("v", "layer", "intermediate verify exit v (0 = auto: L/4)", 0, 0, 63, 1),
         Control("n", "int", "n: tentative tokens before the full model checks", 8, 1, 32, 1),
         _k(4, label="k: drafts per intermediate round")),
        module="hispec"),
    "ctc": DrafterSpec(
        "CTC drafter",
        "A small head over the last hidden state emits several frames at once; CTC collapses repeats and blanks "
        "into the draft.",
        (Control("head", "choice", "head", "ctc", choices=("ctc", "medusa"),
                 info="ctc: trained with a CTC loss · medusa: per-position heads (the paper's control)"),
         _k(6), _threshold(),
         Control("random_head", "bool", "untrained random head (when no trained head file exists)", False)),
        module="ctc"),
    "draft-model": DrafterSpec(
        "Separate draft model",
        "Classic speculative decoding: a smaller model with the same tokenizer drafts.",
        (Control("draft_model_name", "model", "draft model", "(default)"), _k(4), _threshold())),
    "prompt-lookup": DrafterSpec(
        "Prompt lookup",
        "Find the latest earlier occurrence of the last n tokens in the context and propose what followed it. "
        "Free to draft; great on repetitive code.",
        (_k(8, 32), Control("max_ngram", "int", "max n-gram", 3, 1, 8, 1), Control("min_ngram", "int", "min n-gram", 1, 1, 8, 1))),
}

DRAFTER_ORDER = ["ar", "static-skip", "early-exit", "clasp", "hispec", "ctc", "draft-model", "prompt-lookup"]


def drafter_names() -> list[str]:
    """Every drafter the UI offers: the known ones (available or not) and any other registered one."""
    return DRAFTER_ORDER + [n for n in DRAFTERS if n not in DRAFTER_ORDER]


def spec_for(name: str) -> DrafterSpec:
    return DRAFTER_SPECS.get(name) or DrafterSpec(name, f"Drafter '{name}' (registered; set its options as JSON below).")


def slug(name: str) -> str:
    return re.sub(r"\W", "_", name)


def param_name(drafter: str, kwarg: str) -> str:
    return f"{slug(drafter)}_{kwarg}"


def available(name: str) -> bool:
    return name in DRAFTERS


def unavailable_message(name: str) -> str:
    spec = spec_for(name)
    where = f"specviz/drafters/{spec.module}.py" if spec.module else "its module"
    return f"Drafter '{name}' is not available in this build: {where} is missing or did not register."


MAX_EXTRA_CHARS = 2000


MAX_EXPORTS = 32  # trace files kept on disk (oldest deleted first); a download is served at once


def prune_exports(folder: Path, keep: int = MAX_EXPORTS) -> None:
    files = sorted(folder.glob("specviz-trace-*.json"), key=lambda p: p.stat().st_mtime)
    for old in files[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass


def parse_extra(drafter: str, extra: Any) -> dict[str, Any]:
    """The "extra options" JSON: an object whose keys are options the drafter declares (the same
    ones its panel shows, validated the same way), so no file path or model outside the app's
    list can reach a loader through it."""
    if extra is None or (isinstance(extra, str) and not extra.strip()):
        return {}
    if not isinstance(extra, str) or len(extra) > MAX_EXTRA_CHARS:
        raise user_error(f"Extra options must be a JSON object of at most {MAX_EXTRA_CHARS} characters.")
    try:
        parsed = json.loads(extra)
    except (json.JSONDecodeError, RecursionError) as err:
        raise user_error(f'Extra options must be a JSON object such as {{"k": 4}}: {err}') from None
    if not isinstance(parsed, dict):
        raise user_error('Extra options must be a JSON object such as {"k": 4}.')
    declared = {c.kwarg: c for c in spec_for(drafter).controls}
    unknown = [k for k in parsed if k not in declared]
    if unknown:
        allowed = ", ".join(declared) or "none"
        raise user_error(f"Extra options for {drafter}: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"this drafter takes: {allowed}.")
    for key, value in parsed.items():
        if isinstance(value, (dict, list)):
            raise user_error(f"Extra option {key!r} must be a single value, not {type(value).__name__}.")
    return parsed


def check_ranges(drafter: str, options: dict[str, Any]) -> None:
    """Numeric options within their control's range; choices among the control's choices."""
    for c in spec_for(drafter).controls:
        v = options.get(c.kwarg)
        if v is None or isinstance(v, (list, bool)):
            continue
        if c.kind in ("int", "float") and c.minimum is not None and not c.minimum <= v <= c.maximum:
            raise ValueError(f"{c.kwarg} must be between {_num(c.minimum)} and {_num(c.maximum)}, got {v}")
        if c.kind == "choice" and isinstance(v, str) and v not in c.choices:
            raise ValueError(f"{c.kwarg} must be one of {', '.join(c.choices)}, got {v!r}")


def options_from_values(name: str, values: dict[str, Any], model_names: Sequence[str]) -> dict[str, Any]:
    """Control values (by kwarg) -> the drafter's constructor options."""
    spec = spec_for(name)
    out: dict[str, Any] = {}
    for c in spec.controls:
        if c.kwarg not in values:
            continue
        v = values[c.kwarg]
        if v is None:
            continue
        if c.kind in ("int", "layer"):
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{c.kwarg} must be an integer, got {v!r}") from None
            if not math.isfinite(f) or f != int(f):
                raise ValueError(f"{c.kwarg} must be an integer, got {v!r}")
            v = int(f)
            if c.kind == "layer" and v == 0:
                continue  # auto
        elif c.kind == "float":
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{c.kwarg} must be a number, got {v!r}") from None
        elif c.kind == "bool":
            v = bool(v)
        elif c.kind == "model":
            if not v or v == "(default)":
                continue
            if v not in model_names:
                raise ValueError(f"draft model {v!r} is not in this app's model list: {', '.join(model_names)}")
        out[c.kwarg] = v
    if spec.to_options is not None:
        out = spec.to_options(out)
    return out


# =============================================================================================
# sessions, plain generate(), detokenizers


STOP_DIR = Path(tempfile.gettempdir()) / "specviz-session-flags"  # shared by all of the app's processes


class SessionFlags:
    """A session's "running" and "stop requested" switches as files, so that Stop works when the
    generation runs in another process (ZeroGPU runs each @spaces.GPU call in a forked worker,
    where an Event set by the Stop handler in the main process would never be seen)."""

    def __init__(self, token: str, root: Path = STOP_DIR):
        self.running_file = root / f"{token}.running"
        self.stop_file = root / f"{token}.stop"

    def started(self) -> None:
        self.running_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.unlink(missing_ok=True)
        self.running_file.touch()

    def finished(self) -> None:
        self.running_file.unlink(missing_ok=True)
        self.stop_file.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.running_file.exists()

    def request_stop(self) -> None:
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()

    @property
    def stop_requested(self) -> bool:
        return self.stop_file.exists()


class StopSignal:
    """What the engine polls (`is_set()`) once per step: this process's own switch (set when the
    client goes away) or the session's Stop button, seen through its flag file."""

    def __init__(self, flags: SessionFlags):
        self.flags = flags
        self.local = threading.Event()

    def set(self) -> None:
        self.local.set()

    def is_set(self) -> bool:
        return self.local.is_set() or self.flags.stop_requested


class Session:
    """Per-browser-session state (held by gr.State): the last trace, the Step generation's
    settings and, in this process only, the live generation behind Step.

    Only plain data survives pickling (ZeroGPU hands the state to a worker process and back):
    the live `gen`, `loaded` and `decode` are dropped, and Step rebuilds its generation by
    replaying the recorded steps, which greedy decoding and seeded sampling repeat exactly."""

    LIVE = ("gen", "loaded", "decode")

    def __init__(self):
        self.token = uuid.uuid4().hex  # names this session's flag files
        self.gen = None  # Generation driven by Step (this process only)
        self.loaded = None
        self.decode: Callable[[list[int]], str] | None = None
        self.key: tuple | None = None  # settings of the Step generation
        self.trace: Trace | None = None
        self.plain: PlainRun | None = None
        self.mode = "run"  # "run" | "step"
        self.prompt_text = ""
        self.model_ref: tuple | None = None  # (name, device, dtype) of the last run, to rebuild `decode`

    @property
    def flags(self) -> SessionFlags:
        return SessionFlags(self.token)

    def decoder(self) -> Callable[[list[int]], str] | None:
        if self.decode is None and self.model_ref is not None:
            try:
                self.decode = detok_for(api.get_model(*self.model_ref))
            except Exception:  # noqa: BLE001 - the token view then shows ids
                return None
        return self.decode

    def __getstate__(self):
        return {k: (None if k in self.LIVE else v) for k, v in self.__dict__.items()}

    def __deepcopy__(self, memo):  # gr.State deep-copies its initial value: a fresh session each
        return Session()


class Detok:
    """A tokenizer's decode with a memo (the token view decodes short windows over and over)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.memo: dict[tuple[int, ...], str] = {}

    def __call__(self, ids: list[int]) -> str:
        key = tuple(ids)
        text = self.memo.get(key)
        if text is None:
            if len(self.memo) > 50_000:  # bounded: a long-running app must not grow
                self.memo.clear()
            text = self.memo[key] = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        return text


_detoks: dict[int, Detok] = {}
_plain_cache: "OrderedDict[tuple, PlainRun]" = OrderedDict()
_plain_lock = threading.Lock()


def detok_for(loaded) -> Detok:
    key = id(loaded.tokenizer)
    if key not in _detoks:
        _detoks[key] = Detok(loaded.tokenizer)
    return _detoks[key]


class _TimingStreamer:
    """transformers streamer that records when each new token arrives (the first put is the prompt)."""

    def __init__(self, t0: float, device: torch.device):
        self.t0, self.device = t0, device
        self.seen_prompt = False
        self.tokens: list[int] = []
        self.times: list[float] = []

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        ids = value.reshape(-1).tolist()
        now = time.perf_counter() - self.t0
        self.tokens.extend(int(i) for i in ids)
        self.times.extend([now] * len(ids))

    def end(self):
        pass


def plain_key(model: str, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, top_p: float,
              top_k: int, seed: int) -> tuple:
    greedy = float(temperature) == 0.0
    sampling = ("greedy",) if greedy else (float(temperature), float(top_p), int(top_k), int(seed))
    return (model, tuple(int(i) for i in prompt_ids), int(max_new_tokens)) + sampling


def cached_plain(key: tuple) -> PlainRun | None:
    with _plain_lock:
        return _plain_cache.get(key)


@torch.inference_mode()
def plain_generate(loaded, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, top_k: int = 0, seed: int = 0, key: tuple | None = None) -> PlainRun:
    """Time `model.generate()` once per (model, prompt, max_new_tokens, sampling) and cache it."""
    key = key or plain_key(loaded.name, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed)
    hit = cached_plain(key)
    if hit is not None:
        return hit
    model = loaded.model
    eos = sorted(eos_ids(model))
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    greedy = float(temperature) == 0.0
    kwargs: dict[str, Any] = dict(max_new_tokens=int(max_new_tokens), num_beams=1, eos_token_id=eos or None,
                                  pad_token_id=pad, use_cache=True)
    if greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(int(seed))
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p),
                      top_k=int(top_k) if int(top_k) > 0 else None)
    ids = torch.tensor([list(prompt_ids)], device=loaded.device)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    t0 = time.perf_counter()
    streamer = _TimingStreamer(t0, loaded.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
    wall = time.perf_counter() - t0
    tokens = out[0, ids.shape[1]:].tolist()
    # generate() pads finished sequences only in batches; keep up to and including the first EOS
    for i, tok in enumerate(tokens):
        if tok in eos:
            tokens = tokens[: i + 1]
            break
    times = streamer.times[: len(tokens)] if len(streamer.times) >= len(tokens) else [wall] * len(tokens)
    run = PlainRun(tokens=tokens, times=times, wall_time=wall, greedy=greedy,
                   settings=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed),
                   dtype=str(model.dtype).removeprefix("torch."))
    with _plain_lock:
        _plain_cache[key] = run
        while len(_plain_cache) > 64:
            _plain_cache.popitem(last=False)
    return run


class LoadStatus:
    """What the app's status line says while the default model loads in the background."""

    def __init__(self):
        self.message = ""
        self.fallback = ""  # why the default model is not the first in the list, kept in every status
        self.done = threading.Event()

    def set(self, message: str) -> None:
        self.message = message


def preload_in_background(model: str, status: LoadStatus, device: str | None = None, dtype: str | None = None
                          ) -> threading.Thread:
    """Load and warm up `model` while the page already serves: the status line shows each stage
    (a first run converts the default model's GGUF, ~20-40 s) and Run waits for the load."""
    def work():
        try:
            status.set(f"Loading {model}…")
            warm_up(model, device, dtype, progress=status.set)
            loaded = api.get_model(model, device, dtype)
            notes = "".join(f" ⚠️ {n}." for n in loaded.notes)
            earlier = f"{status.fallback} " if status.fallback else ""
            status.set(f"{earlier}✓ {model} ready ({loaded.source}).{notes}")
        except Exception as err:  # noqa: BLE001 - the app still serves; Run will show the error
            log.warning("could not preload %s: %s", model, err)
            status.set(f"⚠️ {model} could not be loaded: {err}")
        finally:
            status.done.set()

    thread = threading.Thread(target=work, name="specviz-preload", daemon=True)
    thread.start()
    return thread


def warm_up(model: str, device: str | None = None, dtype: str | None = None, progress=None) -> None:
    """Load the model, run a few decoding steps and draw every figure once, so the first real run
    is not slowed by first-call costs (kernel setup, plotly's lazily loaded validators)."""
    loaded, gen = api.start(model, "ar", "def f(x):\n    return x\n", 3, device=device, dtype=dtype, chat=False,
                            progress=progress)
    for _ in gen:
        pass
    trace, decode = gen.trace, detok_for(loaded)
    plain = PlainRun(list(trace.generated), [s.t_end for s in trace.steps], trace.wall_time)
    figures.token_html(trace, decode)
    figures.cards_html(trace, plain)
    for fig in (figures.skip_heatmap(trace), figures.dp_grid_figure(trace), figures.speed_figure(trace, plain),
                figures.speedup_figure(trace, plain), figures.acceptance_figure(trace), figures.accepted_histogram(trace),
                figures.leviathan_figure(trace, plain), figures.methods_figure(8)):
        fig.to_json()


# =============================================================================================
# prompts


def _num_layers(model: str) -> int | None:
    """Depth of a model from the registry or a local config.json alone (no weights, no network),
    or None if it cannot be known here."""
    info = REGISTRY.get(model)
    if info is not None:
        return info.num_layers
    try:
        if os.path.isdir(model):
            return int(json.loads((Path(model) / "config.json").read_text())["num_hidden_layers"])
    except Exception:  # noqa: BLE001 - the sliders simply keep their range
        return None
    return None


def _has_chat_template(model: str) -> bool:
    """Whether prompts to `model` go through a chat template (registry: declared; folder: its files)."""
    info = REGISTRY.get(model)
    if info is not None:
        return info.chat
    folder = Path(model) if isinstance(model, str) and os.path.isdir(model) else None
    if folder is None:
        return False
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def drafter_note_text(drafter: str, model: str) -> str:
    """The drafter's description, plus why it would not pay on `model` when it lacks a trained part."""
    spec = spec_for(drafter)
    note = f"**{spec.title}.** {spec.blurb}"
    if not available(drafter):
        return note + f"\n\n⚠️ {unavailable_message(drafter)}"
    reason = api.missing_part(drafter, model)
    if reason:
        return note + f"\n\n⚠️ {reason[0].upper() + reason[1:]}."
    if not spec.controls:
        return note + ("\n\n*No options to set.*" if drafter == "ar" else "\n\n*Set its options as JSON under 'Extra options'.*")
    return note


def control_values(model: str, drafter: str) -> dict[str, Any]:
    """The panel values of `drafter` for `model`: the model's swept defaults over the panel's own."""
    values = {c.kwarg: c.default for c in spec_for(drafter).controls}
    for key, value in api.drafter_defaults(model, drafter).items():
        if drafter == "static-skip" and key == "skip" and not isinstance(value, str):
            values["skip"], values["skip_layers"] = "custom", ", ".join(str(i) for i in value)
        elif key in values:
            values[key] = value
    return values


@dataclass(frozen=True)
class Example:
    label: str
    prompt: str


def examples_for(model: str, directory: Path | None = None) -> list[Example]:
    """The example prompts that suit `model` (chat prompts, or code for specviz-tiny)."""
    info = REGISTRY.get(model)
    kind = info.prompts if info else ("chat" if _has_chat_template(model) else "code")
    return load_examples((directory or PROMPTS_DIR) / f"{kind}.jsonl")


def load_examples(path: Path) -> list[Example]:
    out: list[Example] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
            prompt = obj["prompt"]
            label = obj.get("label") or prompt.strip().splitlines()[0][:48]
            out.append(Example(f"{label}: {_short(prompt)}" if obj.get("label") else label, prompt))
    return out


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# =============================================================================================
# learn tab

LEARN_MD = r"""
## How speculative decoding works

A language model writes one token per forward pass, and on small batches each pass is dominated by
reading the weights and by per-layer overhead, not by arithmetic. **Speculative decoding** lets a cheap
*drafter* guess the next few tokens, then runs the full *target* model **once** over all of them.
The target keeps the longest prefix it agrees with, adds **one token of its own** (the correction at the
first disagreement, or a bonus token when everything matched), and throws the rest away.

* **Lossless.** With greedy decoding the output is *exactly* what the target alone would write (the
  badge above checks it against `model.generate()`); with sampling, rejection sampling keeps the output
  *distribution* exact.
* **τ** is the mean number of tokens each verification adds, the target's own token included: plain
  decoding has τ = 1.
* **Colours.** <span style="background:rgba(0,114,178,.2);border-bottom:2px solid #0072B2">accepted draft</span> ·
  <span style="background:rgba(230,159,0,.32)">target's own token</span> ·
  <span style="color:#D55E00;text-decoration:line-through">rejected draft</span>.

### The drafters

* **Static layer skip** (Draft & Verify / Self-SD): the draft is the target itself with a fixed set of
  layers bypassed — no extra weights. Layers below the first skipped one are exact, so the verifier reuses
  their cache.
* **Early exit** (LayerSkip): draft with the first *E* layers and the shared LM head. It needs a model
  trained to make early layers predictive (the bundled model is trained with an early-exit loss).
* **CLaSp**: after each verification a dynamic program over (layer *i*, layers skipped so far *j*) picks
  which *M* layers to skip, keeping the draft's hidden state as close (cosine) as possible to the full
  model's state of the last accepted token. *Skip layers* tab: the heatmap shows the chosen set per step
  and the DP table with its path.
* **HiSpec**: three levels of one early-exit model — draft at exit *d*, a cheap intermediate check at exit
  *v*, and the full model validating the buffered tentative tokens every *n* tokens.
* **CTC drafter**: a small head reads the last hidden state and emits several frames at once; CTC
  decoding collapses repeats and blanks into a draft.
* **Draft model**: classic speculative decoding with a separate small model.
* **Prompt lookup**: copy what followed the last earlier occurrence of the context's final n-gram —
  free to draft, strong on repetitive code.

### Why the speedup is modest on a CPU

For a layer-skip drafter a draft token costs roughly (layers run) ÷ L of a target step, so *c* is large
and acceptance α must be high to win. Verifying 8 tokens costs only ~1.5× one decoding step, which is what
makes speculation pay at all.
"""


# =============================================================================================
# the app


@dataclass
class RunSettings:
    model: str
    prompt: str
    drafter: str
    options: dict[str, Any]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    chat: bool = True  # through the model's chat template (when it has one)

    def key(self) -> tuple:
        return (self.model, self.prompt, self.drafter, json.dumps(self.options, sort_keys=True, default=str),
                self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.seed, self.chat)


def user_error(message: str) -> gr.Error:
    """A gr.Error for bad input: shown to the user as a toast, not logged as a server traceback.
    The toast renders HTML and messages echo user input, so & and < are escaped (no tag can form;
    the rest, e.g. ">=", reads as written)."""
    return gr.Error(message.replace("&", "&amp;").replace("<", "&lt;"), print_exception=False)


def _as_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise user_error(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise user_error(f"{name} must be an integer, got {value!r}")
    v = int(f)
    if v < lo or (hi is not None and v > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise user_error(f"{name} must be {rng}, got {v}")
    return v


def _as_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise user_error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise user_error(f"{name} must be a finite number, got {value!r}")
    return v


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
    names = list(model_names) if model_names else default_model_names()
    load_status = LoadStatus()
    if default_model is None:
        default_model, load_status.fallback = first_obtainable(names)
        load_status.set(load_status.fallback)
    if default_model not in names:
        raise ValueError(f"default_model {default_model!r} is not in model_names {names}")
    limit = int(max_new_tokens_limit)
    default_max_new = min(int(default_max_new_tokens), limit)

    def examples_of(model: str) -> list[Example]:
        if examples is not None:  # given by the caller: the same for every model
            return [Example(_short(p), p) for p in examples]
        return examples_for(model)

    first_examples = examples_of(default_model)
    export_dir = Path(tempfile.mkdtemp(prefix="specviz-export-"))
    if preload:
        preload_in_background(default_model, load_status, device, dtype)
    else:
        load_status.done.set()
    depth = _num_layers(default_model) or 16

    drafters = drafter_names()
    # every (drafter, control) pair, in a fixed order: the kwargs of the model events
    control_keys: list[tuple[str, Control]] = [(d, c) for d in drafters for c in spec_for(d).controls]

    # ---------------------------------------------------------------------------------------
    # validation and rendering helpers (closures over the app's settings)

    def settings_from(model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options,
                      opts: dict[str, Any]) -> RunSettings:
        if not isinstance(model, str) or model not in names:
            raise user_error(f"Unknown model {model!r}: choose one of {', '.join(names)}.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise user_error("Prompt must not be empty: type some code or pick an example.")
        if drafter not in drafters:
            raise user_error(f"Unknown drafter {drafter!r}: choose one of {', '.join(drafters)}.")
        if not available(drafter):
            raise user_error(unavailable_message(drafter))
        max_new = _as_int("max_new_tokens", max_new_tokens, 1, limit)
        temperature = _as_float("temperature", temperature)
        if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= 10.0):
            raise user_error(f"temperature must be between 0 (greedy) and 10, and at least {MIN_TEMPERATURE} when "
                             f"sampling, got {temperature}")
        top_p = _as_float("top_p", top_p)
        if not 0.0 < top_p <= 1.0:
            raise user_error(f"top_p must be in (0, 1], got {top_p}")
        top_k = _as_int("top_k", top_k, 0)
        seed = _as_int("seed", seed, 0, 2**31 - 1)
        chat = opts.get("chat", True)
        chat = True if chat is None else chat
        if not isinstance(chat, bool):
            raise user_error(f"chat must be true or false, got {chat!r}")
        values = {c.kwarg: opts.get(param_name(drafter, c.kwarg), c.default) for c in spec_for(drafter).controls}
        values.update(parse_extra(drafter, extra_options))
        try:
            options = options_from_values(drafter, values, names)
            check_ranges(drafter, options)
        except ValueError as err:
            raise user_error(f"Bad option for {drafter}: {err}") from None
        return RunSettings(model, prompt, drafter, options, max_new, temperature, top_p, top_k, seed, chat)

    def start(s: RunSettings, stop: threading.Event | None):
        try:
            return api.start(s.model, s.drafter, s.prompt, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed,
                             s.options, device=device, dtype=dtype, stop=stop, chat=s.chat)
        except ValueError as err:
            raise user_error(str(err)) from None
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001 - show, don't crash
            log.exception("could not start a generation")
            raise user_error(f"Could not start: {type(err).__name__}: {err}") from None

    def render(session: Session, parts: set[str], streaming: bool = False, status: str = "") -> tuple:
        """All outputs, with gr.skip() for the parts not asked for."""
        trace, plain, decode = session.trace, session.plain, session.decoder()
        clock = "busy" if session.mode == "step" else "wall"
        n = len(trace.steps) if trace else 0
        last = max(0, n - 1)
        out: dict[str, Any] = {}
        if "tokens" in parts:
            out["tokens"] = figures.token_html(trace, decode, True, session.prompt_text, streaming=streaming)
            out["cards"] = figures.cards_html(trace, plain, clock, status)
            out["text"] = (decode or figures._default_decode)(trace.generated) if trace else ""
        if "plots" in parts:
            out["heatmap"] = figures.skip_heatmap(trace, last if session.mode == "step" else None)
            out["dp"] = figures.dp_grid_figure(trace, last)
            out["step_sel"] = gr.update(maximum=max(1, last), value=last)
            out["details"] = figures.step_details_html(trace, last, decode)
            out["speed"] = figures.speed_figure(trace, plain, clock)
            out["speedup"] = figures.speedup_figure(trace, plain, clock)
            out["accpos"] = figures.acceptance_figure(trace)
            out["hist"] = figures.accepted_histogram(trace)
            out["learn_md"] = figures.leviathan_markdown(trace, plain)
            out["learn_fig"] = figures.leviathan_figure(trace, plain)
        if "export" in parts:
            out["export"] = write_export(trace) if trace else None
        return tuple(out.get(k, gr.skip()) for k in OUTPUT_KEYS)

    def attach(session: Session, s: RunSettings, loaded, gen) -> None:
        """Point the session at a new generation (its trace, tokenizer and cached reference)."""
        session.loaded, session.model_ref = loaded, (s.model, device, dtype)
        session.trace, session.decode = gen.trace, detok_for(loaded)
        session.prompt_text = session.decode(gen.trace.prompt_ids)
        session.plain = cached_plain(plain_key(s.model, gen.trace.prompt_ids, s.max_new_tokens, s.temperature,
                                               s.top_p, s.top_k, s.seed))

    def status_only(status: str) -> tuple:
        """Every output unchanged but the cards, which say `status` (e.g. while a model loads)."""
        out = {"cards": figures.cards_html(None, None, "wall", status)}
        return tuple(out.get(k, gr.skip()) for k in OUTPUT_KEYS)

    def write_export(trace: Trace) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = export_dir / f"specviz-trace-{slug(trace.drafter)}-{stamp}-{os.getpid()}-{id(trace) % 10_000}.json"
        path.write_text(trace.to_json(indent=1), encoding="utf-8")
        prune_exports(export_dir)
        return str(path)

    def explain_difference(trace: Trace, plain: PlainRun | None, loaded) -> None:
        """Where a half-precision run parts from generate(), measure how near a tie the reference
        was there, so the badge can tell dtype rounding from a real bug."""
        if plain is None or not plain.greedy or plain.dtype == "float32":
            return
        i = figures.first_difference(trace.generated, plain.tokens)
        if i is not None and i not in plain.margins:
            plain.margins[i] = api.reference_margin(loaded, list(trace.prompt_ids) + plain.tokens[:i])

    def finish_plain(session: Session, loaded, s: RunSettings, progress) -> None:
        """Attach the plain generate() reference (timed once per prompt and settings)."""
        trace = session.trace
        key = plain_key(s.model, trace.prompt_ids, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed)
        session.plain = cached_plain(key)
        if session.plain is None and trace.finish_reason != "stopped":
            progress(None, desc="timing plain generate() for the speedup (once per prompt and settings)")
            try:
                session.plain = plain_generate(loaded, trace.prompt_ids, s.max_new_tokens, s.temperature, s.top_p,
                                               s.top_k, s.seed, key=key)
            except Exception as err:  # noqa: BLE001 - the run itself succeeded
                log.exception("plain generate() failed")
                gr.Warning(f"plain generate() failed, no speedup shown: {err}")
        explain_difference(session.trace, session.plain, loaded)

    # ---------------------------------------------------------------------------------------
    # event handlers

    @_gpu
    def run(model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options, session,
            progress=gr.Progress(), **opts):
        """Stream one generation: tokens as each verification lands, plots every few steps."""
        s = settings_from(model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options, opts)
        session = session if isinstance(session, Session) else Session()
        session.gen, session.key, session.mode = None, None, "run"
        flags = session.flags
        flags.started()
        stop = StopSignal(flags)
        if not api.is_loaded(s.model, device, dtype):
            yield (*status_only(f"loading {s.model} (first use; the default model's first start converts it, "
                                "about 20-40 s)…"), session)
        try:
            loaded, gen = start(s, stop)
        except BaseException:
            flags.finished()
            raise
        attach(session, s, loaded, gen)
        session.plain = cached_plain(plain_key(s.model, gen.trace.prompt_ids, s.max_new_tokens, s.temperature,
                                               s.top_p, s.top_k, s.seed))
        events: queue.Queue = queue.Queue()

        def drive():
            try:
                for _ in gen:
                    events.put(("step", None))
                events.put(("done", None))
            except BaseException as err:  # noqa: BLE001 - handed to the UI thread
                events.put(("error", err))

        worker = threading.Thread(target=drive, name="specviz-generation", daemon=True)
        worker.start()
        last_html = last_plot = 0.0
        plotted_steps = 0
        error = None
        try:
            yield (*render(session, {"tokens"}, streaming=True, status="starting…"), session)
            done = False
            while not done:
                try:
                    kind, payload = events.get(timeout=0.25)
                except queue.Empty:
                    if not worker.is_alive():
                        break
                    continue
                while True:  # drain: render the latest state only
                    if kind == "done":
                        done = True
                    elif kind == "error":
                        done, error = True, payload
                    try:
                        kind, payload = events.get_nowait()
                    except queue.Empty:
                        break
                if done:
                    break
                now = time.perf_counter()
                if now - last_html < HTML_INTERVAL:
                    continue
                last_html = now
                n = len(gen.trace.steps)
                parts = {"tokens"}
                if n - plotted_steps >= plot_every and now - last_plot >= PLOT_INTERVAL:
                    parts.add("plots")
                    plotted_steps, last_plot = n, now
                progress((len(gen.trace.generated), s.max_new_tokens), desc="decoding", unit="tokens")
                yield (*render(session, parts, streaming=True), session)
            worker.join()
            if error is not None:
                if isinstance(error, ValueError):
                    raise user_error(str(error))
                log.error("generation failed", exc_info=error)
                raise user_error(f"Generation failed: {type(error).__name__}: {error}")
            finish_plain(session, loaded, s, progress)
            flags.finished()
            yield (*render(session, {"tokens", "plots", "export"}), session)
        finally:
            stop.set()  # a closed stream (client gone) stops the worker at its next step
            worker.join(timeout=30)
            flags.finished()

    @_gpu
    def step(model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options, session,
             progress=gr.Progress(), **opts):
        """One speculation cycle (the first call prefills). Settings changes start over."""
        s = settings_from(model, prompt, drafter, max_new_tokens, temperature, top_p, top_k, seed, extra_options, opts)
        session = session if isinstance(session, Session) else Session()
        same = session.mode == "step" and session.key == s.key()
        gen = session.gen if same and session.gen is not None and not session.gen.done else None
        if gen is None:
            done_before = [] if not same or session.trace is None or session.trace.finish_reason else session.trace.steps
            loaded, gen = start(s, None)
            replay_steps(gen, session.trace, len(done_before))
            attach(session, s, loaded, gen)
            session.gen, session.key, session.mode = gen, s.key(), "step"
        try:
            event = gen.step()
        except ValueError as err:
            raise user_error(str(err)) from None
        except Exception as err:  # noqa: BLE001
            log.exception("step failed")
            session.gen = None
            raise user_error(f"Step failed: {type(err).__name__}: {err}") from None
        n = len(gen.trace.steps)
        if gen.done:
            finish_plain(session, session.loaded, s, progress)
            status = f"step {n - 1}: generation finished — the next Step starts over"
            session.gen = None
            return (*render(session, {"tokens", "plots", "export"}, status=status), session)
        kind = "prefill" if event is not None and event.index == 0 else "verification"
        status = f"step mode: {kind} {n - 1} done — press Step for the next cycle (times are engine time)"
        return (*render(session, {"tokens", "plots"}, streaming=True, status=status), session)

    def stop(session):
        """Stop this session's running generation (and drop its Step generation). Runs in the
        main process: it reaches a generation in a ZeroGPU worker through the session's flag file."""
        if not isinstance(session, Session):
            return "Nothing is running.", session
        flags = session.flags
        was = flags.running or session.gen is not None or session.mode == "step" and session.key is not None
        if flags.running:
            flags.request_stop()
        session.gen, session.key = None, None
        return ("Stopping…" if was else "Nothing is running."), session

    @_gpu
    def compare(model, prompt, max_new_tokens, temperature, top_p, top_k, seed, chosen, session,
                progress=gr.Progress(), **opts):
        """Run every chosen drafter on the prompt with its current panel settings."""
        chosen = [d for d in (chosen or []) if d in drafters]
        if not chosen:
            raise user_error("Choose at least one drafter to compare.")
        settings_from(  # validates the shared settings before any drafter runs
            model, prompt, "ar", max_new_tokens, temperature, top_p, top_k, seed, "", opts)
        session = session if isinstance(session, Session) else Session()
        flags = session.flags
        flags.started()
        stop_event = StopSignal(flags)
        rows: list[figures.CompareRow] = []
        plain = None
        try:
            for i, name in enumerate(chosen):
                if stop_event.is_set():
                    rows.append(figures.CompareRow(name, error="stopped"))
                    continue
                progress((i, len(chosen)), desc=f"running {name}")
                if not available(name):
                    rows.append(figures.CompareRow(name, error=unavailable_message(name)))
                    yield table_update(rows, plain)
                    continue
                try:
                    s = settings_from(model, prompt, name, max_new_tokens, temperature, top_p, top_k, seed, "", opts)
                    loaded, gen = start(s, stop_event)
                    for _ in gen:
                        pass
                except gr.Error as err:
                    rows.append(figures.CompareRow(name, error=str(err.message)))
                    yield table_update(rows, plain)
                    continue
                except Exception as err:  # noqa: BLE001
                    rows.append(figures.CompareRow(name, error=f"{type(err).__name__}: {err}"))
                    yield table_update(rows, plain)
                    continue
                if plain is None:
                    key = plain_key(s.model, gen.trace.prompt_ids, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.seed)
                    progress((i, len(chosen)), desc="timing plain generate()")
                    plain = plain_generate(loaded, gen.trace.prompt_ids, s.max_new_tokens, s.temperature, s.top_p,
                                           s.top_k, s.seed, key=key)
                explain_difference(gen.trace, plain, loaded)
                rows.append(figures.compare_row(gen.trace, plain))
                yield table_update(rows, plain)
        finally:
            flags.finished()
        yield table_update(rows, plain)

    def table_update(rows, plain):
        table = [["generate()", f"{plain.tokens_per_s:.1f}", "1.00", "1.00", "", len(plain.tokens),
                  f"{plain.wall_time:.2f}", "reference", ""]] if plain is not None else []
        return table + figures.compare_table(rows), figures.compare_figure(rows, plain)

    def rerender_step(step_index, session):
        """Pick a step for the DP grid / details (no model involved)."""
        session = session if isinstance(session, Session) else None
        trace = session.trace if session else None
        decode = session.decoder() if session else None
        try:
            idx = int(step_index)
        except (TypeError, ValueError):
            idx = None
        return (figures.dp_grid_figure(trace, idx), figures.step_details_html(trace, idx, decode),
                figures.skip_heatmap(trace, idx))

    def rerender_tokens(show_rejected, session):
        if not isinstance(session, Session) or session.trace is None:
            return figures.token_html(None)
        return figures.token_html(session.trace, session.decoder(), bool(show_rejected), session.prompt_text)

    def on_drafter(name, model):
        model = model if model in names else default_model
        return [gr.update(value=drafter_note_text(name, model))] + [gr.update(visible=(d == name)) for d in drafters]

    def on_model(model, drafter, prompt):
        """A new model: its layer count, its drafter defaults, its chat toggle and its examples.
        Names outside the app's list are ignored (nothing is looked up for them)."""
        if model not in names:
            return [gr.skip()] * (6 + len(control_keys))
        layers = _num_layers(model)
        updates = []
        for d, c in control_keys:
            value = control_values(model, d)[c.kwarg]
            if c.kind == "layer" and layers:
                updates.append(gr.update(maximum=max(1, layers - 1), value=value))
            else:
                updates.append(gr.update(value=value))
        exs = examples_of(model)
        known = {e.prompt for m in names for e in examples_of(m)}
        new_prompt = exs[0].prompt if exs and (not (prompt or "").strip() or prompt in known) else gr.skip()
        return [model_markdown(model), model_status_text(model), gr.update(visible=_has_chat_template(model)),
                gr.update(choices=[(e.label, i) for i, e in enumerate(exs)], value=None), new_prompt,
                drafter_note_text(drafter, model)] + updates

    def on_example(index, model):
        exs = examples_of(model if model in names else default_model)
        if isinstance(index, int) and 0 <= index < len(exs):
            return exs[index].prompt
        return gr.skip()

    def model_markdown(model: str) -> str:
        layers = _num_layers(model)
        info = REGISTRY.get(model)
        text = info.description if info else model
        if layers and not (info and str(layers) in info.description):
            text += f" · {layers} layers"
        return f"*{text}*"

    def model_status_text(model: str) -> str:
        """The status line after a model change: loaded, loads on first Run, or why it cannot."""
        if model == default_model and not load_status.done.is_set():
            return load_status.message
        if api.is_loaded(model, device, dtype):
            return f"✓ {model} is loaded."
        reason = unobtainable_reason(model)
        return f"⚠️ {reason}" if reason else f"{model} loads on the first Run (a few seconds)."

    def poll_status():
        if load_status.done.is_set():
            return load_status.message, gr.update(active=False)
        return load_status.message, gr.skip()

    # ---------------------------------------------------------------------------------------
    # layout

    with gr.Blocks(title="specviz", analytics_enabled=False) as demo:
        session_state = gr.State(Session())
        gr.Markdown(f"## {title}\nA drafter guesses a few tokens, the full model checks them in one pass. "
                    "Watch which guesses survive, which layers were skipped, and what it buys in speed.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=330):
                # custom values reach the handlers, which refuse names outside the list with a clear message
                model_dd = gr.Dropdown([(model_label(n), n) for n in names], value=default_model, label="model",
                                       allow_custom_value=True, elem_id="sv-model")
                model_info = gr.Markdown(model_markdown(default_model))
                model_status = gr.Markdown(load_status.message, elem_id="sv-model-status")
                example_dd = gr.Dropdown([(e.label, i) for i, e in enumerate(first_examples)], value=None,
                                         label="example prompts", info="pick one to fill the prompt box",
                                         elem_id="sv-examples")
                prompt_tb = gr.Textbox(label="prompt", lines=7, max_lines=20,
                                       value=first_examples[0].prompt if first_examples else "",
                                       placeholder="Ask something, or pick an example above", elem_id="sv-prompt")
                chat_cb = gr.Checkbox(value=True, label="chat: send the prompt as a user message (the model's chat "
                                      "template); off = raw text", visible=_has_chat_template(default_model),
                                      elem_id="sv-chat")
                drafter_dd = gr.Dropdown(
                    [(n if available(n) else f"{n} (not available)", n) for n in drafters],
                    value=initial_drafter(default_model, drafters), label="drafter",
                    allow_custom_value=True, elem_id="sv-drafter")
                drafter_note = gr.Markdown()
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="sv-run")
                    step_btn = gr.Button("Step", variant="secondary", elem_id="sv-step")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="sv-stop")
                stop_msg = gr.Markdown(elem_id="sv-stop-msg")
                groups: list[gr.Group] = []
                control_components: dict[str, gr.components.Component] = {}
                for d in drafters:
                    spec = spec_for(d)
                    with gr.Group(visible=False) as group:
                        if not available(d):
                            gr.Markdown(f"⚠️ {unavailable_message(d)} Its panel will fill in once it lands.")
                        start_values = control_values(default_model, d)
                        for c in spec.controls:
                            comp = _control_component(c, names, depth, start_values[c.kwarg])
                            control_components[param_name(d, c.kwarg)] = comp
                    groups.append(group)
                with gr.Accordion("sampling & length", open=True):
                    with gr.Row():
                        max_new = named_slider(1, limit, value=default_max_new, step=1, label="max new tokens",
                                              name="max_new_tokens")
                        temperature = named_slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)",
                                                  name="temperature")
                    with gr.Row():
                        top_p = named_slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", name="top_p")
                        top_k = named_number(value=0, precision=0, label="top-k (0 = off)", name="top_k")
                        seed = named_number(value=0, precision=0, label="seed", name="seed")
                with gr.Accordion("extra options (JSON, merged over the panel)", open=False):
                    extra = gr.Textbox(value="", label="extra drafter options", placeholder='{"k": 4}', lines=1)
            with gr.Column(scale=7, min_width=420):
                cards = gr.HTML(figures.cards_html(None), elem_id="sv-cards")
                gr.HTML(figures.legend_html())
                tokens = gr.HTML(figures.token_html(None), elem_id="sv-tokens")
                show_rejected = gr.Checkbox(value=True, label="show rejected drafts inline (struck through)")
                with gr.Tabs():
                    with gr.Tab("Skip layers", elem_id="sv-tab-skip"):
                        heatmap = gr.Plot(label="skipped layers per step", elem_id="sv-heatmap")
                        step_sel = gr.Slider(0, 1, value=0, step=1, label="step (DP grid and details)")
                        dp_fig = gr.Plot(label="CLaSp DP table", elem_id="sv-dp")
                        details = gr.HTML(figures.step_details_html(None, None))
                    with gr.Tab("Speed", elem_id="sv-tab-speed"):
                        speed_fig = gr.Plot(label="tokens vs time", elem_id="sv-speed")
                        speedup_fig = gr.Plot(label="speedup over time", elem_id="sv-speedup")
                    with gr.Tab("Acceptance", elem_id="sv-tab-acc"):
                        accpos_fig = gr.Plot(label="acceptance per draft position")
                        hist_fig = gr.Plot(label="accepted length")
                    with gr.Tab("Compare", elem_id="sv-tab-compare"):
                        gr.Markdown("Runs each chosen drafter on the prompt with its panel settings (same sampling and "
                                    "length), against plain `generate()`.")
                        compare_choice = gr.CheckboxGroup(
                            [d for d in drafters if available(d)],
                            value=[d for d in drafters if available(d) and not api.missing_part(d, default_model)],
                            label="drafters")
                        compare_btn = gr.Button("Run every drafter", variant="primary", elem_id="sv-compare-run")
                        compare_df = gr.Dataframe(headers=figures.COMPARE_HEADERS, interactive=False, wrap=True,
                                                  elem_id="sv-compare-df")
                        compare_fig = gr.Plot(label="comparison", elem_id="sv-compare-fig")
                    with gr.Tab("Learn", elem_id="sv-tab-learn"):
                        learn_md = gr.Markdown(figures.leviathan_markdown(None),
                                               latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                                 {"left": "$", "right": "$", "display": False}])
                        learn_fig = gr.Plot(label="speedup formula")
                        gr.Markdown(LEARN_MD)
                        gr.Plot(figures.methods_figure(depth), label="what each drafter's draft runs")
                    with gr.Tab("Export", elem_id="sv-tab-export"):
                        gr.Markdown("The last run's full trace (every step: drafts, verdicts, p and q, timings, drafter "
                                    "info) as JSON; `specviz.trace.Trace.from_json` reads it back.")
                        export_file = gr.File(label="trace JSON", interactive=False)
                        text_out = gr.Textbox(label="generated text (exact, whitespace kept)", lines=8, max_lines=30,
                                              interactive=False, buttons=["copy"], elem_id="sv-text")

        outputs_by_key = {"tokens": tokens, "cards": cards, "text": text_out, "heatmap": heatmap, "dp": dp_fig,
                          "step_sel": step_sel, "details": details, "speed": speed_fig, "speedup": speedup_fig,
                          "accpos": accpos_fig, "hist": hist_fig, "learn_md": learn_md, "learn_fig": learn_fig,
                          "export": export_file}
        outputs = [outputs_by_key[k] for k in OUTPUT_KEYS]
        common = [model_dd, prompt_tb, drafter_dd, max_new, temperature, top_p, top_k, seed, extra, session_state]
        run_kwargs = {**control_components, "chat": chat_cb}

        # queue position, progress and errors show on the cards only (not on all 14 outputs)
        run_btn.click(run, common, outputs + [session_state], inputs_kwargs=run_kwargs, api_name="run",
                      concurrency_id="model", concurrency_limit=1, show_progress="minimal", show_progress_on=[cards])
        step_btn.click(step, common, outputs + [session_state], inputs_kwargs=run_kwargs, api_name="step",
                       concurrency_id="model", concurrency_limit=1, show_progress="minimal", show_progress_on=[cards])
        stop_btn.click(stop, [session_state], [stop_msg, session_state], api_name="stop", concurrency_limit=None, queue=False)
        compare_btn.click(compare, [model_dd, prompt_tb, max_new, temperature, top_p, top_k, seed, compare_choice,
                                    session_state], [compare_df, compare_fig], inputs_kwargs=run_kwargs,
                          api_name="compare", concurrency_id="model", concurrency_limit=1, show_progress_on=[compare_df])
        step_sel.input(rerender_step, [step_sel, session_state], [dp_fig, details, heatmap],
                       api_visibility="private", concurrency_limit=4, show_progress="hidden")
        show_rejected.change(rerender_tokens, [show_rejected, session_state], [tokens], api_visibility="private",
                             concurrency_limit=4, show_progress="hidden")
        drafter_dd.change(on_drafter, [drafter_dd, model_dd], [drafter_note] + groups, api_visibility="private",
                          concurrency_limit=4, show_progress="hidden")
        model_dd.change(on_model, [model_dd, drafter_dd, prompt_tb],
                        [model_info, model_status, chat_cb, example_dd, prompt_tb, drafter_note]
                        + [control_components[param_name(d, c.kwarg)] for d, c in control_keys],
                        api_visibility="private", concurrency_limit=4, show_progress="hidden")
        example_dd.input(on_example, [example_dd, model_dd], [prompt_tb], api_visibility="private",
                         concurrency_limit=4, show_progress="hidden")
        status_timer = gr.Timer(1.0, active=not load_status.done.is_set())
        status_timer.tick(poll_status, None, [model_status, status_timer], api_visibility="private",
                          concurrency_limit=None, queue=False, show_progress="hidden")
        demo.load(on_drafter, [drafter_dd, model_dd], [drafter_note] + groups, api_visibility="private",
                  show_progress="hidden")
        demo.load(poll_status, None, [model_status, status_timer], api_visibility="private", show_progress="hidden",
                  queue=False)
        demo.load(_initial_figures, None, [heatmap, dp_fig, speed_fig, speedup_fig, accpos_fig, hist_fig, learn_fig,
                                           compare_fig], api_visibility="private", show_progress="hidden")

    demo.queue(max_size=32, default_concurrency_limit=1)
    demo.specviz_model_names = names  # type: ignore[attr-defined]
    demo.specviz_default_model = default_model  # type: ignore[attr-defined]
    demo.specviz_output_keys = OUTPUT_KEYS  # type: ignore[attr-defined]
    return demo


OUTPUT_KEYS = ("tokens", "cards", "text", "heatmap", "dp", "step_sel", "details", "speed", "speedup", "accpos", "hist",
               "learn_md", "learn_fig", "export")


def _initial_figures():
    return (figures.skip_heatmap(None), figures.dp_grid_figure(None), figures.speed_figure(None),
            figures.speedup_figure(None), figures.acceptance_figure(None), figures.accepted_histogram(None),
            figures.leviathan_figure(None), figures.compare_figure([]))


def named_slider(*args, name: str, **kwargs) -> gr.Slider:
    """A slider whose out-of-range error names the setting (Gradio's own says only "Value 0 is
    less than minimum value 1."). Not a subclass: Gradio writes a .pyi stub next to any module
    that defines a component class."""
    slider = gr.Slider(*args, **kwargs)
    plain = slider.preprocess

    def preprocess(payload):
        if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
            raise user_error(f"{name} must be a number, got {payload!r}")
        if payload < slider.minimum or payload > slider.maximum:
            raise user_error(f"{name} must be between {_num(slider.minimum)} and {_num(slider.maximum)}, got {_num(payload)}")
        return plain(payload)

    slider.preprocess = preprocess  # type: ignore[method-assign]
    return slider


def named_number(*, name: str, **kwargs) -> gr.Number:
    """An integer box whose bad values (text, NaN, infinity) get an error naming the setting
    instead of Gradio's generic one."""
    box = gr.Number(**kwargs)
    plain = box.preprocess

    def preprocess(payload):
        if payload is None:
            return plain(payload)
        try:
            value = float(payload)
        except (TypeError, ValueError):
            raise user_error(f"{name} must be an integer, got {payload!r}") from None
        if isinstance(payload, bool) or not math.isfinite(value) or value != int(value):
            raise user_error(f"{name} must be an integer, got {payload!r}")
        return plain(int(value))

    box.preprocess = preprocess  # type: ignore[method-assign]
    return box


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def initial_drafter(model: str, drafters: Sequence[str]) -> str:
    """The drafter selected at start: a layer-skip one (it shows the most), if it fits the model."""
    for name in ("static-skip", "clasp", "prompt-lookup"):
        if name in drafters and available(name) and not api.missing_part(name, model):
            return name
    return drafters[0]


def _control_component(c: Control, model_names: Sequence[str], depth: int, value: Any = None):
    info = c.info or None
    value = c.default if value is None else value
    if c.kind in ("int", "float"):
        return named_slider(c.minimum, c.maximum, value=value, step=c.step, label=c.label, info=info, name=c.kwarg)
    if c.kind == "layer":
        return named_slider(0, max(1, depth - 1), value=value, step=1, label=c.label, info=info, name=c.kwarg)
    if c.kind == "choice":
        return gr.Dropdown(list(c.choices), value=value, label=c.label, info=info)
    if c.kind == "bool":
        return gr.Checkbox(value=bool(value), label=c.label, info=info)
    if c.kind == "model":
        return gr.Dropdown(["(default)"] + list(model_names), value=value, label=c.label, info=info)
    return gr.Textbox(value=value, label=c.label, info=info)


CSS = """
#sv-text textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace; font-size: 13px; }
#sv-prompt textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace; font-size: 13px; }
"""


def launch_kwargs() -> dict[str, Any]:
    """What `app.py` passes to `launch()`: Spaces-compatible host/port from the environment, and CSS."""
    kwargs: dict[str, Any] = {"server_name": os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), "css": CSS}
    port = os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT")
    if port:
        kwargs["server_port"] = int(port)
    return kwargs


__all__ = ["build_app", "launch_kwargs", "DRAFTER_SPECS", "Control", "DrafterSpec", "Session", "plain_generate",
           "examples_for", "OUTPUT_KEYS", "param_name", "options_from_values"]
