"""The answer store (a suffix-sorted datastore of the model's own answers) and prompt lookup's
use of it: exact search and counts, lossless greedy decoding through it, a clear message without it."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from specviz.drafters import make_drafter
from specviz.drafters.answer_store import PRIOR, SEPARATOR, STORE_FILE, AnswerStore, suffix_order
from specviz.drafters.prompt_lookup import PromptLookup
from specviz.engine import Engine, GenerationConfig
from tests.tiny import assert_lossless, random_prompt, reference_greedy, tiny_model

S = SEPARATOR


def store_of(*answers: list[int]) -> AnswerStore:
    return AnswerStore(np.array([t for a in answers for t in a + [S]], dtype=np.int32))


def test_suffix_order_sorts_every_start_by_its_following_tokens():
    rng = random.Random(0)
    tokens = [rng.randrange(4) if rng.random() > 0.05 else S for _ in range(400)]
    order = suffix_order(np.array(tokens, dtype=np.int32), depth=6)
    padded = tokens + [S] * 6
    brute = sorted((i for i, t in enumerate(tokens) if t != S), key=lambda i: (padded[i:i + 6], i))
    assert [tuple(padded[i:i + 6]) for i in order] == [tuple(padded[i:i + 6]) for i in brute]
    assert sorted(order.tolist()) == sorted(brute)


def test_find_returns_exactly_the_occurrences_of_a_pattern():
    rng = random.Random(1)
    tokens = [rng.randrange(3) for _ in range(300)]
    store = AnswerStore(np.array(tokens, dtype=np.int32))
    for n in (1, 2, 3, 5):
        for pattern in itertools.islice(itertools.product(range(3), repeat=n), 20):
            lo, hi = store.find(list(pattern))
            expected = {i for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n]) == pattern}
            assert set(store.order[lo:hi].tolist()) == expected, pattern


def test_draft_walks_the_most_frequent_continuation_with_count_estimates():
    store = store_of([7, 1, 2, 3], [7, 1, 2, 3], [7, 1, 2, 4], [5, 1, 9])
    found = store.draft([0, 7, 1], k=4, max_ngram=4)
    assert found.ngram == 2 and found.count == 3  # "7 1" three times; the longer "0 7 1" never
    assert found.tokens == [2, 3]  # then the answers end (separator): nothing is drafted past it
    assert found.probs == pytest.approx([3 / (3 + PRIOR), 2 / (3 + PRIOR)])  # count over occurrences + PRIOR
    assert store.draft([4, 1], k=4, max_ngram=2).tokens == [2, 3]  # backs off to the 1-gram "1"
    assert store.draft([4, 1], k=4, max_ngram=2).probs[0] == pytest.approx(3 / (4 + PRIOR))


def test_draft_stops_where_the_estimated_chance_of_full_acceptance_falls_below_the_bar():
    store = store_of([7, 1, 2, 3], [7, 1, 2, 3], [7, 1, 2, 4], [5, 1, 9])
    first, second = 3 / (3 + PRIOR), 2 / (3 + PRIOR)
    assert store.draft([7, 1], k=4, max_ngram=2, min_prob=first * second + 1e-9).tokens == [2]
    assert store.draft([7, 1], k=4, max_ngram=2, min_prob=first * second).tokens == [2, 3]
    assert store.draft([7, 1], k=4, max_ngram=2, min_prob=first + 1e-9).tokens == []  # not even the first
    assert store.draft([7, 1], k=1, max_ngram=2).tokens == [2]  # k caps it
    assert store.draft([6], k=4, max_ngram=3).tokens == []  # a token never seen
    assert store.draft([1000], k=4, max_ngram=3).tokens == []  # beyond the store's vocabulary


def test_a_store_whose_order_does_not_fit_its_tokens_is_refused():
    with pytest.raises(ValueError, match="rebuild"):
        AnswerStore(np.array([1, 2, S, 3], dtype=np.int32), order=np.array([0, 1], dtype=np.int32))


def own_answers_store(target, prompts: list[list[int]], length: int) -> AnswerStore:
    """A store of the target's own greedy answers to other prompts, plus random noise answers."""
    rng = random.Random(5)
    answers = [reference_greedy(target, p, length) for p in prompts]
    answers += [[rng.randrange(3, 256) for _ in range(30)] for _ in range(20)]
    return store_of(*answers)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prompt_lookup_with_past_answers_is_lossless_and_drafts_from_them(arch):
    target = tiny_model(arch, seed=3, damp={2: 0.05, 3: 0.3, 4: 0.05, 5: 0.3})
    engine = Engine(target)
    # random models repeat themselves, so their answers to other prompts share n-grams with a new one
    store = own_answers_store(target, [random_prompt(s, length=10) for s in range(40, 52)], 40)
    used = accepted = 0
    for seed in range(4):
        prompt = random_prompt(seed, length=10)
        ref = reference_greedy(target, prompt, 40)
        drafter = PromptLookup(k=6, max_ngram=3, min_ngram=2, length="match", store=store, answer_confidence=0.0)
        trace = engine.generate(prompt, drafter, GenerationConfig(max_new_tokens=40))
        assert_lossless(target, prompt, trace.generated, ref)
        from_answers = [s for s in trace.steps if (s.info or {}).get("source") == "past answers" and s.draft_tokens]
        used += len(from_answers)
        accepted += sum(s.accepted for s in from_answers)
    assert used >= 5 and accepted >= 3, f"the store barely drafted ({used} drafts, {accepted} accepted)"


def test_answers_without_a_store_say_what_is_missing(tmp_path):
    target = tiny_model("llama", seed=0, num_layers=2)
    target.specviz_assets = str(tmp_path)
    with pytest.raises(ValueError, match=f"answer store \\({STORE_FILE}\\).*specviz.train.answer_store"):
        make_drafter("prompt-lookup", target, answers=True)
    with pytest.raises(ValueError, match="answers must be true or false"):
        make_drafter("prompt-lookup", target, answers="yes")
    with pytest.raises(ValueError, match="answer_confidence"):
        PromptLookup(answer_confidence=1.5)


def test_a_shipped_store_file_is_found_next_to_the_model(tmp_path):
    from safetensors.numpy import save_file

    tokens = np.array([5, 6, 7, S, 5, 6, 8, S], dtype=np.int32)
    save_file({"tokens": tokens, "order": suffix_order(tokens)}, str(tmp_path / STORE_FILE))
    target = tiny_model("llama", seed=0, num_layers=2)
    target.specviz_assets = str(tmp_path)
    drafter = make_drafter("prompt-lookup", target, answers=True, answer_confidence=0.0)
    assert drafter.settings()["answers"] is True
    assert drafter.store.draft([1, 5], k=3, max_ngram=2).tokens == [6, 7]  # ties: the smaller token


def test_the_cards_walk_counts_the_steps_the_engine_takes():
    """`specviz.train.answer_store.walk` replays greedy decoding over recorded answers without a
    model; on the model's own answers it must take exactly the engine's steps (the card's τ)."""
    from specviz.train.answer_store import walk

    target = tiny_model("llama", seed=3, damp={2: 0.05, 3: 0.3, 4: 0.05, 5: 0.3})
    engine = Engine(target)
    store = own_answers_store(target, [random_prompt(s, length=10) for s in range(40, 52)], 40)
    prompts = [random_prompt(seed, length=10) for seed in range(3)]
    dialogues = [(p, reference_greedy(target, p, 30)) for p in prompts]
    for drafter in (lambda: PromptLookup(k=6, max_ngram=3, min_ngram=2, length="match"),
                    lambda: PromptLookup(k=6, max_ngram=3, min_ngram=2, length="match", store=store,
                                         answer_confidence=0.0)):
        steps = sum(len(engine.generate(p, drafter(), GenerationConfig(max_new_tokens=30)).steps) - 1
                    for p in prompts)  # the prefill is a step of the trace, not a verification
        assert walk(drafter(), dialogues, 6)["steps"] == steps
