"""CLaSp drafter: the batched DP against a slow reference and brute force, losslessness, cache
safety, sampling, trace info."""

from __future__ import annotations

import copy
import itertools
import json
import math
from functools import lru_cache

import pytest
import torch

from specviz.drafters import make_drafter
from specviz.drafters.clasp import cell_ranges, layer_dp
from specviz.engine import Engine, GenerationConfig
from specviz.layers import LayerRunner
from specviz.sampling import SamplingConfig
from tests.tiny import ARCHS, assert_lossless, random_prompt, reference_greedy, tiny_model

torch.set_num_threads(1)

DAMP = {2: 0.05, 3: 0.1, 4: 0.02, 5: 0.2}  # small-output layers: skip drafts get real acceptance


@lru_cache(maxsize=None)
def model_for(arch: str, seed: int = 0, num_layers: int = 8, damp: tuple = tuple(DAMP.items())):
    extra = {"sliding_window": 8} if arch == "mistral" else {}  # exercise the sliding-window path
    return tiny_model(arch, seed=seed, num_layers=num_layers, damp=dict(damp), **extra)


def prefill(model, prompt):
    """Full-model prefill as the engine does it: cache of every prompt token, states of the last."""
    runner = LayerRunner(model)
    cache = runner.new_cache()
    with torch.inference_mode():
        out = runner.forward(runner.embed(torch.tensor([prompt])), range(runner.num_layers), 0, cache, capture=True)
    return runner, cache, [s[0, -1] for s in out.states], len(prompt) - 1


# -- the slow reference DP: plain loops, one candidate at a time, ordinary forward on a cache copy ---
@torch.inference_mode()
def reference_dp(runner, cache, states, position, budget, skippable):
    L = runner.num_layers

    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a.float().reshape(1, -1), b.float().reshape(1, -1))[0])

    def run_layer(layer, h):
        fork = copy.deepcopy(cache)
        runner.crop(fork, position, [layer])  # the layer sees [0, position) + the candidate itself
        return runner.forward(h.reshape(1, 1, -1), [layer], position, fork).hidden.reshape(-1)

    g = {(0, 0): states[0]}
    score = {(0, 0): 1.0}
    back = {}
    for i in range(1, L + 1):
        layer = i - 1
        for j in range(0, min(i, budget) + 1):
            options = []
            if (i - 1, j) in g:
                h = run_layer(layer, g[(i - 1, j)])
                options.append((cos(h, states[i]), False, h))
            if layer in skippable and j >= 1 and (i - 1, j - 1) in g:
                h = g[(i - 1, j - 1)]
                options.append((cos(h, states[i]), True, h))
            if not options:
                continue
            best = options[0]
            for opt in options[1:]:
                if opt[0] > best[0]:
                    best = opt
            score[(i, j)], back[(i, j)], g[(i, j)] = best
    skip, j = [], budget
    path = [(L, budget)]
    for i in range(L, 0, -1):
        if back[(i, j)]:
            skip.append(i - 1)
            j -= 1
        path.append((i - 1, j))
    return sorted(skip), score, path[::-1]


DP_CASES = [
    ("llama", 8, 3, True), ("llama", 8, 5, False), ("llama", 6, 2, True),
    ("qwen2", 8, 3, True), ("qwen2", 7, 4, False), ("mistral", 8, 3, True), ("mistral", 8, 6, True),
]


@pytest.mark.parametrize("arch,num_layers,budget,protect", DP_CASES)
def test_batched_dp_matches_reference(arch, num_layers, budget, protect):
    model = model_for(arch, seed=1, num_layers=num_layers)
    # mistral: prompt longer than its sliding window (8), so the window path is exercised
    prompt = random_prompt(3, length=20 if arch == "mistral" else 12)
    runner, cache, states, position = prefill(model, prompt)
    skippable = list(range(1, num_layers - 1)) if protect else list(range(num_layers))
    fast = layer_dp(runner, cache, states, position, budget, skippable)
    skip, score, path = reference_dp(runner, cache, states, position, budget, skippable)
    assert fast.skip == skip
    assert fast.path == path
    assert len(fast.skip) == budget and set(fast.skip) <= set(skippable)
    # every cell the batched DP evaluated matches the reference; the ones it pruned lie on no
    # path to (L, M)
    ranges = cell_ranges(num_layers, budget, skippable)
    for i in range(num_layers + 1):
        for j in range(budget + 1):
            value = float(fast.grid[i, j])
            lo, hi = ranges[i]
            if lo <= j <= hi:
                assert (i, j) in score, (i, j)
                assert math.isclose(value, score[(i, j)], abs_tol=2e-5), (i, j, value, score[(i, j)])
            else:
                assert math.isnan(value), (i, j)
    json.dumps(fast.grid_list(), allow_nan=False)


def test_dp_leaves_real_cache_unchanged():
    model = model_for("mistral", seed=2)
    runner, cache, states, position = prefill(model, random_prompt(5, length=20))
    before = [(s.get_seq_length(), s.keys.clone(), s.values.clone()) for s in cache.layers]
    layer_dp(runner, cache, states, position, 3, list(range(1, 7)))
    for (length, k, v), slot in zip(before, cache.layers):
        assert slot.get_seq_length() == length
        assert torch.allclose(slot.keys, k, atol=0) and torch.allclose(slot.values, v, atol=0)


# -- DP vs brute force over every skip set of size M -------------------------------------------------
@torch.inference_mode()
def final_cosines(runner, cache, states, position, sets):
    """Final-layer cosine to x_L of the token's state after running only the non-skipped layers."""
    h = states[0].reshape(1, -1).repeat(len(sets), 1)
    for layer in range(runner.num_layers):
        run = [n for n, s in enumerate(sets) if layer not in s]
        if run:
            out = runner.layer_on_candidates(layer, h[run].unsqueeze(0), position, cache)[0]
            h = h.clone()
            h[run] = out
    return torch.nn.functional.cosine_similarity(h.float(), states[-1].float().reshape(1, -1), dim=-1)


def test_dp_close_to_brute_force():
    ratios, exact, beaten = [], 0, []
    # (layers, seed, budget, damped): random per-layer output scales, and plain random models
    cases = [(L, seed, int(0.4 * L), True) for L in (6, 8) for seed in range(5)]
    cases += [(8, seed, 4, False) for seed in range(4)]
    for L, seed, budget, damped in cases:
        g = torch.Generator().manual_seed(100 + seed)
        damp = {i: float(s) for i, s in enumerate(torch.rand(L, generator=g) * 0.9 + 0.05)} if damped else None
        model = tiny_model("llama", seed=seed, num_layers=L, damp=damp)
        runner, cache, states, position = prefill(model, random_prompt(seed, length=10))
        skippable = list(range(1, L - 1))
        sets = [frozenset(c) for c in itertools.combinations(skippable, budget)]
        cos = final_cosines(runner, cache, states, position, sets)
        dp = layer_dp(runner, cache, states, position, budget, skippable)
        mine = float(cos[sets.index(frozenset(dp.skip))])
        best = float(cos.max())
        ratios.append(mine / best)
        exact += mine >= best - 1e-6
        beaten.append(float((cos <= mine + 1e-6).float().mean()))  # share of sets the DP matches or beats
        assert math.isclose(mine, dp.score, abs_tol=1e-4)  # the DP's own final cell is that set's cosine
    mean = sum(ratios) / len(ratios)
    msg = (f"DP / brute-force final cosine: mean {mean:.4f}, min {min(ratios):.4f}, "
           f"DP found the best set in {exact}/{len(cases)} cases, "
           f"DP set at or above {100 * sum(beaten) / len(beaten):.1f}% of all sets on average")
    print("\n" + msg)
    assert mean >= 0.95, msg


# -- losslessness vs generate() -----------------------------------------------------------------
SETTINGS = [  # (skip_ratio, dp_interval, k, threshold, protect_ends)
    (0.25, 1, 4, 0.0, True), (0.4, 1, 6, 0.3, True), (0.5, 2, 3, 0.0, True), (0.4, 3, 1, 0.0, True),
    (0.6, 1, 8, 0.6, True), (0.25, 5, 5, 0.9, True), (0.4, 2, 2, 0.0, False), (0.5, 1, 4, 0.5, False),
]
LOSSLESS_CASES = [(arch,) + s for arch in ARCHS for s in SETTINGS]  # 24 combinations


@lru_cache(maxsize=None)
def reference_for(arch: str, n_new: int) -> tuple:
    return tuple(reference_greedy(model_for(arch), random_prompt(7), n_new))


@pytest.mark.parametrize("arch,skip_ratio,dp_interval,k,threshold,protect", LOSSLESS_CASES)
def test_lossless_greedy(arch, skip_ratio, dp_interval, k, threshold, protect):
    model = model_for(arch)
    prompt = random_prompt(7)
    n_new = 28
    drafter = make_drafter("clasp", model, skip_ratio=skip_ratio, dp_interval=dp_interval, k=k,
                           threshold=threshold, protect_ends=protect)
    trace = Engine(model).generate(prompt, drafter, GenerationConfig(max_new_tokens=n_new))
    assert_lossless(model, prompt, trace.generated, list(reference_for(arch, n_new)))
    assert all(len(s.draft_tokens) <= k for s in trace.steps)


def test_lossless_stops_at_eos():
    model = tiny_model("llama", seed=0, num_layers=8, damp=DAMP)
    prompt = random_prompt(7)
    ref = reference_greedy(model, prompt, 28)
    eos = ref[12]  # make a token of the greedy output the EOS: generation must stop right after it
    model.generation_config.eos_token_id = eos
    expected = ref[: ref.index(eos) + 1]
    drafter = make_drafter("clasp", model, skip_ratio=0.4, dp_interval=1, k=6, threshold=0.0)
    trace = Engine(model).generate(prompt, drafter, GenerationConfig(max_new_tokens=28))
    assert trace.generated == expected and trace.finish_reason == "eos"


def test_acceptance_is_nonzero():
    model = model_for("llama")
    drafter = make_drafter("clasp", model, skip_ratio=0.4, dp_interval=1, k=4, threshold=0.0)
    trace = Engine(model).generate(random_prompt(7), drafter, GenerationConfig(max_new_tokens=32))
    accepted = sum(s.accepted for s in trace.steps)
    assert accepted > 0, "the damped layers should make skip drafts acceptable"


@pytest.mark.parametrize("ride", [True, False], ids=["rides-verify", "own-calls"])
def test_trace_info_keys_and_dp_schedule(ride):
    model = model_for("qwen2")
    L = model.config.num_hidden_layers
    drafter = make_drafter("clasp", model, skip_ratio=0.4, dp_interval=3, k=3, threshold=0.0, ride_verify=ride)
    trace = Engine(model).generate(random_prompt(8), drafter, GenerationConfig(max_new_tokens=30))
    json.dumps(trace.to_dict(), allow_nan=False)
    proposals = trace.steps[1:]  # step 0 is the prefill
    M = drafter.budget
    for n, step in enumerate(proposals):  # proposal n follows n verifications
        info = step.info
        assert set(info) >= {"skipped_layers", "dp_ran", "dp_grid", "dp_path", "dp_time"}
        assert info["dp_ran"] == (n % 3 == 0), n  # start() before the first, then every 3rd
        assert info["dp_age"] == n % 3
        assert len(info["skipped_layers"]) == M
        if info["dp_ran"]:
            grid, path = info["dp_grid"], info["dp_path"]
            assert len(grid) == L + 1 and all(len(r) == M + 1 for r in grid)
            assert path[0] == [0, 0] and path[-1] == [L, M] and len(path) == L + 1
            assert all(grid[i][j] is not None for i, j in path)
            skipped = [i for (i, j), (_, j2) in zip(path, path[1:]) if j2 == j + 1]
            assert skipped == info["skipped_layers"]
            assert info["dp_time"] > 0 and info["dp_score"] == grid[L][M]
        else:
            assert info["dp_grid"] is None and info["dp_path"] is None and info["dp_time"] == 0.0
    ran = [s for s in proposals if s.info["dp_ran"]]
    assert len(ran) >= 3
    # start()'s DP (after the prefill) always makes its own layer calls
    assert not ran[0].info["dp_rode_verify"] and ran[0].t_search >= ran[0].info["dp_time"] > 0
    if ride:
        # later DPs rode the previous step's verify pass: their time is part of that verification
        for s in ran[1:]:
            assert s.info["dp_rode_verify"], s.index
            assert trace.steps[s.index - 1].t_verify > s.info["dp_time"] > 0, s.index
        return
    # the engine runs observe() right before the proposal it prepares, so a DP's time is the
    # t_search of the very step marked dp_ran (it read on the step before)
    for s in ran:
        assert not s.info["dp_rode_verify"] and s.t_search >= s.info["dp_time"] > 0, s.index
    assert all(s.t_search < 0.5 * min(r.info["dp_time"] for r in ran) for s in proposals if not s.info["dp_ran"])


def test_sampling_completes_with_valid_tokens():
    model = model_for("llama")
    vocab = model.config.vocab_size
    runs = []
    for _ in range(2):
        drafter = make_drafter("clasp", model, skip_ratio=0.4, dp_interval=2, k=4, threshold=0.2)
        config = GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(temperature=0.8, top_p=0.95, seed=3))
        trace = Engine(model).generate(random_prompt(9), drafter, config)
        out = trace.generated
        assert 1 <= len(out) <= 24 and all(0 <= t < vocab for t in out)
        assert trace.finish_reason in ("length", "eos")
        runs.append(out)
    assert runs[0] == runs[1]  # same seed, same tokens


@pytest.mark.parametrize("option,value,needle", [
    ("skip_ratio", 0.0, "skip_ratio"), ("skip_ratio", 1.2, "skip_ratio"), ("dp_interval", 0, "dp_interval"),
    ("dp_interval", 2.5, "dp_interval"), ("k", 0, "k"), ("threshold", 1.5, "threshold"),
    ("protect_ends", "yes", "protect_ends"),
])
def test_bad_options(option, value, needle):
    with pytest.raises(ValueError, match=needle):
        make_drafter("clasp", model_for("llama"), **{option: value})


class _CheckRider:
    """Wraps CLaSp.observe: for every DP that rode a verify pass, rerun the DP on its own (one
    layer call per layer, `layer_dp`) on the same token, its states from that same pass."""

    def __init__(self, drafter):
        self.drafter, self.pairs = drafter, []
        inner = drafter.observe

        def observe(result):
            rider = result.draft.riders
            if rider is not None:
                alone = layer_dp(result.runner, result.cache, [s[0] for s in result.states], rider.position,
                                 drafter.budget, drafter.skippable)
                self.pairs.append((rider.dp.result(), alone))
            inner(result)

        drafter.observe = observe


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("ratio,k", [(0.4, 3), (0.25, 1), (0.6, 5)])
def test_dp_riding_the_verify_pass_equals_the_dp_on_its_own(arch, ratio, k):
    """Same table, same skip set: the riders saw exactly the prefix [0, position) plus themselves.
    (A mask that let them see the pass's own rows, or a cache that kept their keys, fails this.)"""
    model = model_for(arch)
    drafter = make_drafter("clasp", model, skip_ratio=ratio, dp_interval=1, k=k, threshold=0.0)
    check = _CheckRider(drafter)
    prompt = random_prompt(11)
    trace = Engine(model).generate(prompt, drafter, GenerationConfig(max_new_tokens=40))
    assert trace.generated == reference_greedy(model, prompt, 40)
    assert len(check.pairs) >= 3
    for rode, alone in check.pairs:
        assert rode.skip == alone.skip
        assert torch.allclose(rode.grid, alone.grid, atol=1e-5, equal_nan=True)


def test_riders_need_full_attention():
    """Sliding-window models (mistral here) fall back to the DP's own layer calls, still lossless."""
    model = model_for("mistral")
    drafter = make_drafter("clasp", model, skip_ratio=0.4, dp_interval=1, k=3, threshold=0.0)
    prompt = random_prompt(5)
    trace = Engine(model).generate(prompt, drafter, GenerationConfig(max_new_tokens=20))
    assert trace.generated == reference_greedy(model, prompt, 20)
    assert not any(s.info.get("dp_rode_verify") for s in trace.steps[1:])
    assert sum(bool(s.info.get("dp_ran")) for s in trace.steps[1:]) >= 3


def test_rider_check_catches_a_rider_that_sees_the_pass(monkeypatch):
    """Planted wrong mask: riders also see the pass's own rows (the real pending token among
    them). The DP then scores different states, and the comparison above must notice."""
    def leaky(self, cached, n_real, n_riders, position):
        keys = cached + n_real + n_riders
        column = torch.arange(keys)
        real = column[None, :] <= (cached + torch.arange(n_real))[:, None]
        rider = (column[None, :] < cached + n_real).expand(n_riders, keys).clone()
        rider[:, cached + n_real:] = torch.eye(n_riders, dtype=torch.bool)
        return self._as_mask(torch.cat([real, rider], dim=0))

    monkeypatch.setattr(LayerRunner, "_rider_mask", leaky)
    model = model_for("llama")
    drafter = make_drafter("clasp", model, skip_ratio=0.4, dp_interval=1, k=3, threshold=0.0)
    check = _CheckRider(drafter)
    Engine(model).generate(random_prompt(11), drafter, GenerationConfig(max_new_tokens=40))
    assert check.pairs
    assert any(not torch.allclose(r.grid, a.grid, atol=1e-5, equal_nan=True) for r, a in check.pairs)
