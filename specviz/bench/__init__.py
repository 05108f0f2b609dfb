"""`python -m specviz.bench`: every drafter against `model.generate()`, the engine's own AR loop
and transformers' own assisted generation, on one prompt set, in one run;
`python -m specviz.bench sweep {clasp,hispec,ctc,defaults}`: the per-drafter sweeps.

How it measures (Spec-Bench conventions, see shared ALGORITHMS.md §1.3):

* batch size 1, greedy by default; one warm-up pass of every method first;
* interleaved: for each repeat, for each prompt, every method runs once (the method order is
  rotated from prompt to prompt and reversed every other prompt), so machine drift and cache
  warmth hit every method alike;
* wall time is taken around the whole call (prefill included) with `torch.cuda.synchronize()`
  on CUDA; tokens/s of a method is the mean over samples of new tokens / wall time, and its
  speedup is that mean divided by the same mean of `generate()`;
* τ, acceptance, per-position acceptance and the draft / verify / search time split come from
  the engine's trace (`trace.compute_metrics` conventions, pooled over all samples);
* the Leviathan et al. prediction S = (1 - α^(γ+1)) / ((1 - α)(γc + 1)) uses the measured α
  (per-token acceptance: accepted / (accepted + rejections), the estimator of a geometric
  acceptance process), γ (mean draft length per verification) and c (draft seconds per draft
  token / verify seconds per verification); S is a speedup over one target forward per token,
  i.e. over the engine's AR loop;
* peak memory: CUDA max allocated above what was allocated before the call; on CPU the
  kernel's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs before
  each call) above the RSS before the call — no tracing allocator, nothing added to the timed
  path;
* "matched" compares every greedy output with `generate()`'s output token for token.

Modules: `cli` (both entry points), `harness` (clocks, memory probe, interleaving, the `Bench`
runner), `methods` (what one run times), `baselines` (`generate()` and transformers' assisted
generation), `stats` (samples -> per-method records), `reports` (build, merge shards, markdown,
JSON), `report_html` (the plotly page), `inputs` (prompt files, the sweeps' model set-up),
`sweeps/` (one module per sweep).
"""

from .baselines import HF_COUNTERPART, settings_transformers_lacks
from .cli import main, parser
from .harness import Bench, MemoryProbe
from .inputs import (DEFAULT_PROMPTS, FALLBACK_CODE_PROMPTS, PROMPTS_DIR, load_prompts, load_setup, prompts_for,
                     resolve_prompts)
from .methods import Method, RunResult, parse_overrides
from .report_html import html_report
from .reports import build_report, markdown, merge_reports
from .stats import RECORD_FIELDS, Sample, leviathan_speedup, pool_stats, summarise, trace_stats

__all__ = [
    "HF_COUNTERPART", "settings_transformers_lacks", "main", "parser", "Bench", "MemoryProbe", "DEFAULT_PROMPTS",
    "FALLBACK_CODE_PROMPTS", "PROMPTS_DIR", "load_prompts", "load_setup", "prompts_for", "resolve_prompts", "Method",
    "RunResult", "parse_overrides", "html_report", "build_report", "markdown", "merge_reports", "RECORD_FIELDS",
    "Sample", "leviathan_speedup", "pool_stats", "summarise", "trace_stats",
]
