"""The engine is lossless: greedy output equals generate(), sampling keeps the target distribution,
the cache after any accept/reject pattern equals plain decoding's."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from specviz.drafters import make_drafter
from specviz.engine import Engine, GenerationConfig
from specviz.sampling import SamplingConfig, Verdict, sample
from tests.conftest import DEVICES
from tests.tiny import ARCHS, EOS, assert_lossless, random_prompt, reference_greedy, tiny_model

# Damped middle/upper layers give layer-skip drafts real acceptance, so both accept and reject
# paths run; layer 0 stays strong.
DAMP = {2: 0.05, 3: 0.3, 4: 0.05, 5: 0.3}

# (drafter, options) across presets, k and thresholds
CASES = [
    ("ar", {}),
    ("static-skip", {"skip": "alternate", "k": 4}),
    ("static-skip", {"skip": "ratio", "skip_ratio": 0.5, "k": 3, "threshold": 0.2}),
    ("static-skip", {"skip": [2, 4], "k": 6}),
    ("early-exit", {"exit_layer": 2, "k": 4}),
    ("early-exit", {"exit_layer": 4, "k": 8, "threshold": 0.3}),
    ("early-exit", {"exit_layer": 1, "k": 1}),
    ("prompt-lookup", {"k": 5, "max_ngram": 3}),
    ("prompt-lookup", {"k": 2, "max_ngram": 1}),
    ("prompt-lookup", {"k": 12, "max_ngram": 2, "length": "match"}),
    ("draft-model", {"k": 4}),
    ("draft-model", {"k": 2, "threshold": 0.4}),
]


_models: dict = {}


def model_for(arch: str, seed: int, device: str = "cpu", **extra):
    key = (arch, seed, device, tuple(sorted(extra.items())))
    if key not in _models:
        target = tiny_model(arch, seed=seed, damp=DAMP, **extra).to(device)
        torch.manual_seed(seed + 100)
        draft = tiny_model(arch, seed=seed + 1, num_layers=2, **extra).to(device)
        # a draft model that mostly agrees with the target: copy embeddings and head
        draft.model.embed_tokens.weight.data.copy_(target.model.embed_tokens.weight.data)
        draft.lm_head.weight.data.copy_(target.lm_head.weight.data)
        _models[key] = (target, draft, Engine(target))
    return _models[key]


def build(name, options, target, draft):
    if name == "draft-model":
        options = dict(options, draft_model=draft)
    return make_drafter(name, target, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_greedy_matches_generate(arch, name, options, device):
    """Every drafter, 3 architectures, 2 seeds x 2 prompts each (one repetitive, for prompt lookup)."""
    for seed, repeat in itertools.product((0, 1), (False, True)):
        target, draft, engine = model_for(arch, seed, device)
        prompt = random_prompt(seed * 7 + repeat, length=10, repeat=repeat)
        ref = reference_greedy(target.cpu() if device == "cpu" else target, prompt, 40)
        trace = engine.generate(prompt, build(name, options, target, draft), GenerationConfig(max_new_tokens=40))
        assert_lossless(target, prompt, trace.generated, ref)


@pytest.mark.parametrize("arch,extra", [
    ("mistral", {"sliding_window": 8}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 3}),
])
@pytest.mark.parametrize("name,options", [("static-skip", {"k": 4}), ("early-exit", {"exit_layer": 2, "k": 5})])
def test_greedy_matches_generate_past_sliding_window(arch, extra, name, options):
    target, draft, engine = model_for(arch, 3, **extra)
    prompt = random_prompt(5, length=14)
    ref = reference_greedy(target, prompt, 30)
    trace = engine.generate(prompt, build(name, options, target, draft), GenerationConfig(max_new_tokens=30))
    assert_lossless(target, prompt, trace.generated, ref)


def test_eos_stops_like_generate():
    """A model that emits EOS: output, including the EOS and nothing after it, equals generate()."""
    for seed in range(40):
        target = tiny_model("llama", seed=seed, damp=DAMP, vocab=12)
        prompt = random_prompt(seed, length=6, vocab=12)
        ref = reference_greedy(target, prompt, 30)
        if EOS in ref:
            break
    else:
        pytest.fail("no seed produced an EOS; the test needs one")
    engine = Engine(target)
    for name, options in [("ar", {}), ("static-skip", {"k": 4}), ("prompt-lookup", {"k": 4, "max_ngram": 2})]:
        trace = engine.generate(prompt, make_drafter(name, target, **options), GenerationConfig(max_new_tokens=30))
        assert trace.generated == ref, name
        assert trace.finish_reason == "eos" and trace.generated[-1] == EOS


@pytest.mark.parametrize("name,options", [("static-skip", {"skip": [1, 3], "k": 4}), ("early-exit", {"exit_layer": 3, "k": 5}),
                                          ("prompt-lookup", {"k": 4}), ("prompt-lookup", {"k": 8, "length": "match"})])
def test_cache_equals_plain_decoding(name, options):
    """After every step, whatever was accepted or rejected, every layer's cache equals the one a
    plain forward over the committed tokens (all but the pending one) builds."""
    target, draft, engine = model_for("llama", 0)
    prompt = random_prompt(3, length=10, repeat=True)
    generation = engine.start(prompt, build(name, options, target, draft), GenerationConfig(max_new_tokens=30))
    patterns = set()
    for event in generation:
        patterns.add((len(event.draft_tokens), event.accepted))
        committed = generation.tokens[:-1]
        with torch.no_grad():
            ref = target(torch.tensor([committed]), use_cache=True).past_key_values
        for ours, theirs in zip(generation.cache.layers, ref.layers):
            assert ours.keys.shape == theirs.keys.shape
            assert torch.allclose(ours.keys, theirs.keys, atol=1e-5)
            assert torch.allclose(ours.values, theirs.values, atol=1e-5)
    accepts = {a for k, a in patterns if k}
    rejects = {(k, a) for k, a in patterns if a < k}
    assert accepts - {0} and rejects, f"want both accepted drafts and rejections, saw {patterns}"


# -- sampling exactness ---------------------------------------------------------------------

V = 4  # vocabulary of the sampling model: small enough to enumerate 3-token continuations


def exact_joint(model, prompt, sampling, length):
    """The target's exact distribution over the next `length` tokens (enumeration)."""
    probs = {(): 1.0}
    for _ in range(length):
        nxt = {}
        for seq, p in probs.items():
            with torch.no_grad():
                logits = model(torch.tensor([prompt + list(seq)])).logits[0, -1]
            q = sampling.probs(logits)
            for tok in range(V):
                nxt[seq + (tok,)] = p * float(q[tok])
        probs = nxt
    return probs


def always_accept(draft, draft_probs, target_probs, generator):
    """A wrong rule: keeps every draft token (outputs follow the draft's distribution)."""
    return Verdict(len(draft), sample(target_probs[len(draft)], generator))


def resample_from_target(draft, draft_probs, target_probs, generator):
    """A subtly wrong rule: right acceptance test, but resamples from p instead of norm(max(0, p - q))."""
    from specviz.sampling import uniform
    for i, tok in enumerate(draft):
        p, q = target_probs[i], draft_probs[i]
        if uniform(generator) >= min(1.0, float(p[tok]) / max(float(q[tok]), 1e-12)):
            return Verdict(i, sample(p, generator))
    return Verdict(len(draft), sample(target_probs[len(draft)], generator))


def sampled_counts(engine, drafter_factory, prompt, sampling_kwargs, runs, accept_rule=None):
    counts = {}
    for seed in range(runs):
        # 4 new tokens: the step after the prefill drafts 2, so tokens 2 and 3 pass through the
        # acceptance rule; the first 3 tokens are compared with the exact joint.
        config = GenerationConfig(max_new_tokens=4, sampling=SamplingConfig(seed=seed, **sampling_kwargs))
        trace = engine.generate(prompt, drafter_factory(), config, accept_rule=accept_rule)
        key = tuple(trace.generated[:3])
        counts[key] = counts.get(key, 0) + 1
    return counts


def chi_square_p(counts, exact, runs):
    cells = sorted(exact)
    observed = [counts.get(c, 0) for c in cells]
    expected = [exact[c] * runs for c in cells]
    # pool cells with small expected counts so the chi-square approximation holds
    big = [i for i, e in enumerate(expected) if e >= 5]
    small = [i for i, e in enumerate(expected) if e < 5]
    obs = [observed[i] for i in big]
    exp = [expected[i] for i in big]
    if small:
        obs.append(sum(observed[i] for i in small))
        exp.append(sum(expected[i] for i in small))
    assert sum(obs) == runs, "a sampled sequence fell outside the enumerated support"
    total = sum(exp)  # 1 up to float rounding, which chisquare refuses
    return chisquare(obs, [e * runs / total for e in exp]).pvalue


@pytest.fixture(scope="module")
def sampling_setup():
    # Early exit at layer 1 of 3: the draft distribution q really differs from p.
    target = tiny_model("llama", seed=4, num_layers=3, vocab=V, hidden=32, damp={1: 0.5, 2: 0.5})
    with torch.no_grad():
        target.lm_head.weight.mul_(0.5)  # soften: every 3-token sequence has real mass
    # no EOS inside this vocabulary: every run yields 3 tokens, as the enumeration assumes
    target.generation_config.eos_token_id = None
    target.config.eos_token_id = None
    prompt = [3, 1, 0, 1, 2]
    sampling = {"temperature": 1.0}
    exact = exact_joint(target, prompt, SamplingConfig(**sampling), 3)
    return target, prompt, sampling, exact


RUNS = 2000


# The right rule and the subtle wrong one are also run, on a harder target, for every drafter by
# test_sampling_power (early exit included), so here they are kept for `pytest -m slow` (~10 s
# each); the blunt wrong rule stays in the default run as this file's quick check of the test.
@pytest.mark.slow
def test_sampling_keeps_target_distribution(sampling_setup):
    target, prompt, sampling, exact = sampling_setup
    engine = Engine(target)
    factory = lambda: make_drafter("early-exit", target, exit_layer=1, k=2)  # noqa: E731
    counts = sampled_counts(engine, factory, prompt, sampling, RUNS)
    p = chi_square_p(counts, exact, RUNS)
    assert p > 0.01, f"speculative sampling deviates from the target distribution (chi-square p={p:.2g})"


@pytest.mark.parametrize("wrong_rule", [always_accept, pytest.param(resample_from_target, marks=pytest.mark.slow)])
def test_sampling_test_catches_a_wrong_rule(sampling_setup, wrong_rule):
    """The same test with a wrong acceptance rule must fail: it has teeth."""
    target, prompt, sampling, exact = sampling_setup
    engine = Engine(target)
    factory = lambda: make_drafter("early-exit", target, exit_layer=1, k=2)  # noqa: E731
    counts = sampled_counts(engine, factory, prompt, sampling, RUNS, accept_rule=wrong_rule)
    p = chi_square_p(counts, exact, RUNS)
    assert p < 1e-3, f"{wrong_rule.__name__} went unnoticed (chi-square p={p:.2g})"


def test_sampling_with_top_p_and_top_k_runs_and_is_reproducible():
    target, draft, engine = model_for("llama", 0)
    prompt = random_prompt(1)
    config = GenerationConfig(max_new_tokens=20, sampling=SamplingConfig(temperature=0.8, top_p=0.9, top_k=20, seed=7))
    runs = [engine.generate(prompt, make_drafter("static-skip", target, k=3), config).generated for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 20


def test_prompt_lookup_prefers_a_match_with_a_full_continuation():
    from specviz.drafters.prompt_lookup import find_continuation
    # the latest match of [9] is followed only by [9]: a full-length continuation from an earlier
    # match beats it
    assert find_continuation([5, 9, 7, 8, 6, 1, 9, 9], max_ngram=1, min_ngram=1, k=3) == ([7, 8, 6], 1, 1)
    # the latest match wins when it has k tokens after it
    assert find_continuation([1, 2, 3, 4, 1, 2, 5, 6, 1, 2], max_ngram=2, min_ngram=1, k=2) == ([5, 6], 2, 4)
    # longest n-gram first; no match at all -> empty draft
    assert find_continuation([1, 2, 3], max_ngram=3, min_ngram=1, k=2) == ([], 0, -1)


def _choice(token: int, confidence: float):
    from specviz.drafters.base import DraftChoice
    return DraftChoice(token, torch.zeros(4), confidence, confidence)


def test_confidence_stop_keeps_the_unsure_token_it_already_paid_for():
    """The draft ends after (not before) a token below the threshold: that token's draft pass is
    spent, and verifying it costs one row. The old rule (drop it) must fail this."""
    from specviz.drafters.base import DraftBuilder
    builder = DraftBuilder(limit=5, threshold=0.5, eos=frozenset())
    assert builder.offer(_choice(7, 0.9))
    assert not builder.offer(_choice(8, 0.2))  # unsure: kept, drafting ends
    assert builder.tokens == [7, 8] and builder.done
    assert not builder.offer(_choice(9, 0.99))  # nothing after the stop
    assert builder.tokens == [7, 8]
    first = DraftBuilder(limit=5, threshold=0.5, eos=frozenset())
    assert not first.offer(_choice(3, 0.1)) and first.tokens == [3]  # an unsure first token is verified too
    off = DraftBuilder(limit=2, threshold=0.0, eos=frozenset({2}))
    assert off.offer(_choice(5, 0.01)) and not off.offer(_choice(2, 0.9)) and off.tokens == [5, 2]


def test_prompt_lookup_match_length_extends_the_ngram_backwards():
    from specviz.drafters.prompt_lookup import match_length
    tokens = [1, 2, 3, 4, 5, 9, 3, 4, 5]
    # the 2-gram [4, 5] at index 3 extends back over 3 (index 2) but not over 2 != 9
    assert match_length(tokens, start=3, n=2, cap=8) == 3
    assert match_length(tokens, start=3, n=2, cap=2) == 2  # capped
    # the extension stops at the start of the context
    assert match_length([7, 8, 0, 7, 8], start=0, n=2, cap=8) == 2
    assert match_length([5, 5, 5, 5], start=1, n=1, cap=8) == 2  # [5, 5] ending at index 2 vs the last two


def lookup_draft(tokens, **options):
    from specviz.drafters.base import DecodeState
    from specviz.drafters.prompt_lookup import PromptLookup
    state = DecodeState(tokens=tokens, runner=None, cache=None, max_draft=32, sampling=SamplingConfig(),
                        generator=None, record=True)
    return PromptLookup(**options).propose(state)


def test_prompt_lookup_drafts_as_long_as_the_match_in_match_mode():
    passage = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    # the context repeats 5 tokens of the passage: "match" drafts 5 tokens, "fixed" k
    context = passage + [1, 2] + passage[:5]
    assert lookup_draft(context, k=8, max_ngram=3).tokens == passage[5:] + [1]
    assert lookup_draft(context, k=8, max_ngram=3, length="match").tokens == passage[5:10]
    # a 1-gram match earns a 1-token draft; a long agreement is capped at k
    assert lookup_draft(passage + [30, 14], k=8, max_ngram=3, length="match").tokens == [15]
    assert lookup_draft(passage + passage[:11], k=4, max_ngram=3, length="match").tokens == [21, 10, 11, 12]


def test_prompt_lookup_rejects_an_unknown_length():
    from specviz.drafters.prompt_lookup import PromptLookup
    with pytest.raises(ValueError, match="length must be one of fixed, match"):
        PromptLookup(length="long")


@pytest.mark.parametrize("rows", [1, 2, 5, 9, 20])
@pytest.mark.parametrize("layout", ["linear", "x @ W.T", "W @ x.T"])
def test_every_cpu_head_layout_computes_the_linear_head(rows, layout):
    from specviz.layers import LAYOUTS
    torch.manual_seed(rows)
    weight = torch.randn(300, 24)
    x = torch.randn(rows, 24)
    got = LAYOUTS[layout](x, weight)
    assert got.shape == (rows, 300)
    assert torch.allclose(got, torch.nn.functional.linear(x, weight), atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_cpu_head_times_the_layouts_of_a_large_head_and_computes_it(monkeypatch, bias):
    """A head over MIN_TIMED_SIZE entries has its layout measured once per row count; any pick
    computes the linear head (a small head's bias included)."""
    from specviz import layers
    monkeypatch.setattr(layers, "_LAYOUT_OF", {})
    monkeypatch.setattr(layers.CPUHead, "MIN_TIMED_SIZE", 1000)
    owner = torch.nn.Module()
    owner.lm_head = torch.nn.Linear(24, 300, bias=bias)
    x = torch.randn(1, 3, 24)
    got = layers.CPUHead(owner)(x)
    assert torch.allclose(got, owner.lm_head(x), atol=1e-5)
    assert set(layers._LAYOUT_OF) == {((300, 24), torch.float32, 3)}
    assert layers._LAYOUT_OF[(300, 24), torch.float32, 3] in layers.LAYOUTS


def test_the_fastest_layout_is_the_one_with_the_lowest_minimum(monkeypatch):
    """A fake clock where each layout's calls take fixed times (one of W @ x.T's trials was
    preempted): the pick is the lowest minimum, and it is remembered, not re-timed."""
    from specviz import layers
    seconds = {"linear": [3.0, 3.0, 3.0], "x @ W.T": [2.0, 2.5, 2.0], "W @ x.T": [9.0, 1.0, 9.0]}
    calls = {name: 0 for name in seconds}
    now = [0.0]

    def timed(name):
        def product(x, w):
            i = calls[name] - 1  # the first call is the untimed warm-up
            calls[name] += 1
            if i >= 0:
                now[0] += seconds[name][i]
            return x @ w.t()
        return product

    monkeypatch.setattr(layers, "LAYOUTS", {name: timed(name) for name in seconds})
    monkeypatch.setattr(layers, "_LAYOUT_OF", {})
    weight, flat = torch.randn(2048, 512), torch.randn(2, 512)
    assert layers.layout_for(weight, flat, clock=lambda: now[0]) == "W @ x.T"
    assert calls == {name: 1 + layers.LAYOUT_TRIALS for name in seconds}
    assert layers.layout_for(weight, flat, clock=lambda: now[0]) == "W @ x.T"
    assert calls == {name: 1 + layers.LAYOUT_TRIALS for name in seconds}  # remembered
    assert layers.layout_for(weight, torch.randn(100, 512)) == "linear"  # beyond MAX_TIMED_ROWS
    assert layers.layout_for(torch.randn(30, 8), flat[:, :8]) == "linear"  # a small head


def test_the_transposed_copy_follows_its_weight():
    """The transposed copy is shared by heads of one weight, and remade when the weight changes in
    place or the head is swapped (a stale copy would draft and verify with the old head)."""
    from specviz.layers import LAYOUTS
    owner = torch.nn.Module()
    owner.lm_head = torch.nn.Linear(8, 40, bias=False)
    x = torch.randn(1, 8)
    transposed = LAYOUTS["x @ W.T"]
    transposed(x, owner.lm_head.weight)
    copy = owner.lm_head.weight._specviz_transposed[1]
    transposed(x, owner.lm_head.weight)
    assert owner.lm_head.weight._specviz_transposed[1] is copy  # one copy for both
    with torch.no_grad():
        owner.lm_head.weight.mul_(2.0)
    assert torch.allclose(transposed(x, owner.lm_head.weight), owner.lm_head(x), atol=1e-5)


@pytest.mark.parametrize("k", [0, 1, 2, 5])
def test_chunked_greedy_verdict_reads_the_head_only_as_far_as_it_must(k):
    """The same verdict as reading every row, without reading a row after the first mismatch
    beyond the first chunk."""
    from specviz.sampling import accept_greedy, greedy_verdict_in_chunks
    torch.manual_seed(k)
    logits = torch.randn(k + 1, 11)
    best = logits.argmax(-1).tolist()
    for mismatch in range(k + 1):  # the draft agrees up to `mismatch` (k: all accepted)
        draft = best[:mismatch] + [(t + 1) % 11 for t in best[mismatch:k]]
        read = []

        def tokens_of(start, stop):
            read.append((start, stop))
            return logits[start:stop].argmax(-1).tolist()

        verdict = greedy_verdict_in_chunks(draft, tokens_of, first_rows=2)
        assert (verdict.accepted, verdict.next_token) == (accept_greedy(draft, logits).accepted, best[mismatch])
        assert read == ([(0, min(2, k + 1))] + ([(2, k + 1)] if mismatch >= 2 else []))


def test_recorded_greedy_steps_score_the_drafts_up_to_the_verdict():
    target, draft, engine = model_for("llama", 0)
    trace = engine.generate(random_prompt(3, length=10, repeat=True), build("static-skip", {"k": 4}, target, draft),
                            GenerationConfig(max_new_tokens=30))
    steps = [s for s in trace.steps if s.draft_tokens]
    assert steps and any(s.accepted < len(s.draft_tokens) - 1 for s in steps)  # some early rejections
    for s in steps:
        assert len(s.target_probs) == min(len(s.draft_tokens), s.accepted + 1)
