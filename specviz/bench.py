"""`python -m specviz.bench`: every drafter against `model.generate()`, the engine's own AR loop
and transformers' own assisted generation, on one prompt set, in one run.

How it measures (Spec-Bench conventions, see shared ALGORITHMS.md §1.3):

* batch size 1, greedy by default; one warm-up pass of every method first;
* interleaved: for each repeat, for each prompt, every method runs once (the method order is
  rotated from prompt to prompt and reversed every other prompt), so machine drift and cache
  warmth hit every method alike;
* wall time is taken around the whole call (prefill included) with `torch.cuda.synchronize()`
  on CUDA; tokens/s of a method is the mean over samples of new tokens / wall time, and its
  speedup is that mean divided by the same mean of `generate()`;
* τ, acceptance, per-position acceptance and the draft / verify / search time split come from
  the engine's trace (`trace.compute_metrics` conventions, pooled over all samples);
* the Leviathan et al. prediction S = (1 - α^(γ+1)) / ((1 - α)(γc + 1)) uses the measured α
  (per-token acceptance: accepted / (accepted + rejections), the estimator of a geometric
  acceptance process), γ (mean draft length per verification) and c (draft seconds per draft
  token / verify seconds per verification); S is a speedup over one target forward per token,
  i.e. over the engine's AR loop;
* peak memory: CUDA max allocated above what was allocated before the call; on CPU the
  kernel's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs before
  each call) above the RSS before the call — no tracing allocator, nothing added to the timed
  path;
* "matched" compares every greedy output with `generate()`'s output token for token.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import api
from .drafters import DRAFTERS
from .engine import Engine, GenerationConfig
from .models import ASSETS, DEFAULT_MODEL, REGISTRY
from .sampling import SamplingConfig
from .trace import Trace, compute_metrics

PROMPTS_DIR = ASSETS / "prompts"
DEFAULT_PROMPTS = PROMPTS_DIR / "code.jsonl"  # the Python headers specviz-tiny was trained for


def prompts_for(model: str) -> Path:
    """The example prompts that suit `model`: chat prompts for chat models, code for specviz-tiny."""
    info = REGISTRY.get(model)
    return PROMPTS_DIR / f"{info.prompts if info else 'chat'}.jsonl"

# Our drafter -> transformers' assisted generation of the same method.
HF_COUNTERPART = {"early-exit": "hf:early-exit", "prompt-lookup": "hf:prompt-lookup", "draft-model": "hf:draft-model"}

RECORD_FIELDS = (
    "drafter", "kind", "status", "reason", "tokens_per_s", "speedup_vs_generate", "speedup_vs_ar",
    "speedup_paired_median", "tau", "acceptance_rate", "alpha", "acceptance_per_position",
    "drafted_per_position", "mean_draft_length", "draft_cost_c", "predicted_speedup",
    "time_split_ms_per_token", "peak_memory_mb", "matched_generate", "mismatched_samples",
    "samples", "new_tokens", "wall_s", "settings", "vs_transformers",
)


# -- small utilities ---------------------------------------------------------------------------
def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _cpu_clock(device: torch.device) -> float:
    """CPU seconds of this process (all threads): robust to other jobs on a shared CPU box."""
    return time.process_time()


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class MemoryProbe:
    """Peak memory of one call, without touching the timed path."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda max_memory_allocated above the allocation before the call"
        self.available = True
        if device.type != "cuda":
            self.method = "peak RSS (VmHWM, reset via /proc/self/clear_refs) above RSS before the call"
            self.available = self._reset_hwm() and _read_status_kb("VmHWM") is not None
            if not self.available:
                self.method = "unavailable (no /proc/self/clear_refs)"
        self._base = 0

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        if not self.available:
            return
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._reset_hwm()
            self._base = (_read_status_kb("VmRSS") or 0) * 1024

    def stop(self) -> int | None:
        if not self.available:
            return None
        if self.device.type == "cuda":
            return max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
        return max(0, (_read_status_kb("VmHWM") or 0) * 1024 - self._base)


def load_prompts(path: str | Path) -> list[str]:
    prompts = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from None
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{path}:{number}: needs a non-empty string field 'prompt'")
            prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts



FALLBACK_CODE_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import os\n\ndef list_python_files(root):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n",
]


def load_setup(n_prompts: int, seed: int, name: str | None, device: str,
               layer_scale: Callable[[int, torch.Generator], float], stand_in: str):
    """(model, prompt id lists, description) for the per-drafter sweep scripts (bench_clasp,
    bench_hispec). `name`: registry name or model directory; default specviz-tiny when its weights
    exist, else a random 16-layer Llama whose layer i's output projections are scaled by
    `layer_scale(i, generator)` so that layer-skip drafts get real acceptance."""
    bundled = ASSETS / "models" / "specviz-tiny"
    if name is None and list(bundled.glob("*.safetensors")):
        name = "specviz-tiny"
    if name is not None:
        from .models import load_model

        loaded = load_model(name, device=device)
        texts = (load_prompts(DEFAULT_PROMPTS) if DEFAULT_PROMPTS.exists() else FALLBACK_CODE_PROMPTS)[:n_prompts]
        ids = [list(loaded.tokenizer(t)["input_ids"]) for t in texts]
        return loaded.model.eval(), ids, f"{name} ({loaded.model.config.num_hidden_layers} layers)"
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "llama", vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=16,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        for i in range(1, 16):
            scale = layer_scale(i, g)
            model.model.layers[i].self_attn.o_proj.weight.mul_(scale)
            model.model.layers[i].mlp.down_proj.weight.mul_(scale)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    ids = [torch.randint(3, 2048, (24,), generator=g).tolist() for _ in range(n_prompts)]
    return model.to(device).eval(), ids, f"random 16-layer Llama (hidden 256, {stand_in}; specviz-tiny not found)"

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


@contextmanager
def _generation_config_values(model, **values):
    """Set attributes of `model.generation_config` for one call, then restore them.
    transformers reads the assistant's draft length / schedule / confidence threshold from the
    *assistant model's* generation config, not from the `generate()` kwargs."""
    config = model.generation_config
    old = {key: getattr(config, key, None) for key in values}
    for key, value in values.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            setattr(config, key, value)


# -- methods -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    tokens: list[int]
    trace: Trace | None = None


@dataclass
class Method:
    name: str
    kind: str  # baseline | drafter | transformers | trace-overhead
    call: Callable[[list[int], int, int], RunResult]  # (prompt ids, max_new_tokens, seed)
    settings: dict[str, Any] = field(default_factory=dict)
    drafter: str | None = None  # our drafter this method runs or mirrors


@dataclass
class Sample:
    """One timed call: a method on one prompt in one repeat."""

    method: str
    prompt: int  # index in the prompt file
    repeat: int
    new_tokens: int
    wall: float  # seconds (CPU seconds with --clock cpu)
    peak_bytes: int | None
    matched: bool | None = None  # greedy: output == generate()'s; None when not checked
    first_difference: int | None = None
    stats: dict[str, Any] | None = None  # trace_stats() of our engine's runs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Bench:
    def __init__(self, args: argparse.Namespace, log=None):
        self.args = args
        self.log = log or (lambda text: print(text, file=sys.stderr))
        self.loaded = api.get_model(args.model, args.device, args.dtype)
        self.model = self.loaded.model
        self.device = self.loaded.device
        self.engine = Engine(self.model, name=args.model)
        self.sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                       seed=args.seed)
        self.greedy = self.sampling.greedy
        if args.clock == "cpu" and self.device.type == "cuda":
            raise ValueError("--clock cpu measures CPU time; on CUDA use the (synchronised) wall clock")
        self.memory = MemoryProbe(self.device)
        self.skipped: list[dict[str, str]] = []
        self.draft_loaded = None
        self.methods = self._methods()

    # -- building the method list --------------------------------------------------------
    def _draft_model(self, name: str | None = None):
        """The draft model of draft-model / hf:draft-model: `name`, else --draft-model, else the registry's."""
        info = REGISTRY.get(self.args.model)
        name = name or self.args.draft_model or (info.draft_model if info else None)
        if name is None:
            raise ValueError(f"no draft model: {self.args.model!r} has no default draft model, pass --draft-model")
        self.draft_loaded = api.get_model(name, self.args.device, self.args.dtype)
        return self.draft_loaded

    def _skip(self, name: str, reason: str) -> None:
        self.skipped.append({"drafter": name, "reason": reason})
        self.log(f"[bench] skipping {name}: {reason}")

    def _methods(self) -> list[Method]:
        args = self.args
        overrides = parse_overrides(args.set or [])
        names = list(DRAFTERS) if not args.drafters else [n.strip() for n in args.drafters.split(",") if n.strip()]
        for name in names:
            if name not in DRAFTERS:
                self._skip(name, f"not a registered drafter (registered: {', '.join(DRAFTERS)})")
        names = [n for n in names if n in DRAFTERS]
        if "ar" not in names:
            names.insert(0, "ar")  # the AR loop is a baseline, always measured
        unknown = set(overrides) - set(DRAFTERS)
        if unknown:
            raise ValueError(f"--set names unknown drafter(s): {', '.join(sorted(unknown))}")

        methods = [Method("generate", "baseline", self._hf_call({}), {"do_sample": not self.greedy})]
        overhead_for = args.trace_overhead
        for name in names:
            options = dict(overrides.get(name, {}))
            try:
                if name == "draft-model":
                    draft = self._draft_model(options.pop("draft_model_name", None))
                    options.update(draft_model=draft.model, model_name=draft.name)
                drafter = api.build_drafter(name, self.loaded, options, args.device, args.dtype)
            except Exception as err:  # noqa: BLE001 — any failure to build is a reason to skip, not to crash
                self._skip(name, f"{type(err).__name__}: {err}")
                continue
            settings = dict(drafter.settings())
            kind = "baseline" if name == "ar" else "drafter"
            methods.append(Method(name, kind, self._engine_call(drafter, args.record), settings, name))
            if name == overhead_for:
                label = f"{name}{'-record' if args.record else '+record'}"
                try:  # a second instance, so no drafter state leaks between the two
                    twin = api.build_drafter(name, self.loaded, options, args.device, args.dtype)
                    methods.append(Method(label, "trace-overhead", self._engine_call(twin, not args.record),
                                          settings, name))
                except Exception as err:  # noqa: BLE001
                    self._skip(label, f"{type(err).__name__}: {err}")
            if not args.no_transformers and name in HF_COUNTERPART:
                hf = self._hf_method(name, settings, options)
                if hf is not None:
                    methods.append(hf)
        if overhead_for and overhead_for != "none" and overhead_for not in names:
            self._skip(f"{overhead_for}+record", "trace-overhead drafter is not among the benchmarked drafters")
        return methods

    def _hf_method(self, name: str, settings: dict[str, Any], options: dict[str, Any]) -> Method | None:
        label = HF_COUNTERPART[name]
        if name == "prompt-lookup":
            if settings.get("min_ngram", 1) != 1:
                self._skip(label, "transformers' prompt lookup always goes down to 1-grams (min_ngram must be 1)")
                return None
            kwargs = {"prompt_lookup_num_tokens": settings["k"], "max_matching_ngram_size": settings["max_ngram"]}
            return Method(label, "transformers", self._hf_call(kwargs), kwargs, name)
        assistant_config = {
            "num_assistant_tokens": settings["k"], "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": float(settings.get("threshold", 0.0)),
        }
        if name == "early-exit":
            kwargs = {"assistant_early_exit": settings["exit_layer"]}
            return Method(label, "transformers", self._hf_call(kwargs, self.model, assistant_config),
                          dict(kwargs, **assistant_config), name)
        if name == "draft-model":
            draft = options["draft_model"]
            kwargs = {"assistant_model": draft}
            return Method(label, "transformers", self._hf_call(kwargs, draft, assistant_config),
                          dict({"assistant_model": settings.get("draft_model", "")}, **assistant_config), name)
        return None

    def _engine_call(self, drafter, record: bool) -> Callable[[list[int], int, int], RunResult]:
        def call(ids: list[int], max_new: int, seed: int) -> RunResult:
            sampling = SamplingConfig(self.sampling.temperature, self.sampling.top_k, self.sampling.top_p, seed)
            config = GenerationConfig(max_new_tokens=max_new, sampling=sampling, record=record)
            trace = self.engine.generate(ids, drafter, config)
            return RunResult(trace.generated, trace)
        return call

    def _hf_call(self, kwargs: dict[str, Any], assistant=None, assistant_config=None):
        model = self.model
        pad = model.generation_config.pad_token_id
        if pad is None:
            eos = model.generation_config.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        sampling = {"do_sample": False}
        if not self.greedy:
            sampling = {"do_sample": True, "temperature": self.sampling.temperature,
                        "top_k": self.sampling.top_k, "top_p": self.sampling.top_p}

        def call(ids: list[int], max_new: int, seed: int) -> RunResult:
            input_ids = torch.tensor([ids], device=self.device)
            if not self.greedy:
                torch.manual_seed(seed)
            with _generation_config_values(assistant, **assistant_config) if assistant is not None else _null():
                out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
                                     pad_token_id=pad, **sampling, **kwargs)
            return RunResult(out[0, len(ids):].tolist())
        return call

    # -- running ---------------------------------------------------------------------------
    def _time(self, method: Method, ids: list[int], max_new: int, seed: int) -> tuple[RunResult, float, int | None]:
        clock = _cpu_clock if self.args.clock == "cpu" else _clock
        self.memory.start()
        t0 = clock(self.device)
        result = method.call(ids, max_new, seed)
        wall = clock(self.device) - t0
        return result, wall, self.memory.stop()

    def run(self, prompts: list[str]) -> dict[str, Any]:
        from tqdm.auto import tqdm

        args = self.args
        first = args.prompt_start
        encoded = [api.encode(self.loaded, p) for p in prompts]
        limit = self.engine.context_limit
        budgets = [args.max_new_tokens if limit is None else min(args.max_new_tokens, limit - len(ids))
                   for ids in encoded]
        if any(b < 1 for b in budgets):
            raise ValueError(f"a prompt leaves no room for new tokens in the {limit}-token context")
        runs: list[tuple[str, Sample, list[int]]] = []
        failed: dict[str, str] = {}
        total = len(self.methods) * (1 + args.repeats * len(prompts))
        bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=args.quiet, dynamic_ncols=True)

        def attempt(method: Method, ids, max_new, seed) -> tuple[RunResult, float, int | None] | None:
            if method.name in failed:
                return None
            try:
                return self._time(method, ids, max_new, seed)
            except Exception as err:  # noqa: BLE001 — one broken method must not sink the run
                failed[method.name] = f"{type(err).__name__}: {err}"
                self.log(f"[bench] {method.name} failed: {failed[method.name]}")
                if args.verbose:
                    traceback.print_exc()
                return None

        warm_new = min(args.warmup_tokens, budgets[0])
        for method in self.methods:
            bar.set_postfix_str(f"warm-up {method.name}")
            attempt(method, encoded[0], warm_new, args.seed)
            bar.update(1)
        for repeat in range(args.repeats):
            for p, ids in enumerate(encoded):
                # rotate the order from prompt to prompt, and reverse it every other prompt, so no
                # method always runs first, or always right after another (warm caches)
                turn = repeat * len(encoded) + p
                shift = turn % len(self.methods)
                order = self.methods[shift:] + self.methods[:shift]
                if turn % 2:
                    order.reverse()
                for method in order:
                    bar.set_postfix_str(f"r{repeat} p{first + p} {method.name}")
                    got = attempt(method, ids, budgets[p], args.seed + repeat)
                    bar.update(1)
                    if got is None:
                        continue
                    result, wall, peak = got
                    stats = trace_stats(result.trace) if result.trace is not None else None
                    sample = Sample(method.name, first + p, repeat, len(result.tokens), wall, peak, stats=stats)
                    runs.append((method.name, sample, result.tokens))
        bar.close()

        if self.greedy:  # every greedy output against generate()'s, token for token
            reference = {}
            for name, s, tokens in runs:
                if name == "generate":
                    reference.setdefault(s.prompt, tokens)
            for _, s, tokens in runs:
                if s.prompt in reference:
                    s.first_difference = _first_difference(tokens, reference[s.prompt])
                    s.matched = s.first_difference is None
        methods = [{"drafter": m.name, "kind": m.kind, "settings": _jsonable(m.settings), "of": m.drafter,
                    "failed": failed.get(m.name)} for m in self.methods]
        return build_report(self._meta(prompts, encoded), methods, [s for _, s, _ in runs], self.skipped)

    def _meta(self, prompts, encoded) -> dict[str, Any]:
        args = self.args
        device = self.device
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        return {
            "command": "python -m specviz.bench " + " ".join(shlex.quote(a) for a in args.argv),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "model": args.model,
            "draft_model": self.draft_loaded.name if self.draft_loaded else None,
            "num_layers": self.engine.runner.num_layers,
            "device": str(device),
            "device_name": device_name,
            "dtype": str(self.engine.runner.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "prompts_file": str(args.prompts),
            "prompts": len(prompts),
            "prompt_start": args.prompt_start,
            "prompt_tokens": [len(ids) for ids in encoded],
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
            "greedy": self.greedy,
            "record": args.record,
            "trace_overhead_drafter": None if args.trace_overhead in (None, "none") else args.trace_overhead,
            "clock": args.clock,
            "memory_method": self.memory.method,
            "speedup_convention": "mean over samples of new tokens / wall s, divided by the same mean of generate()",
        }


@contextmanager
def _null():
    yield


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return "?"


def _ratio(a, b):
    return a / b if a is not None and b else None


def _first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or of the end of the shorter), None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def leviathan_speedup(alpha: float, gamma: float, c: float) -> float:
    """S = (1 - α^(γ+1)) / ((1 - α)(γc + 1)); α -> 1 gives (γ + 1) / (γc + 1)."""
    if alpha >= 1.0 - 1e-12:
        tokens = gamma + 1.0
    else:
        tokens = (1.0 - alpha ** (gamma + 1.0)) / (1.0 - alpha)
    return tokens / (gamma * c + 1.0)


# -- statistics ------------------------------------------------------------------------------
def trace_stats(trace: Trace) -> dict[str, Any]:
    """The sums one trace contributes to the pooled metrics (small, JSON-able; traces are dropped)."""
    m = compute_metrics(trace)
    stats = {"steps": m.steps, "new_tokens": m.new_tokens, "verifications": 0, "drafted": 0, "accepted": 0,
             "rejections": 0, "t_draft": 0.0, "t_verify": 0.0, "split": dict(m.time_split),
             "reached": list(m.drafted_per_position),
             "hits": [0] * len(m.drafted_per_position)}
    for step in trace.steps[1:]:  # steps[0] is the prefill, not a verification of a draft
        stats["verifications"] += 1
        stats["drafted"] += len(step.draft_tokens)
        stats["accepted"] += step.accepted
        stats["rejections"] += step.accepted < len(step.draft_tokens)
        stats["t_draft"] += step.t_draft
        stats["t_verify"] += step.t_verify
        for i in range(step.accepted):
            stats["hits"][i] += 1
    return stats


def pool_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool trace stats over all samples of one method (`trace.compute_metrics` conventions)."""
    total = {key: sum(s[key] for s in all_stats) for key in
             ("steps", "new_tokens", "verifications", "drafted", "accepted", "rejections", "t_draft", "t_verify")}
    longest = max(len(s["reached"]) for s in all_stats)
    reached = [sum(s["reached"][i] for s in all_stats if i < len(s["reached"])) for i in range(longest)]
    hits = [sum(s["hits"][i] for s in all_stats if i < len(s["hits"])) for i in range(longest)]
    split = {key: sum(s["split"][key] for s in all_stats) for key in ("prefill", "draft", "verify", "search", "other")}
    drafted, accepted, verifications = total["drafted"], total["accepted"], total["verifications"]
    new_tokens = total["new_tokens"]
    out: dict[str, Any] = {
        "tau": new_tokens / total["steps"] if total["steps"] else None,
        "acceptance_rate": accepted / drafted if drafted else None,
        "alpha": accepted / (accepted + total["rejections"]) if accepted + total["rejections"] else None,
        "acceptance_per_position": [h / r for h, r in zip(hits, reached)],
        "drafted_per_position": reached,
        "mean_draft_length": drafted / verifications if verifications else 0.0,
        "time_split_ms_per_token": {k: 1e3 * v / new_tokens for k, v in split.items()} if new_tokens else None,
        "verify_ms_per_verification": 1e3 * total["t_verify"] / verifications if verifications else None,
        "draft_ms_per_draft_token": 1e3 * total["t_draft"] / drafted if drafted else None,
    }
    if drafted and verifications and total["t_verify"] > 0 and out["alpha"] is not None:
        c = out["draft_ms_per_draft_token"] / out["verify_ms_per_verification"]
        out["draft_cost_c"] = c
        out["predicted_speedup"] = leviathan_speedup(out["alpha"], out["mean_draft_length"], c)
    return out


def summarise(method: dict[str, Any], samples: list[Sample]) -> dict[str, Any]:
    record: dict[str, Any] = {key: None for key in RECORD_FIELDS}
    record.update(drafter=method["drafter"], kind=method["kind"], status="ok", reason="",
                  settings=method["settings"], samples=len(samples))
    if method.get("failed"):
        record.update(status="failed", reason=method["failed"])
    if not samples:
        record.update(status="failed", reason=record["reason"] or "no sample finished")
        return record
    rates = [s.new_tokens / s.wall for s in samples if s.wall > 0]
    record.update(
        tokens_per_s=statistics.fmean(rates) if rates else None,
        tokens_per_s_std=statistics.stdev(rates) if len(rates) > 1 else 0.0,
        new_tokens=sum(s.new_tokens for s in samples),
        wall_s=sum(s.wall for s in samples),
    )
    peaks = [s.peak_bytes for s in samples if s.peak_bytes is not None]
    record["peak_memory_mb"] = max(peaks) / 2**20 if peaks else None
    checked = [s for s in samples if s.matched is not None]
    if checked:
        record["matched_generate"] = all(s.matched for s in checked)
        record["mismatched_samples"] = [{"prompt": s.prompt, "repeat": s.repeat, "first_difference": s.first_difference}
                                        for s in checked if not s.matched]
    stats = [s.stats for s in samples if s.stats is not None]
    if stats:
        record.update(pool_stats(stats))
    return record


def _paired(samples: list[Sample], base: dict[tuple[int, int], Sample]) -> list[float]:
    """Per (prompt, repeat): (base s/token) / (this method's s/token)."""
    ratios = []
    for s in samples:
        b = base.get((s.prompt, s.repeat))
        if b is None or not s.new_tokens or not b.new_tokens or s.wall <= 0 or b.wall <= 0:
            continue
        ratios.append((b.wall / b.new_tokens) / (s.wall / s.new_tokens))
    return ratios


def build_report(meta: dict[str, Any], methods: list[dict[str, Any]], samples: list[Sample],
                 skipped: list[dict[str, str]]) -> dict[str, Any]:
    by_method: dict[str, list[Sample]] = {m["drafter"]: [] for m in methods}
    for s in samples:
        by_method.setdefault(s.method, []).append(s)
    records = [summarise(m, by_method[m["drafter"]]) for m in methods]
    by_name = {r["drafter"]: r for r in records}
    base = by_name.get("generate", {}).get("tokens_per_s")
    ar = by_name.get("ar", {})
    key = lambda s: (s.prompt, s.repeat)  # noqa: E731
    base_samples = {key(s): s for s in by_method.get("generate", [])}
    ar_step = ar.get("verify_ms_per_verification")  # one target forward of one token
    for record in records:
        tps = record["tokens_per_s"]
        record["speedup_vs_generate"] = _ratio(tps, base)
        record["speedup_vs_ar"] = _ratio(tps, ar.get("tokens_per_s"))
        paired = _paired(by_method[record["drafter"]], base_samples)
        record["speedup_paired_median"] = statistics.median(paired) if paired else None
        if record.get("predicted_speedup") is not None and ar_step:
            # the formula counts a verification as one target step; rescale by what it really cost
            record["predicted_speedup_verify_corrected"] = (
                record["predicted_speedup"] * ar_step / record["verify_ms_per_verification"])
        counterpart = HF_COUNTERPART.get(record["drafter"])
        if counterpart in by_name and by_name[counterpart]["tokens_per_s"]:
            hf = by_name[counterpart]
            record["vs_transformers"] = {"method": counterpart, "ratio": _ratio(tps, hf["tokens_per_s"]),
                                         "transformers_tokens_per_s": hf["tokens_per_s"]}
    for item in skipped:
        record = {field_name: None for field_name in RECORD_FIELDS}
        record.update(drafter=item["drafter"], kind="skipped", status="skipped", reason=item["reason"])
        records.append(record)

    overhead = None
    name = meta.get("trace_overhead_drafter")
    twin = next((m for m in methods if m["kind"] == "trace-overhead"), None)
    if name and twin and by_name.get(name, {}).get("tokens_per_s") and by_name[twin["drafter"]]["tokens_per_s"]:
        on, off = (name, twin["drafter"]) if meta.get("record") else (twin["drafter"], name)
        paired = _paired(by_method[on], {key(s): s for s in by_method[off]})  # (off s/tok) / (on s/tok)
        overhead = {
            "drafter": name,
            "tokens_per_s_record_off": by_name[off]["tokens_per_s"],
            "tokens_per_s_record_on": by_name[on]["tokens_per_s"],
            "ratio": by_name[off]["tokens_per_s"] / by_name[on]["tokens_per_s"],  # > 1: recording costs time
            "paired_median": 1.0 / statistics.median(paired) if paired else None,
            "goal": "ratio <= 1.05",
        }
    ar_vs_generate = None
    if base and ar.get("tokens_per_s"):
        paired = _paired(by_method.get("ar", []), base_samples)
        ar_vs_generate = {"ratio": ar["tokens_per_s"] / base, "paired_median": statistics.median(paired) if paired else None,
                          "goal": "ratio >= 0.90 (AR loop at most 10% slower than generate())"}
    return {
        "meta": meta,
        "records": records,
        "trace_overhead": overhead,
        "ar_vs_generate": ar_vs_generate,
        "methods": methods,
        "skipped": skipped,
        "samples": [s.to_dict() for s in samples],
    }


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs of the same setup on different prompts (`--prompt-start` shards)."""
    if not reports:
        raise ValueError("nothing to merge")
    same = ("model", "draft_model", "device", "dtype", "max_new_tokens", "temperature", "top_k", "top_p",
            "record", "clock", "prompts_file")
    meta = dict(reports[0]["meta"])
    for other in reports[1:]:
        diff = [k for k in same if other["meta"].get(k) != meta.get(k)]
        if diff:
            raise ValueError(f"cannot merge runs that differ in {', '.join(diff)}")
    seen = set()
    samples = []
    for report in reports:
        for data in report["samples"]:
            sample = Sample(**data)
            if (sample.method, sample.prompt, sample.repeat) in seen:
                raise ValueError(f"runs overlap: {sample.method} prompt {sample.prompt} repeat {sample.repeat} twice")
            seen.add((sample.method, sample.prompt, sample.repeat))
            samples.append(sample)
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
    meta["command"] = " && ".join(r["meta"]["command"] for r in reports)
    meta["prompts"] = len({s.prompt for s in samples})
    meta["prompt_tokens"] = [t for r in reports for t in r["meta"]["prompt_tokens"]]
    meta["prompt_start"] = min(r["meta"].get("prompt_start", 0) for r in reports)
    meta["merged_from"] = len(reports)
    return build_report(meta, methods, samples, skipped)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# -- output ------------------------------------------------------------------------------------
def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    return f"{value:{spec}}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"model `{meta['model']}` ({meta['num_layers']} layers, {meta['dtype']}) on {meta['device']} "
        f"({meta['device_name']}, {meta['threads']} threads); {meta['prompts']} prompts × {meta['repeats']} "
        f"repeat(s), max_new_tokens {meta['max_new_tokens']}, "
        + ("greedy" if meta["greedy"] else f"T={meta['temperature']} top_k={meta['top_k']} top_p={meta['top_p']}")
        + f"; torch {meta['torch']}, transformers {meta['transformers']}"
        + ("; times are CPU seconds (--clock cpu), not wall" if meta.get("clock") == "cpu" else ""),
        "",
        "| method | tok/s | × generate | × AR loop | τ | accept | α | γ | c | Leviathan S | S·t_AR/t_ver | "
        "draft / verify / search / other ms/tok | peak MB | = generate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|:---:|",
    ]
    for r in report["records"]:
        if r["status"] == "skipped":
            continue
        split = r.get("time_split_ms_per_token")
        split_text = ("{draft:.2f} / {verify:.2f} / {search:.2f} / {rest:.2f}".format(
            rest=split["other"] + split["prefill"], **split) if split else "–")
        name = r["drafter"] if r["status"] == "ok" else f"{r['drafter']} (failed)"
        lines.append(
            f"| {name} | {_fmt(r['tokens_per_s'], '.1f')} | {_fmt(r['speedup_vs_generate'], '.2f', '×')} | "
            f"{_fmt(r['speedup_vs_ar'], '.2f', '×')} | {_fmt(r['tau'])} | {_fmt(r['acceptance_rate'], '.0%')} | "
            f"{_fmt(r['alpha'])} | {_fmt(r['mean_draft_length'], '.1f')} | {_fmt(r['draft_cost_c'])} | "
            f"{_fmt(r['predicted_speedup'], '.2f', '×')} | "
            f"{_fmt(r.get('predicted_speedup_verify_corrected'), '.2f', '×')} | {split_text} | {_fmt(r['peak_memory_mb'], '.2f')} | "
            f"{_fmt(r['matched_generate'])} |"
        )
    pairs = [r for r in report["records"] if r.get("vs_transformers")]
    if pairs:
        lines += ["", "| ours vs transformers | ours tok/s | transformers tok/s | ours / transformers |",
                  "|---|---:|---:|---:|"]
        for r in pairs:
            v = r["vs_transformers"]
            lines.append(f"| {r['drafter']} vs {v['method']} | {_fmt(r['tokens_per_s'], '.1f')} | "
                         f"{_fmt(v['transformers_tokens_per_s'], '.1f')} | {_fmt(v['ratio'], '.2f', '×')} |")
    lines.append("")
    if report.get("ar_vs_generate"):
        a = report["ar_vs_generate"]
        lines.append(f"AR loop / generate(): {_fmt(a['ratio'], '.3f')} (ratio of mean tok/s; paired median "
                     f"{_fmt(a['paired_median'], '.3f')}; goal ≥ 0.90)")
    if report.get("trace_overhead"):
        o = report["trace_overhead"]
        lines.append(f"tracing overhead ({o['drafter']}): tok/s record=False / record=True = {_fmt(o['ratio'], '.3f')} "
                     f"(paired median {_fmt(o['paired_median'], '.3f')}; goal ≤ 1.05)")
    for r in report["records"]:
        if r["status"] in ("skipped", "failed"):
            lines.append(f"- {r['drafter']}: {r['status']} — {r['reason']}")
    lines.append(f"- peak memory: {meta['memory_method']}")
    return "\n".join(lines)


def html_report(report: dict[str, Any], markdown_text: str) -> str:
    import html

    import plotly.graph_objects as go

    ok = [r for r in report["records"] if r["status"] == "ok"]
    colors = {"baseline": "#7f7f7f", "drafter": "#1f77b4", "transformers": "#ff7f0e", "trace-overhead": "#9467bd"}
    figures = []

    fig = go.Figure()
    fig.add_bar(x=[r["drafter"] for r in ok], y=[r["speedup_vs_generate"] for r in ok],
                marker_color=[colors.get(r["kind"], "#1f77b4") for r in ok], name="measured",
                text=[_fmt(r["speedup_vs_generate"], ".2f", "×") for r in ok], textposition="outside")
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
    figures.append(fig)

    drafted = [r for r in ok if r.get("tau") is not None]
    fig = go.Figure(go.Bar(x=[r["drafter"] for r in drafted], y=[r["tau"] for r in drafted],
                           marker_color=[colors.get(r["kind"], "#1f77b4") for r in drafted],
                           text=[_fmt(r["tau"]) for r in drafted], textposition="outside"))
    fig.update_layout(title="τ: mean tokens committed per target verification (target's own token included)",
                      height=380)
    figures.append(fig)

    fig = go.Figure()
    for r in drafted:
        if r.get("acceptance_per_position"):
            n = r["drafted_per_position"]
            fig.add_scatter(x=list(range(1, len(n) + 1)), y=r["acceptance_per_position"], mode="lines+markers",
                            name=r["drafter"], customdata=n,
                            hovertemplate="position %{x}: %{y:.0%} of %{customdata} drafts<extra>%{fullData.name}</extra>")
    fig.update_layout(title="Acceptance per draft position (given a draft reached it)", xaxis_title="draft position",
                      yaxis=dict(title="accepted", tickformat=".0%", range=[0, 1.05]), height=400)
    figures.append(fig)

    fig = go.Figure()
    parts = ("prefill", "draft", "verify", "search", "other")
    for part in parts:
        fig.add_bar(x=[r["drafter"] for r in drafted], y=[r["time_split_ms_per_token"][part] for r in drafted],
                    name=part)
    fig.update_layout(barmode="stack", title="Where the time goes (ms per generated token)", yaxis_title="ms / token",
                      height=400)
    figures.append(fig)

    meta = report["meta"]
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>specviz benchmark</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ddd;padding:3px 7px}"
        "th{background:#f6f8fa}td{text-align:right}td:first-child{text-align:left}</style></head><body>",
        "<h1>specviz benchmark</h1>",
        f"<p><code>{html.escape(meta['command'])}</code> — {html.escape(meta['time'])}</p>",
        _markdown_to_html(markdown_text),
    ]
    for i, fig in enumerate(figures):
        body.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    body.append("</body></html>")
    return "\n".join(body)


def _markdown_to_html(text: str) -> str:
    """The report's markdown (pipe tables, bullet lines, paragraphs) as HTML."""
    import html

    out, table = [], []

    def flush():
        if table:
            rows = [[html.escape(c.strip().replace("**", "")) for c in line.strip().strip("|").split("|")]
                    for line in table if not set(line.strip()) <= set("|-:")]
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush()
    return "\n".join(out)


# -- CLI ---------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m specviz.bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Benchmark every drafter against model.generate(), the engine's AR "
                                            "loop and transformers' assisted generation.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name, local directory or allowlisted hub id")
    p.add_argument("--draft-model", default=None,
                   help="draft model for draft-model / hf:draft-model (default: the model's registry draft)")
    p.add_argument("--prompts", default=None,
                   help="JSONL file, one {\"prompt\": ...} per line (default: the model's example prompts, "
                        "assets/prompts/chat.jsonl or code.jsonl)")
    p.add_argument("--prompt-start", type=int, default=0, help="skip the first N prompts (to shard a long run)")
    p.add_argument("--limit-prompts", type=int, default=None, help="use at most N prompts (from --prompt-start)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="run nothing: merge the --json files of shards of one setup and report them as one run")
    p.add_argument("--drafters", default=None, help="comma-separated drafters (default: every registered one)")
    p.add_argument("--set", action="append", default=[], metavar="DRAFTER.OPTION=VALUE",
                   help="drafter option override, e.g. clasp.skip_ratio=0.4 (value parsed as JSON when it can be)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="passes over the prompt set (after one warm-up)")
    p.add_argument("--warmup-tokens", type=int, default=16, help="new tokens of each method's warm-up call")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument("--dtype", default=None, help="auto, float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a shared, busy CPU use 1: two OpenMP threads "
                        "fighting other jobs for two cores ran ~10x slower here")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what a sample's time is: wall clock (synchronised on CUDA), or this process's CPU time "
                        "(CPU only; with --threads 1 it is robust to other jobs on a shared machine)")
    p.add_argument("--record", action="store_true",
                   help="run our drafters with full trace recording (p/q per token, drafter info); default off")
    p.add_argument("--trace-overhead", default="static-skip", metavar="DRAFTER",
                   help="also run this drafter with the opposite recording setting and report the ratio ('none': off)")
    p.add_argument("--no-transformers", action="store_true", help="skip transformers' assisted-generation baselines")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--html", default=None, help="write a self-contained plotly HTML report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing methods")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    if args.repeats < 1 or args.max_new_tokens < 1 or args.warmup_tokens < 1 or args.prompt_start < 0:
        print("error: --repeats, --max-new-tokens and --warmup-tokens must be >= 1, --prompt-start >= 0",
              file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    threads, verbosity, bars = torch.get_num_threads(), hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        hf_logging.set_verbosity_error()  # generate()'s per-call deprecation chatter
        hf_logging.disable_progress_bar()
        return _main(args)
    finally:  # callers in the same process (tests) keep their settings
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.merge:
        try:
            report = merge_reports([json.loads(Path(path).read_text()) for path in args.merge])
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"error: --merge: {err}", file=sys.stderr)
            return 2
        return _write(args, report)
    try:
        args.prompts = args.prompts or str(prompts_for(args.model))
        prompts = load_prompts(args.prompts)
    except (OSError, ValueError) as err:
        print(f"error: prompts: {err}", file=sys.stderr)
        return 2
    end = None if args.limit_prompts is None else args.prompt_start + args.limit_prompts
    prompts = prompts[args.prompt_start:end]
    if not prompts:
        print("error: --prompt-start / --limit-prompts leave no prompt", file=sys.stderr)
        return 2
    try:
        bench = Bench(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return _write(args, bench.run(prompts))


def _write(args: argparse.Namespace, report: dict[str, Any]) -> int:
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(html_report(report, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
