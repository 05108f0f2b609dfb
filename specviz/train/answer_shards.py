"""Draft-model training shards from the model's recorded answers alone: no generation, no states.

Usage::

    python -m specviz.train.answer_shards --out .train_data/smol_answers                 # train: the shipped answer store
    python -m specviz.train.answer_shards --out .train_data/smol_answers --split heldout \\
        --answers .train_data/answers/heldout     # held out: `selfdistill --answers-only --split heldout`

The answer store (`assets/models/<model>/answer_store.safetensors`) already holds the model's own
greedy answers to every training instruction, in the order `selfdistill` answered them (the
instructions sorted by prompt length). Rebuilding the prompts from the seeded instruction set
gives the whole dialogues back, so a draft model can be trained without running the target's
2,185 generations again (about 80 minutes on one core of this CPU).

Labels: along a greedy answer the target's argmax at a position is the next answer token, and the
last prompt position's argmax is the answer's first token. Other prompt positions get -1 (not
scored): their argmax is unknown without a teacher-forced pass, and the draft drafts answers.
The shards have the keys of `selfdistill`'s (`ids`, `argmax`, `lengths`, `prompt_lengths`, `answers`), so
`train_draft` reads them as they are. With `--states` a teacher-forced fp32 pass adds `last`, the
last layer's output before the final norm at every position (what the CTC / Medusa / EAGLE heads
read), and takes every label from the full model's own argmax there (prompt positions included),
so answers written by another dtype (`selfdistill --dtype bfloat16`) are labelled exactly; without
it they have no states (`--teacher-kl` needs real shards).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..drafters.answer_store import SEPARATOR, STORE_FILE, AnswerStore
from .answer_store import read_dialogues, turn_opening
from .instructions import build
from .selfdistill import answer_order, encode_all, last_layer_output, log, right_padded, write_shard

SHARD = 48  # dialogues per shard, as selfdistill writes them


def store_answers(store: AnswerStore, opening: list[int]) -> list[list[int]]:
    """The answers in the store, in its order (each was stored as opening + answer + separator; the
    store ends with a run of separators, padding for its suffix order's lookahead)."""
    answers, current = [], []
    for token in store.tokens.tolist():
        if token != SEPARATOR:
            current.append(int(token))
            continue
        if not current:  # the padding
            continue
        if current[:len(opening)] != opening:
            raise ValueError("an answer in the store does not start with the chat template's turn opening")
        answers.append(current[len(opening):])
        current = []
    return answers


def train_dialogues(tokenizer, answers: list[list[int]], seed: int) -> list[tuple[list[int], list[int]]]:
    """Each stored answer with its prompt: the train split's instructions in selfdistill's order."""
    items = [it for it in build(seed) if it.split == "train"]
    prompts = encode_all(tokenizer, items)
    order = answer_order(prompts)
    if len(order) != len(answers):
        raise ValueError(f"the store holds {len(answers)} answers, the train split has {len(order)} instructions")
    return [(prompts[i], answers[n]) for n, i in enumerate(order)]


def labels(prompt: list[int], answer: list[int]) -> list[int]:
    """The target's argmax per position where a greedy answer tells it, else -1."""
    if not answer:
        return [-1] * len(prompt)
    # position t predicts token t + 1: the last prompt position the answer's first token, each
    # answer position the next answer token, the last position (after EOS) nothing
    return [-1] * (len(prompt) - 1) + answer + [-1]


@torch.no_grad()
def teacher_pass(model, sequences: list[list[int]], pad: int, rows: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(the last decoder layer's output before the final norm, fp16; the full model's argmax) at
    every real token of `sequences`, flattened in order: one teacher-forced pass (right padding),
    the LM head applied `rows` tokens at a time."""
    ids, mask = right_padded(sequences, pad)
    with last_layer_output(model) as captured:
        model.model(input_ids=ids, attention_mask=mask)
    last = captured["last"][mask.bool()]
    argmax = torch.cat([model.lm_head(model.model.norm(last[i:i + rows])).argmax(-1) for i in range(0, len(last), rows)])
    return last.half(), argmax.int()


def write_shards(dialogues: list[tuple[list[int], list[int]]], folder: Path, tag: str = "", model=None,
                 pad: int = 0, resume: bool = False, part: tuple[int, int] = (0, 1)) -> int:
    """Shards of `SHARD` dialogues; with `model`, each with its last-layer states and the model's own
    labels (`teacher_pass`); skipping the shards already written when `resume`. `part` (i, n):
    only the shards whose number is i modulo n (n processes share the work)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = 0
    for b in range(0, len(dialogues), SHARD):
        batch = dialogues[b:b + SHARD]
        ids = [t for p, a in batch for t in p + a]
        path = folder / f"shard_{tag}{b // SHARD:05d}.pt"
        if (b // SHARD) % part[1] != part[0] or (resume and path.exists()):
            continue
        tokens += len(ids)
        payload = {"ids": torch.tensor(ids, dtype=torch.int32), "lengths": torch.tensor([len(p) + len(a) for p, a in batch]),
                   "prompt_lengths": torch.tensor([len(p) for p, _ in batch]), "answers": [a for _, a in batch]}
        if model is None:  # labels where the greedy answers tell them
            payload["argmax"] = torch.tensor([t for p, a in batch for t in labels(p, a)], dtype=torch.int32)
        else:  # the model's own, everywhere
            payload["last"], payload["argmax"] = teacher_pass(model, [p + a for p, a in batch], pad)
            log(f"{path.name}: states of {len(ids)} tokens")
        write_shard(path, payload)
    return tokens


def part_of(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part takes I/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--part I/N needs 0 <= I < N, got {text!r}")
    return i, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, default=Path(".train_data/smol_answers"))
    ap.add_argument("--split", choices=("train", "heldout"), default="train")
    ap.add_argument("--answers", type=Path, default=None,
                    help="the folder of `selfdistill --answers-only` shards (needed for held out; for train, "
                         "instead of the answer store: e.g. the answers to `--set more`)")
    ap.add_argument("--tag", default="", help="shard name prefix (to add a second set's shards to a folder)")
    ap.add_argument("--seed", type=int, default=0, help="the instruction set's seed (selfdistill's --seed)")
    ap.add_argument("--states", action="store_true",
                    help="also record the last layer's pre-norm states (`last`) and label every position with the "
                         "model's own argmax (one teacher-forced fp32 pass)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="skip the shards already written")
    ap.add_argument("--part", type=part_of, default=(0, 1), metavar="I/N",
                    help="write only the shards whose number is I modulo N (run N processes, I = 0..N-1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from ..models import REGISTRY, MODELS_DIR

    tokenizer = AutoTokenizer.from_pretrained(MODELS_DIR / f"{args.model}-draft")  # the model's own tokenizer
    if args.answers is not None:
        dialogues = read_dialogues(args.answers, tokenizer)
    elif args.split == "train":
        store = AnswerStore.load(REGISTRY[args.model].assets / STORE_FILE)
        dialogues = train_dialogues(tokenizer, store_answers(store, turn_opening(tokenizer)), args.seed)
    else:
        raise SystemExit("--split heldout needs --answers (the held-out answers-only shards)")
    model, pad = None, 0
    if args.states:
        from ..api import get_model

        model = get_model(args.model, dtype="float32").model.eval()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens = write_shards(dialogues, args.out / args.split, args.tag, model, pad, args.resume, args.part)
    log(f"wrote {tokens} tokens of {len(dialogues)} dialogues to {args.out / args.split}")


if __name__ == "__main__":
    main()
