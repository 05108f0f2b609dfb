"""Distil a small draft model for a chat model from its own greedy answers.

Usage (after `python -m specviz.train.selfdistill` wrote its shards)::

    python -m specviz.train.train_draft --layers 2 --minutes 20          # -> assets/models/<model>-draft/
    python -m specviz.train.train_draft --layers 2 --minutes 20 --resume # continue from <run>/ckpt.pt

The draft is the target's architecture with `--layers` decoder layers, started from the target's
layers `--init` (a copy: the draft's layers then train freely), its final norm, and *the target's
own token embeddings and LM head*, shared and frozen: the export stores only the draft's layers
and norm, and `specviz.api` ties the embeddings to the loaded target (see
`models.ModelInfo.embeddings_from`).

Loss: cross-entropy of the draft's next-token logits over the `--train-vocab` tokens the target
emits most (the draft scores the same subset at run time, `draft_vocab`) against the full
model's argmax at every position of the target's own prompts + answers (labels outside the
subset are skipped); with `--teacher-kl W`, a share W of it is the KL divergence from the full
model's distribution over the subset instead (`train_adapters.distill_loss`). Reported on
held-out instructions: top-1 agreement with the target over answer positions, which is the
greedy acceptance rate of a one-token draft there.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from ..api import share_embeddings
from ..models import MODELS_DIR, SMOLLM2
from .train_adapters import distill_loss, load_shards, log, subset_index, teacher_logits, unit_interval, vocab_rank


def sequences(data: dict) -> list[tuple[torch.Tensor, ...]]:
    """(ids, labels, answer mask[, the target's last-layer states]) per sequence, from the shards'
    flat tensors."""
    out, offset = [], 0
    for length in data["lengths"].tolist():
        sl = slice(offset, offset + length)
        row = (data["ids"][sl].long(), data["argmax"][sl].long(), data["answer"][sl])
        out.append(row + ((data["last"][sl],) if "last" in data else ()))
        offset += length
    return out


def load_sequences(folder: Path, with_states: bool = False) -> list:
    data = load_shards(folder, ["ids", "argmax", "lengths"] + (["last"] if with_states else []))
    return sequences(data)


def training_vocab(target, data: Path, vocab: int) -> torch.Tensor:
    """The token ranking the draft trains over: the target's own (`vocab_rank.safetensors`, found
    as the drafter finds it at run time), else the one counted from `data`. (Counted from data that
    holds more than the shipped ranking saw, the two would differ, and the draft would learn tokens
    it can never draft.)"""
    from ..drafters.draft_heads import VOCAB_FILE, find_part, load_vocab_rank

    shipped = find_part(target, VOCAB_FILE)
    return load_vocab_rank(shipped) if shipped is not None else vocab_rank(data, vocab)


def sitting_arguments(ap: argparse.ArgumentParser, epochs: float, minutes: float) -> None:
    """The flags every token-batched training sitting here takes (train_draft, train_eagle)."""
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--epochs", type=float, default=epochs)
    ap.add_argument("--minutes", type=float, default=minutes)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")


def warm_cosine(base: float, step: int, total: int, warmup: int = 50) -> float:
    """The learning rate at `step`: a linear warm-up, then a cosine decay to 5 % of `base`."""
    return base * min(1.0, (step + 1) / warmup) * max(0.05, 0.5 * (1 + math.cos(math.pi * step / total)))


def begin_sitting(params: list, args: argparse.Namespace, n_tokens: int,
                  restore: Callable[[dict], None]) -> tuple[torch.optim.Optimizer, int, Path, int, float]:
    """(optimizer, total steps, checkpoint path, step, seconds spent) of a sitting; with --resume
    and a checkpoint, `restore(ckpt)` reloads the trained module and the rest continues."""
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    total = max(1, int(args.epochs * n_tokens / args.batch_tokens))
    args.run.mkdir(parents=True, exist_ok=True)
    ckpt_path, step, spent = args.run / "ckpt.pt", 0, 0.0
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        restore(ckpt)
        opt.load_state_dict(ckpt["opt"])
        step, spent = ckpt["step"], ckpt["spent"]
    return opt, total, ckpt_path, step, spent


def optimizer_step(opt: torch.optim.Optimizer, params: list, loss: torch.Tensor, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def make_draft(target, layers: int, init: list[int]):
    settings = {k: v for k, v in target.config.to_dict().items()
                if k not in ("model_type", "layer_types", "quantization_config", "_name_or_path")}
    cfg = AutoConfig.for_model(target.config.model_type, **{**settings, "num_hidden_layers": layers,
                                                           "tie_word_embeddings": True})
    draft = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    with torch.no_grad():
        for i, src in enumerate(init):
            draft.model.layers[i].load_state_dict(target.model.layers[src].state_dict())
        draft.model.norm.load_state_dict(target.model.norm.state_dict())
    share_embeddings(draft, target)  # frozen (the target's parameters are), and never exported
    return draft


def load_exported(draft, folder: Path) -> None:
    """An exported draft's layers and norm (fp16 on disk) into `draft`; the shared embeddings and
    head stay the target's."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(("model.embed_tokens", "lm_head")) for k in missing):
        raise SystemExit(f"{folder} does not hold this draft's layers (missing {missing}, unexpected {unexpected})")


def batches(seqs: list, tokens_per_batch: int, gen: torch.Generator):
    """Sequences grouped to about `tokens_per_batch` padded tokens, in a seeded order."""
    order = torch.randperm(len(seqs), generator=gen).tolist()
    batch, width = [], 0
    for i in order:
        width = max(width, seqs[i][0].numel())
        if batch and width * (len(batch) + 1) > tokens_per_batch:
            yield batch
            batch, width = [], seqs[i][0].numel()
        batch.append(seqs[i])
    if batch:
        yield batch


def pad(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(s[0].numel() for s in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full_like(ids, -1)
    mask = torch.zeros_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    for row, (i, y, a, *_) in enumerate(batch):
        ids[row, :i.numel()], labels[row, :i.numel()], mask[row, :i.numel()], answer[row, :i.numel()] = i, y, 1, a
    return ids, labels, mask, answer


def pad_states(batch: list) -> torch.Tensor:
    """The recorded last-layer states of a batch, right-padded with zeros like `pad`'s ids."""
    width, dim = max(s[0].numel() for s in batch), batch[0][3].shape[-1]
    states = torch.zeros(len(batch), width, dim)
    for row, s in enumerate(batch):
        states[row, :s[3].shape[0]] = s[3].float()
    return states


def subset_logits(draft, ids, mask, weight) -> torch.Tensor:
    ids, mask = ids.to(weight.device), mask.to(weight.device)
    hidden = draft.model(input_ids=ids, attention_mask=mask).last_hidden_state  # after the final norm
    return F.linear(hidden, weight)


@torch.no_grad()
def agreement(draft, seqs: list, weight: torch.Tensor, subset: torch.Tensor) -> float:
    draft.eval()
    hits = total = 0
    for batch in batches(seqs, 8192, torch.Generator().manual_seed(0)):
        ids, labels, mask, answer = pad(batch)
        pred = subset[subset_logits(draft, ids, mask, weight).argmax(-1).cpu()]
        hits += int(((pred == labels) & answer).sum())
        total += int(answer.sum())
    draft.train()
    return hits / max(1, total)


def export(draft, folder: Path, meta: dict, tokenizer) -> None:
    """fp16 layers + norm only (embeddings and head come from the target at load)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in draft.state_dict().items()
             if not k.startswith(("model.embed_tokens", "lm_head"))}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    draft.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "training_meta.json").write_text(json.dumps(meta, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--data", type=Path, default=Path(".train_data/smol"))
    ap.add_argument("--run", type=Path, default=Path(".train_data/runs/draft"))
    ap.add_argument("--out", type=Path, default=None, help="export folder (default assets/models/<model>-draft)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--init", default="0,1", help="target layers the draft's layers start from")
    ap.add_argument("--init-draft", type=Path, default=None,
                    help="start from an exported draft instead (its layers and norm; a new sitting of an "
                         "earlier run whose checkpoint is gone, e.g. the shipped draft)")
    ap.add_argument("--train-vocab", type=int, default=8192)
    ap.add_argument("--teacher-kl", type=unit_interval, default=0.0,
                    help="share of the loss that is KL from the full model's distribution (0 = hard labels only)")
    sitting_arguments(ap, epochs=3.0, minutes=20.0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from .. import api

    loaded = api.get_model(args.model, device=args.device, dtype="float32")
    target = loaded.model
    for p in target.parameters():
        p.requires_grad_(False)
    vocab = target.lm_head.weight.shape[0]
    subset = training_vocab(target, args.data, vocab)[:args.train_vocab].long()
    index = subset_index(subset, vocab)
    weight = target.lm_head.weight[subset].detach()
    init = [int(x) for x in args.init.split(",")]
    draft = make_draft(target, args.layers, init).to(target.device)
    if args.init_draft is not None and not (args.resume and (args.run / "ckpt.pt").exists()):
        load_exported(draft, args.init_draft)
    train_seqs = load_sequences(args.data / "train", with_states=args.teacher_kl > 0)
    held_seqs = load_sequences(args.data / "heldout")
    n_tokens = sum(s[0].numel() for s in train_seqs)
    log(f"{len(train_seqs)} training sequences ({n_tokens} tokens), {len(held_seqs)} held out")
    params = [p for n, p in draft.named_parameters() if p.requires_grad]
    opt, total, ckpt_path, step, spent = begin_sitting(
        params, args, n_tokens, lambda ckpt: draft.load_state_dict(ckpt["draft"], strict=False))
    best = {"agreement": agreement(draft, held_seqs, weight, subset), "step": step}
    log(f"start (step {step}): held-out agreement {best['agreement']:.4f}"
        + ("" if step else f" (the draft in {args.init_draft})" if args.init_draft
           else f" (layers {init} of the target as they are)"))
    start = time.time() - spent
    epoch = 0
    while step < total and time.time() - start < args.minutes * 60:
        for batch in batches(train_seqs, args.batch_tokens, torch.Generator().manual_seed(args.seed * 100 + epoch)):
            ids, labels, mask, _ = pad(batch)
            lr = warm_cosine(args.lr, step, total)
            logits = subset_logits(draft, ids, mask, weight)
            target_index = torch.where(labels >= 0, index[labels.clamp(min=0)], torch.full_like(labels, -100))
            target_index = target_index.to(logits.device)
            teacher = (teacher_logits(target.model.norm, pad_states(batch), weight).flatten(0, 1)
                       if args.teacher_kl > 0 else None)
            loss = distill_loss(logits.flatten(0, 1), teacher, target_index.flatten(), args.teacher_kl)
            optimizer_step(opt, params, loss, lr)
            step += 1
            if step % 25 == 0:
                log(f"step {step}/{total} loss {loss.item():.3f} lr {lr:.2e} {time.time() - start:.0f}s")
            if step % args.eval_every == 0 or step >= total or time.time() - start >= args.minutes * 60:
                score = agreement(draft, held_seqs, weight, subset)
                log(f"step {step}: held-out agreement {score:.4f}")
                torch.save({"draft": {k: v for k, v in draft.state_dict().items() if "embed" not in k and "lm_head" not in k},
                            "opt": opt.state_dict(), "step": step, "spent": time.time() - start}, ckpt_path)
                if score > best["agreement"]:
                    best = {"agreement": score, "step": step}
                    torch.save(draft.state_dict(), args.run / "best.pt")
                if step >= total or time.time() - start >= args.minutes * 60:
                    break
        epoch += 1
    if (args.run / "best.pt").exists():
        draft.load_state_dict(torch.load(args.run / "best.pt", weights_only=False))
    share_embeddings(draft, target)
    meta = {"layers": args.layers, "init_from_target_layers": init, "train_vocab": args.train_vocab,
            "teacher_kl": args.teacher_kl, "init_draft": str(args.init_draft) if args.init_draft else None,
            "train_tokens": n_tokens, "steps": step, "best": best, "seed": args.seed,
            "heldout_sequences": len(held_seqs),
            "command": "python -m specviz.train.train_draft " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    earlier = args.init_draft / "training_meta.json" if args.init_draft else None
    if earlier is not None and earlier.is_file():  # the sittings before this one, for the card
        meta["earlier"] = json.loads(earlier.read_text())
    out = args.out or (MODELS_DIR / f"{args.model}-draft")
    export(draft, out, meta, loaded.tokenizer)
    log(f"wrote {out}: best held-out agreement {best['agreement']:.4f} at step {best['step']}")


if __name__ == "__main__":
    main()
