"""`python -m specviz.bench sweep NAME [FLAGS]`: the per-drafter sweeps that chose the drafters'
defaults (clasp, hispec, ctc) and a model's per-drafter defaults file (defaults).

Every sweep shares one set-up and one output convention (`common`): the flags `--model`,
`--device`, `--threads` and `--max-new-tokens` (each sweep keeps its own defaults for them),
transformers' chatter off, tables on stdout, and the result as JSON at `--json PATH` (alias
`--out`; parents created; `wrote PATH` printed), by default `bench_results/NAME.json`, except
`defaults`, which writes the model's `drafter_defaults.json` (the file it exists to make).

A sweep module has NAME, HELP, DEFAULTS (its defaults of the shared flags), `add_arguments(parser)`
(its own flags), `default_output(args)` and `run(args) -> dict` (the JSON); `run` raises
`common.BadOption` for an option it cannot run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..harness import quiet_run
from . import clasp, ctc, defaults, hispec
from .common import BadOption, add_setup_arguments, write_json

SWEEPS = {module.NAME: module for module in (clasp, hispec, ctc, defaults)}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The sweep's docstring as written, each flag with its default."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m specviz.bench sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="sweep", required=True, metavar="{" + ",".join(SWEEPS) + "}")
    for name, module in SWEEPS.items():
        sp = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                            formatter_class=_HelpFormatter)
        add_setup_arguments(sp)
        module.add_arguments(sp)
        sp.set_defaults(**module.DEFAULTS)
    return p


def main(argv: Sequence[str]) -> int:
    """Run one sweep (`argv`: what follows `sweep`) and write its JSON; returns the exit status
    (2 for an option the sweep cannot run)."""
    args = parser().parse_args(argv)
    args.argv = list(argv)
    module = SWEEPS[args.sweep]
    with quiet_run(args.threads):
        try:
            result = module.run(args)
        except BadOption as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    out = write_json(Path(args.json) if args.json else module.default_output(args), result)
    print(f"wrote {out}")
    return 0
