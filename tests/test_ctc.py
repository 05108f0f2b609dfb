"""CTC drafter (issue #6): collapse and positions, state bookkeeping, losslessness on tiny random
models (random heads, and frames forced from the true continuation so drafts are accepted), the
bundled heads when present, errors, and a smoke run of the trainer."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from specviz.drafters import make_drafter
from specviz.drafters.ctc import (HEAD_FILES, CTCDrafter, ctc_collapse, cut_draft, default_config, draft_positions,
                                  init_head, load_head, save_head)
from specviz.engine import Engine, GenerationConfig
from specviz.layers import LayerRunner
from specviz.models import REGISTRY
from specviz.sampling import SamplingConfig
from specviz.trace import compute_metrics
from tests.conftest import DEVICES
from tests.tiny import assert_lossless, random_prompt, reference_greedy, tiny_model

BLANK = 99


# -- CTC collapse and positions -----------------------------------------------------------------

@pytest.mark.parametrize("frames,tokens,sources", [
    ([5, 5, 7, 7, 7, 8], [5, 7, 8], [0, 2, 5]),  # repeats merge
    ([BLANK, 5, BLANK, BLANK, 6, BLANK], [5, 6], [1, 4]),  # blanks drop
    ([5, BLANK, 5, 5, BLANK, 5], [5, 5, 5], [0, 2, 5]),  # a blank separates real repeats
    ([BLANK] * 6, [], []),  # all blank: empty draft
    ([], [], []),
    ([3, 4, 5, 6], [3, 4, 5, 6], [0, 1, 2, 3]),  # nothing to collapse
    ([BLANK, 4, 4, BLANK, 4, BLANK], [4, 4], [1, 4]),
])
def test_ctc_collapse(frames, tokens, sources):
    assert ctc_collapse(frames, BLANK) == (tokens, sources)


def test_medusa_frames_are_not_collapsed():
    assert ctc_collapse([5, 5, BLANK, 7], None) == ([5, 5, BLANK, 7], [0, 1, 2, 3])


def test_cut_draft_max_length_eos_threshold():
    toks, conf = [5, 6, 7, 8, 9], [0.9, 0.8, 0.7, 0.6, 0.5]
    assert cut_draft(toks, conf, 3, 0.0, frozenset()) == ([5, 6, 7], "k")
    assert cut_draft(toks, conf, 5, 0.0, frozenset()) == (toks, "k")
    assert cut_draft(toks, conf, 9, 0.0, frozenset()) == (toks, "frames")
    assert cut_draft(toks, conf, 9, 0.0, frozenset({7})) == ([5, 6, 7], "eos")
    assert cut_draft(toks, conf, 9, 0.75, frozenset()) == ([5, 6], "threshold")
    assert cut_draft([], [], 4, 0.0, frozenset()) == ([], "frames")


def test_positions_follow_the_collapsed_index_not_the_frame_index():
    frames = [BLANK, 11, 11, BLANK, 12, BLANK, BLANK, 13]
    tokens, sources = ctc_collapse(frames, BLANK)
    assert sources == [1, 4, 7]  # frame indices: using them (the public code's bug) gives gaps
    assert draft_positions(20, len(tokens)) == [21, 22, 23]
    assert draft_positions(0, 0) == []


# -- tiny random models -----------------------------------------------------------------------

_models: dict = {}


def model_for(arch="llama", seed=0):
    if (arch, seed) not in _models:
        model = tiny_model(arch, seed=seed)
        _models[(arch, seed)] = (model, Engine(model))
    return _models[(arch, seed)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("options", [{"head": "ctc", "k": 4}, {"head": "medusa", "k": 6},
                                     {"head": "ctc", "k": 2, "threshold": 0.01, "seed": 3}])
def test_greedy_lossless_random_head(arch, options):
    model, engine = model_for(arch)
    for p in range(2):
        prompt = random_prompt(p, length=10)
        ref = reference_greedy(model, prompt, 30)
        drafter = make_drafter("ctc", model, random_head=True, **options)
        trace = engine.generate(prompt, drafter, GenerationConfig(max_new_tokens=30))
        assert_lossless(model, prompt, trace.generated, ref)
        assert any(step.draft_tokens for step in trace.steps)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_lossless_on_device(device):
    model, _ = model_for("llama", 2)
    on_device = copy.deepcopy(model).to(device)
    engine = Engine(on_device)
    prompt = random_prompt(6, length=10)
    ref = reference_greedy(model, prompt, 30)  # CPU reference
    for head in ("ctc", "medusa"):
        trace = engine.generate(prompt, make_drafter("ctc", on_device, head=head, random_head=True),
                                GenerationConfig(max_new_tokens=30))
        assert_lossless(model, prompt, trace.generated, ref)


class ForcedFrames(CTCDrafter):
    """Frames built from the true greedy continuation (with blanks, repeats and occasional errors),
    so drafts are partly accepted and every accept/reject path of the engine runs."""

    def __init__(self, *args, future=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.future, self.calls = future, 0

    def frame_logits(self):
        real = super().frame_logits()  # still run the head (shape, dtype, state buffer)
        cfg = self.cfg
        pos = self._pending_position + 1  # index in prompt + generated of the first draft token
        cont = self.future[pos:pos + cfg.frames]
        self.calls += 1
        frames = []
        for i, tok in enumerate(cont):
            if cfg.blank is not None and (i + self.calls) % 3 == 0:
                frames.append(cfg.blank)
            frames.append(tok)
            if cfg.blank is not None and (i + self.calls) % 4 == 0:
                frames.append(tok)  # a repeat that collapses
        if self.calls % 5 == 0 and len(frames) > 2:
            frames[2] = (frames[2] + 1) % cfg.vocab  # a wrong token
        frames = (frames + [cfg.blank if cfg.blank is not None else 0] * cfg.frames)[:cfg.frames]
        logits = torch.full_like(real, -10.0)
        logits[torch.arange(cfg.frames), torch.tensor(frames)] = 10.0
        return logits


def last_layer_states(model, ids):
    runner = LayerRunner(model)
    out = runner.forward(runner.embed(torch.tensor([ids])), range(runner.num_layers), 0, runner.new_cache(),
                         capture=True)
    return out.states[-1][0]


@pytest.mark.parametrize("head", ["ctc", "medusa"])
def test_lossless_with_accepted_drafts_and_exact_state_window(head):
    model, engine = model_for("llama", 1)
    prompt = random_prompt(4, length=12)
    ref = reference_greedy(model, prompt, 40)
    drafter = ForcedFrames(model, head=head, k=5, random_head=True, future=prompt + ref)
    generation = engine.start(prompt, drafter, GenerationConfig(max_new_tokens=40))
    for event in generation:
        if generation.done:
            break
        if event.index == 0:  # the engine runs the drafter's start() right before the first proposal
            continue
        # the drafter's window, as this step's proposal saw it (the engine runs observe() right
        # before the proposal it prepares), holds the exact last-layer states of the tokens
        # committed before this step, each paired with the token after it
        tokens = generation.tokens[: len(generation.tokens) - len(event.committed)]
        n = drafter.states.shape[0]
        expected = last_layer_states(model, tokens[:-1])[-n:]
        torch.testing.assert_close(drafter.states, expected, rtol=1e-4, atol=1e-4)
        assert drafter.next_tokens == tokens[len(tokens) - n:]
        if event.draft_tokens:
            pending_before = len(tokens) - 1
            assert event.info["positions"] == draft_positions(pending_before, len(event.draft_tokens))
    trace = generation.trace
    assert_lossless(model, prompt, trace.generated, ref)
    metrics = compute_metrics(trace)
    assert metrics.tau > 2.0, metrics.tau  # the forced frames are mostly right
    assert any(0 < s.accepted < len(s.draft_tokens) for s in trace.steps)  # partial accepts happen


def test_sampling_runs_reproducibly_with_one_hot_q():
    model, engine = model_for("llama", 0)
    prompt = random_prompt(2, length=8)
    config = GenerationConfig(max_new_tokens=24, sampling=SamplingConfig(temperature=0.8, top_p=0.9, seed=5))
    runs = [engine.generate(prompt, make_drafter("ctc", model, random_head=True), config).generated
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 24
    drafter = make_drafter("ctc", model, random_head=True)
    gen = engine.start(prompt, drafter, config)
    steps = iter(gen)
    next(steps), next(steps)  # the prefill, then the first proposal (start() runs right before it)
    draft = drafter.propose(gen._state())
    assert draft.probs is None  # deterministic picks: q is one-hot, exactly lossless


def test_trace_info_keys():
    model, engine = model_for("llama", 0)
    trace = engine.generate(random_prompt(1), make_drafter("ctc", model, random_head=True, k=3),
                            GenerationConfig(max_new_tokens=12))
    step = next(s for s in trace.steps if s.draft_tokens)
    info = step.info
    assert {"head", "frames", "collapsed", "positions", "cut"} <= set(info)
    assert info["head"] == "ctc" and len(info["frames"]) == 10
    frame_ids = [f["token"] if not f["blank"] else BLANK for f in info["frames"]]
    assert ctc_collapse(frame_ids, BLANK)[0] == info["collapsed"]
    assert step.draft_tokens == info["collapsed"][: len(step.draft_tokens)]
    assert all(set(f) == {"token", "blank", "p", "alt", "kept", "used"} for f in info["frames"])
    # "used" marks exactly the frames whose token the (k-cut) draft proposed; the rest were cut
    assert sum(f["used"] for f in info["frames"]) == len(step.draft_tokens)
    assert [f["token"] for f in info["frames"] if f["used"]] == step.draft_tokens
    # the frame probability of each proposed token, shown next to the one-hot q = 1
    assert step.draft_probs == [1.0] * len(step.draft_tokens)
    assert info["token_frame_p"] == [f["p"] for f in info["frames"] if f["used"]]
    json.dumps(trace.to_dict())  # plain data
    quiet = engine.generate(random_prompt(1), make_drafter("ctc", model, random_head=True),
                            GenerationConfig(max_new_tokens=6, record=False))
    assert all(not s.info for s in quiet.steps)


# -- files and errors --------------------------------------------------------------------------

def test_head_file_round_trip(tmp_path):
    model, _ = model_for("llama", 0)
    cfg = default_config("ctc", 64, 256)
    head = init_head(cfg, model.model.norm.weight, seed=7)
    save_head(head, tmp_path / "h.safetensors", meta={"steps": 3})
    loaded, meta = load_head(tmp_path / "h.safetensors")
    assert meta == {"steps": 3} and loaded.cfg == cfg
    for name, tensor in head.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor.half().float())
    drafter = make_drafter("ctc", model, path=str(tmp_path / "h.safetensors"))
    assert drafter.settings()["head_file"].endswith("h.safetensors")
    with pytest.raises(ValueError, match="holds a 'ctc' head"):
        make_drafter("ctc", model, head="medusa", path=str(tmp_path / "h.safetensors"))


def test_missing_head_file_says_which_and_how(tmp_path):
    model, _ = model_for("llama", 0)
    with pytest.raises(ValueError, match=r"train_ctc.*random_head=True"):
        make_drafter("ctc", model)  # not loaded from a folder
    with pytest.raises(ValueError, match=r"nope\.safetensors does not exist.*train_ctc"):
        make_drafter("ctc", model, path=str(tmp_path / "nope.safetensors"))
    model.config._name_or_path = str(tmp_path)
    try:
        expected = rf"needs a trained medusa head \({HEAD_FILES['medusa']}\).*train_ctc --head medusa"
        with pytest.raises(ValueError, match=expected):
            make_drafter("ctc", model, head="medusa")
    finally:
        model.config._name_or_path = ""


@pytest.mark.parametrize("options,match", [
    ({"head": "eagle"}, "head must be one of"),
    ({"k": 0}, r"k \(max draft length\) must be an integer in \[1, 64\]"),
    ({"k": 65}, r"\[1, 64\]"),
    ({"threshold": 1.5}, r"threshold .* must be in \[0, 1\]"),
    ({"random_head": "yes"}, "random_head must be True or False"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*31\)"),
    ({"path": 3}, "path must be a path"),
    ({"path": "x.safetensors", "random_head": True}, "not both"),
    ({"frames": 4}, "bad option for drafter 'ctc'"),
])
def test_bad_options(options, match):
    model, _ = model_for("llama", 0)
    options = dict({"random_head": True}, **options) if "path" not in options else options
    with pytest.raises(ValueError, match=match):
        make_drafter("ctc", model, **options)


def test_head_for_other_base_weights_warns(tiny_model_dir, tmp_path):
    import shutil

    from specviz.drafters.ctc import base_fingerprint
    from specviz.models import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = load_model(str(folder)).model
    cfg = default_config("ctc", model.config.hidden_size, model.config.vocab_size)
    save_head(init_head(cfg), folder / HEAD_FILES["ctc"], meta={"base_sha256": base_fingerprint(folder)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_drafter("ctc", model)  # same weights: silent
    save_head(init_head(cfg), folder / HEAD_FILES["ctc"], meta={"base_sha256": "0123456789abcdef"})
    with pytest.warns(UserWarning, match="trained on base weights 0123456789abcdef"):
        make_drafter("ctc", model)


# -- the trainer --------------------------------------------------------------------------------

def test_parallel_greedy_matches_generate():
    from specviz.train.train_ctc import parallel_greedy

    model, _ = model_for("llama", 0)
    x = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    states, greedy = parallel_greedy(model, x, 3)
    _, some = parallel_greedy(model, x, 3, torch.tensor([1, 5, 8, 11]))
    for b in range(2):
        for t in (0, 5, 11):
            ref = model.generate(x[b:b + 1, :t + 1], max_new_tokens=4, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, t + 1:].tolist()
            assert greedy[b, t].tolist() == ref
        assert some[b].tolist() == greedy[b, [1, 5, 8, 11]].tolist()
    torch.testing.assert_close(states[0], last_layer_states(model, x[0].tolist()), rtol=1e-4, atol=1e-4)


def test_compact_ctc_equals_full_vocabulary_ctc():
    import torch.nn.functional as F

    from specviz.drafters.ctc import HeadConfig
    from specviz.train.train_ctc import compact_ctc_inputs, ctc_nll, head_loss

    g = torch.Generator().manual_seed(0)
    vocab, frames = 50, 8
    labels = torch.tensor([[3, 3, 7, 9], [4, 5, 4, 4], [6, 7, 8, 2], [1, 1, 1, 1], [5, 5, 5, 5]])
    lengths = torch.tensor([4, 4, 3, 2, 4])  # the last needs 7 frames (blanks between repeats): feasible
    logits = torch.randn(5, frames, vocab + 1, generator=g, requires_grad=True)
    logp = logits.log_softmax(-1)
    inputs = torch.full((5,), frames)
    full = F.ctc_loss(logp.transpose(0, 1), labels, inputs, lengths, blank=vocab, reduction="none")
    gathered, targets = compact_ctc_inputs(logp, labels, vocab)
    compact = ctc_nll(gathered, targets, lengths)
    torch.testing.assert_close(compact, full)
    grad_full, = torch.autograd.grad(full.sum(), logits, retain_graph=True)
    grad_compact, = torch.autograd.grad(compact.sum(), logits, retain_graph=True)
    torch.testing.assert_close(grad_compact, grad_full)
    # the training loss is torch's ctc_loss with reduction="mean", zero_infinity=True
    cfg = HeadConfig(kind="ctc", hidden=64, vocab=vocab, frames=frames, label_len=4, heads=1)
    short = logits[:, :3]  # 3 frames cannot emit 4 labels: infinite loss, zeroed
    for x in (logits, short):
        ref = F.ctc_loss(x.log_softmax(-1).transpose(0, 1), labels, torch.full((5,), x.shape[1]), lengths,
                         blank=vocab, reduction="mean", zero_infinity=True)
        torch.testing.assert_close(head_loss(x, labels, lengths, cfg), ref)


def test_trainer_smoke(tiny_model_dir, tmp_path):
    from specviz.train import train_ctc

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "val", "heldout"):
        np.save(data / f"{split}.u16.npy", np.repeat(rng.integers(3, 300, (40, 10)), 2, 0).ravel().astype(np.uint16))
    export = tmp_path / "export"
    common = ["--model", tiny_model_dir, "--data", str(data), "--out", str(tmp_path / "run"),
              "--export-dir", str(export), "--windows", "4", "--val-windows", "1", "--heldout-windows", "1",
              "--seq", "32", "--eval-every", "3", "--log-every", "3", "--batch-size", "16",
              "--val-samples", "32", "--heldout-samples", "32"]
    train_ctc.main(common + ["--head", "both", "--steps", "6"])
    for kind in ("ctc", "medusa"):
        head, meta = load_head(export / HEAD_FILES[kind])
        assert head.cfg.kind == kind and meta["steps"] == 6 and "tau" in meta["heldout"]
    train_ctc.main(common + ["--head", "ctc", "--steps", "9", "--resume"])  # reuses the cached data
    assert load_head(export / HEAD_FILES["ctc"])[1]["steps"] == 9


# -- the bundled model and heads ----------------------------------------------------------------

BUNDLED = REGISTRY["specviz-tiny"].folder
HAVE_BUNDLED = all((BUNDLED / f).exists() for f in ("config.json", *HEAD_FILES.values()))


@pytest.mark.skipif(not HAVE_BUNDLED, reason="bundled specviz-tiny model or its draft heads are missing")
@pytest.mark.parametrize("head", ["ctc", "medusa"])
def test_bundled_heads_greedy_lossless(head):
    from specviz.api import encode, get_engine, get_model

    loaded = get_model("specviz-tiny", device="cpu")
    engine = get_engine("specviz-tiny", device="cpu")
    model = loaded.model
    drafter = make_drafter("ctc", model, head=head)
    steps = tokens = 0
    for text in ("def median(data):\n", "def quote(s):\n    \"\"\"Return a shell-escaped version of the string"):
        prompt = encode(loaded, text)
        ref = reference_greedy_any(model, prompt, 32)
        trace = engine.generate(prompt, drafter, GenerationConfig(max_new_tokens=32))
        assert_lossless(model, prompt, trace.generated, ref)
        steps += len(trace.steps) - 1
        tokens += len(trace.generated) - 1
    assert tokens / steps > 1.2  # a trained head gets drafts accepted


@torch.no_grad()
def reference_greedy_any(model, prompt, max_new_tokens):
    eos = model.generation_config.eos_token_id
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=model.generation_config.pad_token_id or 0)
    return out[0, len(prompt):].tolist()
