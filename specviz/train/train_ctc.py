"""Train the CTC draft head (and its Medusa-style control) by distillation from the bundled model.

Usage (after the base model exists in ``assets/models/specviz-tiny``)::

    python -m specviz.train.train_ctc --head both --model assets/models/specviz-tiny --minutes 10
    python -m specviz.train.train_ctc --head ctc  --minutes 10 --resume          # continue a run
    python -m specviz.train.train_ctc --head both --device cuda --windows 4000 --minutes 4
    python -m specviz.train.train_ctc --card assets/models/specviz-tiny           # write CTC_HEAD.md

What is trained (see ``specviz/drafters/ctc.py`` for the head):

* Data: random windows of ``--seq`` tokens from ``<data>/train.u16.npy`` (the stdlib training split;
  offsets from a generator seeded with ``--seed``). The frozen base model runs each window once and
  then continues greedily from every ``--context-stride``-th position of the window at once (one
  extra pass per continuation token; continuation j of position t attends to the window's prefix
  <= t and its own first j-1 continuation tokens, with RoPE position t + j; checked against
  ``generate()`` in tests/test_ctc.py), giving for each context x_0..x_t: the last-layer
  state h_t (pre final norm, exactly what the engine hands the drafter) and the base model's own
  greedy continuation g_1..g_{L+1}. These are precomputed once and cached under ``<out>/data/``,
  shared by both heads. Validation data come from ``val.u16.npy`` (training files set aside by path
  hash; used to pick the best checkpoint) and held-out data from ``heldout.u16.npy`` (the held-out
  stdlib modules; used only for the final report).
* A sample is context t of a window: the last W (state, next token) pairs, where the newest pair is
  (h_t, g_1) (g_1 = the pending token greedy decoding would have) and older pairs are (h_i, x_{i+1});
  with probability ``--truncate-prob`` only the newest n ~ U{1..W} pairs are kept (at generation
  start the drafter has seen only the prompt's last state). The labels are g_2..g_{L+1}: what the
  base model itself would say next, so the loss trains exactly what greedy verification accepts.
  Labels stop after an EOS; contexts whose pending token is EOS are skipped.
* ``--head ctc``: loss = CTC(frames, labels) with blank = vocab size (``nn.CTCLoss``, per-sample loss
  divided by label length, ``zero_infinity``). No soft-CE / feature terms: the public CTC-drafter adds
  SmoothL1 feature regression and soft-CE because its drafter feeds its own features back
  autoregressively (EAGLE-style); ours is one non-autoregressive pass, so they have nothing to
  regularise (``--aux-ce W`` optionally adds a per-position CE on the first frame's best non-blank
  token vs g_2; off by default and off for the bundled heads).
* ``--head medusa``: the control: the same architecture and data, F = L frames without a blank,
  loss = mean per-position cross-entropy (frame i -> g_{i+1}).
* Both: base model frozen (its embedding, final norm and LM head are reused by the head, never
  updated), AdamW (0.9, 0.95), linear warm-up then cosine decay to ``--min-lr-ratio``; the schedule
  follows the larger of step/``--steps`` and elapsed/``--minutes``. Batches are drawn from a
  generator seeded with (seed, step), so ``--resume`` (from ``<out>/<head>/ckpt.pt``) sees the same
  batches. The best checkpoint by offline validation tau is exported as fp16 safetensors.
* Offline tau: greedy draft from the frames (argmax, collapse, at most k = L tokens, cut after EOS)
  vs the labels: accepted = longest matching prefix, tau = 1 + mean accepted: the expected tokens
  per verification of the engine in greedy mode (bonus token included) for such contexts.

CPU by default; ``--device cuda`` (or ``auto``) when a GPU is available. Progress lines show the
loss, label tokens/s (samples/s x L) and the elapsed time.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..drafters.ctc import (HEAD_FILES, DraftHead, HeadConfig, base_fingerprint, ctc_collapse, default_config,
                            init_head, load_head, save_head)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "assets" / "models" / "specviz-tiny"
DEFAULT_DATA = ROOT / ".train_data"
DEFAULT_OUT = ROOT / ".train_data" / "runs" / "ctc_heads"


def log(msg: str, fh=None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


# ------------------------------------------------------------------------------------------------
# base-model distillation data


def _as_mask(visible: torch.Tensor, model) -> torch.Tensor:
    """bool [B, 1, Q, K] (True = attend) -> what the model's attention kernel expects."""
    if model.config._attn_implementation == "sdpa":
        return visible
    dtype = next(model.parameters()).dtype
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)


@torch.no_grad()
def parallel_greedy(model, windows: torch.Tensor, steps: int,
                    contexts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's greedy continuation after x_0..x_t for many positions t of every window.

    windows [B, T]; contexts: ascending positions t to continue from (default: all T).
    Returns (states [B, T, d]: last-layer output (pre final norm) at every position,
    greedy [B, C, steps + 1]: g_1 = argmax at t, then g_2.. continuing on its own tokens).
    Continuation step j of all C contexts runs as one pass of C tokens with a block mask (token j of
    context t sees the window's prefix <= t and its own chain, at RoPE position t + j), so the cost is
    one window pass plus `steps` passes of C tokens instead of C separate generations.
    """
    from transformers import DynamicCache

    base = model.model
    b, t_len = windows.shape
    device = windows.device
    if contexts is None:
        contexts = torch.arange(t_len, device=device)
    c = contexts.shape[0]
    cache = DynamicCache(config=model.config)
    pos = torch.arange(t_len, device=device)[None].expand(b, t_len)
    causal = torch.ones(t_len, t_len, dtype=torch.bool, device=device).tril()
    eye = torch.eye(c, dtype=torch.bool, device=device)

    def run(ids, positions, visible):
        h = base.embed_tokens(ids)
        rope = base.rotary_emb(h, position_ids=positions)
        mask = _as_mask(visible[None, None].expand(b, 1, *visible.shape), model)
        for layer in base.layers:
            h = layer(h, attention_mask=mask, position_embeddings=rope, position_ids=positions,
                      past_key_values=cache, use_cache=True)
        return h

    hidden = run(windows, pos, causal)
    tok = model.lm_head(base.norm(hidden[:, contexts])).argmax(-1)
    out = [tok]
    prefix = causal[contexts]  # [C, T]
    chain_pos = contexts[None].expand(b, c)
    for j in range(1, steps + 1):
        visible = torch.cat([prefix] + [eye] * j, dim=1)  # prefix <= t, then own chain tokens 1..j
        h = run(tok, chain_pos + j, visible)
        tok = model.lm_head(base.norm(h)).argmax(-1)
        out.append(tok)
    return hidden, torch.stack(out, dim=-1)


def make_offsets(n_tokens: int, n: int, seq: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_tokens - seq - 1, size=n)


def build_data(model, tokens: np.ndarray, n_windows: int, seq: int, steps: int, seed: int, batch: int,
               device: torch.device, budget_s: float | None, label: str, stride: int = 1, fh=None) -> dict:
    """Precompute states + greedy continuations of `n_windows` random windows (stops early at budget).

    Contexts are every `stride`-th position of a window (random phase per batch); G holds -1 at the
    other positions."""
    offsets = make_offsets(len(tokens), n_windows, seq, seed)
    rng = np.random.default_rng(seed + 7)
    states, xs, gs = [], [], []
    t0 = time.time()
    done = passes = 0
    for i in range(0, n_windows, batch):
        chunk = offsets[i:i + batch]
        x = torch.from_numpy(np.stack([tokens[o:o + seq].astype(np.int64) for o in chunk])).to(device)
        ctx = torch.arange(int(rng.integers(0, stride)), seq, stride, device=device)
        h, g = parallel_greedy(model, x, steps, ctx)
        full = torch.full((len(chunk), seq, steps + 1), -1, dtype=torch.int32, device=device)
        full[:, ctx] = g.to(torch.int32)
        states.append(h.to(torch.float16))
        xs.append(x.to(torch.int32))
        gs.append(full)
        done += len(chunk)
        passes += len(chunk) * (seq + steps * len(ctx))
        elapsed = time.time() - t0
        log(f"data[{label}] windows {done}/{n_windows}  contexts {done * len(ctx)}  base tok/s "
            f"{passes / max(elapsed, 1e-9):,.0f}  elapsed {elapsed:.0f}s", fh)
        if budget_s is not None and elapsed > budget_s and done < n_windows:
            log(f"data[{label}] budget reached: keeping {done} windows", fh)
            break
    return {"H": torch.cat(states), "X": torch.cat(xs), "G": torch.cat(gs),
            "meta": {"windows": done, "seq": seq, "steps": steps, "seed": seed, "stride": stride,
                     "offsets": offsets[:done].tolist(),
                     "seconds": time.time() - t0}}


def shard_windows(folder: Path, class_index: torch.Tensor | None, eos: int, label_len: int, window: int) -> dict:
    """The self-distillation shards (`specviz.train.selfdistill`) as this script's window data.

    A window is one answer plus the `window` prompt tokens before it: H its last-layer states, X its
    token ids, G[t] = (g_1 = the token after t, then the next `label_len + 1` answer tokens as
    classes). The answers are the target's own greedy continuations, so no extra pass is needed.
    Contexts are usable from the last prompt token on, when every label before the first EOS is
    known (the answer did not stop at --max-new first) and inside the head's classes."""
    from .train_adapters import load_shards

    data = load_shards(folder, ["ids", "last", "lengths", "prompt_lengths"])
    lengths, prompts = data["lengths"].tolist(), data["prompt_lengths"].tolist()
    eos_class = int(class_index[eos]) if class_index is not None else eos
    windows, offset = [], 0
    for n, p in zip(lengths, prompts):
        start = max(0, p - window)
        ids = data["ids"][offset + start: offset + n].long()
        states = data["last"][offset + start: offset + n]
        offset += n
        m = ids.numel()
        g = torch.full((m, label_len + 2), -1, dtype=torch.long)
        classes = class_index[ids] if class_index is not None else ids
        for u in range(p - 1 - start, m - 1):
            labels = classes[u + 2: u + 3 + label_len].tolist()
            ended = ids[-1].item() == eos
            labels += [eos_class] * (label_len + 1 - len(labels)) if ended else []
            upto = labels.index(eos_class) + 1 if eos_class in labels else len(labels)
            if len(labels) < label_len + 1 or min(labels[:upto]) < 0 or ids[u + 1].item() == eos:
                continue
            g[u, 0] = ids[u + 1]
            g[u, 1:] = torch.tensor(labels)
        windows.append((states, ids, g))
    width = max(w[1].numel() for w in windows)
    hidden = torch.zeros(len(windows), width, windows[0][0].shape[1], dtype=torch.float16)
    tokens = torch.zeros(len(windows), width, dtype=torch.long)
    cont = torch.full((len(windows), width, label_len + 2), -1, dtype=torch.long)
    for i, (h, x, g) in enumerate(windows):
        hidden[i, :h.shape[0]], tokens[i, :x.numel()], cont[i, :g.shape[0]] = h, x, g
    return {"H": hidden, "X": tokens, "G": cont, "meta": {"windows": len(windows), "source": str(folder)}}


def load_or_build(path: Path, build_fn, fh=None) -> dict:
    if path.exists():
        data = torch.load(path, map_location="cpu", weights_only=False)
        log(f"loaded cached data {path} ({data['meta']['windows']} windows)", fh)
        return data
    data = build_fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


# ------------------------------------------------------------------------------------------------
# samples


class Samples:
    """Turns (window, position) pairs into head inputs and labels."""

    def __init__(self, data: dict, cfg: HeadConfig, eos: int | None, device: torch.device):
        self.H = data["H"].to(device)
        self.X = data["X"].to(device).long()
        self.G = data["G"].to(device).long()
        self.cfg, self.eos, self.device = cfg, eos, device
        self.n, self.seq = self.X.shape
        if self.G.shape[-1] < cfg.label_len + 1:
            raise ValueError(f"data hold {self.G.shape[-1] - 1} continuation labels, the head needs {cfg.label_len}")
        # contexts whose pending token is EOS are never drafted from
        usable = (self.G[:, :, 0] >= 0) & (self.G[:, :, 0] != (eos if eos is not None else -1))
        self.usable = usable.nonzero()  # [M, 2] (window, position)

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(self.usable), (count,), generator=generator)
        return self.usable[idx.to(self.usable.device)]

    def fixed(self, count: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        count = min(count, len(self.usable))
        return self.usable[torch.randperm(len(self.usable), generator=g)[:count].to(self.usable.device)]

    def batch(self, pairs: torch.Tensor, truncate_prob: float = 0.0, generator: torch.Generator | None = None):
        cfg = self.cfg
        w_idx, t = pairs[:, 0], pairs[:, 1]
        w = cfg.window
        age = torch.arange(w - 1, -1, -1, device=self.device)  # slot j holds position t - age[j]
        pos = t[:, None] - age[None]
        valid = pos >= 0
        if truncate_prob > 0:
            keep = torch.randint(1, w + 1, (len(t),), generator=generator).to(self.device)
            cut = torch.rand(len(t), generator=generator).to(self.device) < truncate_prob
            keep = torch.where(cut, keep, torch.full_like(keep, w))
            valid &= age[None] < keep[:, None]
        p = pos.clamp_min(0)
        hidden = self.H[w_idx[:, None], p]
        nxt = self.X[w_idx[:, None], (p + 1).clamp_max(self.seq - 1)]
        nxt[:, -1] = self.G[w_idx, t, 0]  # the pending token after h_t is the greedy g_1
        hidden = hidden * valid[..., None]
        nxt = nxt * valid
        labels = self.G[w_idx, t, 1:1 + cfg.label_len]
        lengths = torch.full((len(t),), cfg.label_len, dtype=torch.long, device=self.device)
        if self.eos is not None:
            is_eos = labels == self.eos
            first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, lengths)
            lengths = first
        return hidden, nxt, valid, labels, lengths


# ------------------------------------------------------------------------------------------------
# losses and offline acceptance


NEG = -1e30  # finite "log 0": keeps logsumexp's gradient free of NaN when every path is impossible


def ctc_nll(logp: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """Exact CTC negative log-likelihood per sample by the forward (alpha) recursion, differentiated
    by autograd. logp [B, T, C] (log-probabilities, need not be normalised over C), targets [B, L],
    lengths [B] -> [B]; impossible alignments give ~1e30 (callers zero them)."""
    b, frames, _ = logp.shape
    n_lab = targets.shape[1]
    ext = torch.full((b, 2 * n_lab + 1), blank, dtype=torch.long, device=logp.device)
    ext[:, 1::2] = targets
    lp = logp.gather(2, ext[:, None].expand(b, frames, ext.shape[1]))  # [B, T, S]
    skip = torch.zeros_like(ext, dtype=torch.bool)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    neg = torch.full((b, 1), NEG, dtype=lp.dtype, device=lp.device)
    start = torch.zeros_like(ext, dtype=torch.bool)
    start[:, :2] = True
    alpha = torch.where(start, lp[:, 0], NEG)
    for t in range(1, frames):
        stay = alpha
        step = torch.cat([neg, alpha[:, :-1]], dim=1)
        jump = torch.where(skip, torch.cat([neg, neg, alpha[:, :-2]], dim=1), NEG)
        alpha = torch.logsumexp(torch.stack([stay, step, jump]), dim=0) + lp[:, t]
    last = (2 * lengths)[:, None]
    end = alpha.gather(1, last)
    before = torch.where(lengths[:, None] > 0, alpha.gather(1, (last - 1).clamp_min(0)), NEG)
    return -torch.logsumexp(torch.cat([end, before], dim=1), dim=1)


def compact_ctc_inputs(logp: torch.Tensor, labels: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC only reads the log-probabilities of the blank and of the label tokens, so gather those:
    [B, F, C] -> [B, F, L + 1] (class 0 = blank, class j = label token j) and targets that name the
    FIRST class holding each token (equal tokens keep one class, so repeats still need a blank between
    them). With `ctc_nll` (exact gradient; torch's ctc_loss backward assumes inputs normalised over
    the classes, which the gathered ones are not) the loss and gradient equal the full-vocabulary
    CTC's, at a fraction of the cost on CPU."""
    b, frames, _ = logp.shape
    index = torch.cat([torch.full_like(labels[:, :1], blank), labels], dim=1)  # [B, L + 1]
    gathered = logp.gather(2, index[:, None].expand(b, frames, index.shape[1]))
    same = labels[:, :, None] == labels[:, None, :]  # [B, L, L]
    targets = same.float().argmax(-1) + 1  # first occurrence (1-based)
    return gathered, targets


def head_loss(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, cfg: HeadConfig,
              aux_ce: float = 0.0) -> torch.Tensor:
    logp = logits.float().log_softmax(-1)  # [B, F, C]
    if cfg.kind == "ctc":
        gathered, targets = compact_ctc_inputs(logp, labels, cfg.blank)
        nll = ctc_nll(gathered, targets, lengths)
        nll = torch.where(nll > -NEG / 2, torch.zeros_like(nll), nll)  # zero_infinity
        loss = (nll / lengths.clamp_min(1)).mean()  # = F.ctc_loss(reduction="mean")
        if aux_ce > 0:
            loss = loss + aux_ce * F.nll_loss(logp[:, 0, :cfg.vocab], labels[:, 0])
        return loss
    steps = torch.arange(labels.shape[1], device=labels.device)
    target = labels.masked_fill(steps[None] >= lengths[:, None], -100)
    frames = min(logp.shape[1], target.shape[1])
    return F.nll_loss(logp[:, :frames].reshape(-1, logp.shape[-1]), target[:, :frames].reshape(-1),
                      ignore_index=-100)


def decode_drafts(logits: torch.Tensor, cfg: HeadConfig, k: int, eos: int | None) -> list[list[int]]:
    top = logits.argmax(-1).tolist()
    drafts = []
    for frames in top:
        tokens, _ = ctc_collapse(frames, cfg.blank)
        out = []
        for tok in tokens[:k]:
            out.append(tok)
            if tok == eos:
                break
        drafts.append(out)
    return drafts


@torch.no_grad()
def evaluate(head: DraftHead, base_parts, samples: Samples, pairs: torch.Tensor, k: int, eos: int | None,
             batch: int = 512, autocast: bool = False) -> dict:
    head.eval()
    embed, norm, lm_head = base_parts
    accepted, lengths_all, losses = [], [], []
    reached = [0] * k
    hits = [0] * k
    for i in range(0, len(pairs), batch):
        hidden, nxt, valid, labels, lengths = samples.batch(pairs[i:i + batch])
        with torch.autocast(hidden.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = head(hidden.to(embed.weight.dtype), embed(nxt), valid, norm, lm_head)
        losses.append(float(head_loss(logits, labels, lengths, head.cfg)) * len(labels))
        drafts = decode_drafts(logits.float(), head.cfg, k, eos)
        lab = labels.tolist()
        for d, l, n in zip(drafts, lab, lengths.tolist()):
            target = l[:n]
            a = 0
            while a < len(d) and a < len(target) and d[a] == target[a]:
                a += 1
            accepted.append(a)
            lengths_all.append(len(d))
            for j in range(min(len(d), k)):
                reached[j] += 1
                if a > j:
                    hits[j] += 1
    head.train()
    n = len(accepted)
    return {
        "tau": 1.0 + sum(accepted) / n,
        "loss": sum(losses) / n,
        "mean_draft": sum(lengths_all) / n,
        "accept_per_position": [round(h / r, 4) if r else None for h, r in zip(hits, reached)],
        "samples": n,
    }


# ------------------------------------------------------------------------------------------------
# training


def lr_at(step: int, args, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * warm * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cos)


def train_head(kind: str, args, data: dict, base_parts, device: torch.device, eos: int | None, fingerprint: str,
               heldout: dict | None) -> dict:
    embed, norm, lm_head = base_parts
    hidden_size, vocab = embed.weight.shape[1], lm_head.weight.shape[0]  # vocab: the head's classes
    overrides = dict(label_len=args.label_len, window=args.window, layers=args.layers,
                     subset=getattr(args, "subset", 0))
    if args.frames and kind == "ctc":
        overrides["frames"] = args.frames
    cfg = default_config(kind, hidden_size, vocab, **overrides)
    run_dir = Path(args.out) / kind
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / "train.log", "a")
    log(f"== {kind} head: {cfg}", fh)

    head = init_head(cfg, norm.weight, seed=args.seed).to(device)
    params = sum(p.numel() for p in head.parameters())
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    train = Samples(data["train"], cfg, eos, device)
    val = Samples(data["val"], cfg, eos, device)
    val_pairs = val.fixed(args.val_samples, args.seed + 1)
    autocast = device.type == "cuda"

    step, elapsed, best = 0, 0.0, None
    best_state = None
    history: list[dict] = []
    ckpt = run_dir / "ckpt.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["config"] != cfg.to_json():
            raise SystemExit(f"--resume: {ckpt} was trained with another head config; use a new --out")
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        step, elapsed, best, history = state["step"], state["elapsed"], state["best"], state["history"]
        best_state = state["best_state"]
        log(f"resumed at step {step} ({elapsed:.0f}s, best val tau {best['tau'] if best else None})", fh)

    budget = args.minutes * 60 if args.minutes else None
    max_steps = args.steps or (None if budget else 2000)
    limits = f"steps {max_steps}" + (f", budget {budget:.0f}s" if budget else "")
    log(f"{params:,} head parameters; {len(train.usable):,} train contexts; device {device}; {limits}", fh)

    def save_ckpt():
        torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "best": best, "best_state": best_state, "history": history, "config": cfg.to_json()}, ckpt)

    def do_eval():
        nonlocal best, best_state
        res = evaluate(head, base_parts, val, val_pairs, cfg.label_len, eos, autocast=autocast)
        res.update(step=step, elapsed=round(elapsed, 1))
        history.append(res)
        improved = best is None or res["tau"] > best["tau"]
        if improved:
            best = dict(res)
            best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        log(f"eval step {step}: val loss {res['loss']:.4f}  val tau {res['tau']:.3f}  mean draft "
            f"{res['mean_draft']:.2f}  accept/pos {res['accept_per_position']}{'  *best*' if improved else ''}", fh)

    head.train()
    t_last, n_since, loss_sum = time.time(), 0, 0.0
    t_start = time.time() - elapsed
    while True:
        elapsed = time.time() - t_start
        progress = max(step / max_steps if max_steps else 0.0, elapsed / budget if budget else 0.0)
        if (max_steps and step >= max_steps) or (budget and elapsed >= budget):
            break
        lr = lr_at(step, args, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        pairs = train.draw(args.batch_size, gen)
        hidden, nxt, valid, labels, lengths = train.batch(pairs, args.truncate_prob, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = head(hidden.to(embed.weight.dtype), embed(nxt), valid, norm, lm_head)
        loss = head_loss(logits, labels, lengths, cfg, args.aux_ce)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), args.grad_clip)
        opt.step()
        step += 1
        n_since += len(labels)
        loss_sum += loss.item() * len(labels)
        if step % args.log_every == 0:
            now = time.time()
            rate = n_since / (now - t_last)
            log(f"{kind} step {step}  loss {loss_sum / n_since:.4f}  lr {lr:.2e}  label tok/s "
                f"{rate * cfg.label_len:,.0f} ({rate:,.0f} samples/s)  elapsed {now - t_start:.0f}s", fh)
            t_last, n_since, loss_sum = now, 0, 0.0
        if step % args.eval_every == 0:
            elapsed = time.time() - t_start
            do_eval()
        if step % args.ckpt_every == 0:
            elapsed = time.time() - t_start
            save_ckpt()
    elapsed = time.time() - t_start
    if not history or history[-1]["step"] != step:
        do_eval()
    save_ckpt()

    # the best weights, reported on the held-out modules, exported as fp16
    head.load_state_dict(best_state)
    result = {"head": kind, "config": json.loads(cfg.to_json()), "params": params, "steps": step,
              "train_seconds": round(elapsed, 1), "batch_size": args.batch_size, "samples_seen": step * args.batch_size,
              "train_contexts": len(train.usable), "train_windows": int(data["train"]["meta"]["windows"]),
              "best_step": best["step"], "val": best, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "seed": args.seed, "lr": args.lr,
              "truncate_prob": args.truncate_prob, "aux_ce": args.aux_ce, "base_sha256": fingerprint,
              "torch": torch.__version__, "python": platform.python_version()}
    if heldout is not None:
        ho = Samples(heldout, cfg, eos, device)
        result["heldout"] = evaluate(head, base_parts, ho, ho.fixed(args.heldout_samples, args.seed + 2),
                                     cfg.label_len, eos, autocast=autocast)
        result["heldout_windows"] = int(heldout["meta"]["windows"])
        log(f"{kind} held-out: tau {result['heldout']['tau']:.3f}  accept/pos "
            f"{result['heldout']['accept_per_position']}", fh)
    export = Path(args.export_dir) / HEAD_FILES[kind] if args.export_dir else run_dir / HEAD_FILES[kind]
    save_head(head, export, meta=result)
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    log(f"exported {export} ({export.stat().st_size / 1e6:.2f} MB)", fh)
    fh.close()
    return result


# ------------------------------------------------------------------------------------------------
# model card


def write_card(model_dir: Path, bench_json: Path | None = None, note: str = "") -> Path:
    results = {}
    for kind in ("ctc", "medusa"):
        f = model_dir / HEAD_FILES[kind]
        if f.exists():
            _, meta = load_head(f)
            results[kind] = meta
    if not results:
        raise SystemExit(f"no head files in {model_dir}")
    lines = ["# CTC draft head and Medusa-style control head for specviz-tiny", "",
             "Draft heads for the `ctc` drafter (`specviz/drafters/ctc.py`): `ctc_head.safetensors` "
             "(`head=\"ctc\"`, the default) and `medusa_head.safetensors` (`head=\"medusa\"`). Both read the "
             "base model's last W last-layer states and the token after each, and emit F frames in one pass; "
             "the base model's embedding, final norm and LM head are reused frozen, so the files hold only the "
             "heads (fp16).", "",
             "## Training", "",
             "Distillation from this folder's base model (`python -m specviz.train.train_ctc`): labels are the "
             "base model's own greedy continuations of contexts from random windows of the stdlib training split "
             "(`.train_data/train.u16.npy`); states and continuations are precomputed with the frozen base. "
             "CTC head: CTC loss (blank = class V); Medusa control: per-position cross-entropy, same architecture "
             "and data. Best checkpoint by validation tau (stdlib files set aside by path hash); tau reported on "
             "the held-out modules (bisect, csv, difflib, fractions, graphlib, heapq, json, shlex, statistics, "
             "textwrap), never trained on.", ""]
    lines += ["| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]

    def row(name, fn):
        vals = []
        for kind, m in results.items():
            try:
                vals.append(fn(m))
            except (KeyError, TypeError):
                vals.append("-")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")

    row("frames F / label length L / window W",
        lambda m: f"{m['config']['frames']} / {m['config']['label_len']} / {m['config']['window']}")
    row("layers / heads / ffn", lambda m: f"{m['config']['layers']} / {m['config']['heads']} / {m['config']['ffn']}")
    row("parameters", lambda m: f"{m['params']:,}")
    row("train windows x seq (contexts)", lambda m: f"{m['train_windows']} ({m['train_contexts']:,} contexts)")
    row("steps x batch (samples seen)", lambda m: f"{m['steps']} x {m['batch_size']} ({m['samples_seen']:,})")
    row("best step", lambda m: str(m["best_step"]))
    row("device / train seconds", lambda m: f"{m.get('device_name') or m['device']} / {m['train_seconds']}")
    row("val tau (offline)", lambda m: f"{m['val']['tau']:.3f}")
    row("held-out tau (offline, k = L)", lambda m: f"{m['heldout']['tau']:.3f}")
    row("held-out accept per position", lambda m: str(m["heldout"]["accept_per_position"]))
    row("held-out mean draft length", lambda m: f"{m['heldout']['mean_draft']:.2f}")
    row("held-out samples", lambda m: f"{m['heldout']['samples']:,}")
    row("base model sha256[:16]", lambda m: m["base_sha256"])
    lines += ["", "Offline tau = 1 + mean length of the prefix of the greedy draft (argmax per frame, CTC collapse, "
              "at most k = L tokens, cut after EOS) that equals the base model's greedy continuation: the expected "
              "tokens per verification in greedy mode for those contexts (the contexts come from corpus windows, "
              "so the history is corpus text rather than generated text).", ""]
    if bench_json is not None and bench_json.exists():
        bench = json.loads(bench_json.read_text())
        lines += ["## Engine benchmark (held-out function headers)", "", bench.get("table", ""), ""]
    if note:
        lines += ["## Notes", "", note, ""]
    commands = list(dict.fromkeys(m.get("command", "") for m in results.values()))
    lines += ["## Reproduce", "", "```", *commands, "```", ""]
    card = model_dir / "CTC_HEAD.md"
    card.write_text("\n".join(lines))
    return card


# ------------------------------------------------------------------------------------------------


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", choices=("ctc", "medusa", "both"), default="both")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="base model folder")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder with {train,val,heldout}.u16.npy")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="run folder (data cache + one folder per head)")
    ap.add_argument("--export-dir", default=None, help="where the head files go (default: --model)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/<head>/ckpt.pt")
    # data
    ap.add_argument("--windows", type=int, default=240, help="training windows (each gives --seq contexts)")
    ap.add_argument("--val-windows", type=int, default=12)
    ap.add_argument("--heldout-windows", type=int, default=24)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--data-batch", type=int, default=8, help="windows per base-model pass")
    ap.add_argument("--context-stride", type=int, default=2,
                    help="continue from every s-th position of a window (1 = all; larger = more windows per second)")
    ap.add_argument("--data-minutes", type=float, default=None, help="cap on the training-data precompute")
    ap.add_argument("--data-only", action="store_true", help="precompute (cache) the data and stop")
    # head
    ap.add_argument("--label-len", type=int, default=5, help="L: continuation tokens per label (= max draft)")
    ap.add_argument("--frames", type=int, default=None, help="CTC frames F (default 2 L; Medusa uses L)")
    ap.add_argument("--window", type=int, default=8, help="W: recent states the head attends to")
    ap.add_argument("--layers", type=int, default=1)
    # optimisation
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget per head")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--truncate-prob", type=float, default=0.25)
    ap.add_argument("--aux-ce", type=float, default=0.0, help="CTC only: weight of a first-frame CE term")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--val-samples", type=int, default=2048)
    ap.add_argument("--heldout-samples", type=int, default=4096)
    ap.add_argument("--shards", default=None,
                    help="self-distillation shards (specviz.train.selfdistill) instead of --data windows; --model is "
                         "then a registry name")
    ap.add_argument("--vocab-subset", type=int, default=8192,
                    help="with --shards: classes = the model's N most frequent tokens (0 = the whole vocabulary)")
    ap.add_argument("--card", default=None, help="only write CTC_HEAD.md for the heads in this model folder")
    ap.add_argument("--bench-json", default=None,
                    help="with --card: include the table of this `python -m specviz.bench sweep ctc` JSON")
    ap.add_argument("--card-note", default=None, help="with --card: a markdown file whose text goes under Notes")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.card:
        note = Path(args.card_note).read_text() if args.card_note else ""
        card = write_card(Path(args.card), Path(args.bench_json) if args.bench_json else None, note)
        print(f"wrote {card}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..models import load_model, pick_device

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 labels as on CPU
    model_dir = Path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / "data.log", "a")
    command = "python -m specviz.train.train_ctc " + " ".join(sys.argv[1:] if argv is None else argv)
    log(command, fh)

    if args.shards:
        return main_shards(args, device, command, fh)
    args.export_dir = args.export_dir or str(model_dir)
    loaded = load_model(str(model_dir), device=str(device), dtype="float32")
    model = loaded.model
    fingerprint = base_fingerprint(model_dir)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    data_dir = Path(args.data)
    key = f"{fingerprint or 'nofp'}_T{args.seq}_L{args.label_len}_c{args.context_stride}_s{args.seed}"
    data = {}
    specs = {"train": (args.windows, args.seed, args.data_minutes * 60 if args.data_minutes else None),
             "val": (args.val_windows, args.seed + 1, None), "heldout": (args.heldout_windows, args.seed + 2, None)}
    for split, (n, seed, budget) in specs.items():
        tokens = np.load(data_dir / f"{split}.u16.npy", mmap_mode="r")
        path = out / "data" / f"{split}_{key}_n{n}.pt"
        data[split] = load_or_build(path, lambda: build_data(
            model, tokens, n, args.seq, args.label_len, seed, args.data_batch, device, budget, split,
            args.context_stride, fh), fh)
    if args.data_only:
        log("data ready (--data-only)", fh)
        return
    base_parts = tuple(m.requires_grad_(False) for m in (model.model.embed_tokens, model.model.norm, model.lm_head))
    heldout = data.pop("heldout")
    kinds = ("ctc", "medusa") if args.head == "both" else (args.head,)
    results = {}
    for kind in kinds:
        res = train_head(kind, args, data, base_parts, device, eos, fingerprint, heldout)
        res["command"] = command
        save_head(load_head(Path(args.export_dir) / HEAD_FILES[kind])[0], Path(args.export_dir) / HEAD_FILES[kind],
                  meta=res)
        results[kind] = res
    summary = {k: {"val_tau": r["val"]["tau"], "heldout_tau": r.get("heldout", {}).get("tau"), "steps": r["steps"]}
               for k, r in results.items()}
    log(f"summary: {json.dumps(summary)}", fh)


def main_shards(args, device, command: str, fh) -> None:
    """Heads for a registry model from self-distillation shards, over its `--vocab-subset` most
    frequent tokens (the classes index `vocab_rank.safetensors`, which must exist: build it with
    `python -m specviz.train.train_adapters --vocab-only`)."""
    from .. import api
    from ..drafters.draft_heads import VOCAB_FILE, load_vocab_rank, subset_head
    from ..models import REGISTRY
    from .train_adapters import subset_index

    loaded = api.get_model(args.model, device=str(device), dtype="float32")
    model = loaded.model.requires_grad_(False)
    assets = REGISTRY[args.model].assets
    vocab = model.lm_head.weight.shape[0]
    subset = load_vocab_rank(assets / VOCAB_FILE)[:args.vocab_subset] if args.vocab_subset else None
    class_index = subset_index(subset, vocab) if subset is not None else None
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    shards = Path(args.shards)
    train = shard_windows(shards / "train", class_index, eos, args.label_len, args.window)
    n_val = max(1, train["H"].shape[0] // 20)  # the last 5 % of the training answers pick the checkpoint
    val = {k: (v[-n_val:] if torch.is_tensor(v) else dict(v, windows=n_val)) for k, v in train.items()}
    train = {k: (v[:-n_val] if torch.is_tensor(v) else dict(v, windows=v["windows"] - n_val)) for k, v in train.items()}
    heldout = shard_windows(shards / "heldout", class_index, eos, args.label_len, args.window)
    lm_head = subset_head(model.lm_head, subset) if subset is not None else model.lm_head
    base_parts = (model.model.embed_tokens, model.model.norm, lm_head)
    eos_class = int(class_index[eos]) if class_index is not None else eos
    args.export_dir = args.export_dir or str(assets)
    args.subset = args.vocab_subset
    kinds = ("ctc", "medusa") if args.head == "both" else (args.head,)
    for kind in kinds:
        res = train_head(kind, args, {"train": train, "val": val}, base_parts, device, eos_class, "", heldout)
        res["command"] = command
        export = Path(args.export_dir) / HEAD_FILES[kind]
        save_head(load_head(export)[0], export, meta=res)
        log(f"{kind}: held-out tau {res.get('heldout', {}).get('tau')}", fh)


if __name__ == "__main__":
    main()
