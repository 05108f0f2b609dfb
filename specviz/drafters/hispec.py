"""HiSpec (Kumar, Sanghavi & Das, arXiv 2510.01336): hierarchical speculative decoding with
three levels of one early-exit model.

    level 1  draft          layers [0, d)  + shared norm/head        (cheapest)
    level 2  intermediate   layers [d, v)  on the drafts' cached layer-d states, exit v
    level 3  full check     layers [v, L)  on the tentative tokens' cached layer-v states

`propose()` runs levels 1 and 2; the engine runs level 3 as its ordinary verification.

One propose = rounds of: draft up to `k` tokens with exit d from the last tentative token (or
the pending token), then check them at exit v in one pass of layers [d, v) that starts from
their layer-d states (greedy prefix match, or rejection sampling against the exit-v
distribution). The accepted drafts become *tentative*, followed by the exit-v token (the
correction at the first mismatch, or a bonus token when every draft passed). Rounds repeat until
`n` tokens are tentative (or EOS, or the engine's budget `state.max_draft`). With a confidence
`threshold` > 0 a round also stops drafting before an exit-d token whose top-1 probability is
below it; that position then gets the exit-v token (so an unsure round costs one pass of
layers [0, v), like drafting directly at exit v). The tentative
buffer is the Draft the engine verifies; its `reuse` hands over the layer-v states, so the full
check runs layers [v, L) on all of them and layers [0, v) only on the last tentative token (the
only one no level has run yet).

Bookkeeping. The verify inputs are [pending, t_1 .. t_m] at absolute positions P .. P+m
(P = position of the pending token). Three "valid length" marks, one per layer range:

* layers >= v hold P tokens (the engine's mark: everything committed except the pending token);
* layers [d, v) hold P + m: the inputs [pending, t_1 .. t_{m-1}] were run by some round's
  intermediate check (the last tentative token has not been run by any layer yet);
* layers < d hold P + m as well between rounds; during a round's drafting they run ahead by the
  round's drafts. Drafts rejected at exit v leave KV in layers < v (and their layer-d states)
  that belongs to tokens that will never be committed: they are cropped right after the
  intermediate verdict, back to P + m.

Every layer runs each (position, token prefix) at most once: level 1 computes layers [0, d)
exactly as the full model would (same inputs), level 2 continues from those states, level 3
from level 2's; only positions rolled back after a rejection are run again (with a different
token).

Losslessness.

* Greedy: every committed token is checked by the full model (the engine), so the output equals
  greedy decoding with the full model.
* Sampling: level 2 is standard speculative sampling with "target" p_v (the exit-v
  distribution, after the same temperature / top-k / top-p) and draft q_d, so every tentative
  token t_i is distributed exactly as p_v(. | prefix, t_<i), whatever the number of rounds
  (stopping at n or on low exit-d confidence depends only on the past, never on the token
  drawn at the stopping position; stopping after an EOS cuts only what could never be
  committed). The tentative buffer is therefore an exact
  autoregressive sample of the exit-v model, and `Draft.probs` holds those p_v rows: the engine's
  standard rejection step with q = p_v against the full model's p then yields tokens distributed
  exactly as the full model (Leviathan et al. 2023, Theorem 1). Using the exit-d distributions
  as q at level 3 would be wrong: the tentative tokens were not drawn from them.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..sampling import SamplingConfig, greedy_token, residual, sample, uniform
from .draft_heads import adapter_option, build_head, draft_vocab_option
from .base import DecodeState, Draft, Reuse, VerifyResult, check_threshold, choose
from .registry import Declaration, Option, confidence_threshold, draft_length

NAME = "hispec"

# Defaults (chosen with `python -m specviz.bench sweep hispec` on the bundled 16-layer
# specviz-tiny, 4 code prompts, 64 tokens, greedy, 1 thread, two interleaved runs):
# * v ~ L/2 rather than the paper's L/4 (exit 4 of specviz-tiny agrees with the full model on only
#   ~1/4 of the tentative tokens, exit 8 on ~3/4).
# * d ~ L/5 rather than the paper's L/8: at d=2 (L/8) with the 0.5 confidence stop, 185 of 220
#   rounds drafted nothing and exit d gave 12% of the tentative tokens (the UI read "0/0 passed
#   exit v" round after round); at d=3, 82% of its confident drafts pass exit v (vs 64%), exit d
#   gives ~20% of the tentative tokens and every prompt but one has exit-d tokens in two fifths to
#   four fifths of its steps; speed 1.15x / 0.99x of generate() vs 1.21x / 0.87x for d=2 (noise ±20%).
# * threshold 0.5: as fast as or faster than 0.2 and 0.3 at d=3 (1.15 vs 1.14; 0.99 vs 0.82 / 0.85),
#   with the highest exit-v pass rate; 0 drafts every round and lost (1.05 / 0.68).
# * n 4: faster than n 8 in every pair (n 8: τ 5.5 but acc_L 59% and 0.68-1.06x).
DRAFT_FRACTION = 1 / 5
VERIFY_FRACTION = 1 / 2
DEFAULT_N = 4
DEFAULT_K = 4
DEFAULT_THRESHOLD = 0.5
MAX_N = 64
MAX_K = 64


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def default_levels(num_layers: int) -> tuple[int, int]:
    """(d, v) for a model with `num_layers` layers: d ~ L/5, v ~ L/2, 1 <= d < v <= L - 1."""
    d = max(1, round(num_layers * DRAFT_FRACTION))
    v = max(d + 1, round(num_layers * VERIFY_FRACTION))
    return min(d, num_layers - 2), min(v, num_layers - 1)


def check_levels(num_layers: int, d: Any, v: Any, n: Any, k: Any) -> tuple[int, int, int, int]:
    """Validate HiSpec's options; raise ValueError naming the parameter and its allowed range."""
    if num_layers < 3:
        raise ValueError(f"hispec needs a model with at least 3 layers (d < v < L), this one has {num_layers}")
    if not _is_int(d) or not 1 <= d <= num_layers - 2:
        raise ValueError(f"d (draft exit layer) must be an integer in [1, {num_layers - 2}], got {d!r}")
    if not _is_int(v) or not 2 <= v <= num_layers - 1:
        raise ValueError(
            f"v (intermediate verify exit layer) must be an integer in [2, {num_layers - 1}] (below L={num_layers}), "
            f"got {v!r}"
        )
    if d >= v:
        raise ValueError(
            f"d (draft exit layer) must be below v (intermediate verify exit layer): 1 <= d < v <= {num_layers - 1}, "
            f"got d={d}, v={v}"
        )
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise ValueError(f"n (tentative tokens before a full verification) must be an integer in [1, {MAX_N}], got {n!r}")
    if not _is_int(k) or not 1 <= k <= MAX_K:
        raise ValueError(f"k (drafts per intermediate round) must be an integer in [1, {MAX_K}], got {k!r}")
    return d, v, n, k


def _verdict(drafts: list[int], q_rows: list[torch.Tensor], p_rows: torch.Tensor, sampling: SamplingConfig,
             generator: torch.Generator) -> tuple[int, int | None]:
    """Check `drafts` against the exit-v rows `p_rows` (row i predicts drafts[i]; an extra row,
    when present, gives the bonus token). Returns (accepted count, exit-v token after them or None
    when every draft passed and there is no bonus row)."""
    p_cpu = p_rows.float().cpu()
    for i, token in enumerate(drafts):
        p = p_cpu[i]
        if sampling.greedy:
            if token == int(greedy_token(p)):
                continue
            return i, int(greedy_token(p))
        q = q_rows[i].float().cpu()
        q_x = float(q[token])
        ratio = 1.0 if q_x <= 0.0 else float(p[token]) / q_x
        if uniform(generator) < min(1.0, ratio):
            continue
        return i, sample(residual(p, q), generator)
    if p_cpu.shape[0] > len(drafts):
        last = p_cpu[len(drafts)]
        return len(drafts), int(greedy_token(last)) if sampling.greedy else sample(last, generator)
    return len(drafts), None


class HiSpec:
    name = NAME
    wants_states = False

    def __init__(self, num_layers: int, d: int | None = None, v: int | None = None,
                 n: int = DEFAULT_N, k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD,
                 draft_head=None, verify_head=None):
        dd, vv = default_levels(num_layers) if num_layers >= 3 else (1, 2)
        if d is None:  # the default d, kept below a given v
            d = max(1, min(dd, v - 1)) if _is_int(v) else dd
        if v is None:  # the default v, kept above a given d
            v = max(vv, d + 1) if _is_int(d) else vv
        self.num_layers = num_layers
        self.d, self.v, self.n, self.k = check_levels(num_layers, d, v, n, k)
        self.threshold = check_threshold(threshold)
        # exit heads (adapter, vocabulary subset) at d and v; None: the target's own norm + head.
        # They shape q (level 1) and the intermediate verdict (level 2); the full check is untouched.
        self.draft_head, self.verify_head = draft_head, verify_head

    def start(self, state: DecodeState, states) -> None:
        pass

    def settings(self) -> dict:
        return {"d": self.d, "v": self.v, "n": self.n, "k": self.k, "threshold": self.threshold,
                "draft_adapter": bool(self.draft_head and self.draft_head.adapter is not None),
                "verify_adapter": bool(self.verify_head and self.verify_head.adapter is not None),
                "draft_vocab": self.draft_head.describe()["draft_vocab"] if self.draft_head else 0}

    def observe(self, result: VerifyResult) -> None:
        pass  # stateless: the engine crops every layer to the commit point

    @torch.inference_mode()
    def propose(self, state: DecodeState) -> Draft:
        runner, cache, sampling, gen = state.runner, state.cache, state.sampling, state.generator
        d, v, eos = self.d, self.v, state.eos_token_ids
        record = state.record
        draft_head, verify_head = self.draft_head or runner.head, self.verify_head or runner.head
        cap = min(self.n, state.max_draft)
        info: dict[str, Any] = {}
        if record:
            info = {"exit_layer": d, "verify_exit": v, "skipped_layers": list(range(d, self.num_layers)),
                    "n": self.n, "k": self.k, "threshold": self.threshold}
        if cap <= 0:
            if record:
                info.update(self._round_info([], [], [], 0.0, 0.0))
            return Draft([], info=info)

        base = state.pending_position
        below_d = list(range(d))
        between = list(range(d, v))
        tentative: list[int] = []
        sources: list[str] = []  # "draft" (exit-d token passed at exit v) or "verify" (exit-v token)
        p_tent: list[torch.Tensor] = []  # exit-v distribution each tentative token follows
        token_probs: list[float] = []
        hidden_v: list[torch.Tensor] = []  # layer-v inputs of verify inputs [pending, t_1 ..]
        done = 0  # verify inputs whose layers [0, v) are cached (== len(tentative) between rounds)
        rounds: list[dict[str, Any]] = []
        t_draft = t_inter = 0.0

        def embed(token: int) -> torch.Tensor:
            return runner.embed(torch.tensor([[token]], device=runner.device))

        while len(tentative) < cap and not (tentative and tentative[-1] in eos):
            budget = min(self.k, cap - len(tentative))
            start = base + done  # position of this round's first input (the newest verify input)
            t0 = _clock(runner.device)
            # level 1: draft with exit d; layers < d get the exact KV of every round input. Stop
            # at `budget` drafts, after an EOS, or before a draft whose exit-d confidence is below
            # the threshold (that position then gets the exit-v token, as after a rejection).
            token, drafts, q_rows, states_d = (tentative[-1] if tentative else state.tokens[-1]), [], [], []
            unsure = False
            while True:
                h = runner.forward(embed(token), below_d, start + len(states_d), cache).hidden
                states_d.append(h)
                choice = choose(draft_head(h[0, -1]), sampling, gen)
                if choice.confidence < self.threshold:
                    unsure = True
                    break
                drafts.append(choice.token)
                q_rows.append(choice.probs)
                token = choice.token
                if len(drafts) >= budget or token in eos:
                    break
            t1 = _clock(runner.device)
            # level 2: layers [d, v) from the cached layer-d states. Every draft but the last was fed
            # through layers < d while drafting; the last one is fed too (one more pass of layers
            # < d) when the exit-v token after it could still fit in the buffer (the bonus).
            bonus = unsure or (len(tentative) + len(drafts) < cap and drafts[-1] not in eos)
            if bonus and not unsure:
                states_d.append(runner.forward(embed(drafts[-1]), below_d, start + len(states_d), cache).hidden)
            h_v = runner.forward(torch.cat(states_d, dim=1), between, start, cache).hidden
            logits_v = verify_head(h_v)[0]
            p_rows = sampling.probs(logits_v)
            accepted, correction = _verdict(drafts, q_rows, p_rows, sampling, gen)
            keep = min(accepted + 1, h_v.shape[1])  # inputs whose layers [0, v) stay valid
            hidden_v.append(h_v[:, :keep])
            done += keep
            runner.crop(cache, base + done, range(v))  # drop the rejected drafts' KV
            t2 = _clock(runner.device)
            t_draft += t1 - t0
            t_inter += t2 - t1

            new = drafts[:accepted] + ([] if correction is None else [correction])
            shown = (logits_v.float().softmax(-1) if sampling.greedy else p_rows)[: len(new)]
            for i, tok in enumerate(new):
                tentative.append(tok)
                sources.append("draft" if i < accepted else "verify")
                p_tent.append(p_rows[i])
                token_probs.append(float(shown[i, tok]))
                if tok in eos:
                    break
            if record:
                rounds.append({"drafts": list(drafts), "accepted": accepted, "correction": correction,
                               "bonus": bonus and accepted == len(drafts), "unsure_stop": unsure})

        assert done == len(tentative) or tentative[-1] in eos
        m = len(tentative)
        reuse = Reuse(v, torch.cat(hidden_v, dim=1)[:, :m])
        probs = None if sampling.greedy else torch.stack(p_tent)
        if record:
            info.update(self._round_info(rounds, tentative, sources, t_draft, t_inter))
        return Draft(tentative, probs, token_probs, reuse, info)

    @staticmethod
    def _round_info(rounds, tentative, sources, t_draft, t_inter) -> dict[str, Any]:
        return {
            "rounds": rounds,  # per round: drafts, accepted (at exit v), correction, bonus
            "round_drafts": [r["drafts"] for r in rounds],
            "round_accepted": [r["accepted"] for r in rounds],
            "round_correction": [r["correction"] for r in rounds],
            "tentative": list(tentative),
            "tentative_source": list(sources),
            "drafted": sum(len(r["drafts"]) for r in rounds),
            "accepted_intermediate": sum(r["accepted"] for r in rounds),
            "t_draft_level": t_draft,
            "t_intermediate": t_inter,
        }


def build(target, adapter: str = "auto", draft_vocab: int = 0, **options) -> HiSpec:
    """make_drafter("hispec", model, d=..., v=..., n=..., k=..., threshold=..., adapter=..., draft_vocab=...).
    The vocabulary subset serves both exits (the adapters were trained over it); only the full
    check, which the engine runs with the whole head, decides what is committed."""
    drafter = HiSpec(target.config.num_hidden_layers, **options)
    drafter.draft_head = build_head(target, drafter.d, adapter, draft_vocab, NAME)
    drafter.verify_head = build_head(target, drafter.v, adapter, draft_vocab, NAME)
    return drafter


DRAFTER = Declaration(
    NAME, "HiSpec (hierarchical speculation)",
    "Draft at exit d, check cheaply at an intermediate exit v, and let the full model validate the "
    "buffered tentative tokens every n tokens.",
    build,
    (Option("d", "layer", None, f"draft exit layer d (default L/{round(1 / DRAFT_FRACTION)})", flag="--draft-exit",
            label=f"draft exit d (0 = auto: L/{round(1 / DRAFT_FRACTION)})", ui_default=0, minimum=0, maximum=63,
            step=1),
     Option("v", "layer", None, f"intermediate verifier exit layer v (default L/{round(1 / VERIFY_FRACTION)})",
            flag="--verify-exit", label=f"intermediate verify exit v (0 = auto: L/{round(1 / VERIFY_FRACTION)})",
            ui_default=0, minimum=0, maximum=63, step=1),
     Option("n", "int", DEFAULT_N, "full verification once n tentative tokens are buffered", flag="--validate-every",
            label="n: tentative tokens before the full model checks", minimum=1, maximum=32, step=1),
     draft_length(DEFAULT_K, label="k: drafts per intermediate round", help_text="drafts per intermediate round"),
     confidence_threshold(DEFAULT_THRESHOLD, in_panel=False), adapter_option(), draft_vocab_option()),
    needs="early-exit")
