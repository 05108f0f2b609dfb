"""ZeroGPU: on a Hugging Face Space with ZeroGPU the model events run through `spaces.GPU` (each
call in a worker process that holds the GPU); elsewhere they run as they are.

`spaces` is looked up when an app is built, not once at import: a test that installs a stand-in
`spaces` module and reloads `specviz.ui` gets an app built with that stand-in."""

from __future__ import annotations

import types
from typing import Callable

GPU_DURATION = 120  # seconds one call may hold the GPU


def spaces_module() -> types.ModuleType | None:
    try:
        import spaces  # type: ignore
    except ImportError:
        return None
    return spaces


def gpu_decorator() -> Callable[[Callable], Callable]:
    """`spaces.GPU(duration=...)` where `spaces` is importable, else the identity."""
    spaces = spaces_module()
    return spaces.GPU(duration=GPU_DURATION) if spaces is not None else (lambda fn: fn)
