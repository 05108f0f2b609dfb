"""Which methods one benchmark run times: `generate()`, the engine's AR loop, each requested
drafter (with its `--set` overrides), its cost-model twin (`--adaptive-length`), the
trace-overhead twin of one drafter, and transformers' counterpart of each drafter that has one.
Where the drafter's settings are ones transformers cannot express (prompt lookup stopping at
2-grams), transformers runs at the nearest settings it can express and so does a second instance
of ours ('<drafter>@hf'), so "ours ÷ transformers" always compares one method at one setting.

A drafter that cannot be built is skipped with its reason, never a crash: one missing head file
must not cost a long run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import api
from ..drafters import DRAFTERS
from ..engine import Engine, GenerationConfig
from ..models import REGISTRY, LoadedModel
from ..sampling import SamplingConfig
from ..trace import Trace
from .baselines import (HF_COUNTERPART, MATCHED_SUFFIX, NoCounterpart, assisted_generation, generate_call,
                        settings_transformers_lacks)

COST_K = "+cost-k"  # name suffix of a drafter run with GenerationConfig.adaptive_length
ONE_PASS = "+one-pass"  # name suffix of a drafter run with GenerationConfig.verify_split off
UNPACKED = "+F.linear"  # name suffix of a drafter run on an engine without packed linears
FULL_HEAD = "+full-head"  # name suffix of a drafter run on an engine without the LM head's greedy screen
HF_LAYERS = "+hf-layers"  # name suffix of a drafter run on an engine through transformers' layer modules
# bench flag -> (name suffix of its twin rows, the Engine switch the twin's engine turns off)
KERNEL_TWINS = {"unpacked": (UNPACKED, "pack_linears"), "full_head": (FULL_HEAD, "screen_head"),
                "hf_layers": (HF_LAYERS, "lean")}


@dataclass
class RunResult:
    """What one call produced: the new tokens, and the engine's trace for our own methods."""

    tokens: list[int]
    trace: Trace | None = None


@dataclass
class Method:
    """One timed method: its report name, kind, the call that runs it and the settings it ran with."""

    name: str
    kind: str  # baseline | drafter | transformers | trace-overhead
    call: Callable[[list[int], int, int], RunResult]  # (prompt ids, max_new_tokens, seed)
    settings: dict[str, Any] = field(default_factory=dict)
    drafter: str | None = None  # our drafter this method runs or mirrors
    counterpart: str | None = None  # the transformers method that runs this one's method at its settings


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """['clasp.skip_ratio=0.4', 'static-skip.skip=[1,3]'] -> {'clasp': {'skip_ratio': 0.4}, ...}.
    Values are JSON when they parse as JSON, else strings."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        drafter, dot, option = key.rpartition(".")
        if not sep or not dot or not drafter or not option:
            raise ValueError(f"--set takes DRAFTER.OPTION=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(drafter, {})[option] = value
    return out


def parse_variants(items: Sequence[str]) -> list[tuple[str, dict[str, Any], str]]:
    """['clasp.ride_verify=false;dp_interval=1'] -> [('clasp', {...}, 'clasp[ride_verify=false;dp_interval=1]')]."""
    variants = []
    for item in items:
        drafter, _, rest = item.partition(".")
        parts = [p for p in rest.split(";") if p.strip()]
        if not drafter or not parts or not all("=" in p and not p.startswith("=") for p in parts):
            raise ValueError(f"--variant takes DRAFTER.OPTION=VALUE[;OPTION=VALUE...], got {item!r}")
        options = parse_overrides([f"{drafter}.{p}" for p in parts])[drafter]
        variants.append((drafter, options, f"{drafter}[{rest}]"))
    return variants


def requested_drafters(spec: str | None) -> list[str]:
    """The drafter names of `--drafters` (comma-separated; empty: every registered one)."""
    return list(DRAFTERS) if not spec else [n.strip() for n in spec.split(",") if n.strip()]


class MethodList:
    """Builds the methods of one run from the CLI arguments; `skipped` holds what could not be built."""

    def __init__(self, args: argparse.Namespace, loaded: LoadedModel, engine: Engine, sampling: SamplingConfig,
                 log: Callable[[str], None]):
        self.args, self.loaded, self.engine, self.sampling, self.log = args, loaded, engine, sampling, log
        self.twin_engines: dict[str, Engine] = {}  # engines with a kernel switched off, made on first use
        self.skipped: list[dict[str, str]] = []
        self.draft_loaded: LoadedModel | None = None

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"drafter": name, "reason": reason})
        self.log(f"[bench] skipping {name}: {reason}")

    def build(self) -> list[Method]:
        """generate() first, then per drafter: it, its trace-overhead twin, its transformers counterpart."""
        args = self.args
        overrides = parse_overrides(args.set or [])
        names = self._drafter_names()
        unknown = set(overrides) - set(DRAFTERS)
        if unknown:
            raise ValueError(f"--set names unknown drafter(s): {', '.join(sorted(unknown))}")
        variants = parse_variants(getattr(args, "variant", None) or [])
        strays = sorted({v[0] for v in variants} - set(names))
        if strays:
            raise ValueError(f"--variant names drafter(s) this run does not benchmark: {', '.join(strays)} "
                             f"(benchmarked: {', '.join(names)})")
        methods = [Method("generate", "baseline", self._generate_call(), {"do_sample": not self.sampling.greedy})]
        for name in names:
            methods += self._methods_of(name, dict(overrides.get(name, {})))
            for drafter, extra, label in variants:
                if drafter == name:
                    methods += self._variant(label, name, {**overrides.get(name, {}), **extra})
        overhead_for = args.trace_overhead
        if overhead_for and overhead_for != "none" and overhead_for not in names:
            self.skip(f"{overhead_for}+record", "trace-overhead drafter is not among the benchmarked drafters")
        return methods

    def _drafter_names(self) -> list[str]:
        """The registered drafters asked for (unknown ones skipped), the AR loop always first."""
        names = requested_drafters(self.args.drafters)
        for name in names:
            if name not in DRAFTERS:
                self.skip(name, f"not a registered drafter (registered: {', '.join(DRAFTERS)})")
        names = [n for n in names if n in DRAFTERS]
        if "ar" not in names:
            names.insert(0, "ar")  # the AR loop is a baseline, always measured
        return names

    def _methods_of(self, name: str, options: dict[str, Any]) -> list[Method]:
        """One drafter's methods: itself, its twin with the other recording setting (if it is the
        --trace-overhead drafter) and transformers' counterpart (if any); none if it cannot be built."""
        args = self.args
        try:
            if name == "draft-model":
                draft = self._draft_model(options.pop("draft_model_name", None))
                options.update(draft_model=draft.model, model_name=draft.name)
            drafter = self._build(name, options)
        except Exception as err:  # noqa: BLE001 — any failure to build is a reason to skip, not to crash
            self.skip(name, f"{type(err).__name__}: {err}")
            return []
        settings = dict(drafter.settings())
        kind = "baseline" if name == "ar" else "drafter"
        methods = [Method(name, kind, self._engine_call(drafter, args.record), settings, name)]
        if getattr(args, "adaptive_length", False) and name != "ar":
            methods += self._cost_k_twin(name, options, settings)
        if name == args.trace_overhead:
            methods += self._trace_overhead_twin(name, options, settings)
        if getattr(args, "one_pass", False) and name != "ar":
            methods += self._one_pass_twin(name, name, options, settings)
        for flag, (suffix, switch) in KERNEL_TWINS.items():
            if getattr(args, flag, False):
                methods += self._kernel_twin(suffix, name, options, settings, **{switch: False})
        if not args.no_transformers and name in HF_COUNTERPART:
            methods += self._transformers_comparison(methods[0], options)
        return methods

    def _one_pass_twin(self, row: str, name: str, options: dict[str, Any], settings: dict[str, Any]) -> list[Method]:
        """Row `row` (drafter `name` at `options`) again with the two-pass verify off."""
        return self._config_twin(f"{row}{ONE_PASS}", name, options, settings, verify_split=False)

    def _kernel_twin(self, suffix: str, name: str, options: dict[str, Any], settings: dict[str, Any],
                     **switch: bool) -> list[Method]:
        """The drafter again on an engine with one of the engine's kernels switched off (`Engine`'s
        `pack_linears`, `screen_head` or `lean`): what that kernel buys, in the same interleaved run."""
        label = f"{name}{suffix}"
        twin = self._build_or_skip(label, name, options)
        if twin is None:
            return []
        if suffix not in self.twin_engines:
            self.twin_engines[suffix] = Engine(self.loaded.model, name=self.engine.name, **switch)
        call = self._engine_call(twin, self.args.record, engine=self.twin_engines[suffix])
        return [Method(label, "drafter", call, dict(settings, **switch), name)]

    def _config_twin(self, label: str, name: str, options: dict[str, Any], settings: dict[str, Any],
                     **config: bool) -> list[Method]:
        """The drafter again as row `label` (a second instance: drafters keep state between
        steps), run with these GenerationConfig switches, which its settings record."""
        twin = self._build_or_skip(label, name, options)
        if twin is None:
            return []
        call = self._engine_call(twin, self.args.record, **config)
        return [Method(label, "drafter", call, dict(settings, **config), name)]

    def _build(self, name: str, options: dict[str, Any]):
        return api.build_drafter(name, self.loaded, options, self.args.device, self.args.dtype)

    def _build_or_skip(self, label: str, name: str, options: dict[str, Any]):
        """A second instance of a drafter (a twin or variant row: drafters keep state between
        steps), or None, with `label` skipped and the reason recorded, when it cannot be built."""
        try:
            return self._build(name, options)
        except Exception as err:  # noqa: BLE001 — a reason to skip the row, not to crash the run
            self.skip(label, f"{type(err).__name__}: {err}")
            return None

    def _variant(self, label: str, name: str, options: dict[str, Any]) -> list[Method]:
        """The drafter at other settings (`--variant`), a row of its own in the same interleaved run."""
        drafter = self._build_or_skip(label, name, options)
        if drafter is None:
            return []
        return [Method(label, "drafter", self._engine_call(drafter, self.args.record), dict(drafter.settings()), name)]

    def _cost_k_twin(self, name: str, options: dict[str, Any], settings: dict[str, Any]) -> list[Method]:
        """The drafter again, its draft length chosen each step by the cost model."""
        return self._config_twin(f"{name}{COST_K}", name, options, settings, adaptive_length=True)

    def _trace_overhead_twin(self, name: str, options: dict[str, Any], settings: dict[str, Any]) -> list[Method]:
        label = f"{name}{'-record' if self.args.record else '+record'}"
        twin = self._build_or_skip(label, name, options)
        if twin is None:
            return []
        return [Method(label, "trace-overhead", self._engine_call(twin, not self.args.record), settings, name)]

    def _transformers_comparison(self, ours: Method, options: dict[str, Any]) -> list[Method]:
        """transformers' counterpart of `ours`, paired with it; where transformers cannot express
        ours's settings, it runs at the settings it can express, paired with a second instance of
        ours at those same settings ('<drafter>@hf')."""
        name = ours.drafter
        lacking = settings_transformers_lacks(name, ours.settings)
        if not lacking:
            ours.counterpart = HF_COUNTERPART[name]
            return self._transformers_counterpart(name, ours.settings, options)
        label, options = f"{name}{MATCHED_SUFFIX}", {**options, **lacking}
        twin = self._build_or_skip(label, name, options)
        if twin is None:
            return []
        settings = dict(twin.settings())
        matched = Method(label, "drafter", self._engine_call(twin, self.args.record), settings, name,
                         HF_COUNTERPART[name])
        one_pass = self._one_pass_twin(label, name, options, settings) if getattr(self.args, "one_pass", False) else []
        return [matched, *one_pass, *self._transformers_counterpart(name, settings, options)]

    def _transformers_counterpart(self, name: str, settings: dict[str, Any], options: dict[str, Any]) -> list[Method]:
        try:
            assisted = assisted_generation(name, settings, options, self.loaded.model)
        except NoCounterpart as why:
            self.skip(HF_COUNTERPART[name], str(why))
            return []
        return [Method(assisted.label, "transformers", self._generate_call(assisted), assisted.settings, name)]

    def _draft_model(self, name: str | None = None) -> LoadedModel:
        """The draft model of draft-model / hf:draft-model: `name`, else --draft-model, else the registry's."""
        info = REGISTRY.get(self.args.model)
        name = name or self.args.draft_model or (info.draft_model if info else None)
        if name is None:
            raise ValueError(f"no draft model: {self.args.model!r} has no default draft model, pass --draft-model")
        self.draft_loaded = api.get_model(name, self.args.device, self.args.dtype)
        return self.draft_loaded

    def _engine_call(self, drafter, record: bool, adaptive_length: bool = False,
                     verify_split: bool = GenerationConfig.verify_split,
                     engine: Engine | None = None) -> Callable[[list[int], int, int], RunResult]:
        engine = engine or self.engine

        def call(ids: list[int], max_new: int, seed: int) -> RunResult:
            sampling = SamplingConfig(self.sampling.temperature, self.sampling.top_k, self.sampling.top_p, seed)
            config = GenerationConfig(max_new_tokens=max_new, sampling=sampling, record=record,
                                      adaptive_length=adaptive_length, verify_split=verify_split)
            trace = engine.generate(ids, drafter, config)
            return RunResult(trace.generated, trace)
        return call

    def _generate_call(self, assisted=None) -> Callable[[list[int], int, int], RunResult]:
        tokens_of = generate_call(self.loaded.model, self.loaded.device, self.sampling, assisted)

        def call(ids: list[int], max_new: int, seed: int) -> RunResult:
            return RunResult(tokens_of(ids, max_new, seed))
        return call
