"""Self-distillation data for a chat model: its own greedy answers, and the states behind them.

Usage::

    python -m specviz.train.selfdistill --model smollm2-135m-instruct --out .train_data/smol
    python -m specviz.train.selfdistill ... --resume          # skips the shards already written
    python -m specviz.train.selfdistill --answers-only --out .train_data/answers   # step 1 only: the answer store's input

For each batch of instructions (`specviz.train.instructions`, sorted by length so padding stays
small) the frozen target

1. answers greedily (`generate()`, left-padded batch, up to `--max-new` tokens), then
2. reads its own prompt + answer once more in one teacher-forced pass and records, per token:
   the inputs of the layers in `--layers` (the "exit" states an adapter reads), the last layer's
   output before the final norm (what the CTC / Medusa heads read), and the argmax of the full
   model's next-token logits (the label every drafter is trained to predict).

Along an answer the argmax at position t is the token at t + 1 (the answer is greedy), so the
multi-token heads take their labels straight from the answer. Prompt positions are kept too:
their argmax is still what this model would say next, which is what a one-token drafter learns.

Shards (`<out>/<split>/shard_#####.pt`) are written atomically, so `--resume` restarts cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .instructions import SETS, Instruction


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def encode_all(tokenizer, items: list[Instruction]) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": it.prompt}], tokenize=True,
                                          add_generation_prompt=True, return_dict=False) for it in items]


@torch.no_grad()
def answer(model, prompts: list[list[int]], pad: int, eos: set[int], max_new: int) -> list[list[int]]:
    """Greedy answers for a batch (left padding), each cut after its first EOS."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         pad_token_id=pad)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        answers.append(row[:cut])
    return answers


def right_padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of a right-padded batch."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    return ids, mask


@contextmanager
def last_layer_output(model) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the last decoder layer's output (before the final norm) of each forward
    pass lands in the yielded dict under "last"."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.model.layers[-1].register_forward_hook(
        lambda mod, args, out: captured.__setitem__("last", out[0] if isinstance(out, tuple) else out))
    try:
        yield captured
    finally:
        hook.remove()


@torch.no_grad()
def record(model, sequences: list[list[int]], layers: list[int], pad: int) -> dict[str, torch.Tensor]:
    """One teacher-forced pass (right padding): per real token, the chosen layers' inputs, the last
    layer's pre-norm output and the full model's argmax."""
    ids, mask = right_padded(sequences, pad)
    with last_layer_output(model) as captured:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    keep = mask.bool()
    result = {f"layer{i}": out.hidden_states[i][keep].half() for i in layers}
    result["last"] = captured["last"][keep].half()
    result["argmax"] = out.logits.argmax(-1)[keep].int()
    result["ids"] = ids[keep].int()
    return result


def answer_order(prompts: list[list[int]]) -> list[int]:
    """The order the instructions are answered and sharded in: by prompt length (so padding stays
    small), ties in set order. `answer_shards` relies on it to pair stored answers with prompts."""
    return sorted(range(len(prompts)), key=lambda i: len(prompts[i]))


def write_shard(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, default=Path(".train_data/smol"))
    ap.add_argument("--split", choices=("train", "heldout"), default="train")
    ap.add_argument("--set", choices=sorted(SETS), default="base",
                    help="the instruction set (`specviz.train.instructions`): base; more, the wider one; cross, each one's "
                         "templates over the other's topics (more and cross: train only)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N instructions (0 = all)")
    ap.add_argument("--max-shards", type=int, default=0,
                    help="write only the first N shards (batches of the shortest prompts first; 0 = all)")
    ap.add_argument("--from-shard", type=int, default=0,
                    help="start at shard N (a second process can fill the later shards of the same set)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--max-new", type=int, default=160)
    ap.add_argument("--layers", default="3,4,6,8,11,15")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--tag", default="", help="shard name prefix (to add a second run's shards to a folder)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="the model's dtype for answering (bfloat16: about 3x faster on a CPU with AMX; its answers "
                         "part from fp32's at near-ties, so use it with --answers-only and label them with "
                         "`answer_shards --states`, whose teacher-forced pass runs in fp32)")
    ap.add_argument("--answers-only", action="store_true",
                    help="write only the prompts' and answers' token ids (no teacher-forced pass, no states): "
                         "the input of `specviz.train.answer_store`")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .. import api
    from ..engine import eos_ids

    if args.dtype != "float32" and not args.answers_only:
        raise SystemExit("--dtype bfloat16 is for --answers-only: the recorded states and labels must be fp32's")
    loaded = api.get_model(args.model, dtype=args.dtype)
    model, tok = loaded.model.eval(), loaded.tokenizer
    layers = [int(x) for x in args.layers.split(",")]
    eos = set(eos_ids(model)) or {tok.eos_token_id}  # where generate() stops
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    items = [it for it in SETS[args.set](args.seed) if it.split == args.split]
    if args.limit:
        items = items[:args.limit]
    prompts = encode_all(tok, items)
    order = answer_order(prompts)
    folder = args.out / args.split
    folder.mkdir(parents=True, exist_ok=True)
    (args.out / "meta.json").write_text(json.dumps({"model": args.model, "layers": layers, "max_new": args.max_new,
                                                    "seed": args.seed, "set": args.set, "eos": sorted(eos)}, indent=1))
    batches = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    if args.max_shards:
        batches = batches[:args.max_shards]
    start, done_tokens = time.time(), 0
    for b, batch in enumerate(batches):
        path = folder / f"shard_{args.tag}{b:05d}.pt"
        if b < args.from_shard or (args.resume and path.exists()):
            continue
        batch_prompts = [prompts[i] for i in batch]
        answers = answer(model, batch_prompts, pad, eos, args.max_new)
        sequences = [p + a for p, a in zip(batch_prompts, answers)]
        payload = {"answers": answers} if args.answers_only else record(model, sequences, layers, pad)
        payload["lengths"] = torch.tensor([len(s) for s in sequences])
        payload["prompt_lengths"] = torch.tensor([len(p) for p in batch_prompts])
        payload["items"] = [items[i].__dict__ for i in batch]
        write_shard(path, payload)
        done_tokens += sum(map(len, answers))
        log(f"shard {b + 1}/{len(batches)}: {sum(map(len, answers))} answer tokens; "
            f"{done_tokens / (time.time() - start):.0f} answer tok/s overall")


if __name__ == "__main__":
    main()
