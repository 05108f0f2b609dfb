"""The Gradio app, as a package split by concern:

* `controls`   drafter panels derived from the drafter declarations; option parsing and checks
* `settings`   one request's settings, validated (`RunSettings`)
* `session`    per-session state, the Stop flag files, detokenizers, the plain generate() reference
* `generation` starting and streaming a generation for the handlers
* `handlers`   the event handlers, plain functions of (AppConfig, inputs) -> outputs
* `render`     a trace as the app's outputs (`OUTPUT_KEYS`)
* `layout`     `build_app`: the Blocks, wiring components to handlers
* `config`, `catalog`, `loading`, `components`, `errors`, `gpu`, `text`: what those share

Everything model-related goes through `specviz.api`; everything drawn comes from the pure
functions in `specviz.figures`. The names below are this package's public face (tests and
`app.py` import them from `specviz.ui`).
"""

from __future__ import annotations

from .catalog import Example, default_model_names, examples_for, first_obtainable, load_examples, model_label
from .config import AppConfig
from .controls import (Control, DrafterSpec, check_ranges, control_values, drafter_names, drafter_note_text,
                       initial_drafter, options_from_values, param_name, parse_extra, spec_for)
from .errors import user_error
from .gpu import spaces_module
from .layout import build_app, launch_kwargs
from .loading import LoadStatus, preload_in_background, warm_up
from .render import OUTPUT_KEYS, prune_exports
from .session import Detok, Session, SessionFlags, StopSignal, plain_generate
from .settings import RunSettings, settings_from
from .text import CSS, LEARN_MD

# Whether the model events run through ZeroGPU's `spaces.GPU` (re-read when this package is
# reloaded; `build_app` looks the decorator up itself each time it builds an app).
ZERO_GPU = spaces_module() is not None

__all__ = ["build_app", "launch_kwargs", "AppConfig", "Control", "DrafterSpec", "Session", "SessionFlags",
           "StopSignal", "Detok", "LoadStatus", "RunSettings", "Example", "plain_generate", "examples_for",
           "load_examples", "OUTPUT_KEYS", "param_name", "options_from_values", "parse_extra", "check_ranges",
           "control_values", "drafter_names", "drafter_note_text", "initial_drafter", "spec_for", "settings_from",
           "default_model_names", "first_obtainable", "model_label", "prune_exports", "user_error",
           "preload_in_background", "warm_up", "ZERO_GPU", "CSS", "LEARN_MD"]
