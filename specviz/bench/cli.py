"""`python -m specviz.bench [FLAGS]` runs the benchmark; `python -m specviz.bench sweep NAME
[FLAGS]` runs one of the per-drafter sweeps (see `sweeps`). Only a first argument `sweep` selects
a sweep, so the benchmark's own flags stay exactly as they were."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..models import DEFAULT_MODEL
from .harness import Bench, quiet_run
from .inputs import load_prompts, prompts_for, resolve_prompts
from .reports import merge_reports, write_report

SWEEP_COMMAND = "sweep"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m specviz.bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Benchmark every drafter against model.generate(), the engine's AR "
                                            "loop and transformers' assisted generation.",
                                epilog="Per-drafter sweeps: python -m specviz.bench sweep {clasp,hispec,ctc,defaults} "
                                       "--help")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name, local directory or allowlisted hub id")
    p.add_argument("--draft-model", default=None,
                   help="draft model for draft-model / hf:draft-model (default: the model's registry draft)")
    p.add_argument("--prompts", default=None,
                   help="JSONL file, one {\"prompt\": ...} per line, or a bundled set by name: chat, code, "
                        "grounded (assets/prompts/NAME.jsonl; default: the model's example prompts, chat or code)")
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
    p.add_argument("--adaptive-length", action="store_true",
                   help="also run each drafter with its draft length chosen per step by the cost model "
                        "(specviz.draft_length; the drafter's k is the most it drafts), as '<drafter>+cost-k'")
    p.add_argument("--unpacked", action="store_true",
                   help="also run each of our drafters (the AR loop included) on an engine whose passes use F.linear "
                        "at every row count, without the decoder linears' measured kernels (specviz.packed_linears), "
                        "as '<drafter>+F.linear'")
    p.add_argument("--full-head", action="store_true",
                   help="also run each of our drafters (the AR loop included) on an engine whose greedy verdicts read "
                        "the full fp32 LM head, without its fp16 screen (specviz.greedy_head), as '<drafter>+full-head'")
    p.add_argument("--hf-layers", action="store_true",
                   help="also run each of our drafters (the AR loop included) on an engine whose passes call transformers' "
                        "decoder-layer modules instead of the same layers as plain tensor code (specviz.lean_layers), "
                        "as '<drafter>+hf-layers'")
    p.add_argument("--one-pass", action="store_true",
                   help="also run each of our drafter rows with the two-pass verify off (greedy, CPU: by default a "
                        "long draft likely to fail early is verified rows-first, specviz.verify_split), as "
                        "'<row>+one-pass'")
    p.add_argument("--variant", action="append", default=[], metavar="DRAFTER.OPTION=VALUE[;OPTION=VALUE]",
                   help="also run DRAFTER with these options on top of its own, interleaved with the rest, as "
                        "'DRAFTER[OPTION=VALUE;...]' (repeatable), e.g. clasp.ride_verify=false")
    p.add_argument("--no-transformers", action="store_true", help="skip transformers' assisted-generation baselines")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--html", default=None, help="write a self-contained plotly HTML report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing methods")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The benchmark, or with a first argument `sweep`, a sweep; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SWEEP_COMMAND]:
        from .sweeps import main as sweep_main

        return sweep_main(argv[1:])
    args = parser().parse_args(argv)
    args.argv = argv
    if args.repeats < 1 or args.max_new_tokens < 1 or args.warmup_tokens < 1 or args.prompt_start < 0:
        print("error: --repeats, --max-new-tokens and --warmup-tokens must be >= 1, --prompt-start >= 0",
              file=sys.stderr)
        return 2
    with quiet_run(args.threads):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.merge:
        try:
            report = merge_reports([json.loads(Path(path).read_text()) for path in args.merge])
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"error: --merge: {err}", file=sys.stderr)
            return 2
        return _write(args, report)
    prompts = _load_prompt_slice(args)
    if prompts is None:
        return 2
    try:
        bench = Bench(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return _write(args, bench.run(prompts))


def _load_prompt_slice(args: argparse.Namespace) -> list[str] | None:
    """The prompts of this run (--prompts, sliced by --prompt-start / --limit-prompts), or None
    after printing why there are none. Sets args.prompts to the file used, for the report."""
    try:
        args.prompts = str(resolve_prompts(args.prompts) if args.prompts else prompts_for(args.model))
        prompts = load_prompts(args.prompts)
    except (OSError, ValueError) as err:
        print(f"error: prompts: {err}", file=sys.stderr)
        return None
    end = None if args.limit_prompts is None else args.prompt_start + args.limit_prompts
    prompts = prompts[args.prompt_start:end]
    if not prompts:
        print("error: --prompt-start / --limit-prompts leave no prompt", file=sys.stderr)
        return None
    return prompts


def _write(args: argparse.Namespace, report: dict[str, Any]) -> int:
    write_report(report, args.json, args.html)
    return 0
