"""Train exit adapters (early exit, HiSpec) and the draft vocabulary ranking for a chat model.

Usage (after `python -m specviz.train.selfdistill` wrote its shards)::

    python -m specviz.train.train_adapters --exits 4,8,15 --minutes 6          # -> <out>/exit_adapters.safetensors
    python -m specviz.train.train_adapters --vocab-only                         # -> <out>/vocab_rank.safetensors
    python -m specviz.train.train_adapters --exits 4,8,15 --minutes 6 --resume  # continue from <run>/ckpt.pt

Data: the self-distillation shards (`<data>/train`, `<data>/heldout`): the input of layer E for
every token of the target's own prompts + greedy answers, and the full model's argmax there.
Each adapter learns, with the target frozen, to make `lm_head(norm(adapter(h_E)))` pick the
full model's token: cross-entropy over the `--train-vocab` most frequent answer tokens (the
draft head scores only such a subset at run time; labels outside it are skipped). With
`--teacher-kl W` a share W of the loss is instead the KL divergence from the full model's own
distribution over that subset (`distill_loss`), recomputed from the recorded last-layer state.

Reported per exit on the held-out shards (categories and topics never trained on): top-1
agreement with the full model for the plain exit (no adapter) and with the adapter, over the full
vocabulary and over the `--eval-vocab` subset. For a draft of k tokens, agreement a gives an
expected tau of (1 - a^(k+1)) / (1 - a) when misses are independent.

Seeded (`--seed`): adapter init and batch order; `--resume` continues from the run's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..drafters.draft_heads import ADAPTER_FILE, VOCAB_FILE, ExitAdapter, save_adapters
from ..models import MODELS_DIR, SMOLLM2

ANSWER_ONLY = "answer"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_shards(folder: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """Concatenate `keys` over every shard in `folder`, plus a mask of answer positions."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys + ["answer"]}
    for path in sorted(folder.glob("shard_*.pt")):
        shard = torch.load(path, weights_only=False)
        for k in keys:
            parts[k].append(shard[k])
        answer = torch.zeros(int(shard["lengths"].sum()), dtype=torch.bool)
        offset = 0
        for length, prompt in zip(shard["lengths"].tolist(), shard["prompt_lengths"].tolist()):
            answer[offset + prompt - 1: offset + length - 1] = True  # positions that predict an answer token
            offset += length
        parts["answer"].append(answer)
    if not parts["answer"]:
        raise SystemExit(f"no shards in {folder}: run `python -m specviz.train.selfdistill` first")
    return {k: torch.cat(v) for k, v in parts.items()}


def vocab_rank(data: Path, vocab: int) -> torch.Tensor:
    """All token ids, most often emitted in the target's own answers first (ties: lower id)."""
    got = load_shards(data / "train", ["ids", "argmax"])
    counts = torch.bincount(got["argmax"][got["answer"]].long(), minlength=vocab).double()
    counts -= torch.arange(vocab, dtype=torch.double) * 1e-9  # stable tie-break by id
    return counts.argsort(descending=True).int()


def coverage(rank: torch.Tensor, labels: torch.Tensor, sizes=(1024, 2048, 4096, 8192, 16384, 32768)) -> dict:
    position = torch.empty_like(rank)
    position[rank.long()] = torch.arange(rank.numel(), dtype=rank.dtype)
    where = position[labels.long()]
    return {str(s): round(float((where < s).float().mean()), 4) for s in sizes}


def subset_index(subset: torch.Tensor, vocab: int) -> torch.Tensor:
    """token id -> its index in `subset`, -100 (ignored by cross-entropy) outside it."""
    index = torch.full((vocab,), -100, dtype=torch.long)
    index[subset] = torch.arange(subset.numel())
    return index


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor | None, target_index: torch.Tensor,
                 teacher_kl: float) -> torch.Tensor:
    """(1 - w) * cross-entropy against the teacher's argmax + w * KL(teacher || draft), both over the
    draft vocabulary (`logits`, `teacher_logits`: [N, S]; `target_index`: [N], -100 = not scored).

    Why the teacher's whole distribution: a hard label says only which token won, while the
    distribution also says how close the others came, so each token teaches more; with the little
    self-distilled data a CPU makes, that matters (DistillSpec, arXiv 2310.08461, trains drafts on
    this divergence). Rows whose label lies outside the subset are left out of both terms.
    """
    scored = target_index != -100
    if not scored.any():
        return logits.sum() * 0.0  # nothing to learn from in this batch, but still a graph
    hard = F.cross_entropy(logits[scored], target_index[scored]) if teacher_kl < 1 else logits.new_zeros(())
    if teacher_kl <= 0 or teacher_logits is None:
        return hard
    soft = F.kl_div(F.log_softmax(logits[scored], -1), F.log_softmax(teacher_logits[scored], -1),
                    log_target=True, reduction="batchmean")
    return (1 - teacher_kl) * hard + teacher_kl * soft


@torch.no_grad()
def teacher_logits(norm: torch.nn.Module, last: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The full model's logits over the draft vocabulary (`weight`: its head's rows for it), from
    its last layer's recorded pre-norm output."""
    return F.linear(norm(last.to(weight.device).float()), weight)


class Trainer:
    def __init__(self, target, rank: torch.Tensor, train_vocab: int):
        self.device = target.lm_head.weight.device
        self.norm = target.model.norm
        self.eps = target.config.rms_norm_eps
        for p in target.parameters():
            p.requires_grad_(False)
        self.subset = rank[:train_vocab].long().to(self.device)
        self.weight = target.lm_head.weight[self.subset].detach().float()
        self.index = subset_index(self.subset.cpu(), target.lm_head.weight.shape[0]).to(self.device)
        self.full_weight = target.lm_head.weight.detach().float()

    def loss(self, adapter: ExitAdapter, hidden: torch.Tensor, labels: torch.Tensor,
             last: torch.Tensor | None = None, teacher_kl: float = 0.0) -> torch.Tensor:
        hidden, labels = hidden.to(self.device), labels.to(self.device).long()
        logits = F.linear(self.norm(adapter(hidden)), self.weight)
        teacher = teacher_logits(self.norm, last, self.weight) if teacher_kl > 0 else None
        return distill_loss(logits, teacher, self.index[labels], teacher_kl)

    @torch.no_grad()
    def agreement(self, adapter, hidden: torch.Tensor, labels: torch.Tensor, subset: torch.Tensor | None,
                  batch: int = 4096) -> float:
        hits = 0
        for i in range(0, hidden.shape[0], batch):
            h = hidden[i:i + batch].float().to(self.device)
            h = adapter(h) if adapter is not None else h
            n = self.norm(h)
            if subset is None:
                pred = F.linear(n, self.full_weight).argmax(-1)
            else:
                pred = subset[F.linear(n, self.full_weight[subset]).argmax(-1)]
            hits += int((pred.cpu() == labels[i:i + batch].long()).sum())
        return hits / max(1, hidden.shape[0])


def train_exit(exit_layer: int, trainer: Trainer, train: dict, held: dict, args, ckpt: dict) -> tuple[ExitAdapter, dict]:
    key = f"layer{exit_layer}"
    torch.manual_seed(args.seed + exit_layer)
    adapter = ExitAdapter(train[key].shape[1], args.inner, trainer.eps).to(trainer.device)
    opt = torch.optim.AdamW(adapter.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    step0 = 0
    if str(exit_layer) in ckpt:
        adapter.load_state_dict(ckpt[str(exit_layer)]["adapter"])
        opt.load_state_dict(ckpt[str(exit_layer)]["opt"])
        step0 = ckpt[str(exit_layer)]["step"]
    mask = train["answer"] if args.positions == ANSWER_ONLY else torch.ones_like(train["answer"])
    rows = mask.nonzero().squeeze(1)
    steps = max(1, args.epochs * rows.numel() // args.batch)
    deadline = time.time() + args.minutes * 60
    gen = torch.Generator().manual_seed(args.seed * 1000 + exit_layer)
    order = rows[torch.randperm(rows.numel(), generator=gen)]
    step = step0
    while step < steps and time.time() < deadline:
        lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item())
        for group in opt.param_groups:
            group["lr"] = lr
        pick = order[(step * args.batch) % order.numel():][:args.batch]
        last = train["last"][pick] if args.teacher_kl > 0 else None
        loss = trainer.loss(adapter, train[key][pick].float(), train["argmax"][pick], last, args.teacher_kl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"exit {exit_layer}: step {step}/{steps} loss {loss.item():.3f}")
    ckpt[str(exit_layer)] = {"adapter": adapter.state_dict(), "opt": opt.state_dict(), "step": step}
    adapter.eval()
    subset = trainer.subset[:args.eval_vocab]
    held_mask = held["answer"]
    h, y = held[key][held_mask], held["argmax"][held_mask]
    report = {
        "steps": step, "train_tokens_seen": step * args.batch,
        "heldout_tokens": int(y.numel()),
        "plain_agreement": round(trainer.agreement(None, h, y, None), 4),
        "adapter_agreement": round(trainer.agreement(adapter, h, y, None), 4),
        f"adapter_agreement_vocab{args.eval_vocab}": round(trainer.agreement(adapter, h, y, subset), 4),
    }
    log(f"exit {exit_layer}: {report}")
    return adapter, report


def unit_interval(text: str) -> float:
    """argparse type for a share in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--data", type=Path, default=Path(".train_data/smol"))
    ap.add_argument("--run", type=Path, default=Path(".train_data/runs/adapters"))
    ap.add_argument("--out", type=Path, default=None, help="asset folder (default assets/models/<model>)")
    ap.add_argument("--exits", default="4,8,15")
    ap.add_argument("--inner", type=int, default=1024)
    ap.add_argument("--train-vocab", type=int, default=8192)
    ap.add_argument("--eval-vocab", type=int, default=8192)
    ap.add_argument("--positions", choices=(ANSWER_ONLY, "all"), default="all")
    ap.add_argument("--teacher-kl", type=unit_interval, default=0.0,
                    help="share of the loss that is KL from the full model's distribution (0 = hard labels only)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget per exit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--vocab-only", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or (MODELS_DIR / args.model)
    out.mkdir(parents=True, exist_ok=True)
    args.run.mkdir(parents=True, exist_ok=True)
    from .. import api

    target = api.get_model(args.model, device=args.device, dtype="float32").model
    vocab = target.lm_head.weight.shape[0]
    rank = vocab_rank(args.data, vocab)
    if args.vocab_only:
        held = load_shards(args.data / "heldout", ["argmax"])
        cover = coverage(rank, held["argmax"][held["answer"]])
        save_file({"rank": rank.contiguous()}, str(out / VOCAB_FILE),
                  metadata={"heldout_coverage": json.dumps(cover), "source": "argmax over the target's own answers"})
        log(f"wrote {out / VOCAB_FILE}; held-out answer-token coverage by subset size: {cover}")
        return
    exits = [int(e) for e in args.exits.split(",")]
    keys = [f"layer{e}" for e in exits] + ["argmax"] + (["last"] if args.teacher_kl > 0 else [])
    train, held = load_shards(args.data / "train", keys), load_shards(args.data / "heldout", keys)
    log(f"{train['argmax'].numel()} training tokens ({int(train['answer'].sum())} in answers), "
        f"{int(held['answer'].sum())} held-out answer tokens")
    ckpt_path = args.run / "ckpt.pt"
    ckpt = torch.load(ckpt_path, weights_only=False) if (args.resume and ckpt_path.exists()) else {}
    trainer = Trainer(target, rank, args.train_vocab)
    adapters, reports = {}, {}
    for e in exits:
        adapters[e], reports[str(e)] = train_exit(e, trainer, train, held, args, ckpt)
        torch.save(ckpt, ckpt_path)
    meta = {"exits": reports, "inner": args.inner, "train_vocab": args.train_vocab, "seed": args.seed,
            "teacher_kl": args.teacher_kl,
            "train_tokens": int(train["argmax"].numel()), "positions": args.positions,
            "command": "python -m specviz.train.train_adapters " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    save_adapters(adapters, out / ADAPTER_FILE, meta)
    (args.run / "report.json").write_text(json.dumps(meta, indent=1))
    log(f"wrote {out / ADAPTER_FILE}")


if __name__ == "__main__":
    main()
