"""Write the card of a chat model's trained drafting parts from what the training scripts recorded.

Usage::

    python -m specviz.train.parts_card --model smollm2-135m-instruct [--bench BENCH.json]

Reads the metadata stored inside each part (exit adapters, vocabulary ranking, CTC / Medusa heads,
the answer store) and the draft model's `training_meta.json`, and writes `assets/models/<model>/DRAFT_PARTS.md`:
data, steps, held-out figures and the command that reproduces each part. Nothing in the card is
typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open

from ..drafters.answer_store import PRIOR, STORE_FILE
from ..drafters.ctc import HEAD_FILES
from ..drafters.draft_heads import ADAPTER_FILE, VOCAB_FILE
from ..drafters.eagle import HEAD_FILE as EAGLE_FILE
from ..models import MODELS_DIR, SMOLLM2

DATA_COMMAND = "python -m specviz.train.selfdistill --out .train_data/smol --split train"


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as fh:
        return fh.metadata() or {}


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _loss_note(meta: dict) -> str:
    """How the loss was split between the full model's argmax and its distribution (`--teacher-kl`)."""
    share = meta.get("teacher_kl") or 0
    if not share:
        return " (cross-entropy against the full model's argmax)"
    return (f" ({1 - share:.0%} cross-entropy against the full model's argmax, {share:.0%} KL divergence from "
            "its distribution)")


def adapters_section(folder: Path) -> list[str]:
    path = folder / ADAPTER_FILE
    if not path.is_file():
        return ["## Exit adapters", "", "Not trained yet."]
    meta = json.loads(_metadata(path)["meta"])
    lines = ["## Exit adapters (early exit, HiSpec)", "",
             f"`{ADAPTER_FILE}` ({_size(path)}, fp16): one residual SwiGLU adapter per exit "
             f"(inner size {meta['inner']}), trained on {meta['train_tokens']:,} tokens "
             f"(positions: {meta['positions']}), loss over the {meta['train_vocab']} most frequent tokens"
             f"{_loss_note(meta)}.", "",
             "| exit | steps | held-out answer tokens | agreement, plain exit | agreement, adapter | "
             "adapter, draft vocabulary |", "|---:|---:|---:|---:|---:|---:|"]
    for exit_layer, r in sorted(meta["exits"].items(), key=lambda kv: int(kv[0])):
        subset = next((v for k, v in r.items() if k.startswith("adapter_agreement_vocab")), None)
        lines.append(f"| {exit_layer} | {r['steps']} | {r['heldout_tokens']:,} | {r['plain_agreement']:.3f} | "
                     f"{r['adapter_agreement']:.3f} | {subset:.3f} |")
    lines += ["", "Agreement = how often the exit's top token equals the full model's on held-out answers "
              "(the greedy acceptance of a one-token draft there). The adapters draft over the draft vocabulary "
              "(`draft_vocab` 0 = auto), the tokens their loss covers: the last column is the one that matters. "
              "Over the whole vocabulary, tokens the loss never pushed down can outscore the right one, which "
              "is why the middle column is lower.", "", f"Reproduce: `{meta['command']}`"]
    return lines


def vocab_section(folder: Path) -> list[str]:
    path = folder / VOCAB_FILE
    if not path.is_file():
        return []
    meta = _metadata(path)
    cover = json.loads(meta.get("heldout_coverage", "{}"))
    row = " | ".join(f"{int(k):,}: {v:.1%}" for k, v in cover.items())
    return ["## Draft vocabulary (FR-Spec)", "",
            f"`{VOCAB_FILE}` ({_size(path)}): every token id, most often emitted first, counted over the "
            "model's own greedy answers to the training instructions.",
            f"Share of held-out answer tokens inside the top N: {row}.", "",
            "Reproduce: `python -m specviz.train.train_adapters --vocab-only`"]


def heads_section(folder: Path) -> list[str]:
    lines = ["## CTC and Medusa heads", ""]
    found = False
    for kind, filename in HEAD_FILES.items():
        path = folder / filename
        if not path.is_file():
            continue
        found = True
        meta = json.loads(_metadata(path).get("meta", "{}"))
        held = meta.get("heldout", {})
        cfg = meta.get("config", {})
        lines.append(f"- **{kind}** `{filename}` ({_size(path)}): {meta.get('params', 0):,} parameters, "
                     f"{cfg.get('frames')} frames, {cfg.get('subset') or 'all'} classes + "
                     f"{'blank' if kind == 'ctc' else 'no blank'}; {meta.get('steps')} steps of "
                     f"{meta.get('batch_size')} ({meta.get('train_seconds')} s); held-out τ "
                     f"{held.get('tau', float('nan')):.3f}, acceptance per position {held.get('accept_per_position')} "
                     f"over {held.get('samples')} contexts. Reproduce: `{meta.get('command', '')}`")
    return lines if found else lines + ["Not trained yet."]


def eagle_section(folder: Path) -> list[str]:
    path = folder / EAGLE_FILE
    if not path.is_file():
        return []
    meta = json.loads(_metadata(path).get("meta", "{}"))
    sittings = [meta]
    while "earlier" in sittings[0]:  # a sitting that started from an earlier export (--init-head)
        sittings.insert(0, sittings[0]["earlier"])
    first = sittings[0]
    init = {-1: "the target's last layer", -100: "a random initialisation"}.get(
        first.get("init_layer"), f"the target's layer {first.get('init_layer')}")
    lines = ["## EAGLE head", "",
             f"`{EAGLE_FILE}` ({_size(path)}, fp16): one decoder layer of the target's own kind (started from {init}) "
             "and the map from (the embedding of the token the target said, its normed last-layer state) to that "
             "layer's input; the target's embeddings, final norm and LM head are shared, not stored. Loss: "
             f"cross-entropy over the {first.get('train_vocab')} most frequent tokens against the full model's argmax, "
             f"plus {first.get('reg')} x the smooth L1 distance of its normed output from the next normed state "
             f"(input noise {first.get('noise')}).", "",
             f"Held-out agreement with the target (answer positions of {meta.get('heldout_sequences')} held-out "
             "instructions, exact states: the greedy acceptance of the first draft token), sitting by sitting:", "",
             "| sitting | steps | minutes | training tokens | held-out agreement (best step) | second token, given "
             "the first was right | command |", "|---:|---:|---:|---:|---:|---:|---|"]
    for n, sitting in enumerate(sittings, 1):
        best = sitting.get("best", {})
        second = best.get("per_position", {}).get("second_given_first")
        lines.append(f"| {n} | {sitting.get('steps')} | {sitting.get('minutes')} | {sitting.get('train_tokens', 0):,} | "
                     f"{best.get('agreement', float('nan')):.3f} (step {best.get('step')}) | "
                     f"{'–' if second is None else f'{second:.3f}'} | `{sitting.get('command', '')}` |")
    return lines + ["", "Data: `python -m specviz.train.answer_shards --out .train_data/smol_states --states` (the "
                    "shipped answer store's dialogues, with their states and the model's own labels; with `--answers` and "
                    "`--tag`, the bf16 answers to the `more` and `cross` instruction sets too) and "
                    "`python -m specviz.train.selfdistill --split heldout --limit 144 --layers 15` (held out); "
                    "`specviz/train/README.md` has every sitting's data."]


def draft_section(model: str) -> list[str]:
    folder = MODELS_DIR / f"{model}-draft"
    meta_path = folder / "training_meta.json"
    if not meta_path.is_file():
        return ["## Draft model", "", "Not trained yet."]
    meta = json.loads(meta_path.read_text())
    sittings = [meta]
    while "earlier" in sittings[0]:  # a sitting that started from an earlier export (--init-draft)
        sittings.insert(0, sittings[0]["earlier"])
    first = sittings[0]
    lines = ["## Draft model", "",
             f"`assets/models/{model}-draft/` ({_size(folder / 'model.safetensors')} of weights, fp16): "
             f"{first['layers']} decoder layers started from the target's layers {first['init_from_target_layers']}, "
             "with the target's own embeddings and LM head (shared at load, not stored). Loss over the "
             f"{first['train_vocab']} most frequent tokens{_loss_note(first)}. Held-out agreement with the target "
             f"(answer positions of {meta['heldout_sequences']} held-out instructions; the greedy acceptance of a "
             "one-token draft there), sitting by sitting:", "",
             "| sitting | steps | training tokens | held-out agreement (best step) | command |", "|---:|---:|---:|---:|---|"]
    for n, sitting in enumerate(sittings, 1):
        lines.append(f"| {n} | {sitting['steps']} | {sitting['train_tokens']:,} | "
                     f"{sitting['best']['agreement']:.3f} (step {sitting['best']['step']}) | `{sitting['command']}` |")
    if len(sittings) > 1:
        lines += ["", "A later sitting starts from the export of the one before (`--init-draft`) with a new optimizer, "
                  "so its steps count from 0. Its shards can be rebuilt from the shipped answer store alone: "
                  "`python -m specviz.train.answer_shards` (and `--split heldout --answers DIR` on the held-out "
                  "answers of `selfdistill --answers-only --split heldout --limit 144`)."]
    return lines


def _walk_row(label: str, r: dict) -> str:
    return f"| {label} | {r['tau']:.3f} | {r['drafted_per_step']:.2f} | {r['acceptance']:.3f} | {r['steps']:,} |"


def store_section(folder: Path) -> list[str]:
    path = folder / STORE_FILE
    if not path.is_file():
        return []
    meta = _metadata(path)
    source = json.loads(meta.get("source", "{}"))
    lines = ["## Answer store (prompt lookup's past answers)", "",
             f"`{STORE_FILE}` ({_size(path)}): the model's own greedy answers to {int(meta['answers']):,} training "
             f"instructions (up to {source.get('max_new', '?')} tokens each), as token ids with a suffix order, "
             "searched by prompt lookup where the context has nothing to copy (`answers`). Each drafted token's "
             f"estimate is its count over the matched n-gram's count + {PRIOR}."]
    held = json.loads(meta.get("heldout", "{}"))
    if held:
        lines += ["", f"Held out: greedy decoding of the recorded answers to {held['answers']} held-out instructions "
                  f"({held['tokens']:,} tokens), drafting as prompt lookup does with k {held['k']}, "
                  f"n-grams 3 to 2, match length and `answer_confidence` {held['answer_confidence']}; no model runs, "
                  "the answers are the model's own:", "",
                  "| drafts from | τ | tokens drafted per step | acceptance | steps |", "|---|---:|---:|---:|---:|",
                  _walk_row("the context only", held["context_only"]),
                  _walk_row("the context, else past answers", held["with_answers"]), "",
                  "Calibration of the store's estimate (its first drafted token, on every held-out answer position "
                  "where it has a match):", "", "| estimate | tokens | observed |", "|---|---:|---:|"]
        lines += [f"| {b['estimate']} | {b['tokens']:,} | {b['observed']:.3f} |" for b in held["calibration"]]
    return lines + ["", "Reproduce: `python -m specviz.train.selfdistill --answers-only --out .train_data/answers` "
                    "(and `--split heldout --limit 144`), then `python -m specviz.train.answer_store`"]


def write(model: str) -> Path:
    folder = MODELS_DIR / model
    lines = [f"# Trained drafting parts of {model}", "",
             "The target model itself is unchanged: every part only shapes the drafts, and every output is "
             "verified by the full model (greedy output equals `generate()`; sampling keeps its distribution).", "",
             "## Data", "",
             "Self-distillation: the model's own greedy answers (up to 160 tokens) to instructions built from "
             "task templates x topics and from passages of the Python standard library's docstrings "
             "(`specviz.train.instructions`). Held out, never trained on: the categories `poem` and `code`, ten "
             "topics in every category, some passages' modules, and the project's example prompts.", "",
             f"Reproduce: `{DATA_COMMAND}` (and `--split heldout --limit 144`). Each part below names the "
             "command of its last training sitting; `specviz/train/README.md` lists every sitting in order.", ""]
    for section in (adapters_section(folder), vocab_section(folder), heads_section(folder), eagle_section(folder), draft_section(model),
                    store_section(folder)):
        if section:
            lines += section + [""]
    out = folder / "DRAFT_PARTS.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    draft_folder = MODELS_DIR / f"{model}-draft"
    if draft_folder.is_dir():  # the draft model's own card: the same section, pointing back
        card = [f"# {model}-draft", "", f"The draft model of {model}; see [DRAFT_PARTS.md](../{model}/DRAFT_PARTS.md) "
                "for the data and the other parts.", ""] + draft_section(model)[1:]
        (draft_folder / "MODEL_CARD.md").write_text("\n".join(card) + "\n", encoding="utf-8")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SMOLLM2)
    print(write(ap.parse_args(argv).model))


if __name__ == "__main__":
    main()
