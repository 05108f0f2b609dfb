"""CTC drafter (after CTC-drafter, Wen, Gui & Feng, NeurIPS 2024): a small draft head over the base
model's own hidden states that emits F frames over vocabulary + blank in ONE pass; CTC decoding
(collapse repeats, drop blanks) turns the frames into a draft of up to k tokens.

Options (`make_drafter("ctc", model, **options)`): `head` "ctc" (default) | "medusa"; `k` max draft
length, 1..64 (default 5 = the bundled heads' training length); `threshold` in [0, 1] (stop before a
token whose frame probability is below it; 0 = off); `path` a head file (default
`<model folder>/ctc_head.safetensors` or `medusa_head.safetensors`, written by
`python -m specviz.train.train_ctc`); `random_head` True for an untrained, seeded head (tests, models
without a trained head); `seed` for that head.

Head (`DraftHead`, ~0.94 M parameters for the bundled model, stored fp16):

    feature_i = FC([embed(token_{i+1}); norm(h_i)]) + slot_i      for the last W committed positions i
    query_j   = feature_newest + frame_j                          for frames j = 1..F
    x         = one pre-norm transformer layer over [features; queries]
                (features see the valid features; every query sees all features and all queries,
                 so the frames are produced together, non-autoregressively)
    logits_j  = [lm_head(norm_out(x_query_j)); blank(x_query_j)]  over V + 1 classes (blank = V)

`h_i` is the base model's last-layer output (pre final norm) at position i, `token_{i+1}` the
token committed after it (EAGLE's pairing); `norm`, `embed` and `lm_head` are the base model's own,
frozen and shared, so the head file stores only the head. The newest pair is (state of the last
accepted token, the pending token). The states come for free: the drafter sets `wants_states`,
reads row 0..accepted of the verify pass's last-layer states in `observe` (and the prefill's last
token in `start`) and keeps the last W of them, so drafting costs one head pass and no extra
base-model forward.

Two heads share this architecture and this drafter (`head=` option):

* `"ctc"`: F frames (10 for the bundled head, L = 5 label tokens) trained with a CTC loss against
  the base model's greedy continuation. Decoding is best-path: argmax per frame, merge adjacent repeats, drop blanks.
  The draft can therefore be shorter than F (blanks) and a repeat needs a blank between its copies.
* `"medusa"`: the control of the paper. F frames trained with per-position cross-entropy (frame i
  predicts continuation token i, no blank, no collapse), i.e. Medusa-style heads of the same
  capacity.

Positions. The public CTC-drafter code collapses candidate paths but keeps the depth-based RoPE
positions of the uncollapsed tree (`medusa_position_ids`), so a token after a removed blank or
repeat is verified at a position that counts the removed node. Here the collapsed draft is a chain,
and its positions are recomputed from the collapsed index: position(draft[i]) = pending position
+ 1 + i (`draft_positions`), never from the frame index the token came from. The engine verifies
[pending, *draft] at consecutive positions, which is exactly this.

Lossless sampling. Draft tokens are deterministic functions of the frames (argmax, collapse), so
the draft distribution q is a one-hot on each token: `Draft.probs = None`, which the engine's
rejection sampler treats as exactly that (accept x with probability p(x), on rejection resample from
norm(max(0, p - onehot(x)))). That is exactly lossless. Sampling from the frames instead would not
give a usable per-token q (a collapsed token's probability sums over alignments), so we don't.
`Draft.token_probs` is therefore 1.0 per token (the q the accept rule uses); the frame
probabilities are in the trace info.

Trace info (`Draft.info` when `state.record`):

* `head`: "ctc" or "medusa"
* `frames`: one dict per frame: `{"token": id or None (blank), "blank": bool, "p": top probability,
  "alt": best non-blank token id, "kept": index in `collapsed` or None}` (`kept` is set on the
  first frame of each surviving run), `"used"`: whether that token is in the proposed draft (False
  for tokens past the cut: k, EOS or the threshold)
* `token_frame_p`: per proposed token, the frame probability it came from (the UI shows it next
  to the one-hot q, so that q = 1 beside p = 0 reads as what it is)
* `collapsed`: the collapsed draft before truncation to k (and before the EOS / threshold cuts)
* `positions`: absolute positions of the proposed draft tokens
* `cut`: why the draft ended: "k" (length limit), "eos", "threshold" or "frames" (all used)
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import CPUHead
from .base import DecodeState, Draft, VerifyResult, check_draft_length, check_threshold
from .draft_heads import find_part, subset_head, vocab_subset
from .registry import Declaration, Option, confidence_threshold, draft_length, random_head_option

NAME = "ctc"
HEADS = ("ctc", "medusa")
HEAD_FILES = {"ctc": "ctc_head.safetensors", "medusa": "medusa_head.safetensors"}
TRAIN_HINT = "python -m specviz.train.train_ctc --head {head} --model {model}"


# ------------------------------------------------------------------------------------------------
# the head


@dataclass
class HeadConfig:
    kind: str  # "ctc" or "medusa"
    hidden: int  # base model hidden size
    vocab: int  # classes before the blank: the base vocabulary, or the subset size (the blank is class `vocab`)
    frames: int  # F: frames emitted per pass
    label_len: int  # continuation tokens the head was trained to emit
    window: int = 8  # W: recent (state, next token) pairs attended to
    layers: int = 1
    heads: int = 4
    ffn: int = 704
    eps: float = 1e-5
    # > 0: the classes are the model's `vocab` most frequent tokens (its ranking, `draft_heads.VOCAB_FILE`),
    # scored with those rows of the LM head only (FR-Spec); 0: the whole vocabulary
    subset: int = 0

    def __post_init__(self):
        if self.kind not in HEADS:
            raise ValueError(f"head kind must be one of {HEADS}, got {self.kind!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")

    @property
    def blank(self) -> int | None:
        return self.vocab if self.kind == "ctc" else None

    @property
    def classes(self) -> int:
        return self.vocab + (1 if self.kind == "ctc" else 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HeadConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class _Block(nn.Module):
    """Pre-norm transformer layer (Llama-style: RMSNorm, MHA without bias, SwiGLU MLP)."""

    def __init__(self, d: int, heads: int, ffn: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(d, eps=eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.norm2 = nn.RMSNorm(d, eps=eps)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o(a.transpose(1, 2).reshape(b, n, d))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class DraftHead(nn.Module):
    """Frames over vocabulary (+ blank) from the last W (state, next token) pairs. Only the head's
    own parameters live here; the base model's embedding, final norm and LM head are passed in."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.fc = nn.Linear(2 * d, d, bias=False)
        self.slot = nn.Parameter(torch.zeros(cfg.window, d))
        self.query = nn.Parameter(torch.randn(cfg.frames, d) * 0.02)
        self.blocks = nn.ModuleList(_Block(d, cfg.heads, cfg.ffn, cfg.eps) for _ in range(cfg.layers))
        self.out_norm = nn.RMSNorm(d, eps=cfg.eps)
        self.blank = nn.Linear(d, 1) if cfg.kind == "ctc" else None

    def forward(self, hidden: torch.Tensor, next_emb: torch.Tensor, valid: torch.Tensor, base_norm: nn.Module,
                lm_head: nn.Module) -> torch.Tensor:
        """hidden [B, W, d] (pre-norm last-layer states, oldest first, newest at W-1),
        next_emb [B, W, d] (embedding of the token after each state), valid [B, W] bool (left
        padding False; the newest slot must be valid) -> logits [B, F, classes]."""
        cfg = self.cfg
        b, w, _ = hidden.shape
        ctx = self.fc(torch.cat([next_emb, base_norm(hidden)], dim=-1)) + self.slot[-w:]
        queries = ctx[:, -1:] + self.query
        x = torch.cat([ctx, queries], dim=1)
        n = w + cfg.frames
        keys = torch.cat([valid, torch.ones(b, cfg.frames, dtype=torch.bool, device=valid.device)], dim=1)
        mask = keys[:, None, :].expand(b, n, n).clone()
        mask[:, :w, w:] = False  # the context does not look at the frames
        mask = mask[:, None]  # [B, 1, N, N], True = attend
        for block in self.blocks:
            x = block(x, mask)
        out = x[:, w:]
        logits = lm_head(self.out_norm(out))
        if self.blank is not None:
            logits = torch.cat([logits, self.blank(out).to(logits.dtype)], dim=-1)
        return logits


def default_config(kind: str, hidden: int, vocab: int, **overrides) -> HeadConfig:
    """The bundled heads' shape, scaled to a model's hidden size (used for random heads and training)."""
    label_len = overrides.pop("label_len", 5)
    frames = overrides.pop("frames", 2 * label_len if kind == "ctc" else label_len)
    heads = overrides.pop("heads", max(1, hidden // 64))
    ffn = overrides.pop("ffn", int(hidden * 2.75))
    return HeadConfig(kind=kind, hidden=hidden, vocab=vocab, frames=frames, label_len=label_len, heads=heads,
                      ffn=ffn, **overrides)


def init_head(cfg: HeadConfig, base_norm_weight: torch.Tensor | None = None, seed: int = 0) -> DraftHead:
    """A freshly initialised head (seeded, without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = DraftHead(cfg)
    if base_norm_weight is not None:
        with torch.no_grad():
            head.out_norm.weight.copy_(base_norm_weight.detach().float().cpu())
    return head


def save_head(head: DraftHead, path: str | Path, meta: dict[str, Any] | None = None,
              dtype: torch.dtype = torch.float16) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in head.state_dict().items()}
    metadata = {"config": head.cfg.to_json(), "format": "specviz-draft-head-1"}
    if meta:
        metadata["meta"] = json.dumps(meta, sort_keys=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_head(path: str | Path, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[DraftHead, dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if "config" not in metadata:
            raise ValueError(f"{path} is not a specviz draft head (no config in its metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = HeadConfig.from_json(metadata["config"])
    head = DraftHead(cfg)
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    meta = json.loads(metadata["meta"]) if "meta" in metadata else {}
    return head.to(device=device, dtype=dtype).eval(), meta


def base_fingerprint(model_dir: str | Path) -> str:
    """sha256 (16 hex) over a model folder's weight files: ties a head to the base it was trained on."""
    files = sorted(Path(model_dir).glob("model*.safetensors"))
    return _fingerprint(tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))


@functools.lru_cache(maxsize=8)
def _fingerprint(files: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        h.update(Path(name).name.encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16] if files else ""


# ------------------------------------------------------------------------------------------------
# decoding


def ctc_collapse(frame_tokens: list[int], blank: int | None) -> tuple[list[int], list[int]]:
    """Best-path CTC decoding: merge adjacent repeats, then drop blanks.

    Returns (tokens, source frame of each token: the first frame of its run). A token repeated
    across a blank (a _ a) survives twice; `blank=None` (Medusa frames) keeps every frame.
    """
    if blank is None:
        return list(frame_tokens), list(range(len(frame_tokens)))
    tokens, sources = [], []
    previous = None
    for i, tok in enumerate(frame_tokens):
        if tok != previous and tok != blank:
            tokens.append(tok)
            sources.append(i)
        previous = tok
    return tokens, sources


def draft_positions(pending_position: int, length: int) -> list[int]:
    """Absolute positions of a collapsed chain draft: pending + 1 + index in the collapsed draft
    (not the frame index: blanks and merged repeats take no position)."""
    return [pending_position + 1 + i for i in range(length)]


def cut_draft(tokens: list[int], confidences: list[float], limit: int, threshold: float,
              eos: frozenset[int]) -> tuple[list[int], str]:
    """Truncate a collapsed draft: stop before a token below `threshold`, after an EOS, at `limit`."""
    out: list[int] = []
    for tok, conf in zip(tokens, confidences):
        if len(out) >= limit:
            return out, "k"
        if conf < threshold:
            return out, "threshold"
        out.append(tok)
        if tok in eos:
            return out, "eos"
    return out, ("k" if len(out) >= limit else "frames")


# ------------------------------------------------------------------------------------------------
# the drafter


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class CTCDrafter:
    name = NAME
    wants_states = True

    def __init__(self, target, head: str = "ctc", k: int = 5, threshold: float = 0.0, path: str | None = None,
                 random_head: bool = False, seed: int = 0):
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(repr(h) for h in HEADS)}, got {head!r}")
        self.kind = head
        self.k = check_draft_length(k)
        self.threshold = check_threshold(threshold)
        self.random_head = _check_bool("random_head", random_head)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
            raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
        self.seed = seed
        if path is not None and not isinstance(path, (str, Path)):
            raise ValueError(f"path must be a path to a {HEAD_FILES[head]} file, got {path!r}")
        if path is not None and random_head:
            raise ValueError("pass either path (a trained head) or random_head=True, not both")

        base = target.model
        self.embed, self.norm, self.lm_head = base.embed_tokens, base.norm, target.lm_head
        self.head_product = CPUHead(self, "lm_head")  # reads self.lm_head (a subset head below) at each call
        param = next(target.parameters())
        self.device, self.dtype = param.device, param.dtype
        hidden, vocab = target.config.hidden_size, target.config.vocab_size

        self.meta: dict[str, Any] = {}
        self.class_tokens: torch.Tensor | None = None  # class -> token id, for a head over a vocabulary subset
        if random_head:
            self.path = None
            self.head = init_head(default_config(head, hidden, vocab), base.norm.weight, seed)
            self.head = self.head.to(self.device, self.dtype).eval()
        else:
            self.path = self._resolve(target, head, path)
            self.head, self.meta = load_head(self.path, self.device, self.dtype)
            cfg = self.head.cfg
            if cfg.kind != head:
                raise ValueError(f"head={head!r} but {self.path} holds a {cfg.kind!r} head")
            if cfg.subset:
                self.class_tokens = vocab_subset(target, cfg.subset, NAME)
                self.lm_head = subset_head(target.lm_head, self.class_tokens)
                vocab = cfg.vocab
            if (cfg.hidden, cfg.vocab) != (hidden, vocab):
                raise ValueError(
                    f"{self.path} was trained for hidden size {cfg.hidden} / vocab {cfg.vocab}, but this "
                    f"model has {hidden} / {vocab}: train a head for it ({TRAIN_HINT.format(head=head, model='DIR')})"
                )
            self._check_base(target)
        self.cfg = self.head.cfg
        self.states: torch.Tensor | None = None  # [n <= W, d] last-layer states of committed tokens
        self.next_tokens: list[int] = []  # the token committed after each of those states
        self._pending_position = 0

    def _check_base(self, target) -> None:
        """Warn (drafts stay lossless, only acceptance suffers) when the head was trained on other weights."""
        trained_on = self.meta.get("base_sha256")
        source = getattr(target.config, "_name_or_path", "") or ""
        if not trained_on or not source or not Path(source).is_dir():
            return
        current = base_fingerprint(source)
        if current and current != trained_on:
            warnings.warn(
                f"{self.path} was trained on base weights {trained_on}, but {source} holds {current}: "
                "acceptance will be poor until the head is retrained "
                f"({TRAIN_HINT.format(head=self.kind, model=source)})",
                stacklevel=3,
            )

    @staticmethod
    def _resolve(target, head: str, path) -> Path:
        filename = HEAD_FILES[head]
        if path is not None:
            resolved = Path(path)
            if not resolved.is_file():
                raise ValueError(
                    f"head file {resolved} does not exist: train it with "
                    f"`{TRAIN_HINT.format(head=head, model='MODEL_DIR')} --export {resolved}`"
                )
            return resolved
        found = find_part(target, filename)
        if found is None:
            raise ValueError(
                f"drafter 'ctc' needs a trained {head} head ({filename}), and this model has none next to its "
                f"weights or in its assets: train one with `{TRAIN_HINT.format(head=head, model='MODEL')}`, "
                "pass path=FILE, or random_head=True for an untrained head"
            )
        return found

    # -- protocol ------------------------------------------------------------------------------
    def start(self, state: DecodeState, states: list[torch.Tensor] | None) -> None:
        if states is None:
            raise RuntimeError("the ctc drafter needs the prefill's states (wants_states=True)")
        self.states = states[-1][-1:].detach()
        self.next_tokens = [state.tokens[-1]]

    @torch.inference_mode()
    def frame_logits(self) -> torch.Tensor:
        """Run the head on the current window -> logits [F, classes] (fp32)."""
        w = self.cfg.window
        n = self.states.shape[0]
        d = self.cfg.hidden
        hidden = torch.zeros(1, w, d, device=self.device, dtype=self.dtype)
        hidden[0, w - n:] = self.states
        ids = torch.zeros(1, w, dtype=torch.long, device=self.device)
        ids[0, w - n:] = torch.tensor(self.next_tokens, device=self.device)
        valid = torch.zeros(1, w, dtype=torch.bool, device=self.device)
        valid[0, w - n:] = True
        logits = self.head(hidden, self.embed(ids), valid, self.norm, self.head_product)
        return logits[0].float()

    def propose(self, state: DecodeState) -> Draft:
        self._pending_position = state.pending_position
        limit = min(self.k, state.max_draft)
        if limit <= 0:
            return Draft(tokens=[])
        logits = self.frame_logits()
        probs = logits.softmax(-1)
        top_p, top = probs.max(-1)
        frame_tokens = top.tolist()  # classes: token ids, or indices into the subset of a subset head
        frame_p = top_p.tolist()
        is_blank = [t == self.cfg.blank for t in frame_tokens]
        collapsed, sources = ctc_collapse(frame_tokens, self.cfg.blank)  # in class space: the blank is distinct
        if self.class_tokens is not None:
            collapsed = self.class_tokens[collapsed].tolist()
            frame_tokens = [t if t == self.cfg.blank else int(self.class_tokens[t]) for t in frame_tokens]
        tokens, cut = cut_draft(collapsed, [frame_p[s] for s in sources], limit, self.threshold,
                                state.eos_token_ids)
        info: dict[str, Any] = {}
        if state.record:
            blank = self.cfg.blank
            if blank is not None:
                alt = probs[:, :self.cfg.vocab].argmax(-1)
                alt = (self.class_tokens[alt] if self.class_tokens is not None else alt).tolist()
            else:
                alt = frame_tokens
            kept = {s: i for i, s in enumerate(sources)}
            info = {
                "head": self.kind,
                "frames": [
                    {"token": None if blank_frame else t, "blank": blank_frame, "p": round(p, 4),
                     "alt": a, "kept": kept.get(i), "used": kept.get(i) is not None and kept[i] < len(tokens)}
                    for i, (t, blank_frame, p, a) in enumerate(zip(frame_tokens, is_blank, frame_p, alt))
                ],
                # the head's confidence in each proposed token (q itself is one-hot, see above)
                "token_frame_p": [round(frame_p[sources[i]], 4) for i in range(len(tokens))],
                "collapsed": collapsed,
                "positions": draft_positions(state.pending_position, len(tokens)),
                "cut": cut,
            }
        return Draft(tokens=tokens, probs=None, token_probs=[1.0] * len(tokens), info=info)

    def observe(self, result: VerifyResult) -> None:
        if result.states is None:
            raise RuntimeError("the ctc drafter needs the verify pass's states (wants_states=True)")
        last = result.states[-1]  # [k+1, d]: rows 0..accepted are committed tokens
        start = self._pending_position
        rows = [r for r in range(result.accepted + 1) if start + r + 1 < len(result.tokens)]
        if not rows:
            return
        new_states = last[: len(rows)].detach()
        new_next = [result.tokens[start + r + 1] for r in rows]
        w = self.cfg.window
        self.states = torch.cat([self.states, new_states], dim=0)[-w:]
        self.next_tokens = (self.next_tokens + new_next)[-w:]

    def settings(self) -> dict[str, Any]:
        return {
            "head": self.kind, "k": self.k, "threshold": self.threshold, "frames": self.cfg.frames,
            "window": self.cfg.window,
            "head_file": str(self.path) if self.path else f"random (seed {self.seed})",
        }


def build(target, **options) -> CTCDrafter:
    return CTCDrafter(target, **options)


def _needs(options: dict[str, Any]) -> str | None:
    """The trained head the `head` option names, unless a head file or a random head is asked for."""
    if options.get("path") or options.get("random_head"):
        return None
    return f"{options.get('head', 'ctc')}-head"


DRAFTER = Declaration(
    NAME, "CTC drafter",
    "A small head over the last hidden state emits several frames at once; CTC collapses repeats and blanks "
    "into the draft.",
    build,
    (Option("head", "choice", "ctc", "which trained head, 'ctc' or 'medusa'", flag="--head", label="head",
            choices=HEADS, info="ctc: trained with a CTC loss · medusa: per-position heads (the paper's control)"),
     draft_length(5, ui_default=6),
     confidence_threshold(0.0, info="the draft ends before a token whose frame probability is below this "
                                    "(that token is dropped, not verified)"),
     random_head_option(),
     Option("path", "text", None, f"a trained head file ({', '.join(HEAD_FILES.values())})"),
     Option("seed", "int", 0, "seed of the random head")),
    needs="ctc-head", needs_for=_needs)


__all__ = ["NAME", "DRAFTER", "build", "CTCDrafter", "DraftHead", "HeadConfig", "ctc_collapse", "draft_positions",
           "cut_draft", "default_config", "init_head", "load_head", "save_head"]
