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
`train_draft` reads them as they are; they have no states (`--teacher-kl` needs real shards).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..drafters.answer_store import SEPARATOR, STORE_FILE, AnswerStore
from .answer_store import read_dialogues, turn_opening
from .instructions import build
from .selfdistill import answer_order, encode_all, log, write_shard

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


def write_shards(dialogues: list[tuple[list[int], list[int]]], folder: Path, tag: str = "") -> int:
    folder.mkdir(parents=True, exist_ok=True)
    tokens = 0
    for b in range(0, len(dialogues), SHARD):
        batch = dialogues[b:b + SHARD]
        ids = [t for p, a in batch for t in p + a]
        argmax = [t for p, a in batch for t in labels(p, a)]
        write_shard(folder / f"shard_{tag}{b // SHARD:05d}.pt", {
            "ids": torch.tensor(ids, dtype=torch.int32), "argmax": torch.tensor(argmax, dtype=torch.int32),
            "lengths": torch.tensor([len(p) + len(a) for p, a in batch]),
            "prompt_lengths": torch.tensor([len(p) for p, _ in batch]), "answers": [a for _, a in batch]})
        tokens += len(ids)
    return tokens


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
    args = ap.parse_args(argv)
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
    tokens = write_shards(dialogues, args.out / args.split, args.tag)
    log(f"wrote {len(dialogues)} dialogues ({tokens} tokens) to {args.out / args.split}")


if __name__ == "__main__":
    main()
