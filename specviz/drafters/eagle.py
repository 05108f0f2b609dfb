"""EAGLE drafter (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty"): a one-layer head drafts at the level of the target's own features.

The target's last layer output before the final norm at position i, f_i, is what its LM head reads
to say token i + 1. The head learns to predict the next feature from a pair: the feature and the
token the target said after it (knowing the token removes the feature's uncertainty about it),

    g_i = layer( fc([embed(x_{i+1}); norm(f_i)]) )  ~  f_{i+1}      (one pair per position i)
    draft token after x_{i+1} = argmax lm_head(norm(g_i))            (over the draft vocabulary)

where `layer` is one decoder layer of the target's own kind with its own KV cache over the pairs,
and `embed`, `norm` and `lm_head` are the target's, shared and frozen: the head file holds only
`fc` and the layer. After a verification the committed positions have exact features (the verify
pass's last-layer states, `wants_states`), so the pairs of committed positions always use them;
only the draft's own later pairs use its predicted g (the cache rows of those are cropped at the
next proposal). A draft token costs one layer over one row plus the head over the draft vocabulary:
about 0.07 of a SmolLM2 step, against 0.9 for a layer-skip draft token.

Lossless: the verifier is the unchanged target. Greedy output equals `generate()`'s; sampling draws
each draft token from q (the head's distribution over the draft vocabulary, 0 elsewhere) and the
engine's rejection sampling keeps the target's distribution exactly.

Trained by `python -m specviz.train.train_eagle` on the target's own answers with their recorded
states; file `eagle_head.safetensors` in the model's assets (or next to its weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from ..layers import LayerRunner
from .base import DecodeState, Draft, DraftBuilder, VerifyResult, check_draft_length, check_threshold, choose
from .draft_heads import DraftHead, check_draft_vocab, draft_vocab_of, draft_vocab_option, find_part, vocab_subset
from .registry import Declaration, Option, confidence_threshold, draft_length, random_head_option

NAME = "eagle"
HEAD_FILE = "eagle_head.safetensors"
TRAIN_HINT = "python -m specviz.train.train_eagle --model MODEL"
# config keys a one-layer copy must not inherit (it re-derives them for one layer)
_PER_MODEL_KEYS = ("model_type", "layer_types", "quantization_config", "_name_or_path", "architectures")


def one_layer_model(target: nn.Module) -> nn.Module:
    """A causal LM of the target's kind with one decoder layer, the target's embeddings and LM
    head (shared, so nothing is copied) and no final norm of its own: its output is a pre-norm
    feature, like f. `LayerRunner` drives it with a cache like any model."""
    settings = {k: v for k, v in target.config.to_dict().items() if k not in _PER_MODEL_KEYS}
    config = AutoConfig.for_model(target.config.model_type, **{**settings, "num_hidden_layers": 1})
    impl = getattr(target.config, "_attn_implementation", None) or "sdpa"
    model = AutoModelForCausalLM.from_config(config, attn_implementation=impl)
    model.model.embed_tokens, model.lm_head = target.model.embed_tokens, target.lm_head
    model.model.norm = nn.Identity()
    param = next(target.parameters())
    return model.to(device=param.device, dtype=param.dtype).eval()


class EagleHead(nn.Module):
    """`fc` and one decoder layer (see the module docstring). `train_vocab`: the draft vocabulary
    it was trained over (the target's most frequent tokens; 0 = all)."""

    def __init__(self, target: nn.Module, train_vocab: int = 0):
        super().__init__()
        d = target.config.hidden_size
        self.train_vocab = train_vocab
        self.fc = nn.Linear(2 * d, d, bias=False)
        self.body = one_layer_model(target)
        self.fc.to(next(target.parameters()))
        self.norm, self.embed = target.model.norm, target.model.embed_tokens  # the target's, not stored

    @property
    def layer(self) -> nn.Module:
        return self.body.model.layers[0]

    def pair_inputs(self, features: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """[.., n, d] features and the [.., n] tokens after them -> the layer's inputs."""
        return self.fc(torch.cat([self.embed(next_ids), self.norm(features)], dim=-1))

    def own_state(self) -> dict[str, torch.Tensor]:
        """What the head file stores: fc and the layer (not the shared embeddings / head)."""
        return {"fc.weight": self.fc.weight, **{f"layer.{k}": v for k, v in self.layer.state_dict().items()}}

    def load_own_state(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = set(self.own_state())
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(f"not an EAGLE head for this model: missing {missing[:3]}, unexpected {extra[:3]}")
        ref = self.fc.weight
        with torch.no_grad():
            self.fc.weight.copy_(tensors["fc.weight"].to(ref))
            self.layer.load_state_dict({k[len("layer."):]: v.to(ref) for k, v in tensors.items() if k != "fc.weight"})


def save_eagle(head: EagleHead, path: Path, meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in head.own_state().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "specviz-eagle-1", "train_vocab": str(head.train_vocab),
                                           "hidden": str(head.fc.out_features), "meta": json.dumps(meta)})


def load_eagle(path: Path, target: nn.Module) -> EagleHead:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata() or {}
    if metadata.get("format") != "specviz-eagle-1":
        raise ValueError(f"{path} is not a specviz EAGLE head")
    if int(metadata["hidden"]) != target.config.hidden_size:
        raise ValueError(f"{path} was trained for hidden size {metadata['hidden']}, this model has "
                         f"{target.config.hidden_size}: train one for it (`{TRAIN_HINT}`)")
    head = EagleHead(target, int(metadata.get("train_vocab", 0)))
    head.load_own_state(load_file(str(path)))
    return head.eval()


def eagle_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return json.loads((fh.metadata() or {}).get("meta", "{}"))


def random_eagle(target: nn.Module, seed: int) -> EagleHead:
    """An untrained head (seeded, without touching the global RNG): tests, models without one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EagleHead(target).eval()


_LOADED: dict[tuple, EagleHead] = {}


def cached_eagle(path: Path, target: nn.Module) -> EagleHead:
    """One loaded head per file and target (a drafter is built per run)."""
    key = (str(path), path.stat().st_mtime_ns, id(target))
    if key not in _LOADED:
        if len(_LOADED) >= 4:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_eagle(path, target)
    return _LOADED[key]


class EagleDrafter:
    name = NAME
    wants_states = True

    def __init__(self, target: nn.Module, head: EagleHead, k: int = 3, threshold: float = 0.0,
                 draft_vocab: int = 0, source: str = ""):
        self.k = check_draft_length(k)
        self.threshold = check_threshold(threshold)
        self.eagle, self.source = head, source
        self.runner = LayerRunner(head.body, pack_linears=True)  # its layer's linears too (specviz.packed_linears)
        vocab = check_draft_vocab(draft_vocab, target.lm_head.weight.shape[0]) or head.train_vocab
        self.head = DraftHead(target, None, vocab_subset(target, vocab, NAME))
        self.cache = None
        self.fed = 0  # pairs in the head's cache: positions 0..fed-1
        self.exact = 0  # of those, the first `exact` use the target's own features
        # committed pairs not fed yet, oldest first: their exact features [n, d] and the tokens after
        # them (several verifications' worth when another drafter proposed in between)
        self.waiting: list[tuple[torch.Tensor, list[int]]] = []
        self.known = 0  # positions whose exact pair is fed or waiting

    def _feed(self, features: torch.Tensor, next_tokens: list[int]) -> torch.Tensor:
        """Run the layer over pairs at positions fed.. and return g of the last one ([d])."""
        ids = torch.tensor([next_tokens], device=self.runner.device)
        inputs = self.eagle.pair_inputs(features[None].to(self.runner.dtype), ids)
        out = self.runner.forward(inputs, range(1), self.fed, self.cache)
        self.fed += len(next_tokens)
        return out.hidden[0, -1]

    def start(self, state: DecodeState, states: list[torch.Tensor] | None) -> None:
        if states is None:
            raise RuntimeError("the eagle drafter needs the prefill's states (wants_states=True)")
        self.cache, self.fed, self.exact = self.runner.new_cache(), 0, 0
        prompt_features = states[-1]  # [T, d], position i predicts tokens[i + 1]
        self.waiting = [(prompt_features, list(state.tokens[1:prompt_features.shape[0] + 1]))]
        self.known = prompt_features.shape[0]

    @torch.inference_mode()
    def propose(self, state: DecodeState) -> Draft:
        builder = DraftBuilder(min(self.k, state.max_draft), self.threshold, state.eos_token_ids)
        if builder.done:  # no room to draft: the waiting pairs wait for a proposal that drafts
            return builder.build(state.sampling)
        # the committed pairs first (their exact features), replacing the last draft's own pairs
        self.runner.crop(self.cache, self.exact)
        self.fed = self.exact
        features = torch.cat([f for f, _ in self.waiting])
        hidden = self._feed(features, [t for _, tokens in self.waiting for t in tokens])
        self.exact, self.waiting = self.fed, []
        if self.exact != state.pending_position:
            raise RuntimeError(f"eagle: {self.exact} exact pairs for pending position {state.pending_position}")
        while not builder.done:
            if not builder.offer(choose(self.head(hidden).float(), state.sampling, state.generator)):
                break
            hidden = self._feed(hidden[None], [builder.tokens[-1]])  # its own feature: the next pair
        info = ({"head": "eagle", "head_weights": self.weights_text(), "draft_vocab": draft_vocab_of(self.head)}
                if state.record else None)
        return builder.build(state.sampling, info=info)

    def observe(self, result: VerifyResult) -> None:
        if result.states is None:
            raise RuntimeError("the eagle drafter needs the verify pass's states (wants_states=True)")
        # rows 0..accepted are the pending token and the accepted drafts: positions exact.. with
        # exact features; each is paired with the token committed after it
        rows = min(result.accepted + 1, len(result.tokens) - 1 - self.known)
        self.waiting.append((result.states[-1][:rows], list(result.tokens[self.known + 1:self.known + 1 + rows])))
        self.known += rows

    def weights_text(self) -> str:
        """Trained or random, for the step view: an untrained head drafts near chance."""
        if self.source.startswith("random"):
            return f"{self.source}: untrained, so its drafts are rarely right"
        return f"trained ({Path(self.source).name})" if self.source else "trained"

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "threshold": self.threshold, "draft_vocab": draft_vocab_of(self.head),
                "head_file": self.source}


def build(target, k: int = 3, threshold: float = 0.0, draft_vocab: int = 0, path: str | None = None,
          random_head: bool = False, seed: int = 0) -> EagleDrafter:
    if not isinstance(random_head, bool):
        raise ValueError(f"random_head must be true or false, got {random_head!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if random_head:
        if path is not None:
            raise ValueError("pass either path (a trained head) or random_head=True, not both")
        return EagleDrafter(target, random_eagle(target, seed), k, threshold, draft_vocab, f"random (seed {seed})")
    found = Path(path) if path is not None else find_part(target, HEAD_FILE)
    if found is None or not found.is_file():
        where = f"{path} does not exist" if path is not None else f"this model has no {HEAD_FILE}"
        raise ValueError(f"drafter 'eagle' needs a trained EAGLE head ({where}): train one with `{TRAIN_HINT}`, "
                         "or use random_head=True for an untrained head")
    return EagleDrafter(target, cached_eagle(found, target), k, threshold, draft_vocab, str(found))


def _needs(options: dict[str, Any]) -> str | None:
    return None if options.get("path") or options.get("random_head") else "eagle-head"


DRAFTER = Declaration(
    NAME, "EAGLE head",
    "One trained layer drafts from the target's own last hidden state and the token it just said, one cheap "
    "step per draft token.",
    build,
    (draft_length(3),
     confidence_threshold(0.0),
     draft_vocab_option(),
     random_head_option(),
     Option("path", "text", None, f"a trained head file ({HEAD_FILE})"),
     Option("seed", "int", 0, "seed of the random head")),
    needs="eagle-head", needs_for=_needs)
