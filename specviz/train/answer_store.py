"""Build a chat model's answer store (`specviz.drafters.answer_store`) from its own greedy answers.

Usage::

    python -m specviz.train.selfdistill --answers-only --out .train_data/answers      # the answers
    python -m specviz.train.answer_store --data .train_data/answers --out assets/models/smollm2-135m-instruct

Each answer goes in after the tokens the chat template adds to open the assistant's turn, so the
store also knows how answers begin; answers are separated by -1. Only the `train` split is used:
the held-out instructions and the project's example prompts (`assets/prompts`) are never answered
into the store. The suffix order is computed here and shipped, so loading costs no sort.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..drafters.answer_store import SEPARATOR, STORE_FILE, AnswerStore, suffix_order
from ..drafters.prompt_lookup import PromptLookup


def turn_opening(tokenizer) -> list[int]:
    """The tokens the chat template puts between a user message and the assistant's answer."""
    message = [{"role": "user", "content": "x"}]
    closed = tokenizer.apply_chat_template(message, tokenize=True, add_generation_prompt=False, return_dict=False)
    opened = tokenizer.apply_chat_template(message, tokenize=True, add_generation_prompt=True, return_dict=False)
    if opened[:len(closed)] != closed:
        raise ValueError("the chat template's generation prompt is not an extension of the closed turn")
    return opened[len(closed):]


def read_answers(folder: Path) -> list[list[int]]:
    """Every answer in `folder`'s shards, in shard order."""
    shards = sorted(folder.glob("shard_*.pt"))
    if not shards:
        raise SystemExit(f"no shards in {folder}: write them with `python -m specviz.train.selfdistill --answers-only`")
    answers: list[list[int]] = []
    for path in shards:
        answers += [list(map(int, a)) for a in torch.load(path, weights_only=False)["answers"]]
    return answers


def store_tokens(answers: list[list[int]], opening: list[int]) -> np.ndarray:
    joined: list[int] = []
    for answer in answers:
        joined += opening + answer + [SEPARATOR]
    return np.asarray(joined, dtype=np.int32)


def read_dialogues(folder: Path, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of every answered instruction in `folder`'s shards."""
    from .instructions import Instruction
    from .selfdistill import encode_all

    dialogues = []
    for path in sorted(folder.glob("shard_*.pt")):
        shard = torch.load(path, weights_only=False)
        prompts = encode_all(tokenizer, [Instruction(**item) for item in shard["items"]])
        dialogues += [(p, list(map(int, a))) for p, a in zip(prompts, shard["answers"])]
    return dialogues


def walk(drafter: PromptLookup, dialogues: list[tuple[list[int], list[int]]], k: int) -> dict:
    """Greedy decoding of the recorded answers with `drafter`'s drafts, as the engine would run it:
    the prefill gives the first token, then per step the draft, its accepted prefix and the
    target's own token. τ counts as the bench does: tokens committed by verifications per verification."""
    steps = drafted = accepted = committed = 0
    for prompt, answer in dialogues:
        done = 1
        while done < len(answer):
            draft, _ = drafter.lookup(prompt + answer[:done], k)
            hits = next((i for i, (d, a) in enumerate(zip(draft, answer[done:])) if d != a),
                        min(len(draft), len(answer) - done))
            steps, drafted, accepted = steps + 1, drafted + len(draft), accepted + hits
            done += min(hits + 1, len(answer) - done)
        committed += max(len(answer) - 1, 0)
    return {"steps": steps, "tau": round(committed / steps, 3), "drafted_per_step": round(drafted / steps, 3),
            "acceptance": round(accepted / max(drafted, 1), 3)}


def calibration(store: AnswerStore, dialogues: list[tuple[list[int], list[int]]], max_ngram: int) -> list[dict]:
    """How often the store's first drafted token was the model's next one, per band of its estimate."""
    bands: dict[int, list[int]] = {}
    for prompt, answer in dialogues:
        for t in range(len(answer)):
            found = store.draft(prompt + answer[:t], 1, max_ngram)
            if found.tokens:
                band = bands.setdefault(min(int(found.probs[0] * 5), 4), [0, 0])
                band[0] += 1
                band[1] += found.tokens[0] == answer[t]
    return [{"estimate": f"{b / 5:.1f}-{(b + 1) / 5:.1f}", "tokens": n, "observed": round(hit / n, 3)}
            for b, (n, hit) in sorted(bands.items())]


def evaluate(store: AnswerStore, dialogues, k: int = 16, confidence: float = 0.3) -> dict:
    """Prompt lookup with and without the store on held-out answers (SmolLM2's lookup defaults)."""
    from ..drafters.prompt_lookup import STORE_NGRAM

    lookup = dict(k=k, max_ngram=3, min_ngram=2, length="match")
    return {"answers": len(dialogues), "tokens": sum(len(a) for _, a in dialogues), "k": k,
            "answer_confidence": confidence,
            "context_only": walk(PromptLookup(**lookup), dialogues, k),
            "with_answers": walk(PromptLookup(**lookup, store=store, answer_confidence=confidence), dialogues, k),
            "calibration": calibration(store, dialogues, STORE_NGRAM)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=Path(".train_data/answers"))
    ap.add_argument("--out", type=Path, default=Path("assets/models/smollm2-135m-instruct"))
    ap.add_argument("--heldout", type=Path, default=None,
                    help="held-out answers to evaluate on (default: <data>/heldout, skipped if absent)")
    args = ap.parse_args(argv)
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    from ..models import REGISTRY, converted_folder

    tokenizer = AutoTokenizer.from_pretrained(converted_folder(REGISTRY[args.model]))
    answers = read_answers(args.data / "train")
    tokens = store_tokens(answers, turn_opening(tokenizer))
    start = time.time()
    order = suffix_order(tokens)
    store = AnswerStore(tokens, order)  # also checks that the order covers the tokens
    print(f"{len(answers)} answers, {tokens.size} tokens, sorted in {time.time() - start:.1f} s", flush=True)
    heldout = args.heldout or args.data / "heldout"
    report = evaluate(store, read_dialogues(heldout, tokenizer)) if heldout.is_dir() else {}
    print(json.dumps(report, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": tokens, "order": order}, str(args.out / STORE_FILE),
              metadata={"answers": str(len(answers)), "model": args.model, "heldout": json.dumps(report),
                        "source": json.dumps(json.loads((args.data / "meta.json").read_text()))})
    print(f"-> {args.out / STORE_FILE}")


if __name__ == "__main__":
    main()
