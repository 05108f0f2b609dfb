"""Drafting with a subset of the target's own layers (shared by static skip, early exit, CLaSp).

The draft runs the same model with the layers in `skip` bypassed (h <- h). All layers below the
first skipped layer e see exactly the inputs the full model would, so their KV and the
layer-e inputs are exact: the draft hands them to the verifier (`Reuse`) instead of throwing
them away. Layers at or above e that the draft runs write approximate KV into the shared cache;
the engine crops them back before verification.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .base import DecodeState, Draft, DraftBuilder, Reuse, choose


def first_skipped(skip: Sequence[int], num_layers: int) -> int:
    return min(skip) if skip else num_layers


def draft_with_skip(
    state: DecodeState,
    skip: Sequence[int],
    k: int,
    threshold: float,
    capture: bool = False,
    info: dict[str, Any] | None = None,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Draft:
    """Autoregressively draft up to k tokens from the pending token with `skip` bypassed.
    `head` maps the last state to logits (default: the target's final norm + LM head)."""
    runner = state.runner
    head = head or runner.head
    skipped = set(skip)
    exact_until = first_skipped(skipped, runner.num_layers)
    exact_layers = list(range(exact_until))
    upper_layers = [i for i in range(exact_until, runner.num_layers) if i not in skipped]
    builder = DraftBuilder(min(k, state.max_draft), threshold, state.eos_token_ids)
    if builder.done:
        return builder.build(state.sampling, info=info)

    exact_hidden: list[torch.Tensor] = []
    exact_states: list[list[torch.Tensor]] = []
    token, position = state.tokens[-1], state.pending_position
    while True:
        embedded = runner.embed(torch.tensor([[token]], device=runner.device))
        lower = runner.forward(embedded, exact_layers, position, state.cache, capture=capture)
        exact_hidden.append(lower.hidden)
        if capture:
            exact_states.append(lower.states)
        upper = runner.forward(lower.hidden, upper_layers, position, state.cache)
        logits = head(upper.hidden[0, -1])
        if not builder.offer(choose(logits, state.sampling, state.generator)):
            break
        token, position = builder.tokens[-1], position + 1

    states = None
    if capture:
        states = [torch.cat([s[b] for s in exact_states], dim=1) for b in range(exact_until + 1)]
    reuse = Reuse(exact_until, torch.cat(exact_hidden, dim=1), states)
    return builder.build(state.sampling, reuse, info)
