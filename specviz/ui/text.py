"""The app's fixed prose and style: the intro line, the Learn tab's explanation, the CSS."""

from __future__ import annotations

INTRO = ("A drafter guesses a few tokens, the full model checks them in one pass. "
         "Watch which guesses survive, which layers were skipped, and what it buys in speed.")

CSS = """
#sv-text textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace; font-size: 13px; }
#sv-prompt textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono', monospace; font-size: 13px; }
.sv-progress { font-size: 13px; min-height: 1.2em; }
.sv-progress a { white-space: nowrap; }
/* Stop's instant feedback: shown while the stopped run still streams (its caret), gone with its final update */
body:has(#sv-tokens .sv-caret) #sv-progress[data-stopping] .sv-progress::before { content: "Stopping… · "; font-weight: 600; }
/* what a slider did to a typed value outside its range (layout.CLAMP_NOTICE_JS) */
#sv-clamp-notice { position: fixed; left: 50%; bottom: 24px; transform: translateX(-50%); z-index: 1000;
  max-width: min(92vw, 560px); padding: 10px 14px; border-radius: 8px; font-size: 14px;
  background: #fff7ed; color: #7c2d12; border: 1px solid #fb923c; box-shadow: 0 4px 14px rgba(0,0,0,.18); }
/* a formula wider than a phone scrolls inside its line instead of being cut off */
#sv-learn-md .katex-display { overflow-x: auto; overflow-y: hidden; }
/* the step table fits a phone: Gradio's roomy cell padding would push p and the token id out of view */
@media (max-width: 480px) { .sv-step-table th, .sv-step-table td { padding: 3px 5px !important; } }
"""

LEARN_MD = r"""
## How speculative decoding works

A language model writes one token per forward pass, and on small batches each pass is dominated by
reading the weights and by per-layer overhead, not by arithmetic. **Speculative decoding** lets a cheap
*drafter* guess the next few tokens, then runs the full *target* model **once** over all of them.
The target keeps the longest prefix it agrees with, adds **one token of its own** (the correction at the
first disagreement, or a bonus token when everything matched), and throws the rest away.

* **Lossless.** With greedy decoding the output is *exactly* what the target alone would write (the
  badge above checks it against `model.generate()`); with sampling, rejection sampling keeps the output
  *distribution* exact.
* **τ** is the mean number of tokens each verification adds, the target's own token included: plain
  decoding has τ = 1. The prefill verifies no draft and is not counted, so τ is the Acceptance tab's
  mean accepted length + 1.
* **Colours.** <span style="background:rgba(0,114,178,.2);border-bottom:2px solid #0072B2">accepted draft</span> ·
  <span style="background:rgba(230,159,0,.32)">target's own token</span> ·
  <span style="color:#D55E00;text-decoration:line-through">rejected draft</span>.

### The drafters

* **Static layer skip** (Draft & Verify / Self-SD): the draft is the target itself with a fixed set of
  layers bypassed — no extra weights. Layers below the first skipped one are exact, so the verifier reuses
  their cache.
* **Early exit** (LayerSkip): draft with the first *E* layers and the shared LM head. It needs a model
  trained to make early layers predictive (the bundled model is trained with an early-exit loss).
* **CLaSp**: every *N* verifications (the DP interval) a dynamic program over (layer *i*, layers skipped so far *j*) picks
  which *M* layers to skip, keeping the draft's hidden state as close (cosine) as possible to the full
  model's state of the last accepted token; the set is usually scattered, not one block. *Skip layers*
  tab: the heatmap shows the chosen set per step and the DP table with its path.
* **HiSpec**: three levels of one early-exit model — draft at exit *d*, a cheap intermediate check at exit
  *v*, and the full model validating the buffered tentative tokens every *n* tokens.
* **CTC drafter**: a small head reads the last hidden state and emits several frames at once; CTC
  decoding collapses repeats and blanks into a draft.
* **EAGLE head**: one trained decoder layer drafts from the target's own last hidden state and the token
  the target just said (knowing the token removes most of the state's doubt about it), one cheap step
  per draft token: about 0.08 of a SmolLM2 step, against 0.9 for a layer-skip draft token.
* **Draft model**: classic speculative decoding with a separate small model.
* **Prompt lookup**: copy what followed the last earlier occurrence of the context's final n-gram —
  free to draft, strong on repetitive code. With *past answers* on (SmolLM2 ships them), where the
  context has nothing to copy it drafts what the model most often said next in its own earlier
  answers, as long as the estimated chance that the whole draft is accepted stays high enough. On
  SmolLM2 on a CPU it raises τ by about 0.1 but not the speed: every drafted token, accepted or not,
  adds a row to the verify pass.
* **Prompt lookup, else a trained head**: copy from the context where its last n-gram occurred before, and
  let the EAGLE (or CTC) head draft one token where it did not: each is good at different steps.

### Why the speedup is modest on a CPU

For a layer-skip drafter a draft token costs roughly (layers run) ÷ L of a target step, so *c* is large
and acceptance α must be high to win. Verifying 8 tokens costs only ~1.5× one decoding step on
specviz-tiny, which is what makes speculation pay at all; on SmolLM2-135M it costs ~2.2 steps (its
49,152-entry LM head and wider layers make each verified token dearer on a CPU), so only cheap drafts,
such as prompt lookup's, pay there.
"""
