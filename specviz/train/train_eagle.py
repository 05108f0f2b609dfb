"""Train an EAGLE head (`specviz.drafters.eagle`) for a chat model on its own answers.

Usage::

    python -m specviz.train.answer_shards --out .train_data/smol_states --states    # train: answers + states
    python -m specviz.train.selfdistill --split heldout --limit 144 --layers 15     # held out (has states)
    python -m specviz.train.train_eagle --data .train_data/smol_states --heldout .train_data/smol/heldout \\
        --minutes 30 --run .train_data/runs/eagle                                   # -> the model's eagle_head.safetensors
    python -m specviz.train.train_eagle ... --resume                               # continue from <run>/ckpt.pt

Data: the target's prompts + greedy answers with its last-layer states f (pre final norm) at every
position. Teacher forcing: pair i = (f_i, x_{i+1}) goes in at position i, and the head's output
g_i is trained

* to make the target's own norm + LM head pick the target's token after x_{i+1} (cross-entropy over
  the `--train-vocab` tokens it emits most, the head's draft vocabulary; labels outside it are skipped),
* and to be the next feature: smooth L1 between norm(g_i) and norm(f_{i+1}) (weight `--reg`), since
  a draft's later tokens are drafted from the head's own g (EAGLE's feature regression; compared
  after the norm, where the LM head reads it, so the state's few huge dimensions do not dominate).

Inputs get Gaussian noise (`--noise`, relative to the normed features' scale), so that the head
learns to draft from its own slightly wrong features too (EAGLE's data noise).

Reported on held-out instructions: top-1 agreement with the target at answer positions given the
exact features, i.e. the greedy acceptance of the first draft token. Seeded; `--resume` continues
from the run's checkpoint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..drafters.eagle import HEAD_FILE, EagleHead, eagle_meta, load_eagle, save_eagle
from ..models import REGISTRY, SMOLLM2
from .train_adapters import load_shards, log, subset_index
from .train_draft import (batches, begin_sitting, optimizer_step, pad, pad_states, sequences, sitting_arguments,
                          training_vocab, warm_cosine)


def load_with_states(folder: Path) -> list:
    data = load_shards(folder, ["ids", "argmax", "lengths", "last"])
    return sequences(data)


def head_outputs(head: EagleHead, ids: torch.Tensor, mask: torch.Tensor, states: torch.Tensor,
                 noise: float = 0.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced pass over right-padded sequences: pair i = (f_i, x_{i+1}) for i < T - 1.
    Returns (g [B, T-1, d], before the norm; norm(f) [B, T, d])."""
    normed = head.norm(states)
    inputs = normed[:, :-1]
    if noise > 0:
        scale = normed.detach().pow(2).mean().sqrt()
        inputs = inputs + noise * scale * torch.randn(inputs.shape, generator=generator)
    embedded = head.fc(torch.cat([head.embed(ids[:, 1:]), inputs], dim=-1))
    g = head.body.model(inputs_embeds=embedded, attention_mask=mask[:, 1:]).last_hidden_state  # pre-norm
    return g, normed


def second_step(head: EagleHead, ids: torch.Tensor, mask: torch.Tensor, states: torch.Tensor,
                g: torch.Tensor) -> torch.Tensor:
    """The head drafting a second token, for every position at once: the pair at position p >= 1
    is (its own g_{p-1}, x_{p+1}) and attends, as at run time, to the exact pairs before p and to
    itself. One layer call over [exact pairs; own pairs] (positions 0..n-1 twice) with that mask.
    Returns norm(g2) [B, n, d] (row 0 has no own pair: ignore it)."""
    exact = head.fc(torch.cat([head.embed(ids[:, 1:]), head.norm(states[:, :-1])], dim=-1))
    own_features = torch.cat([torch.zeros_like(g[:, :1]), g[:, :-1]], dim=1)
    own = head.fc(torch.cat([head.embed(ids[:, 1:]), head.norm(own_features)], dim=-1))
    b, n, _ = exact.shape
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    strictly = causal.tril(-1)
    visible = torch.cat([torch.cat([causal, torch.zeros(n, n, dtype=torch.bool)], 1),
                         torch.cat([strictly, torch.eye(n, dtype=torch.bool)], 1)], 0)
    keys = torch.cat([mask[:, 1:], mask[:, 1:]], 1).bool()
    attend = (visible[None] & keys[:, None, :])[:, None]  # [B, 1, 2n, 2n]
    attend = attend | torch.eye(2 * n, dtype=torch.bool)  # a padded row still sees itself (no NaN)
    rows = torch.cat([exact, own], 1)
    positions = torch.arange(n).repeat(2)[None].expand(b, -1)
    rope = head.body.model.rotary_emb(rows, position_ids=positions)
    out = head.layer(rows, attention_mask=attend, position_embeddings=rope, position_ids=positions)
    out = out[0] if isinstance(out, tuple) else out
    return head.norm(out[:, n:])


def subset_targets(labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Token labels -> indices in the draft vocabulary, -100 where unknown or outside it."""
    return torch.where(labels >= 0, index[labels.clamp(min=0)], torch.full_like(labels, -100))


def losses(head: EagleHead, batch: list, weight: torch.Tensor, index: torch.Tensor, noise: float,
           generator: torch.Generator | None, second: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy, feature regression, second-step cross-entropy) of one batch; the last is 0
    unless `second` > 0."""
    ids, labels, mask, _ = pad(batch)
    states = pad_states(batch)
    g, normed = head_outputs(head, ids, mask, states, noise, generator)
    out = head.norm(g)
    target = subset_targets(labels[:, 1:], index)  # pair i's label: the target's token after x_{i+1}
    ce = F.cross_entropy(F.linear(out, weight).flatten(0, 1), target.flatten(), ignore_index=-100)
    real = mask[:, 1:].bool()
    reg = F.smooth_l1_loss(out[real], normed[:, 1:][real].detach())
    ce2 = torch.zeros(())
    if second > 0:  # the second step drafts from the first step's own g
        g2 = second_step(head, ids, mask, states, g)
        target2 = target.clone()
        target2[:, 0] = -100
        ce2 = F.cross_entropy(F.linear(g2, weight).flatten(0, 1), target2.flatten(), ignore_index=-100)
    return ce, reg, ce2


@torch.no_grad()
def heldout_agreement(head: EagleHead, seqs: list, weight: torch.Tensor, subset: torch.Tensor,
                      second: bool = False) -> dict[str, float]:
    """Held-out greedy acceptance over answer positions: of the first draft token (exact states)
    and, with `second`, of the second given the first was right (drafted from the head's own
    first-step feature, as at run time)."""
    head.eval()
    first = first_total = right_second = reached_total = 0
    for batch in batches(seqs, 8192, torch.Generator().manual_seed(0)):
        ids, labels, mask, answer = pad(batch)
        states = pad_states(batch)
        g, _ = head_outputs(head, ids, mask, states)
        scored = answer[:, 1:] & (labels[:, 1:] >= 0)
        right = (subset[F.linear(head.norm(g), weight).argmax(-1)] == labels[:, 1:]) & scored
        first, first_total = first + int(right.sum()), first_total + int(scored.sum())
        if second:  # the second token at p + 1 follows a right first token at p
            right2 = subset[F.linear(second_step(head, ids, mask, states, g), weight).argmax(-1)] == labels[:, 1:]
            reached = right[:, :-1] & scored[:, 1:]
            right_second += int((right2[:, 1:] & reached).sum())
            reached_total += int(reached.sum())
    head.train()
    scores = {"first": first / max(1, first_total)}
    return scores | ({"second_given_first": right_second / max(1, reached_total)} if second else {})


def agreement(head: EagleHead, seqs: list, weight: torch.Tensor, subset: torch.Tensor) -> float:
    """Top-1 agreement with the target at held-out answer positions (exact features)."""
    return heldout_agreement(head, seqs, weight, subset)["first"]


def two_step_agreement(head: EagleHead, seqs: list, weight: torch.Tensor, subset: torch.Tensor) -> dict[str, float]:
    """Both figures of `heldout_agreement`, rounded for the head's metadata."""
    return {k: round(v, 4) for k, v in heldout_agreement(head, seqs, weight, subset, second=True).items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--data", type=Path, default=Path(".train_data/smol_states"),
                    help="shards with states: <data>/train (`answer_shards --states` or `selfdistill`)")
    ap.add_argument("--heldout", type=Path, default=Path(".train_data/smol/heldout"),
                    help="held-out shards with states (`selfdistill --split heldout`)")
    ap.add_argument("--run", type=Path, default=Path(".train_data/runs/eagle"))
    ap.add_argument("--out", type=Path, default=None, help=f"the head file (default the model's assets/{HEAD_FILE})")
    ap.add_argument("--init-layer", type=int, default=-1,
                    help="the target layer the head's layer starts from (default the last; none: -100)")
    ap.add_argument("--init-head", type=Path, default=None,
                    help="start from an exported head instead (a new sitting, e.g. on more data)")
    ap.add_argument("--train-vocab", type=int, default=8192)
    ap.add_argument("--reg", type=float, default=1.0, help="weight of the feature regression")
    ap.add_argument("--noise", type=float, default=0.05, help="input feature noise, relative to their scale")
    ap.add_argument("--second", type=float, default=0.0,
                    help="weight of a second drafting step's cross-entropy (its input: the head's own first-step "
                         "feature, as at run time); 0 = off")
    sitting_arguments(ap, epochs=4.0, minutes=30.0)
    ap.add_argument("--eval-only", type=Path, default=None, metavar="HEAD",
                    help="only measure HEAD's held-out acceptance of the first and second draft token, and record "
                         "it in HEAD's metadata")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from .. import api

    target = api.get_model(args.model, dtype="float32").model
    for p in target.parameters():
        p.requires_grad_(False)
    vocab = target.lm_head.weight.shape[0]
    subset = training_vocab(target, args.data / "train", vocab)[:args.train_vocab].long()
    index = subset_index(subset, vocab)
    weight = target.lm_head.weight[subset].detach()
    if args.eval_only is not None:  # and record it in the file's metadata, where the card reads it
        head = load_eagle(args.eval_only, target)
        scores = two_step_agreement(head, load_with_states(args.heldout), weight, subset)
        meta = eagle_meta(args.eval_only)
        meta.setdefault("best", {})["per_position"] = scores
        save_eagle(head, args.eval_only, meta)
        log(f"{args.eval_only}: {scores}")
        return
    head = EagleHead(target, train_vocab=args.train_vocab if args.train_vocab < vocab else 0)
    if args.init_head is not None:
        earlier = load_eagle(args.init_head, target)
        if earlier.train_vocab != head.train_vocab:
            raise SystemExit(f"{args.init_head} drafts over {earlier.train_vocab} tokens, not --train-vocab {args.train_vocab}")
        head.load_own_state(earlier.own_state())
    elif args.init_layer != -100:
        head.layer.load_state_dict(target.model.layers[args.init_layer].state_dict())
    head.train()
    train_seqs, held_seqs = load_with_states(args.data / "train"), load_with_states(args.heldout)
    n_tokens = sum(s[0].numel() for s in train_seqs)
    log(f"{len(train_seqs)} training sequences ({n_tokens} tokens), {len(held_seqs)} held out")
    params = list(head.fc.parameters()) + list(head.layer.parameters())
    opt, total, ckpt_path, step, spent = begin_sitting(params, args, n_tokens, lambda ckpt: head.load_own_state(ckpt["head"]))
    best = {"agreement": agreement(head, held_seqs, weight, subset), "step": step}
    log(f"start (step {step}): held-out agreement {best['agreement']:.4f}")
    noise_gen = torch.Generator().manual_seed(args.seed + 1)
    start = time.time() - spent
    epoch = step * args.batch_tokens // max(1, n_tokens)
    while step < total and time.time() - start < args.minutes * 60:
        for batch in batches(train_seqs, args.batch_tokens, torch.Generator().manual_seed(args.seed * 100 + epoch)):
            lr = warm_cosine(args.lr, step, total)
            ce, reg, ce2 = losses(head, batch, weight, index, args.noise, noise_gen, args.second)
            optimizer_step(opt, params, ce + args.reg * reg + args.second * ce2, lr)
            step += 1
            if step % 25 == 0:
                log(f"step {step}/{total} ce {ce.item():.3f} reg {reg.item():.4f} second {ce2.item():.3f} lr {lr:.2e} "
                    f"{time.time() - start:.0f}s")
            out_of_time = time.time() - start >= args.minutes * 60
            if step % args.eval_every == 0 or step >= total or out_of_time:
                score = agreement(head, held_seqs, weight, subset)
                log(f"step {step}: held-out agreement {score:.4f}")
                own = {k: v.detach().clone() for k, v in head.own_state().items()}
                torch.save({"head": own, "opt": opt.state_dict(), "step": step, "spent": time.time() - start}, ckpt_path)
                if score > best["agreement"]:
                    best = {"agreement": score, "step": step}
                    torch.save(own, args.run / "best.pt")
                if step >= total or out_of_time:
                    break
        epoch += 1
    if (args.run / "best.pt").exists():
        head.load_own_state(torch.load(args.run / "best.pt", weights_only=False))
    best["per_position"] = two_step_agreement(head, held_seqs, weight, subset)
    log(f"the best head on held-out answers: {best['per_position']}")
    meta = {"train_vocab": args.train_vocab, "init_layer": args.init_layer, "reg": args.reg, "noise": args.noise,
            "second": args.second,
            "lr": args.lr, "train_tokens": n_tokens, "train_sequences": len(train_seqs), "steps": step,
            "minutes": round((time.time() - start) / 60, 1), "best": best, "seed": args.seed,
            "heldout_sequences": len(held_seqs), "init_head": str(args.init_head) if args.init_head else None,
            "command": "python -m specviz.train.train_eagle " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    if args.init_head is not None:  # the sittings before this one, for the card
        meta["earlier"] = eagle_meta(args.init_head)
    out = args.out or (REGISTRY[args.model].assets / HEAD_FILE)
    save_eagle(head, out, meta)
    log(f"wrote {out}: best held-out agreement {best['agreement']:.4f} at step {best['step']}")


if __name__ == "__main__":
    main()
