"""Running the benchmark: clocks, the memory probe, interleaving and the `Bench` runner.

Every method runs once per prompt per repeat, interleaved (see `interleaved`), after one warm-up
call each; a method that raises is marked failed and left out of later turns, the rest go on.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

from .. import api
from ..engine import Engine
from ..greedy_head import screen_table
from ..layers import CPUHead
from ..sampling import SamplingConfig
from .methods import Method, MethodList, RunResult
from .reports import build_report
from .stats import Sample, trace_stats

T = TypeVar("T")
Clock = Callable[[torch.device], float]


# -- clocks and memory -------------------------------------------------------------------------
def wall_clock(device: torch.device) -> float:
    """Wall seconds, after the device's queued work is done (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def cpu_clock(device: torch.device) -> float:
    """CPU seconds of this process (all threads): robust to other jobs on a shared CPU box."""
    return time.process_time()


CLOCKS: dict[str, Clock] = {"wall": wall_clock, "cpu": cpu_clock}


def timed(clock: Clock, device: torch.device, call: Callable[[], T]) -> tuple[T, float]:
    """(call(), its seconds on `clock`)."""
    t0 = clock(device)
    result = call()
    return result, clock(device) - t0


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


@contextmanager
def quiet_run(threads: int | None) -> Iterator[None]:
    """For one run: `threads` torch CPU threads (None: torch's), transformers' per-call chatter and
    progress bars off; all restored afterwards, so callers in the same process (tests) keep theirs."""
    from transformers.utils import logging as hf_logging

    saved_threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    try:
        if threads:
            torch.set_num_threads(threads)
        hf_logging.set_verbosity_error()  # generate()'s per-call deprecation chatter
        hf_logging.disable_progress_bar()
        yield
    finally:
        torch.set_num_threads(saved_threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# -- interleaving and matching -----------------------------------------------------------------
def interleaved(methods: list[T], turn: int) -> list[T]:
    """The method order of one (repeat, prompt) turn: rotated by the turn number and reversed every
    other turn, so no method always runs first, or always right after another (warm caches)."""
    shift = turn % len(methods)
    order = methods[shift:] + methods[:shift]
    if turn % 2:
        order.reverse()
    return order


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or of the end of the shorter), None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def mark_matches(runs: list[tuple[Sample, list[int]]]) -> None:
    """Greedy: compare every output with generate()'s on the same prompt, token for token."""
    reference: dict[int, list[int]] = {}
    for s, tokens in runs:
        if s.method == "generate":
            reference.setdefault(s.prompt, tokens)
    for s, tokens in runs:
        if s.prompt in reference:
            s.first_difference = first_difference(tokens, reference[s.prompt])
            s.matched = s.first_difference is None


def jsonable(value: Any) -> Any:
    """`value` with every non-JSON leaf (a model, a tensor) as its str()."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return "?"


# -- the runner --------------------------------------------------------------------------------
class Bench:
    """One benchmark run: the model, its methods (see `methods.MethodList`), and `run(prompts)`."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None] | None = None):
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
        method_list = MethodList(args, self.loaded, self.engine, self.sampling, self.log)
        self.skipped = method_list.skipped
        self.methods = method_list.build()
        self.draft_loaded = method_list.draft_loaded
        self.failed: dict[str, str] = {}  # method name -> its error; it is not run again

    def _time(self, method: Method, ids: list[int], max_new: int, seed: int) -> tuple[RunResult, float, int | None]:
        self.memory.start()
        result, seconds = timed(CLOCKS[self.args.clock], self.device, lambda: method.call(ids, max_new, seed))
        return result, seconds, self.memory.stop()

    def _attempt(self, method: Method, ids: list[int], max_new: int,
                 seed: int) -> tuple[RunResult, float, int | None] | None:
        """`_time`, or None when the method failed (now or before): one broken method must not sink the run."""
        if method.name in self.failed:
            return None
        try:
            return self._time(method, ids, max_new, seed)
        except Exception as err:  # noqa: BLE001
            self.failed[method.name] = f"{type(err).__name__}: {err}"
            self.log(f"[bench] {method.name} failed: {self.failed[method.name]}")
            if self.args.verbose:
                traceback.print_exc()
            return None

    def _budgets(self, encoded: list[list[int]]) -> list[int]:
        """New tokens per prompt: --max-new-tokens, or what the model's context leaves."""
        limit = self.engine.context_limit
        budgets = [self.args.max_new_tokens if limit is None else min(self.args.max_new_tokens, limit - len(ids))
                   for ids in encoded]
        if any(b < 1 for b in budgets):
            raise ValueError(f"a prompt leaves no room for new tokens in the {limit}-token context")
        return budgets

    def _warm_up(self, ids: list[int], budget: int, bar) -> None:
        # the LM head's layout and the decoder linears' kernel per row count are measured here, not
        # in a timed run (up to the longest verify pass of the bench's rows: k 32 plus the pending token)
        self.engine.runner.prepare_kernels(CPUHead.WARM_ROWS)
        warm_new = min(self.args.warmup_tokens, budget)
        for method in self.methods:
            bar.set_postfix_str(f"warm-up {method.name}")
            self._attempt(method, ids, warm_new, self.args.seed)
            bar.update(1)

    def _timed_turns(self, encoded: list[list[int]], budgets: list[int], bar) -> list[tuple[Sample, list[int]]]:
        """Every repeat × prompt × method once, interleaved: (sample, output tokens) per finished call."""
        first = self.args.prompt_start
        runs: list[tuple[Sample, list[int]]] = []
        for repeat in range(self.args.repeats):
            for p, ids in enumerate(encoded):
                for method in interleaved(self.methods, repeat * len(encoded) + p):
                    bar.set_postfix_str(f"r{repeat} p{first + p} {method.name}")
                    got = self._attempt(method, ids, budgets[p], self.args.seed + repeat)
                    bar.update(1)
                    if got is None:
                        continue
                    result, wall, peak = got
                    stats = trace_stats(result.trace) if result.trace is not None else None
                    sample = Sample(method.name, first + p, repeat, len(result.tokens), wall, peak, stats=stats)
                    runs.append((sample, result.tokens))
        return runs

    def run(self, prompts: list[str]) -> dict[str, Any]:
        """Warm up, time every method on every prompt, and build the report."""
        from tqdm.auto import tqdm

        encoded = [api.encode(self.loaded, p) for p in prompts]
        budgets = self._budgets(encoded)
        self.failed = {}
        total = len(self.methods) * (1 + self.args.repeats * len(prompts))
        bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=self.args.quiet, dynamic_ncols=True)
        self._warm_up(encoded[0], budgets[0], bar)
        runs = self._timed_turns(encoded, budgets, bar)
        bar.close()
        if self.greedy:
            mark_matches(runs)
        methods = [{"drafter": m.name, "kind": m.kind, "settings": jsonable(m.settings), "of": m.drafter,
                    "counterpart": m.counterpart, "failed": self.failed.get(m.name)} for m in self.methods]
        return build_report(self._meta(prompts, encoded), methods, [s for s, _ in runs], self.skipped)

    def _meta(self, prompts: list[str], encoded: list[list[int]]) -> dict[str, Any]:
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
            # the decoder linears' kernel per weight shape and measured row count (specviz.packed_linears)
            "packed_linears": self.engine.runner.linears.table() if self.engine.runner.linears else None,
            # the LM head's greedy screen: its bound and the row counts it was measured faster for
            "greedy_screen": screen_table(self.engine.runner),
            # why the decoder layers ran through transformers' modules (None: as lean_layers writes them)
            "lean_layers_refused": self.engine.runner.lean_refused,
            "speedup_convention": "mean over samples of new tokens / wall s, divided by the same mean of generate()",
        }
