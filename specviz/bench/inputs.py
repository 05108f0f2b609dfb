"""What a benchmark run measures on: the prompt files, and the model + prompt ids of the sweeps.

The sweeps need a model whose layer-skip drafts get *some* acceptance, so when the bundled
`specviz-tiny` is missing they fall back to a random Llama with damped layers (a purely random
model accepts nothing, which would make every sweep row the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..models import ASSETS, REGISTRY

PROMPTS_DIR = ASSETS / "prompts"
DEFAULT_PROMPTS = PROMPTS_DIR / "code.jsonl"  # the Python headers specviz-tiny was trained for
BUNDLED_MODEL = ASSETS / "models" / "specviz-tiny"

FALLBACK_CODE_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import os\n\ndef list_python_files(root):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n",
]

# (layer index, generator) -> factor for that layer's output projections in the random stand-in
LayerScale = Callable[[int, torch.Generator], float]
# (model, one token id list per prompt, a one-line description of the model for the report)
Setup = tuple[torch.nn.Module, list[list[int]], str]


def prompts_for(model: str) -> Path:
    """The example prompts that suit `model`: chat prompts for chat models, code for specviz-tiny."""
    info = REGISTRY.get(model)
    return PROMPTS_DIR / f"{info.prompts if info else 'chat'}.jsonl"


def prompt_set_names() -> list[str]:
    """The names of the bundled prompt sets (assets/prompts/NAME.jsonl)."""
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.jsonl"))


def resolve_prompts(spec: str) -> Path:
    """`--prompts`: a JSONL file, or the name of a bundled set ('chat', 'grounded', ...). An
    existing file wins over a set of the same name; anything else is an error naming the sets."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.suffix != ".jsonl" and len(path.parts) == 1 and (PROMPTS_DIR / f"{spec}.jsonl").is_file():
        return PROMPTS_DIR / f"{spec}.jsonl"
    raise ValueError(f"no prompt file or bundled prompt set {spec!r} "
                     f"(bundled sets: {', '.join(prompt_set_names())}; or give a path to a JSONL file)")


def load_prompts(path: str | Path) -> list[str]:
    """The prompts of a JSONL file (one {"prompt": ...} per line); a bad line names its number."""
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


def load_setup(n_prompts: int, seed: int, name: str | None, device: str,
               layer_scale: LayerScale, stand_in: str) -> Setup:
    """(model, prompt id lists, description) for the per-drafter sweeps (clasp, hispec).
    `name`: registry name or model directory; default specviz-tiny when its weights exist, else a
    random 16-layer Llama whose layer i's output projections are scaled by `layer_scale(i,
    generator)` so that layer-skip drafts get real acceptance; `stand_in` says how, for the report."""
    if name is None and list(BUNDLED_MODEL.glob("*.safetensors")):
        name = "specviz-tiny"
    if name is not None:
        return _named_setup(name, n_prompts, device)
    return _random_stand_in(n_prompts, seed, device, layer_scale, stand_in)


def _named_setup(name: str, n_prompts: int, device: str) -> Setup:
    """A real model on the first `n_prompts` code prompts, tokenized as raw text."""
    from ..models import load_model

    loaded = load_model(name, device=device)
    texts = (load_prompts(DEFAULT_PROMPTS) if DEFAULT_PROMPTS.exists() else FALLBACK_CODE_PROMPTS)[:n_prompts]
    ids = [list(loaded.tokenizer(t)["input_ids"]) for t in texts]
    return loaded.model.eval(), ids, f"{name} ({loaded.model.config.num_hidden_layers} layers)"


def _random_stand_in(n_prompts: int, seed: int, device: str, layer_scale: LayerScale, stand_in: str) -> Setup:
    """A seeded random 16-layer Llama with scaled layers, on random 24-token prompts."""
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
