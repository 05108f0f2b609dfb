"""A separate small draft model with the same tokenizer (Leviathan et al. 2023).

The draft model keeps its own cache in step with the committed text: after each verification
it is cropped to the longest prefix it computed that the target committed, and the next
proposal first feeds whatever it has not seen (the target's own token, or a bonus token).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..layers import LayerRunner
from .draft_heads import DraftHead, draft_model_vocab, draft_vocab_of, draft_vocab_option, vocab_subset
from .base import DecodeState, Draft, DraftBuilder, VerifyResult, check_draft_length, check_threshold, choose
from .registry import Declaration, Option, confidence_threshold, draft_length


class DraftModel:
    name = "draft-model"
    wants_states = False

    def __init__(self, draft_model: PreTrainedModel, target_vocab_size: int, k: int = 4, threshold: float = 0.0,
                 model_name: str = "", head: DraftHead | None = None):
        if draft_model.config.vocab_size != target_vocab_size:
            raise ValueError(
                f"draft model vocab_size {draft_model.config.vocab_size} != target vocab_size "
                f"{target_vocab_size}: the draft model must share the target's tokenizer"
            )
        # its linears in the kernel measured fastest per row count, as the target's verify passes
        # (specviz.packed_linears; measured on this model's own weights, which may sit in a cache)
        self.runner = LayerRunner(draft_model.eval(), pack_linears=True)
        self.k = check_draft_length(k)
        self.threshold = check_threshold(threshold)
        self.model_name = model_name or getattr(draft_model.config, "_name_or_path", "")
        self.cache = None
        self.fed = 0  # tokens whose KV the draft cache holds (a prefix of the committed text)
        self.head = head or self.runner.head  # a DraftHead scores only the target's most frequent tokens

    def start(self, state: DecodeState, states) -> None:
        self.cache = self.runner.new_cache()
        self.fed = 0

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Feed tokens[self.fed:] and return the logits of the last one."""
        ids = torch.tensor([tokens[self.fed:]], device=self.runner.device)
        out = self.runner.forward(self.runner.embed(ids), range(self.runner.num_layers), self.fed, self.cache)
        self.fed = len(tokens)
        return self.head(out.hidden[0, -1]).to(torch.float32)

    def propose(self, state: DecodeState) -> Draft:
        builder = DraftBuilder(min(self.k, state.max_draft), self.threshold, state.eos_token_ids)
        if builder.done:
            return builder.build(state.sampling)
        sequence = list(state.tokens)
        while True:
            logits = self._feed(sequence)
            if not builder.offer(choose(logits, state.sampling, state.generator)):
                break
            sequence.append(builder.tokens[-1])
        return builder.build(state.sampling, info={"draft_model": self.model_name} if state.record else None)

    def observe(self, result: VerifyResult) -> None:
        # Valid: what it fed that the target committed (all but the new pending token at most).
        self.fed = min(self.fed, len(result.tokens) - 1)
        self.runner.crop(self.cache, self.fed)

    def settings(self) -> dict:
        return {"draft_model": self.model_name, "k": self.k, "threshold": self.threshold,
                "draft_vocab": draft_vocab_of(self.head)}


def build(target, draft_model: PreTrainedModel | None = None, draft_vocab: int = 0, **options) -> DraftModel:
    """`draft_model` is the loaded model; `specviz.api` resolves the `draft_model_name` option to it.
    `draft_vocab` N > 0: the draft scores only the target's N most frequent tokens (its ranking);
    0: the vocabulary the draft model was distilled over (every token when it says none)."""
    if draft_model is None:
        raise ValueError("drafter 'draft-model' needs a draft model (--draft-model NAME)")
    subset = vocab_subset(target, draft_vocab or draft_model_vocab(draft_model), DraftModel.name)
    head = None if subset is None else DraftHead(draft_model, None, subset)
    return DraftModel(draft_model, target.config.vocab_size, head=head, **options)


def _needs(options: dict) -> str | None:
    """A draft model given by the caller needs nothing from the target's registry entry."""
    return None if options.get("draft_model") is not None or options.get("draft_model_name") else "draft-model"


DRAFTER = Declaration(
    DraftModel.name, "Separate draft model",
    "Classic speculative decoding: a smaller model with the same tokenizer drafts.",
    build,
    (Option("draft_model_name", "model", None,
            "registry name or directory of the draft model (default the model's own draft model)",
            flag="--draft-model", label="draft model", ui_default="(default)"),
     draft_length(4), confidence_threshold(0.0), draft_vocab_option()),
    needs="draft-model", needs_for=_needs)
