"""The logit lens: what each layer's exit would predict at one position, from one forward pass.

Exit e (1 <= e <= L) reads the residual stream after the first e layers and applies the model's
own final norm and LM head, exactly as an early-exit draft at E = e does. Exit L is the model
itself. A model never trained to exit early gives poor predictions at low exits; that is why
early exit needs an early-exit-trained model or a trained exit adapter, which `adapters` shows
as an extra row ({exit e: callable(hidden) -> hidden}, applied before the norm). `exit_heads`
({exit e: callable(hidden) -> logits}) shows a whole draft head instead, e.g. an adapter that
scores only the vocabulary it was trained over, exactly as the drafter uses it.

The model part is `logit_lens`; `specviz.teach.lens_figure` draws its plain-data result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

Adapter = Callable[[torch.Tensor], torch.Tensor]
ExitHead = Callable[[torch.Tensor], torch.Tensor]  # hidden [d] -> logits [V] (-inf: not scored)


@dataclass
class LensRow:
    exit: int  # layers run before the exit
    label: str
    top: list[tuple[int, float]]  # (token id, probability), most likely first
    chosen_p: float  # probability of the token the run chose
    chosen_rank: int  # 1 = it is this exit's top token
    adapted: bool = False


@dataclass
class LensResult:
    position: int  # index of the predicted token in the generated text (0 = the first new token)
    chosen: int  # the token the run chose there
    num_layers: int
    rows: list[LensRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(logits: torch.Tensor, exit_layer: int, label: str, chosen: int, top: int, adapted: bool) -> LensRow:
    probs = logits.float().softmax(-1)
    values, ids = torch.topk(probs, min(top, probs.shape[-1]))
    p_chosen = probs[chosen]
    rank = int((probs > p_chosen).sum()) + 1
    # a head over a vocabulary subset gives the rest probability 0: those are not predictions
    top_list = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()) if v > 0]
    return LensRow(exit_layer, label, top_list, float(p_chosen), rank, adapted)


@torch.inference_mode()
def logit_lens(model, token_ids: Sequence[int], chosen: int, position: int = 0, top: int = 5,
               adapters: Mapping[int, Adapter] | None = None, exits: Sequence[int] | None = None,
               exit_heads: Mapping[int, tuple[str, ExitHead]] | None = None) -> LensResult:
    """Each exit's prediction for the token after `token_ids` (which the run chose as `chosen`,
    the `position`-th generated token). One forward pass with output_hidden_states; exit e < L
    is lm_head(norm(hidden_states[e])), exit L the model's own logits (hidden_states[L] is
    already normed). `adapters` {e: f} adds a row lm_head(norm(f(hidden_states[e]))) for 1 <= e < L;
    `exit_heads` {e: (label, head)} adds a row head(hidden_states[e]) labelled "e + label"."""
    if not token_ids:
        raise ValueError("the logit lens needs at least one token of context")
    num_layers = int(model.config.num_hidden_layers)
    adapters, exit_heads = dict(adapters or {}), dict(exit_heads or {})
    for e in [*adapters, *exit_heads]:
        if not 1 <= int(e) < num_layers:
            raise ValueError(f"an exit adapter's layer must be in [1, {num_layers - 1}], got {e}")
    device = next(model.parameters()).device
    out = model(torch.tensor([list(token_ids)], device=device), output_hidden_states=True, use_cache=False)
    hidden = [h[0, -1] for h in out.hidden_states]  # [L+1] states of the last position
    norm, head = model.model.norm, model.get_output_embeddings()
    result = LensResult(position, int(chosen), num_layers)
    for e in (exits if exits is not None else range(1, num_layers + 1)):
        e = int(e)
        if e == num_layers:
            logits = out.logits[0, -1]
            result.rows.append(_row(logits, e, f"{e} (full model)", chosen, top, False))
            continue
        result.rows.append(_row(head(norm(hidden[e])), e, f"{e}", chosen, top, False))
        if e in adapters:
            adapted = adapters[e](hidden[e].unsqueeze(0)).reshape(hidden[e].shape)
            result.rows.append(_row(head(norm(adapted)), e, f"{e} + adapter", chosen, top, True))
        if e in exit_heads:
            label, exit_head = exit_heads[e]
            result.rows.append(_row(exit_head(hidden[e]), e, f"{e} + {label}", chosen, top, True))
    return result
