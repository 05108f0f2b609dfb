"""Cheaper and better draft heads for the drafters that exit the target early.

Two trained parts a model may ship next to its weights (see `find_part`):

* **Exit adapters** (after Kangaroo, arXiv 2404.18911): at exit layer E a small residual module
  maps the layer-E state so that the target's own final norm and LM head predict the *full*
  model's next token. It changes only the draft distribution q: the verifier never sees it and
  still reuses the exact KV and states of layers < E. File `exit_adapters.safetensors`, one
  adapter per exit (keys `exit{E}.*`), trained by `python -m specviz.train.train_adapters`.

      adapter(h) = h + W_down(silu(W_gate n) * W_up n),   n = RMSNorm(h)

  `W_down` starts at zero, so an untrained adapter is exactly the plain early exit.

* **A frequency-ranked vocabulary subset** (FR-Spec, 2025): a draft only needs the likely
  tokens, so the draft head scores the `size` tokens this model emits most often (counted over
  its own answers, file `vocab_rank.safetensors`) instead of all of them. The drafted token is
  the argmax over the subset, and q is 0 outside it; the verifier keeps the full head, so greedy
  output is unchanged and rejection sampling stays exact (p(x)/q(x) is only ever taken for an x
  that q proposed, and the residual max(0, p - q) keeps every token outside the subset).

`DraftHead` combines both: hidden state at an exit -> logits over the full vocabulary (-inf
outside the subset), the same shape `choose()` takes from the target's own head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..layers import CPUHead
from .registry import Option

ADAPTER_FILE = "exit_adapters.safetensors"
VOCAB_FILE = "vocab_rank.safetensors"
TRAIN_ADAPTERS = "python -m specviz.train.train_adapters"


def find_part(target: nn.Module, filename: str) -> Path | None:
    """A trained part of `target`: in its registry assets folder (set at load), else next to its
    weights (a local model folder), else None."""
    for folder in (getattr(target, "specviz_assets", None), getattr(target.config, "_name_or_path", None)):
        if folder and (Path(folder) / filename).is_file():
            return Path(folder) / filename
    return None


class ExitAdapter(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.gate = nn.Linear(hidden, inner, bias=False)
        self.up = nn.Linear(hidden, inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)
        nn.init.zeros_(self.down.weight)  # identity at start: the plain early exit

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        n = self.norm(hidden)
        return hidden + self.down(nn.functional.silu(self.gate(n)) * self.up(n))


def save_adapters(adapters: dict[int, ExitAdapter], path: Path, meta: dict[str, Any]) -> None:
    tensors = {f"exit{e}.{k}": v.detach().to(torch.float16).contiguous()
               for e, a in sorted(adapters.items()) for k, v in a.state_dict().items()}
    inner = {str(e): a.gate.out_features for e, a in adapters.items()}
    save_file(tensors, str(path), metadata={"inner": json.dumps(inner), "meta": json.dumps(meta)})


def load_adapters(path: Path, hidden: int, eps: float) -> dict[int, ExitAdapter]:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as fh:
        inner = {int(e): n for e, n in json.loads(fh.metadata()["inner"]).items()}
    tensors = load_file(str(path))
    adapters = {}
    for exit_layer, size in inner.items():
        adapter = ExitAdapter(hidden, size, eps)
        prefix = f"exit{exit_layer}."
        adapter.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
        adapters[exit_layer] = adapter.eval()
    return adapters


def adapter_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata().get("meta", "{}"))


def draft_model_vocab(draft_model: nn.Module) -> int:
    """The vocabulary size a draft model was distilled over (its `training_meta.json`), 0 if unknown:
    a draft trained over a subset must draft over that subset (its other logits were never trained)."""
    meta = Path(getattr(draft_model.config, "_name_or_path", "") or "") / "training_meta.json"
    return int(json.loads(meta.read_text()).get("train_vocab", 0)) if meta.is_file() else 0


def load_vocab_rank(path: Path) -> torch.Tensor:
    """Token ids, most frequent first."""
    return load_file(str(path))["rank"].long()


def subset_head(lm_head: nn.Module, tokens: torch.Tensor) -> nn.Linear:
    """The LM head's rows for `tokens` only (a frozen copy): one small matmul instead of the full head."""
    small = nn.Linear(lm_head.in_features, tokens.numel(), bias=lm_head.bias is not None,
                      device=lm_head.weight.device, dtype=lm_head.weight.dtype)
    index = tokens.to(lm_head.weight.device)
    with torch.no_grad():
        small.weight.copy_(lm_head.weight[index])
        if lm_head.bias is not None:
            small.bias.copy_(lm_head.bias[index])
    return small.requires_grad_(False)


class DraftHead:
    """hidden state at an exit -> draft logits [.., V] through the target's final norm and LM head,
    after an optional exit adapter, over an optional vocabulary subset (-inf elsewhere)."""

    def __init__(self, target: nn.Module, adapter: ExitAdapter | None = None, subset: torch.Tensor | None = None):
        self.norm, self.lm_head, self.adapter = target.model.norm, target.lm_head, adapter
        lm_head = target.lm_head
        device = lm_head.weight.device
        self.vocab = lm_head.weight.shape[0]
        self.subset = None if subset is None else subset.to(device)
        self.small_head = None if subset is None else subset_head(lm_head, self.subset)
        # the CPU's faster layouts of the head product (`CPUHead`), for either head
        self._product = CPUHead(target, "lm_head") if subset is None else CPUHead(self, "small_head")
        if adapter is not None:
            self.adapter = adapter.to(device=device, dtype=lm_head.weight.dtype)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.adapter is not None:
            hidden = self.adapter(hidden)
        small = self._product(self.norm(hidden))
        if self.subset is None:
            return small
        logits = small.new_full((*small.shape[:-1], self.vocab), float("-inf"))
        logits[..., self.subset] = small
        return logits

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.adapter is not None,
                "draft_vocab": 0 if self.subset is None else int(self.subset.numel())}


def draft_vocab_of(head: Any) -> int:
    """A drafter's `draft_vocab` setting as it runs: its DraftHead's subset size, 0 for every token."""
    return head.describe()["draft_vocab"] if isinstance(head, DraftHead) else 0


def check_draft_vocab(size: Any, vocab: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not (size == 0 or 1 <= size <= vocab):
        raise ValueError(f"draft_vocab must be 0 (auto: what the drafting part was trained over, else every token) "
                         f"or an integer in [1, {vocab}], got {size!r}")
    return size


def vocab_subset(target: nn.Module, draft_vocab: int, drafter: str) -> torch.Tensor | None:
    """The `draft_vocab` tokens `target` emits most (None for 0 or the whole vocabulary)."""
    vocab = target.lm_head.weight.shape[0]
    check_draft_vocab(draft_vocab, vocab)
    if draft_vocab in (0, vocab):
        return None
    path = find_part(target, VOCAB_FILE)
    if path is None:
        raise ValueError(f"{drafter}: draft_vocab={draft_vocab} needs the target's token ranking ({VOCAB_FILE}); "
                         f"set draft_vocab 0 for the full vocabulary, or build it with `{TRAIN_ADAPTERS} --vocab-only`")
    return load_vocab_rank(path)[:draft_vocab]


def frequent_vocab_head(target: nn.Module, draft_vocab: int, drafter: str) -> DraftHead | None:
    """The target's own final norm and LM head over its `draft_vocab` most frequent tokens
    (FR-Spec), for drafters whose draft has no trained part (layer skip); None: every token."""
    subset = vocab_subset(target, draft_vocab, drafter)
    return None if subset is None else DraftHead(target, None, subset)


ADAPTER_CHOICES = ("auto", "on", "off")


def build_head(target: nn.Module, exit_layer: int, adapter: str, draft_vocab: int, drafter: str) -> DraftHead:
    """The draft head an early-exiting drafter uses at `exit_layer`. `adapter`: "auto" uses the
    model's trained adapter for this exit when it has one, "on" requires it, "off" never. Raises
    ValueError naming the missing part when an option asks for one the model does not have."""
    if adapter not in ADAPTER_CHOICES:
        raise ValueError(f"{drafter}: adapter must be one of {', '.join(ADAPTER_CHOICES)}, got {adapter!r}")
    module = None
    path = find_part(target, ADAPTER_FILE) if adapter != "off" else None
    adapters = load_cached_adapters(path, target) if path else {}
    if adapter == "auto":
        module = adapters.get(exit_layer)
    elif adapter == "on":
        if exit_layer not in adapters:
            have = ", ".join(map(str, sorted(adapters))) or "none"
            raise ValueError(
                f"{drafter}: no trained exit adapter for exit layer {exit_layer} (this model has: {have}); "
                f"pick a layer that has one, set adapter off, or train one with `{TRAIN_ADAPTERS}`")
        module = adapters[exit_layer]
    if draft_vocab == 0 and module is not None:  # auto: the vocabulary the adapter was trained over
        draft_vocab = int(adapter_meta(path).get("train_vocab", 0))
    return DraftHead(target, module, vocab_subset(target, draft_vocab, drafter))


_ADAPTER_CACHE: dict[tuple[str, int], dict[int, ExitAdapter]] = {}


def load_cached_adapters(path: Path, target: nn.Module) -> dict[int, ExitAdapter]:
    """Adapters load once per file (a drafter is built per run)."""
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _ADAPTER_CACHE:
        cfg = target.config
        _ADAPTER_CACHE[key] = load_adapters(path, cfg.hidden_size, cfg.rms_norm_eps)
    return _ADAPTER_CACHE[key]


def adapter_option(default: str = "auto") -> Option:
    return Option("adapter", "choice", default,
                  "exit adapter: auto = the model's trained adapter for this exit when it has one; on = require; off",
                  flag="--adapter", label="exit adapter (trained; auto = when the model has one)",
                  choices=ADAPTER_CHOICES)


def draft_vocab_option(default: int = 0, zero: str = "auto") -> Option:
    """`zero`: what 0 means in the panel's label; a drafter with no trained part (layer skip)
    says "every token", since "auto" there can only mean that."""
    return Option("draft_vocab", "int", default,
                  "score only the N tokens this model emits most (FR-Spec); 0 = auto: the vocabulary the "
                  "drafting part was trained over (every token when none)",
                  flag="--draft-vocab", label=f"draft vocabulary: the N most frequent tokens (0 = {zero})",
                  minimum=0, maximum=65536, step=1024, capped_by_vocab=True,
                  info="fewer make each draft token cheaper; the others are never drafted, yet the output is "
                       "the same (the full model verifies over every token)")


def trained_adapters(target: nn.Module) -> dict[int, ExitAdapter]:
    """{exit layer: adapter} of the model's trained exit adapters ({} when it has none)."""
    path = find_part(target, ADAPTER_FILE)
    return dict(load_cached_adapters(path, target)) if path else {}
