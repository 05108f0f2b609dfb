"""What every sweep shares: its set-up flags, where its JSON goes, and how it is written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ...models import ASSETS
from ..reports import write_text

RESULTS_DIR = ASSETS.parent / "bench_results"


class BadOption(ValueError):
    """A sweep option that cannot be run (the message says why); the command exits with status 2."""


def results_path(name: str) -> Path:
    """Where sweep `name` writes its JSON unless --json says otherwise."""
    return RESULTS_DIR / f"{name}.json"


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """A sweep's result as indented JSON (anything not JSON as its str())."""
    return write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def add_setup_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every sweep shares; each sweep sets their defaults (its DEFAULTS)."""
    p.add_argument("--model", help="registry name or model directory (None: the bundled model, see above)")
    p.add_argument("--device", help="cpu or cuda (None: auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (None: torch's)")
    p.add_argument("--max-new-tokens", type=int, help="new tokens per prompt")
    p.add_argument("--json", "--out", dest="json", metavar="PATH",
                   help="write the result here (None: bench_results/NAME.json, or for `defaults` the model's "
                        "drafter_defaults.json)")
