"""The LM head's greedy screen (`specviz.greedy_head`): its bound holds, its argmax is the fp32
head's, a planted screen without the exact decision (or with too small a bound) picks wrong, and
the engine's greedy verdicts through it stay lossless."""

from __future__ import annotations

import pytest
import torch

from specviz import greedy_head
from specviz.drafters.autoregressive import build as build_ar
from specviz.drafters.prompt_lookup import PromptLookup
from specviz.engine import Engine, GenerationConfig
from specviz.greedy_head import ScreenedHead
from specviz.sampling import SamplingConfig

from tests.tiny import random_prompt, reference_greedy, tiny_model

pytestmark = pytest.mark.skipif(not greedy_head._kernel_available(), reason="no fp16-weight kernel in this build")

UNIT = 2.0 ** -10  # fp16's spacing at 1.0


def random_head(vocab: int = 3000, width: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, width, generator=g) * 0.2


def states(rows: int, width: int, seed: int) -> torch.Tensor:
    """Rows like a model's final states: mostly small, a few large outlier features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g)
    x[:, :3] *= 30
    return x


def flipped_head(width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A head and a state where fp16 rounding reverses the top two: token 1 wins in fp32 (2 +
    0.98 u against 2 + 0.51 u for token 0), token 0 in fp16 (its first weight rounds up to 1 + u,
    token 1's both round down to 1)."""
    weight = torch.zeros(5, width)
    weight[0, :2] = torch.tensor([1 + 0.51 * UNIT, 1.0])
    weight[1, :2] = torch.tensor([1 + 0.49 * UNIT, 1 + 0.49 * UNIT])
    weight[2:, 2] = 1.0  # others: far below
    x = torch.zeros(1, width)
    x[0, :2] = 1.0
    return weight, x


def test_the_bound_holds_for_every_token():
    weight = random_head()
    head = ScreenedHead(weight)
    assert head.sound
    x = states(16, weight.shape[1], seed=1)
    exact = x.double() @ weight.double().t()
    gap = (head.screen(x).double() - exact).abs()
    assert (gap <= head.slack * x.double().norm(dim=1, keepdim=True)).all()
    assert gap.max() > 0  # the screen is not exact: there is something to bound


@pytest.mark.parametrize("seed", range(4))
def test_argmax_equals_the_fp32_head(seed):
    weight = random_head(seed=seed)
    head = ScreenedHead(weight)
    x = states(33, weight.shape[1], seed=10 + seed)
    assert head.argmax(x).tolist() == torch.nn.functional.linear(x, weight).argmax(dim=1).tolist()
    assert head.argmax(x[:1]).tolist() == torch.nn.functional.linear(x[:1], weight).argmax(dim=1).tolist()


def test_a_screen_reversed_by_rounding_is_decided_exactly():
    weight, x = flipped_head()
    head = ScreenedHead(weight)
    assert torch.nn.functional.linear(x, weight).argmax().item() == 1
    assert head.screen(x).argmax().item() == 0  # the screen alone is wrong here
    assert head.argmax(x).tolist() == [1]


def test_planted_wrong_rules_pick_wrong():
    """Teeth: the screen's own argmax, or the candidates under a bound of zero, pick token 0."""
    weight, x = flipped_head()
    head = ScreenedHead(weight)
    assert head.screen(x).argmax(dim=1).tolist() == [0]
    head.slack = 0.0
    assert head.argmax(x).tolist() == [0]


def test_ties_go_to_the_lowest_token_id():
    weight = torch.zeros(6, 8)
    weight[[2, 4], 0] = 1.0
    head = ScreenedHead(weight)
    assert head.argmax(torch.ones(1, 8)).tolist() == [2]


def test_a_row_without_a_finite_maximum_gets_the_full_heads_answer():
    weight = random_head()
    head = ScreenedHead(weight)
    x = states(3, weight.shape[1], seed=2)
    x[1, 5] = float("nan")
    assert head.argmax(x).tolist() == torch.nn.functional.linear(x, weight).argmax(dim=1).tolist()


def test_a_kernel_that_fails_its_self_test_is_not_used(monkeypatch):
    """A kernel that rounds the activations to fp16 too (as oneDNN's fp16 linear does) breaks the
    bound the screen assumes for its sums, and is refused."""
    screen = ScreenedHead.screen
    monkeypatch.setattr(ScreenedHead, "screen", lambda self, x: screen(self, x.half().float()))
    monkeypatch.setattr(greedy_head, "MIN_SIZE", 0)
    assert ScreenedHead.build(random_head()) is None


def test_build_refuses_what_it_cannot_help(monkeypatch):
    assert ScreenedHead.build(random_head()) is None  # under MIN_SIZE
    monkeypatch.setattr(greedy_head, "MIN_SIZE", 0)
    assert ScreenedHead.build(random_head().to(torch.bfloat16)) is None
    assert ScreenedHead.build(random_head()) is not None


@pytest.fixture
def screen_everywhere(monkeypatch):
    """Tiny models' heads get a screen, taken at every row count; returns the count of screened calls."""
    monkeypatch.setattr(greedy_head, "MIN_SIZE", 0)
    monkeypatch.setattr(ScreenedHead, "is_faster", lambda self, x, full, clock=None: True)
    calls = [0]
    argmax = ScreenedHead.argmax

    def counted(self, x):
        calls[0] += 1
        return argmax(self, x)

    monkeypatch.setattr(ScreenedHead, "argmax", counted)
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_engine_greedy_verdicts_through_the_screen_are_lossless(screen_everywhere, arch):
    model = tiny_model(arch, seed=5)
    engine = Engine(model)
    for seed in range(3):
        prompt = random_prompt(seed, repeat=True)
        expected = reference_greedy(model, prompt, 32)
        for drafter in (PromptLookup(k=6), build_ar(model)):
            before = screen_everywhere[0]
            trace = engine.generate(prompt, drafter, GenerationConfig(max_new_tokens=32, record=False))
            assert trace.generated == expected, (arch, seed, drafter.name)
            assert screen_everywhere[0] > before


def test_recorded_runs_screen_only_the_rows_no_trace_keeps(screen_everywhere, monkeypatch):
    """A recorded greedy step keeps p of each draft token, so their rows go through the full head;
    the screen reads only the row after the last draft token (the bonus, or the only row of a step
    that drafted nothing) and the prefill's. The trace is the full head's, p included. Sampled runs
    and screen_head=False never use the screen."""
    screened_rows = []
    argmax = ScreenedHead.argmax
    monkeypatch.setattr(ScreenedHead, "argmax", lambda self, x: screened_rows.append(x.shape[0]) or argmax(self, x))
    model = tiny_model("llama", seed=5)
    prompt = random_prompt(0, repeat=True)
    config = GenerationConfig(max_new_tokens=24, record=True)
    trace = Engine(model).generate(prompt, PromptLookup(k=6), config)
    full = Engine(model, screen_head=False).generate(prompt, PromptLookup(k=6), config)
    # one row at most per step, the row after its draft (read with the rows before it in a chunk,
    # so also in some steps that rejected); every step that accepted all its drafts read it
    assert set(screened_rows) == {1}
    assert sum(s.accepted == len(s.draft_tokens) for s in trace.steps) <= len(screened_rows) <= len(trace.steps)
    assert any(s.draft_tokens and s.accepted == len(s.draft_tokens) for s in trace.steps)  # a bonus row was screened
    assert any(s.accepted < len(s.draft_tokens) for s in trace.steps)  # and a rejected draft token's p was kept
    assert trace.generated == full.generated == reference_greedy(model, prompt, 24)
    # the same p (up to the head kernel's rounding, which depends on how many rows it reads)
    for step, reference in zip(trace.steps, full.steps, strict=True):
        assert step.target_probs == pytest.approx(reference.target_probs, rel=1e-5, abs=1e-9)
    screened_rows.clear()
    sampled = GenerationConfig(max_new_tokens=16, record=False, sampling=SamplingConfig(temperature=1.0, seed=0))
    Engine(model).generate(prompt, PromptLookup(k=6), sampled)
    assert screened_rows == []


def test_a_wrong_screen_is_caught(screen_everywhere, monkeypatch):
    """Teeth: a screen that answers the runner-up instead changes the engine's output."""
    monkeypatch.setattr(ScreenedHead, "argmax", lambda self, x: self.screen(x).topk(2, dim=1).indices[:, 1])
    model = tiny_model("llama", seed=5)
    prompt = random_prompt(0, repeat=True)
    trace = Engine(model).generate(prompt, PromptLookup(k=6), GenerationConfig(max_new_tokens=24, record=False))
    assert trace.generated != reference_greedy(model, prompt, 24)
