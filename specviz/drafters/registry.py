"""How a drafter declares itself, once, and the registry built from those declarations.

Each drafter module ends with ``DRAFTER = Declaration(...)``: its name, title and one-line
description, its options (type, range or choices, default, help, panel label, CLI flag), the
trained part it needs from a model, and its factory. Everything else is derived from it:
`make_drafter` and `drafter_options` here, the CLI's flags and their help (`specviz.cli`), the
UI's panels, defaults and validation messages (`specviz.ui.controls`), and the "needs a trained
part" notes (`specviz.api.missing_part`). Adding a drafter is one module plus one line in
`drafters/__init__.py`'s module list (or one `register(...)` call from anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .base import Drafter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Factory = Callable[..., Drafter]  # (target model, **options) -> a drafter

KINDS = ("int", "float", "choice", "bool", "text", "model", "layer")


@dataclass(frozen=True)
class Option:
    """One option of a drafter, as the factory, the CLI and the UI panel see it.

    `kind` says how a value is read and shown: "layer" is a layer index whose panel slider spans
    the model's depth (0 there means "auto", i.e. the drafter's own default); "model" is a name
    from the app's model list. `label` empty keeps the option out of the panel (and so out of the
    UI's extra-options JSON, which accepts exactly the panel's options); `flag` None keeps it off
    the command line. `ui_default` is the panel's start value where it differs from the drafter's
    own `default` (the panel starts from values picked for the demo, the constructor from sweeps).
    """

    name: str  # the factory's keyword
    kind: str
    default: Any = None
    help: str = ""  # one line, shown by the CLI's --help
    flag: str | None = None
    label: str = ""
    ui_default: Any = None  # None: the same as `default`
    minimum: float | None = None  # the panel's range, checked on every UI request
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    info: str = ""  # the panel's hint under the control
    panel_only: bool = False  # a panel helper the declaration's `to_options` folds into real options
    parse: Callable[[str], Any] | None = None  # CLI text -> value, where the kind's type is not enough
    # a token count: the panel's slider ends at the model's vocabulary where the app knows it
    # (`maximum` where it does not); the CLI and the checks keep `maximum`, and the drafter
    # refuses a count above the vocabulary with its own message
    capped_by_vocab: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def in_panel(self) -> bool:
        return bool(self.label)

    @property
    def panel_default(self) -> Any:
        return self.default if self.ui_default is None else self.ui_default


@dataclass(frozen=True)
class Declaration:
    """Everything specviz knows about one drafter (see the module docstring)."""

    name: str
    title: str
    blurb: str  # one line: what the drafter does
    factory: Factory
    options: tuple[Option, ...] = ()
    # the trained part it needs from a model, named as in `models.ModelInfo.parts`
    needs: str | None = None
    # where the need depends on the options (a head file given, a random head...): options -> part or None
    needs_for: Callable[[dict[str, Any]], str | None] | None = None
    # panel values (by option name) -> factory options, folding in the panel-only helpers
    to_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # factory options (e.g. a model's swept defaults) -> panel values: the inverse of `to_options`
    to_panel: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def option_names(self) -> frozenset[str]:
        """The keywords the factory takes (the panel-only helpers are not among them)."""
        return frozenset(o.name for o in self.options if not o.panel_only)

    def panel_options(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.in_panel)

    def part_needed(self, options: dict[str, Any]) -> str | None:
        return self.needs_for(options) if self.needs_for is not None else self.needs


# -- options several drafters share (one CLI flag each: --k, --threshold) --------------------

K_HELP = "max draft length per verification (>= 1)"
THRESHOLD_HELP = ("adaptive stop: end the draft after a token whose top-1 probability is below this, which is "
                  "still verified (ctc, hispec: before it) (0 disables)")
# the panel's hint: most drafters keep the unsure token (its draft pass is paid: `DraftBuilder`);
# CTC drops it (`ctc.cut_draft`), so it passes its own (HiSpec's threshold is not in its panel)
KEEPS_UNSURE = ("adaptive draft length: the draft ends after a token whose top-1 probability is below this "
                "(it is still verified)")


def draft_length(default: int, ui_default: int | None = None, maximum: int = 16,
                 label: str = "k: max draft tokens per verification", help_text: str = K_HELP) -> Option:
    return Option("k", "int", default, help_text, "--k", label, ui_default, 1, maximum, 1)


def confidence_threshold(default: float, ui_default: float | None = None, in_panel: bool = True,
                         info: str = KEEPS_UNSURE) -> Option:
    label = "confidence threshold (end the draft at an unsure token; 0 = off)" if in_panel else ""
    return Option("threshold", "float", default, THRESHOLD_HELP, "--threshold", label, ui_default, 0.0, 1.0, 0.05,
                  info=info)


def random_head_option() -> Option:
    """For drafters with a trained head: an untrained, seeded one instead (tests, models without one)."""
    return Option("random_head", "bool", False, "an untrained random head (when no trained head file exists)",
                  label="untrained random head (when no trained head file exists)")


def parse_bool(text: str) -> bool:
    """A "bool" option's CLI text -> its value."""
    value = text.strip().lower()
    if value in ("true", "on", "yes", "1"):
        return True
    if value in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"takes true or false, got {text!r}")


# -- the registry ------------------------------------------------------------------------------

DRAFTERS: dict[str, Declaration] = {}  # in registration order (the CLI's and the benchmark's order)


def register(declaration: Declaration) -> None:
    """Make a drafter known to `make_drafter`, the CLI and the UI (a later one replaces a name)."""
    DRAFTERS[declaration.name] = declaration


def unregister(name: str) -> None:
    DRAFTERS.pop(name, None)


def drafter_options(name: str) -> frozenset[str]:
    """The option names drafter `name` takes."""
    return DRAFTERS[name].option_names()


def make_drafter(name: str, target: PreTrainedModel, **options: Any) -> Drafter:
    """Build drafter `name` for `target`. Unknown names and bad options raise ValueError."""
    if name not in DRAFTERS:
        raise ValueError(f"unknown drafter {name!r}: choose one of {', '.join(DRAFTERS)}")
    try:
        return DRAFTERS[name].factory(target, **options)
    except TypeError as err:  # an option this drafter does not take
        raise ValueError(f"bad option for drafter {name!r}: {err}") from None
