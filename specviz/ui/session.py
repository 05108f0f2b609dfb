"""Per-browser-session state and what it shares across processes and calls: the Stop switch as
flag files, the live Step generation, the token detokenizers, and the plain `generate()`
reference each run is compared with (timed right after each run, cached for Compare)."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import api
from ..engine import eos_ids
from ..figures import PlainRun
from ..trace import Trace

STOP_DIR = Path(tempfile.gettempdir()) / "specviz-session-flags"  # shared by all of the app's processes


class SessionFlags:
    """A session's "running" and "stop requested" switches as files, so that Stop works when the
    generation runs in another process (ZeroGPU runs each @spaces.GPU call in a forked worker,
    where an Event set by the Stop handler in the main process would never be seen)."""

    def __init__(self, token: str, root: Path = STOP_DIR):
        self.running_file = root / f"{token}.running"
        self.stop_file = root / f"{token}.stop"

    def started(self) -> None:
        self.running_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.unlink(missing_ok=True)
        self.running_file.touch()

    def finished(self) -> None:
        self.running_file.unlink(missing_ok=True)
        self.stop_file.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.running_file.exists()

    def request_stop(self) -> None:
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()

    @property
    def stop_requested(self) -> bool:
        return self.stop_file.exists()


class StopSignal:
    """What the engine polls (`is_set()`) once per step: this process's own switch (set when the
    client goes away) or the session's Stop button, seen through its flag file."""

    def __init__(self, flags: SessionFlags):
        self.flags = flags
        self.local = threading.Event()

    def set(self) -> None:
        self.local.set()

    def is_set(self) -> bool:
        return self.local.is_set() or self.flags.stop_requested


class Session:
    """Per-browser-session state (held by gr.State): the last trace, the Step generation's
    settings and, in this process only, the live generation behind Step.

    Only plain data survives pickling (ZeroGPU hands the state to a worker process and back):
    the live `gen`, `loaded` and `decode` are dropped, and Step rebuilds its generation by
    replaying the recorded steps, which greedy decoding and seeded sampling repeat exactly."""

    LIVE = ("gen", "loaded", "decode")

    def __init__(self):
        self.token = uuid.uuid4().hex  # names this session's flag files
        self.gen = None  # Generation driven by Step (this process only)
        self.loaded = None
        self.decode: Callable[[list[int]], str] | None = None
        self.key: tuple | None = None  # settings of the Step generation
        self.trace: Trace | None = None
        self.plain: PlainRun | None = None
        self.mode = "run"  # "run" | "step"
        self.prompt_text = ""
        self.model_ref: tuple | None = None  # (name, device, dtype) of the last run, to rebuild `decode`
        # the step the step views show: set by each run update (its last step) and by a pick on the
        # step slider. The Step tab's views read it here, not from the slider, whose value in the
        # browser can lag a run's updates (it explained an older step, and a new, shorter run made
        # Gradio reject the old value as above the slider's new maximum)
        self.selected_step: int | None = None

    @classmethod
    def of(cls, value: Any) -> Session:
        """The session a gr.State holds, or a fresh one (an API client may send none)."""
        return value if isinstance(value, cls) else cls()

    @property
    def flags(self) -> SessionFlags:
        return SessionFlags(self.token)

    def decoder(self) -> Callable[[list[int]], str] | None:
        if self.decode is None and self.model_ref is not None:
            try:
                self.decode = detok_for(api.get_model(*self.model_ref))
            except Exception:  # noqa: BLE001 - the token view then shows ids
                return None
        return self.decode

    def __getstate__(self):
        return {k: (None if k in self.LIVE else v) for k, v in self.__dict__.items()}

    def __deepcopy__(self, memo):  # gr.State deep-copies its initial value: a fresh session each
        return Session()


class Detok:
    """A tokenizer's decode with a memo (the token view decodes short windows over and over)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.memo: dict[tuple[int, ...], str] = {}

    def __call__(self, ids: list[int]) -> str:
        key = tuple(ids)
        text = self.memo.get(key)
        if text is None:
            if len(self.memo) > 50_000:  # bounded: a long-running app must not grow
                self.memo.clear()
            text = self.memo[key] = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        return text


_detoks: dict[int, Detok] = {}  # by id(tokenizer): one memo per loaded model
_plain_cache: "OrderedDict[tuple, PlainRun]" = OrderedDict()  # plain_key -> reference, oldest first
_plain_lock = threading.Lock()
PLAIN_CACHE_SIZE = 64


def detok_for(loaded) -> Detok:
    key = id(loaded.tokenizer)
    if key not in _detoks:
        _detoks[key] = Detok(loaded.tokenizer)
    return _detoks[key]


class _TimingStreamer:
    """transformers streamer that records when each new token arrives (the first put is the prompt)."""

    def __init__(self, t0: float, device: torch.device):
        self.t0, self.device = t0, device
        self.seen_prompt = False
        self.tokens: list[int] = []
        self.times: list[float] = []

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        ids = value.reshape(-1).tolist()
        now = time.perf_counter() - self.t0
        self.tokens.extend(int(i) for i in ids)
        self.times.extend([now] * len(ids))

    def end(self):
        pass


def plain_key(model: str, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float, top_p: float,
              top_k: int, seed: int) -> tuple:
    greedy = float(temperature) == 0.0
    sampling = ("greedy",) if greedy else (float(temperature), float(top_p), int(top_k), int(seed))
    return (model, tuple(int(i) for i in prompt_ids), int(max_new_tokens)) + sampling


def cached_plain(key: tuple) -> PlainRun | None:
    with _plain_lock:
        return _plain_cache.get(key)


@torch.inference_mode()
def plain_generate(loaded, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, top_k: int = 0, seed: int = 0, key: tuple | None = None,
                   fresh: bool = False) -> PlainRun:
    """Time `model.generate()` for (model, prompt, max_new_tokens, sampling) and cache it; with
    `fresh`, time it again even when cached (a speedup must compare runs made under the same
    conditions: a reference timed minutes earlier, on a shared machine, is not one)."""
    key = key or plain_key(loaded.name, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed)
    hit = None if fresh else cached_plain(key)
    if hit is not None:
        return hit
    model = loaded.model
    eos = sorted(eos_ids(model))
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    greedy = float(temperature) == 0.0
    kwargs: dict[str, Any] = dict(max_new_tokens=int(max_new_tokens), num_beams=1, eos_token_id=eos or None,
                                  pad_token_id=pad, use_cache=True)
    if greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(int(seed))
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p),
                      top_k=int(top_k) if int(top_k) > 0 else None)
    ids = torch.tensor([list(prompt_ids)], device=loaded.device)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    t0 = time.perf_counter()
    streamer = _TimingStreamer(t0, loaded.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
    wall = time.perf_counter() - t0
    tokens = out[0, ids.shape[1]:].tolist()
    # generate() pads finished sequences only in batches; keep up to and including the first EOS
    for i, tok in enumerate(tokens):
        if tok in eos:
            tokens = tokens[: i + 1]
            break
    times = streamer.times[: len(tokens)] if len(streamer.times) >= len(tokens) else [wall] * len(tokens)
    run = PlainRun(tokens=tokens, times=times, wall_time=wall, greedy=greedy,
                   settings=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed),
                   dtype=str(model.dtype).removeprefix("torch."))
    with _plain_lock:
        _plain_cache[key] = run
        while len(_plain_cache) > PLAIN_CACHE_SIZE:
            _plain_cache.popitem(last=False)
    return run
