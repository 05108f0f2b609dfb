"""Load a causal LM and its tokenizer by registry name, local directory or allowlisted hub id.

Device and dtype are chosen automatically: CUDA with bf16 (fp16 where bf16 is unsupported) when
a GPU is present, CPU with fp32 otherwise. Remote code is never run (`trust_remote_code=False`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from .layers import check_drivable

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS_DIR = ASSETS / "models"

# Names that resolve to models bundled in assets/ (trained by specviz/train/).
REGISTRY: dict[str, Path] = {
    "specviz-tiny": MODELS_DIR / "specviz-tiny",
    "specviz-tiny-draft": MODELS_DIR / "specviz-tiny-draft",
}
DEFAULT_MODEL = "specviz-tiny"
# A registry model's matching draft model, for the draft-model drafter.
DEFAULT_DRAFT = {"specviz-tiny": "specviz-tiny-draft"}

# Hub ids specviz may download (only when the network allows). Llama, Qwen2 and Mistral families.
HUB_ALLOWLIST: tuple[str, ...] = (
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


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: object
    device: torch.device


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


def resolve_source(name: str) -> str:
    """Registry name -> bundled directory; existing directory -> itself; allowlisted hub id -> itself."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("model must be a registry name, a local directory or an allowlisted hub id")
    if name in REGISTRY:
        path = REGISTRY[name]
        if not (path / "config.json").exists():
            raise ValueError(f"bundled model {name!r} is missing from {path} (see specviz/train/README.md)")
        return str(path)
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ValueError(f"model directory {name!r} has no config.json")
        return name
    if name in HUB_ALLOWLIST:
        return name
    raise ValueError(
        f"unknown model {name!r}: use one of the registry names {sorted(REGISTRY)}, a local model "
        f"directory, or an allowlisted hub id {list(HUB_ALLOWLIST)}"
    )


def check_architecture(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(
            f"model architecture {model_type!r} is not supported: the layer runner drives "
            f"{', '.join(SUPPORTED_TYPES)} models"
        )


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None,
               attn_implementation: str = "sdpa") -> LoadedModel:
    """Load model + tokenizer the same way for bundled, local and hub sources."""
    source = resolve_source(name)
    hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter CLI and app output
    offline = name in REGISTRY or os.path.isdir(source)
    config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=offline)
    check_architecture(config)
    target = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=pick_dtype(target, dtype), trust_remote_code=False, local_files_only=offline,
        attn_implementation=attn_implementation,
    ).to(target).eval()
    check_drivable(model)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=offline)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, device=target)
