"""The self-distillation pipeline behind SmolLM2's drafting parts runs end to end (tiny sizes): data,
vocabulary ranking, exit adapters, draft model, CTC head, and the card; and its data are what the
parts are trained to predict."""

from __future__ import annotations

import json

import pytest
import torch

from specviz.drafters.ctc import load_head
from specviz.drafters.draft_heads import ADAPTER_FILE, VOCAB_FILE, adapter_meta, load_vocab_rank
from specviz.train import answer_shards, selfdistill, train_adapters, train_ctc, train_draft, train_eagle
from specviz.train.instructions import (HELDOUT_CATEGORIES, HELDOUT_TOPICS, MORE_TOPICS, TEMPLATES, TOPICS, build,
                                       build_cross, build_more)


def test_instructions_hold_out_categories_and_topics():
    items = build()
    train = [i for i in items if i.split == "train"]
    held = [i for i in items if i.split == "heldout"]
    assert len(train) > 1000 and len(held) > 100
    assert not {i.category for i in train} & HELDOUT_CATEGORIES
    templated = [i for i in train if i.category in TEMPLATES]
    assert templated and not {TOPICS[int(i.id.rsplit("-", 1)[1])] for i in templated} & HELDOUT_TOPICS
    assert build() == items  # seeded: the same set every time


def test_the_wider_set_is_train_only_and_keeps_the_held_out_prompts_out():
    """`build_more` adds training instructions only: no held-out topic or category, no prompt of
    the first set, and none of the project's example prompts (the bench's held-out chat set)."""
    import json
    import re
    from pathlib import Path

    more = build_more()
    assert len(more) > 3000 and {i.split for i in more} == {"train"}
    assert not {i.category for i in more} & HELDOUT_CATEGORIES and not set(MORE_TOPICS) & HELDOUT_TOPICS
    held_topic = re.compile(r"\b(" + "|".join(map(re.escape, HELDOUT_TOPICS)) + r")\b")
    assert not [i.prompt for i in more if held_topic.search(i.prompt)]
    assert not {i.prompt for i in more} & {i.prompt for i in build()}
    examples = {json.loads(line)["prompt"] for f in Path("assets/prompts").glob("*.jsonl")
                for line in f.read_text().splitlines() if line.strip()}
    assert not {i.prompt for i in more} & examples
    assert len({i.id for i in more}) == len(more) and build_more() == more


def test_the_cross_set_is_new_train_only_and_keeps_the_held_out_prompts_out():
    """`build_cross` pairs each set's templates with the other's topics: train only, nothing held
    out (no held-out topic or category, no example prompt), no prompt either earlier set asks."""
    import json
    import re
    from pathlib import Path

    cross = build_cross()
    assert len(cross) > 5000 and {i.split for i in cross} == {"train"}
    assert not {i.category for i in cross} & HELDOUT_CATEGORIES
    held_topic = re.compile(r"\b(" + "|".join(map(re.escape, HELDOUT_TOPICS)) + r")\b")
    assert not [i.prompt for i in cross if held_topic.search(i.prompt)]
    assert not {i.prompt for i in cross} & ({i.prompt for i in build()} | {i.prompt for i in build_more()})
    examples = {json.loads(line)["prompt"] for f in Path("assets/prompts").glob("*.jsonl")
                for line in f.read_text().splitlines() if line.strip()}
    assert not {i.prompt for i in cross} & examples
    assert len({i.id for i in cross}) == len(cross) and build_cross() == cross


def test_answer_shards_from_answers_only_shards(smollm2, tmp_path):
    """`selfdistill --answers-only` on the wider set, then `answer_shards --answers` for train with
    a tag: the shards pair each answer with its prompt and label the answer positions."""
    answers = tmp_path / "answers"
    selfdistill.main(["--out", str(answers), "--set", "more", "--answers-only", "--limit", "2", "--batch", "2",
                      "--max-new", "6", "--threads", "2"])
    answer_shards.main(["--out", str(tmp_path / "shards"), "--answers", str(answers / "train"), "--tag", "more"])
    shard = torch.load(tmp_path / "shards" / "train" / "shard_more00000.pt", weights_only=False)
    offset = 0
    for length, prompt, answer in zip(shard["lengths"].tolist(), shard["prompt_lengths"].tolist(), shard["answers"]):
        assert shard["ids"][offset + prompt: offset + length].tolist() == answer
        assert shard["argmax"][offset + prompt - 1: offset + length - 1].tolist() == answer
        offset += length
    assert offset == shard["ids"].numel()


@pytest.fixture(scope="module")
def shards(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("smol")
    for split in ("train", "heldout"):
        selfdistill.main(["--out", str(out), "--split", split, "--limit", "3", "--batch", "3", "--max-new", "12",
                          "--layers", "4,15", "--threads", "2"])
    return out


def test_shards_hold_the_models_own_greedy_answers(shards):
    shard = torch.load(next((shards / "train").glob("shard_*.pt")), weights_only=False)
    offset = 0
    for length, prompt in zip(shard["lengths"].tolist(), shard["prompt_lengths"].tolist()):
        answer = shard["ids"][offset + prompt: offset + length]
        predicted = shard["argmax"][offset + prompt - 1: offset + length - 1]
        assert torch.equal(answer, predicted)  # each answer token is the model's argmax before it
        offset += length
    assert shard["layer4"].shape == shard["last"].shape == (offset, 576)


def test_the_pipeline_trains_every_part(shards, tmp_path):
    parts = tmp_path / "parts"
    train_adapters.main(["--data", str(shards), "--run", str(tmp_path / "run"), "--out", str(parts),
                         "--exits", "4", "--minutes", "0.05", "--batch", "64", "--train-vocab", "2048",
                         "--teacher-kl", "0.5"])
    meta = adapter_meta(parts / ADAPTER_FILE)
    assert set(meta["exits"]) == {"4"} and meta["exits"]["4"]["steps"] >= 1 and meta["teacher_kl"] == 0.5
    train_adapters.main(["--data", str(shards), "--out", str(parts), "--vocab-only"])
    rank = load_vocab_rank(parts / VOCAB_FILE)
    assert sorted(rank.tolist()) == list(range(49152))
    train_draft.main(["--data", str(shards), "--run", str(tmp_path / "draft_run"), "--out", str(tmp_path / "draft"),
                      "--minutes", "0.05", "--batch-tokens", "256", "--train-vocab", "2048", "--teacher-kl", "0.5"])
    stored = json.loads((tmp_path / "draft" / "training_meta.json").read_text())
    assert stored["layers"] == 2 and "command" in stored and stored["teacher_kl"] == 0.5
    # a later sitting from the exported draft, on shards rebuilt from the answers alone
    dialogues = [(p, a) for shard in sorted((shards / "train").glob("shard_*.pt"))
                 for p, a in recorded_dialogues(torch.load(shard, weights_only=False))]
    answer_shards.write_shards(dialogues, tmp_path / "answers" / "train")
    answer_shards.write_shards(dialogues, tmp_path / "answers" / "heldout")
    train_draft.main(["--data", str(tmp_path / "answers"), "--init-draft", str(tmp_path / "draft"),
                      "--run", str(tmp_path / "draft_run2"), "--out", str(tmp_path / "draft2"), "--minutes", "0.05",
                      "--batch-tokens", "256", "--train-vocab", "2048"])
    again = json.loads((tmp_path / "draft2" / "training_meta.json").read_text())
    assert again["init_draft"] == str(tmp_path / "draft") and again["steps"] >= 1
    train_ctc.main(["--shards", str(shards), "--model", "smollm2-135m-instruct", "--head", "medusa", "--steps", "2",
                    "--batch-size", "4", "--eval-every", "1", "--val-samples", "4", "--heldout-samples", "4",
                    "--out", str(tmp_path / "heads"), "--export-dir", str(parts), "--threads", "2"])
    head, meta = load_head(parts / "medusa_head.safetensors")
    assert head.cfg.subset == 8192 and meta["steps"] == 2


def test_distill_loss_mixes_the_teachers_label_and_its_distribution():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    labels = teacher.argmax(-1)
    labels[2] = -100  # a label outside the draft vocabulary: in neither term
    hard = torch.nn.functional.cross_entropy(student, labels, ignore_index=-100)
    assert torch.allclose(train_adapters.distill_loss(student, None, labels, 0.0), hard)
    assert torch.allclose(train_adapters.distill_loss(student, teacher, labels, 0.0), hard)
    kept = labels != -100
    soft = (teacher[kept].softmax(-1) * (teacher[kept].log_softmax(-1) - student[kept].log_softmax(-1))).sum(-1).mean()
    assert torch.allclose(train_adapters.distill_loss(student, teacher, labels, 1.0), soft)
    assert torch.allclose(train_adapters.distill_loss(student, teacher, labels, 0.25), 0.75 * hard + 0.25 * soft)
    # the divergence is zero when the draft already has the teacher's distribution, even where
    # its argmax is all the hard label could say
    assert train_adapters.distill_loss(teacher + 3.0, teacher, labels, 1.0).abs() < 1e-5
    with pytest.raises(SystemExit):
        train_draft.main(["--teacher-kl", "1.5"])


def recorded_dialogues(shard) -> list[tuple[list[int], list[int]]]:
    out, offset = [], 0
    for length, prompt in zip(shard["lengths"].tolist(), shard["prompt_lengths"].tolist()):
        ids = shard["ids"][offset: offset + length].tolist()
        out.append((ids[:prompt], ids[prompt:]))
        offset += length
    return out


def test_answer_shards_label_what_the_teacher_pass_labels(shards, tmp_path):
    """Shards rebuilt from the answers alone carry the real shards' labels wherever a greedy answer
    tells them (the last prompt position and the answer), and -1 (unscored) elsewhere."""
    real = torch.load(next((shards / "train").glob("shard_*.pt")), weights_only=False)
    answer_shards.write_shards(recorded_dialogues(real), tmp_path)
    rebuilt = torch.load(tmp_path / "shard_00000.pt", weights_only=False)
    assert torch.equal(rebuilt["ids"], real["ids"].int()) and torch.equal(rebuilt["lengths"], real["lengths"])
    known = rebuilt["argmax"] >= 0
    assert torch.equal(rebuilt["argmax"][known], real["argmax"].int()[known])
    answer = train_adapters.load_shards(tmp_path, ["ids"])["answer"]
    assert torch.equal(known, answer)  # exactly the positions that predict an answer token


def test_answer_shards_record_the_teacher_passs_states_and_an_eagle_head_trains_on_them(smollm2, shards, tmp_path):
    """`answer_shards --states` records the same last-layer states and argmax labels (prompt
    positions included) as the teacher-forced pass of `selfdistill`; `train_eagle` then runs a sitting on them and writes a
    head the drafter loads."""
    from specviz.drafters.eagle import load_eagle

    real = torch.load(next((shards / "train").glob("shard_*.pt")), weights_only=False)
    pad = smollm2.tokenizer.pad_token_id
    answer_shards.write_shards(recorded_dialogues(real), tmp_path / "states" / "train", model=smollm2.model, pad=pad)
    rebuilt = torch.load(tmp_path / "states" / "train" / "shard_00000.pt", weights_only=False)
    assert rebuilt["last"].shape == real["last"].shape
    torch.testing.assert_close(rebuilt["last"].float(), real["last"].float(), atol=2e-2, rtol=1e-2)
    assert torch.equal(rebuilt["argmax"], real["argmax"].int())  # the model's own label at every position
    train_eagle.main(["--data", str(tmp_path / "states"), "--heldout", str(shards / "heldout"), "--run",
                      str(tmp_path / "run"), "--out", str(tmp_path / "eagle.safetensors"), "--minutes", "0.05",
                      "--batch-tokens", "256", "--train-vocab", "2048", "--threads", "2"])
    head = load_eagle(tmp_path / "eagle.safetensors", smollm2.model)
    assert head.train_vocab == 2048


def test_store_answers_come_back_in_order():
    import numpy as np

    from specviz.drafters.answer_store import SEPARATOR, AnswerStore
    from specviz.train.answer_store import store_tokens

    opening, answers = [1, 2], [[5, 6, 7], [8], [9, 9]]
    tokens = np.concatenate([store_tokens(answers, opening), np.full(4, SEPARATOR, dtype=np.int32)])  # padded
    assert answer_shards.store_answers(AnswerStore(tokens), opening) == answers
    with pytest.raises(ValueError, match="turn opening"):
        answer_shards.store_answers(AnswerStore(store_tokens(answers, [3])), opening)
    assert answer_shards.labels([4, 4, 4], [5, 6]) == [-1, -1, 5, 6, -1]
