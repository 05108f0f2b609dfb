"""The speculative decoding loop: draft, verify, accept, commit.

    prefill the prompt -> first token (pending)
    repeat until EOS or max_new_tokens:
        draft    = drafter.propose(state)                 # up to k tokens
        hidden   = target([pending, *draft])              # one pass, reusing exact draft work (with
                                                          # verify_split, greedy on a CPU: a long draft
                                                          # likely to fail early runs its first rows
                                                          # first, specviz.verify_split)
        verdict  = accept(draft, p, q)                    # greedy prefix (the LM head read only as
                                                          # far as the first mismatch) or rejection sampling
        commit     accepted drafts + the target's own token; crop the cache to the commit
        drafter.observe(result)                           # e.g. CLaSp's layer search

`observe()` (and `start()` after the prefill) runs at the beginning of the *next* step, right
before the proposal it prepares, and is timed as that step's `t_search`: the step that drafts with
a freshly searched skip set is the one that shows the search's time, and a generation that ends
never pays for a search no draft would use. Nothing touches the cache in between, so the drafter
sees exactly the state it would have seen right after the commit.

Plain autoregressive decoding is the same loop with an empty draft. The cache holds every
committed token except the pending one (the last), whose KV the next verification writes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import PreTrainedModel

from .draft_length import DraftLengthModel
from .drafters.base import DecodeState, Draft, Drafter, VerifyResult
from .layers import LayerRunner, PassOutput
from .sampling import (SamplingConfig, Verdict, accept_rejection, greedy_token,
                       greedy_verdict_in_chunks)
from .trace import StepEvent, Trace
from .verify_split import PassCosts, SplitPlanner

AcceptRule = Callable[[list[int], "torch.Tensor | None", torch.Tensor, torch.Generator], Verdict]


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def eos_ids(model: PreTrainedModel) -> frozenset[int]:
    """The EOS ids `generate()` stops at (from the generation config, as generate does)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    record: bool = True  # keep p/q per token and drafter info in the trace
    # cap each step's draft by the length a cost model learned from this generation's past steps
    # finds fastest (specviz.draft_length); the drafter's own k is the most it may choose
    adaptive_length: bool = False
    # greedy on a CPU: verify a long draft in two passes where the measured pass costs and this
    # generation's acceptance say it is cheaper (specviz.verify_split; not with adaptive_length,
    # whose cost model times whole passes); an int forces a first pass of that many drafts
    # (tests). On by default since the LM head's greedy screen (2026-12-03, Intel host): prompt
    # lookup at transformers' fixed length +17 % on chat and +8 % on grounded prompts, our own
    # drafters within noise (-0.4 to +2.5 %); on the AMD host, before the screen, it had cost prompt
    # lookup's own drafts a few percent (BENCHMARKS.md)
    verify_split: bool | int = True


class Engine:
    """One target model, any drafter."""

    def __init__(self, model: PreTrainedModel, name: str = "", pack_linears: bool = True, screen_head: bool = True,
                 lean: bool = True):
        self.model = model.eval()
        # pack_linears: the decoder's large linears run in the kernel measured fastest for each
        # verify pass's row count on a CPU (specviz.packed_linears); off, every pass uses F.linear.
        # screen_head: greedy verdicts read the LM head's argmax (where no trace keeps a p) through
        # an fp16 screen and an exact fp32 decision (specviz.greedy_head); off, the full fp32 head.
        # lean: the decoder layers run as plain tensor code, bit for bit transformers' layers
        # (specviz.lean_layers), where the model's layers qualify; off, through transformers' modules
        self.runner = LayerRunner(model, pack_linears=pack_linears, screen_head=screen_head, lean=lean)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.eos_token_ids = eos_ids(model)
        self.context_limit = getattr(model.config, "max_position_embeddings", None)
        # plain verify passes' seconds by rows, shared by this engine's generations: on a CPU a
        # long draft likely to fail early is verified in two passes (specviz.verify_split)
        self.pass_costs = PassCosts()

    def start(
        self,
        prompt_ids: Sequence[int],
        drafter: Drafter,
        config: GenerationConfig,
        stop: threading.Event | None = None,
        accept_rule: AcceptRule | None = None,
    ) -> "Generation":
        return Generation(self, prompt_ids, drafter, config, stop, accept_rule)

    def generate(self, prompt_ids: Sequence[int], drafter: Drafter, config: GenerationConfig, **kwargs) -> Trace:
        generation = self.start(prompt_ids, drafter, config, **kwargs)
        for _ in generation:
            pass
        return generation.trace


class Generation:
    """One generation, advanced one verification at a time (`step()`) or iterated."""

    def __init__(
        self,
        engine: Engine,
        prompt_ids: Sequence[int],
        drafter: Drafter,
        config: GenerationConfig,
        stop: threading.Event | None = None,
        accept_rule: AcceptRule | None = None,
    ):
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt must not be empty (it needs at least one token)")
        limit = engine.context_limit
        max_new = config.max_new_tokens
        if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new!r}")
        if limit is not None and len(prompt) >= limit:
            raise ValueError(f"prompt too long: {len(prompt)} tokens, limit {limit - 1} (the model's context is "
                             f"{limit} tokens and at least one must be left to generate)")
        if limit is not None and len(prompt) + max_new > limit:
            raise ValueError(
                f"max_new_tokens must be in [1, {limit - len(prompt)}] for this {len(prompt)}-token "
                f"prompt (the model's context is {limit} tokens), got {max_new}"
            )
        self.engine, self.drafter, self.config = engine, drafter, config
        self.runner = engine.runner
        self.stop_event = stop
        self.accept_rule = accept_rule
        self.generator = torch.Generator().manual_seed(config.sampling.seed)
        self.cache = self.runner.new_cache()
        self.tokens = prompt
        # a greedy verdict needs only the head's argmax, which the runner's screened head gives at a
        # fraction of the full head's cost (specviz.greedy_head); a recorded trace also keeps p of
        # each draft token, which needs the full head over those rows (`_greedy_verdict`)
        self.greedy = config.sampling.greedy and accept_rule is None
        self.tokens_only = self.greedy and not config.record
        self.length_model = self._length_model() if config.adaptive_length else None
        self.splitter = self._splitter()
        settings = dict(drafter.settings(), **self._sampling_settings())
        if self.length_model is not None:
            settings["adaptive_length"] = True
        self.trace = Trace(
            drafter=drafter.name, settings=settings,
            model=engine.name, num_layers=self.runner.num_layers, prompt_ids=list(prompt),
        )
        self.done = False
        self._t0 = 0.0
        self._adapt: Callable[[], None] | None = None  # the drafter's start()/observe(), run before the next proposal

    def _length_model(self) -> DraftLengthModel | None:
        """A cost model bounded by the drafter's own draft length, None for a drafter without one
        (plain decoding). HiSpec's `n` (tentative tokens per verification) is its draft length;
        every other drafter's is `k`."""
        settings = self.drafter.settings()
        longest = settings.get("n") if self.drafter.name == "hispec" else settings.get("k")
        return DraftLengthModel(int(longest)) if isinstance(longest, int) and longest >= 1 else None

    def _splitter(self) -> SplitPlanner | None:
        """The two-pass plan for greedy verdicts on a CPU (on a GPU a long pass costs about what a
        short one does), or None. Sampling keeps one pass: it scores every row."""
        split = self.config.verify_split
        if split is False or not self.config.sampling.greedy or self.accept_rule is not None:
            return None
        if self.length_model is not None and isinstance(split, bool):
            return None  # the cost model times whole verify passes by size: a split pass would mislead it
        if self.runner.device.type != "cpu" and isinstance(split, bool):
            return None
        if not isinstance(split, bool) and (not isinstance(split, int) or split < 0):
            raise ValueError(f"verify_split must be true, false or a number of drafts >= 0, got {split!r}")
        return SplitPlanner(self.engine.pass_costs, fixed=None if isinstance(split, bool) else split)

    def _sampling_settings(self) -> dict[str, Any]:
        s = self.config.sampling
        return {"max_new_tokens": self.config.max_new_tokens, "temperature": s.temperature,
                "top_k": s.top_k, "top_p": s.top_p, "seed": s.seed}

    # -- public ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StepEvent]:
        while (event := self.step()) is not None:
            yield event

    @property
    def generated(self) -> list[int]:
        return self.trace.generated

    @property
    def _new_tokens(self) -> int:
        # tokens = prompt + everything committed; cheaper than flattening the trace every step
        return len(self.tokens) - len(self.trace.prompt_ids)

    @torch.inference_mode()
    def step(self) -> StepEvent | None:
        """Run one verification (the first call prefills) and return its event; None when done."""
        if self.done:
            return None
        if self.stop_event is not None and self.stop_event.is_set():
            self._finish("stopped")
            return None
        event = self._prefill() if not self.trace.steps else self._speculate()
        self.trace.steps.append(event)
        if not self.done and self._new_tokens >= self.config.max_new_tokens:
            self._finish("length")
        return event

    # -- internals ---------------------------------------------------------------------------
    def _state(self) -> DecodeState:
        remaining = self.config.max_new_tokens - self._new_tokens
        return DecodeState(
            tokens=self.tokens, runner=self.runner, cache=self.cache,
            max_draft=remaining - 1,  # the target always adds one token of its own
            sampling=self.config.sampling, generator=self.generator,
            eos_token_ids=self.engine.eos_token_ids, record=self.config.record,
        )

    def _finish(self, reason: str) -> None:
        self.done = True
        self.trace.finish_reason = reason

    def _prefill(self) -> StepEvent:
        runner = self.runner
        self._t0 = _clock(runner.device)
        ids = torch.tensor([self.tokens], device=runner.device)
        wants = self.drafter.wants_states
        out = runner.forward(runner.embed(ids), range(runner.num_layers), 0, self.cache, capture=wants)
        if self.greedy:  # the first token's logits are kept by no trace: its argmax is enough
            verdict = Verdict(0, int(runner.greedy_tokens(out.hidden[0, -1:])[0]))
        else:
            verdict = self._accept([], None, runner.head(out.hidden[:, -1:])[0])
        committed = self._commit([verdict.next_token])
        states = [s[0] for s in out.states] if wants else None  # every prompt row
        state = self._state()
        self._adapt = lambda: self.drafter.start(state, states)
        now = _clock(runner.device)
        self.trace.t_prefill = now - self._t0
        return self._event([], verdict, committed, None, 0.0, 0.0, 0.0, now)

    def _speculate(self) -> StepEvent:
        runner = self.runner
        t_start = _clock(runner.device)
        if self._adapt is not None:  # the previous step's observe() (or start()): prepares this draft
            self._adapt()
            self._adapt = None
        t_adapted = _clock(runner.device)
        state = self._state()
        cap = None
        if self.length_model is not None:  # from finished steps only: the draft cannot sway it
            cap = state.max_draft = self.length_model.choose(state.max_draft)
        draft = self.drafter.propose(state)
        t_drafted = _clock(runner.device)
        split = self._split_of(draft)
        if split is None:
            hidden, states = self._verify(draft)
            verdict, logits = self._judge(draft, hidden)
        else:
            (verdict, logits), states = self._verify_in_two_passes(draft, split), None
        if self.splitter is not None:
            self.splitter.observe(len(draft.tokens), verdict.accepted)
        committed = self._commit(draft.tokens[: verdict.accepted] + [verdict.next_token])
        result = VerifyResult(draft=draft, accepted=verdict.accepted, target_token=verdict.next_token,
                              tokens=self.tokens, runner=runner, cache=self.cache, states=states)
        self._adapt = lambda: self.drafter.observe(result)
        now = _clock(runner.device)
        event = self._event(draft.tokens, verdict, committed, (draft, logits),
                            t_drafted - t_adapted, now - t_drafted, t_adapted - t_start, now)
        event.verify_split = split
        if cap is not None:
            event.draft_cap = cap
            self.length_model.observe(cap, len(draft.tokens), verdict.accepted, event.t_draft, event.t_verify,
                                      event.t_search)
        return event

    def _plain_pass(self, draft: Draft) -> bool:
        """Whether the verify pass is the plain one: no reused draft work, no riders, no states
        (the pass whose cost `PassCosts` learns and `_verify_in_two_passes` may split)."""
        return draft.reuse is None and draft.riders is None and not self.drafter.wants_states

    def _split_of(self, draft: Draft) -> int | None:
        """Drafts in the first of two verify passes, or None for one pass."""
        if self.splitter is None or not self._plain_pass(draft):
            return None
        return self.splitter.split(len(draft.tokens))

    def _timed_pass(self, inputs: torch.Tensor, start: int) -> torch.Tensor:
        """A plain pass of `inputs` ([1, r]) at absolute position `start` -> last-layer output
        [r, d], its seconds recorded by rows for the two-pass plan."""
        runner = self.runner
        t0 = _clock(runner.device)
        out = runner.forward(runner.embed(inputs), range(runner.num_layers), start, self.cache)
        self.engine.pass_costs.observe(inputs.shape[1], _clock(runner.device) - t0)
        return out.hidden[0]

    def _verify_in_two_passes(self, draft: Draft, split: int) -> tuple[Verdict, torch.Tensor | None]:
        """The greedy verdict from rows [0, split + 1) first; rows behind them are run through the
        model only if the LM head is asked for them, i.e. if drafts 1..split+1 were all accepted."""
        start = len(self.tokens) - 1
        inputs = torch.tensor([[self.tokens[-1], *draft.tokens]], device=self.runner.device)
        self.runner.crop(self.cache, start)
        blocks: list[torch.Tensor] = []

        def hidden_of(lo: int, hi: int) -> torch.Tensor:
            done = sum(block.shape[0] for block in blocks)
            if hi > done:  # the second pass: every row left (the cache holds the first pass's rows)
                blocks.append(self._timed_pass(inputs[:, done:], start + done))
            return torch.cat(blocks)[lo:hi] if len(blocks) > 1 else blocks[0][lo:hi]

        blocks.append(self._timed_pass(inputs[:, : split + 1], start))
        return self._greedy_verdict(draft.tokens, hidden_of, (min(2, split + 1), split + 1))

    def _verify(self, draft: Draft) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """One target pass over [pending, *draft] -> the last layer's output [k+1, d] (+ per-layer
        inputs); `_judge` applies the LM head."""
        runner, cache = self.runner, self.cache
        start = len(self.tokens) - 1  # position of the pending token
        inputs = torch.tensor([[self.tokens[-1], *draft.tokens]], device=runner.device)
        wants = self.drafter.wants_states
        reuse, riders = draft.reuse, draft.riders
        if self._plain_pass(draft):
            runner.crop(cache, start)
            return (self._timed_pass(inputs, start) if self.splitter is not None else
                    runner.forward(runner.embed(inputs), range(runner.num_layers), start, cache).hidden[0]), None
        if reuse is None:
            runner.crop(cache, start)
            out = runner.forward(runner.embed(inputs), range(runner.num_layers), start, cache, capture=wants,
                                 riders=riders)
            states = [s[0] for s in out.states] if wants else None
            return out.hidden[0], states

        # Layers below `reuse.layer` already hold the first j inputs' KV; run only the rest of
        # the inputs through them, then every input through the layers above.
        e, j = reuse.layer, reuse.hidden.shape[1]
        runner.crop(cache, start + j, range(e))
        runner.crop(cache, start, range(e, runner.num_layers))
        lower = PassOutput(reuse.hidden[:, :0], None)
        if j < inputs.shape[1] or riders is not None:  # riders go through every layer
            lower = runner.forward(runner.embed(inputs[:, j:]), range(e), start + j, cache, capture=wants,
                                   riders=riders)
        hidden_e = torch.cat([reuse.hidden, lower.hidden], dim=1)
        upper = runner.forward(hidden_e, range(e, runner.num_layers), start, cache, capture=wants, riders=riders)
        states = None
        if wants:
            if reuse.states is None:
                raise RuntimeError(f"drafter {self.drafter.name} wants states but reused work without them")
            below = reuse.states if lower.states is None else [
                torch.cat([r, n], dim=1) for r, n in zip(reuse.states, lower.states)]
            states = [s[0] for s in below[:e] + upper.states]
        return upper.hidden[0], states

    def _judge(self, draft: Draft, hidden: torch.Tensor) -> tuple[Verdict, torch.Tensor | None]:
        """The verdict on `draft` from the verify pass's last-layer output, with the logits a
        recorded trace keeps: greedy reads the LM head only up to the first mismatch
        (`_greedy_verdict`), sampling reads every row."""
        if self.greedy:
            return self._greedy_verdict(draft.tokens, lambda start, stop: hidden[start:stop])
        logits = self.runner.head(hidden)
        return self._accept(draft.tokens, draft.probs, logits), logits

    def _greedy_verdict(self, draft_tokens: list[int], hidden_of: Callable[[int, int], torch.Tensor],
                        chunks: int | Sequence[int] = 2) -> tuple[Verdict, torch.Tensor | None]:
        """The greedy verdict on rows `hidden_of(start, stop)` of the verify pass, read in chunks
        (`greedy_verdict_in_chunks`), with the logits a recorded trace keeps. A draft token's row
        goes through the full head when recording (the trace keeps p of that token); every other
        row needs only its argmax, through the screened head: all rows without a record, and with
        one the row after the last draft token (the bonus, or the only row when nothing was drafted)."""
        record_rows = 0 if self.tokens_only else len(draft_tokens)
        scored: list[torch.Tensor] = []

        def tokens_of(start: int, stop: int) -> list[int]:
            hidden, full = hidden_of(start, stop), max(0, min(stop, record_rows) - start)
            tokens = []
            if full:
                scored.append(self.runner.head(hidden[:full]))
                tokens = greedy_token(scored[-1]).tolist()
            if full < stop - start:
                tokens += self.runner.greedy_tokens(hidden[full:]).tolist()
            return tokens

        verdict = greedy_verdict_in_chunks(draft_tokens, tokens_of, chunks)
        return verdict, (torch.cat(scored)[: verdict.accepted + 1] if scored else None)

    def _accept(self, draft: list[int], draft_probs, logits: torch.Tensor) -> Verdict:
        """A sampled verdict, or a test's planted `accept_rule` (greedy verdicts: `_greedy_verdict`)."""
        sampling = self.config.sampling
        rule = self.accept_rule or accept_rejection
        return rule(draft, draft_probs, sampling.probs(logits), self.generator)

    def _commit(self, new_tokens: list[int]) -> list[int]:
        """Append tokens up to and including the first EOS; crop the cache to match."""
        committed = []
        for tok in new_tokens:
            committed.append(tok)
            if tok in self.engine.eos_token_ids:
                self._finish("eos")
                break
        self.tokens = self.tokens + committed
        self.runner.crop(self.cache, len(self.tokens) - 1)
        return committed

    def _event(self, draft_tokens, verdict, committed, scored, t_draft, t_verify, t_search, now) -> StepEvent:
        event = StepEvent(
            index=len(self.trace.steps), draft_tokens=list(draft_tokens), accepted=verdict.accepted,
            target_token=verdict.next_token, committed=committed,
            t_draft=t_draft, t_verify=t_verify, t_search=t_search, t_end=now - self._t0,
        )
        if self.config.record and scored is not None:
            draft, logits = scored
            event.draft_probs = list(draft.token_probs)
            event.target_probs = self._target_probs(draft.tokens, logits)
            event.info = draft.info
            event.draws, event.accept_detail = list(verdict.draws), dict(verdict.detail)
            if draft.reuse is not None:
                event.reuse = [int(draft.reuse.layer), int(draft.reuse.hidden.shape[1])]
        return event

    def _target_probs(self, draft_tokens: list[int], logits: torch.Tensor) -> list[float]:
        """p(x_i) of each draft token whose row was scored, for hover details (softmax at T=1 when
        greedy; a greedy verdict scores rows only up to the first mismatch, so the tokens after it
        have none)."""
        if not draft_tokens:
            return []
        sampling = self.config.sampling
        rows = logits[: len(draft_tokens)].float()
        draft_tokens = draft_tokens[: rows.shape[0]]
        probs = rows.softmax(-1) if sampling.greedy else sampling.probs(rows)
        index = torch.tensor(draft_tokens, device=probs.device).unsqueeze(1)
        return probs.gather(1, index).squeeze(1).tolist()
