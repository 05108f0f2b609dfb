"""`python -m specviz generate ...`: run one generation and print the text and its metrics."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .drafters import DRAFTERS, Option
from .models import DEFAULT_MODEL, REGISTRY

CLI_TYPES = {"int": int, "layer": int, "float": float}  # other kinds arrive as text


@dataclass
class Flag:
    """One drafter flag on the command line: the option it sets and the drafters that take it
    (shared options, such as k, are one flag for every drafter that declares them)."""

    option: Option
    drafters: list[str] = field(default_factory=list)
    helps: dict[str, dict[str, Any]] = field(default_factory=dict)  # help text -> {drafter: its default}

    def help(self) -> str:
        return "; ".join(f"{', '.join(defaults)}: {text}{_defaults_text(defaults)}" for text, defaults in self.helps.items())


def _defaults_text(defaults: dict[str, Any]) -> str:
    """' (default 4)', or per drafter where they differ: ' (default a, b: 4; c: 8)'."""
    by_value: dict[str, list[str]] = {}
    for name, value in defaults.items():
        if value is not None:  # None: the drafter picks (its help says how)
            by_value.setdefault(str(value), []).append(name)
    if len(by_value) <= 1:
        return "".join(f" (default {value})" for value in by_value)
    return " (default " + "; ".join(f"{', '.join(names)}: {value}" for value, names in by_value.items()) + ")"


def drafter_flags() -> dict[str, Flag]:
    """Every CLI flag the registered drafters declare, in registration order."""
    flags: dict[str, Flag] = {}
    for declared in DRAFTERS.values():
        for option in declared.options:
            if option.flag is None:
                continue
            flag = flags.setdefault(option.flag, Flag(option))
            if flag.option.name != option.name:
                raise ValueError(f"{option.flag} means {flag.option.name!r} for {', '.join(flag.drafters)} "
                                 f"but {option.name!r} for {declared.name}: one flag, one option")
            flag.drafters.append(declared.name)
            flag.helps.setdefault(option.help, {})[declared.name] = option.default
    return flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m specviz", description="Lossless speculative decoding, made visible.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text with a drafter and print it with its metrics",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"registry name ({', '.join(n for n, i in REGISTRY.items() if not i.hidden)}), "
                          "local directory or allowlisted hub id")
    gen.add_argument("--drafter", default="ar", help=f"one of: {', '.join(DRAFTERS)}")
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (stops earlier at EOS)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples (rejection sampling keeps the target distribution)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, (0, 1]")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 disables)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--device", default="auto", help="auto, cpu or cuda")
    gen.add_argument("--dtype", default="auto", help="auto (cuda: bf16, cpu: fp32), float32, bfloat16, float16")
    gen.add_argument("--raw", action="store_true",
                     help="send the prompt as raw text; by default a model with a chat template gets it as a user message")
    gen.add_argument("--adaptive-length", action="store_true",
                     help="choose each step's draft length with a cost model learned from the steps so far "
                          "(measured verify cost by verified tokens, draft cost, acceptance per position); the "
                          "drafter's k is the most it drafts, and 0 (plain decoding, with a probe every few steps) "
                          "when drafts do not pay. Output is unchanged (greedy) or exact (sampling)")
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, metrics, steps")
    drafter = gen.add_argument_group("drafter options (each drafter uses the ones it understands; defaults are the "
                                     "model's swept defaults where it has them, else the drafter's)")
    for name, flag in drafter_flags().items():
        # SUPPRESS: a flag not given stays absent (the drafter's or model's default applies), and
        # --help shows each drafter's own default instead of "None"
        drafter.add_argument(name, type=CLI_TYPES.get(flag.option.kind, str), default=argparse.SUPPRESS,
                             help=flag.help())
    return parser


def _drafter_options(args: argparse.Namespace) -> dict[str, Any]:
    """The drafter flags given, minus those the chosen drafter does not take (named on stderr:
    `--help` promises each drafter uses the options it understands)."""
    known = args.drafter in DRAFTERS
    options, ignored = {}, []
    for name, flag in drafter_flags().items():
        value = getattr(args, name.lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        if known and args.drafter not in flag.drafters:
            ignored.append(name)
            continue
        if flag.option.parse is not None and isinstance(value, str):
            try:
                value = flag.option.parse(value)
            except ValueError as err:
                raise ValueError(f"{name} {err}") from None
        options[flag.option.name] = value
    if ignored:
        print(f"note: drafter {args.drafter!r} does not use {', '.join(ignored)}; ignored", file=sys.stderr)
    return options


def _status(message: str) -> None:
    """Slow loading stages (the first run converts the default model; tqdm draws its bar)."""
    print(message, file=sys.stderr, flush=True)


def generate(args: argparse.Namespace) -> int:
    from . import api
    from .trace import compute_metrics

    options = _drafter_options(args)
    device = None if args.device == "auto" else args.device
    dtype = None if args.dtype == "auto" else args.dtype
    loaded, generation = api.start(
        args.model, args.drafter, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, options=options, device=device, dtype=dtype,
        chat=not args.raw, progress=_status, adaptive_length=args.adaptive_length,
    )
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    trace = generation.trace
    for _ in generation:
        pass
    metrics = compute_metrics(trace).to_dict()
    text = api.decode(loaded, trace.generated)
    if args.json:
        print(json.dumps({"text": text, "token_ids": trace.generated, "metrics": metrics,
                          "steps": trace.to_dict()["steps"], "trace": {k: v for k, v in trace.to_dict().items() if k != "steps"}}))
        return 0
    print(text if loaded.has_chat_template and not args.raw else args.prompt + text)
    print()
    acc = metrics["acceptance_rate"]
    split = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in metrics["time_split"].items())
    print(f"[{args.drafter}] {metrics['new_tokens']} tokens in {metrics['wall_time']:.2f} s "
          f"= {metrics['tokens_per_s']:.1f} tok/s | tau {metrics['tau']:.2f} | "
          f"acceptance {'n/a' if acc is None else f'{acc:.1%}'} | {metrics['steps']} verifications | "
          f"finish: {trace.finish_reason}")
    print(f"time split: {split}")
    caps = [s.draft_cap for s in trace.steps if s.draft_cap is not None]
    if caps:
        print(f"cost-model draft length per step: {' '.join(map(str, caps))}")
    return 0


def join_negative_values(argv: list[str]) -> list[str]:
    """`--skip -1,3` -> `--skip=-1,3`: argparse takes a value starting with '-' for a flag unless
    it is a plain negative number, so a list like -1,3 would be refused as an unknown option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if (argv[i].startswith("--") and "=" not in argv[i] and i + 1 < len(argv)
                and re.fullmatch(r"-[\d.][\d.,\s-]*", argv[i + 1])):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        return generate(args)
    except ValueError as err:  # bad input: a clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
