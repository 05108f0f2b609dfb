"""Train specviz's bundled Llama models (base with LayerSkip early-exit loss, and a small draft).

Usage (after ``specviz.train.corpus`` and ``specviz.train.tokenizer``)::

    python -m specviz.train.train_lm --preset base  --data .train_data --out .train_data/runs/base  --minutes 7.5
    python -m specviz.train.train_lm --preset draft --data .train_data --out .train_data/runs/draft --minutes 7.5

    # evaluate an exported model on the held-out split (per exit layer) and write its model card
    python -m specviz.train.train_lm --eval-only assets/models/specviz-tiny --data .train_data
    python -m specviz.train.train_lm --card assets/models/specviz-tiny --data .train_data

Training reads ``<data>/{train,val,heldout}.u16.npy`` (token ids, documents joined by ``</s>``) and
``<data>/tokenizer/``. Each step samples ``batch_size`` random windows of ``seq_len + 1`` tokens
from the train stream (offsets drawn from a generator seeded with ``seed`` and the step number, so
a resumed run sees the same batches). The run ends when ``--steps``, ``--minutes`` (wall clock,
counted across resumes) or ``--max-epochs`` is reached, whichever comes first; the cosine learning
rate schedule follows the largest of those three progress fractions.

Base preset: a LayerSkip-style early-exit loss. The model is driven layer by layer
(``embed_tokens`` -> ``layers[i]`` -> shared ``norm`` + ``lm_head``); at each step the final exit and
a rotating subset of intermediate exits (every ``exit_rotation``-th layer, offset by the step) are
scored. Exit ``l`` (0-based) of ``L`` gets weight ``e_scale * (l + 1) / L`` and the final exit weight 1,
normalised to sum to 1, so the weight grows with depth and the final exit always weighs most.
Optional per-sample layer dropout ``p_l = p_max * S(t) * D(l)`` with ``D(l) = exp(l ln2/(L-1)) - 1``
and ``S(t) = exp(t ln2) - 1`` (t = training progress), and residual dropout on each layer's update.

Draft preset: a 3-layer model with a plain next-token loss.

Every ``--eval-every`` steps the final-exit loss on the *val* split (training files set aside by a
path hash, not the held-out modules) is measured and the best weights are kept; at the end the best
weights are exported as fp16 safetensors (shards <= 14 MB) together with the tokenizer, and the
held-out loss of every exit layer is written to ``eval_heldout.json`` in the export folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PRESETS = {
    "base": dict(
        n_layers=16, hidden=256, intermediate=704, heads=4, kv_heads=4,
        early_exit=True, exit_rotation=4, e_scale=0.5, layer_dropout=0.1, dropout=0.15,
        lr=2e-3, batch_size=64, seq_len=512, warmup=200, max_epochs=10.0,
    ),
    "draft": dict(
        n_layers=3, hidden=256, intermediate=704, heads=4, kv_heads=4,
        early_exit=False, exit_rotation=1, e_scale=0.0, layer_dropout=0.0, dropout=0.05,
        lr=3e-3, batch_size=64, seq_len=512, warmup=200, max_epochs=25.0,
    ),
}

# Function headers from the held-out modules (never trained on). No trailing newline: the tokenizer
# merges a newline with the following indentation ("\n" + 4 spaces is one token), so a prompt ending
# in a bare "\n" forces a token boundary the model never saw before an indented body.
HELDOUT_PROMPTS = [
    ("heapq.py", "def nlargest(n, iterable, key=None):"),
    ("statistics.py", "def median(data):"),
    ("shlex.py", "def quote(s):"),
    ("textwrap.py", "def indent(text, prefix, predicate=None):"),
    ("difflib.py", "def get_close_matches(word, possibilities, n=3, cutoff=0.6):"),
]


# ----------------------------------------------------------------------------------------------
# helpers


def log(msg: str, fh=None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def device_desc(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_ids(path: Path, device) -> torch.Tensor:
    arr = np.load(path).astype(np.int32)
    return torch.from_numpy(arr).to(device)


def build_model(p: dict, vocab_size: int, special: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p["hidden"],
        intermediate_size=p["intermediate"],
        num_hidden_layers=p["n_layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"],
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=special["<s>"],
        eos_token_id=special["</s>"],
        pad_token_id=special["<pad>"],
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg)
    return model


def exit_weights(exits: list[int], L: int, e_scale: float) -> dict[int, float]:
    w = {l: (1.0 if l == L - 1 else e_scale * (l + 1) / L) for l in exits}
    s = sum(w.values())
    return {l: v / s for l, v in w.items()}


def exits_for_step(step: int, L: int, rotation: int, early_exit: bool) -> list[int]:
    if not early_exit or rotation <= 0:
        return [L - 1]
    k = step % rotation
    return sorted({l for l in range(L - 1) if l % rotation == k} | {L - 1})


def layer_drop_probs(L: int, p_max: float, progress: float) -> list[float]:
    if p_max <= 0 or L < 2:
        return [0.0] * L
    s_t = math.exp(min(progress, 1.0) * math.log(2)) - 1.0
    return [p_max * s_t * (math.exp(l * math.log(2) / (L - 1)) - 1.0) for l in range(L)]


def forward_hidden(model, input_ids, *, layer_p=None, dropout=0.0, training=False, collect=None):
    """Run the decoder layer by layer; return {layer_idx: hidden state (pre final norm)}.

    ``collect`` is the set of layer indices whose output is returned (default: all).
    Causal attention comes from SDPA with ``attention_mask=None`` (q_len > 1, no cache).
    """
    m = model.model
    B, T = input_ids.shape
    h = m.embed_tokens(input_ids)
    pos = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)
    pe = m.rotary_emb(h, pos)
    out = {}
    for i, layer in enumerate(m.layers):
        y = layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos)
        if training and dropout > 0:
            y = h + F.dropout(y - h, p=dropout, training=True)
        if training and layer_p is not None and layer_p[i] > 0:
            keep = (torch.rand(B, 1, 1, device=h.device) >= layer_p[i])
            y = torch.where(keep, y, h)
        h = y
        if collect is None or i in collect:
            out[i] = h
    return out


def exit_logits(model, h):
    return model.lm_head(model.model.norm(h))


def check_manual_forward(model, device, vocab):
    """The layer-by-layer forward must reproduce model(input_ids).logits (causality check)."""
    model.eval()
    ids = torch.randint(0, vocab, (2, 48), device=device)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
        hs = forward_hidden(model, ids, collect={len(model.model.layers) - 1})
        mine = exit_logits(model, hs[len(model.model.layers) - 1]).float()
        # causality: changing a later token must not change earlier logits
        ids2 = ids.clone()
        ids2[:, 30:] = (ids2[:, 30:] + 1) % vocab
        hs2 = forward_hidden(model, ids2, collect={len(model.model.layers) - 1})
        mine2 = exit_logits(model, hs2[len(model.model.layers) - 1]).float()
    err = (ref - mine).abs().max().item()
    cerr = (mine[:, :30] - mine2[:, :30]).abs().max().item()
    model.train()
    scale = max(1.0, ref.abs().max().item())
    assert err < 1e-3 * scale, f"manual forward differs from model forward by {err}"
    assert cerr < 1e-4 * scale, f"manual forward is not causal ({cerr})"
    return err


@torch.no_grad()
def eval_exits(model, ids: torch.Tensor, seq_len: int, batch_size: int, exits=None, amp=False, max_tokens=None):
    """Held-out cross-entropy (nats/token) per exit over non-overlapping windows of ``seq_len``.

    Also top-1 accuracy per exit and agreement of each exit's argmax with the final exit's argmax.
    """
    was_training = model.training
    model.eval()
    L = len(model.model.layers)
    exits = list(range(L)) if exits is None else list(exits)
    n = ids.numel() - 1
    if max_tokens is not None:
        n = min(n, max_tokens)
    starts = list(range(0, n, seq_len))
    loss_sum = {l: 0.0 for l in exits}
    correct = {l: 0 for l in exits}
    agree = {l: 0 for l in exits}
    count = 0
    dev = ids.device
    for b0 in range(0, len(starts), batch_size):
        chunk = starts[b0:b0 + batch_size]
        lens = [min(seq_len, n - s) for s in chunk]
        # group equal lengths (only the last window can be shorter)
        for ln in sorted(set(lens)):
            ss = [s for s, l_ in zip(chunk, lens) if l_ == ln]
            idx = torch.tensor(ss, device=dev).unsqueeze(1) + torch.arange(ln + 1, device=dev)
            w = ids[idx].long()
            x, y = w[:, :-1], w[:, 1:]
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                hs = forward_hidden(model, x, collect=set(exits) | {L - 1})
                final_pred = exit_logits(model, hs[L - 1]).argmax(-1)
                for l in exits:
                    lg = exit_logits(model, hs[l]).float()
                    loss_sum[l] += F.cross_entropy(lg.reshape(-1, lg.size(-1)), y.reshape(-1), reduction="sum").item()
                    pred = lg.argmax(-1)
                    correct[l] += (pred == y).sum().item()
                    agree[l] += (pred == final_pred).sum().item()
            count += y.numel()
    if was_training:
        model.train()
    return {
        "n_tokens": count,
        "loss": {l: loss_sum[l] / count for l in exits},
        "acc": {l: correct[l] / count for l in exits},
        "agree_with_final": {l: agree[l] / count for l in exits},
    }


def export_model(model, out_dir: Path, tok_dir: Path):
    """fp16 safetensors (shards <= 14 MB) + config + generation config + tokenizer files."""
    import copy

    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to("cpu", dtype=torch.float16)
    m.config.use_cache = True
    m.generation_config = GenerationConfig(
        bos_token_id=m.config.bos_token_id,
        eos_token_id=m.config.eos_token_id,
        pad_token_id=m.config.pad_token_id,
        do_sample=False,
    )
    m.save_pretrained(str(out_dir), max_shard_size="14MB")
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / fn, out_dir / fn)
    for f in out_dir.iterdir():  # save_pretrained may create 0600 files
        f.chmod(0o644)
    del m


def load_exported(path, device):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    return m.to(device).eval()


def eval_exported(path: Path, data: Path, device, seq_len=512, batch_size=16) -> dict:
    model = load_exported(path, device)
    ids = load_ids(data / "heldout.u16.npy", device)
    t0 = time.time()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 evaluation
    try:
        r = eval_exits(model, ids, seq_len, batch_size, amp=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    L = len(model.model.layers)
    res = {
        "split": "heldout",
        "modules": json.loads((data / "corpus_manifest.json").read_text())["heldout_modules"]
        if (data / "corpus_manifest.json").exists() else None,
        "unit": "nats/token (mean cross-entropy of next-token prediction)",
        "windows": f"non-overlapping windows of {seq_len} tokens, documents joined by </s>",
        "dtype": "float32 (weights stored fp16)",
        "device": device_desc(device),
        "n_tokens": r["n_tokens"],
        "num_layers": L,
        "per_exit": [
            {"exit_layer": l + 1, "loss": round(r["loss"][l], 5), "top1_acc": round(r["acc"][l], 5),
             "agree_with_final_argmax": round(r["agree_with_final"][l], 5)}
            for l in range(L)
        ],
        "final_loss": round(r["loss"][L - 1], 5),
        "eval_seconds": round(time.time() - t0, 2),
    }
    return res


# ----------------------------------------------------------------------------------------------
# training


def train(args):
    p = dict(PRESETS[args.preset])
    for k in ("n_layers", "hidden", "intermediate", "heads", "kv_heads", "exit_rotation", "e_scale",
              "layer_dropout", "dropout", "lr", "batch_size", "seq_len", "warmup", "max_epochs"):
        v = getattr(args, k)
        if v is not None:
            p[k] = v
    if args.no_early_exit:
        p["early_exit"] = False

    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.log", "a")
    metrics_f = open(out / "metrics.jsonl", "a")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    amp = device.type == "cuda" and not args.fp32

    data = Path(args.data)
    meta = json.loads((data / "tokens_meta.json").read_text())
    special = meta["special_tokens"]
    vocab = meta["vocab_size"]
    train_ids = load_ids(data / "train.u16.npy", device)
    val_ids = load_ids(data / "val.u16.npy", device)
    N = train_ids.numel()
    B, T = p["batch_size"], p["seq_len"]
    tokens_per_step = B * T

    model = build_model(p, vocab, special).to(device)
    if args.init_from:
        from transformers import AutoModelForCausalLM

        src = AutoModelForCausalLM.from_pretrained(args.init_from, dtype=torch.float32, local_files_only=True)
        model.load_state_dict(src.state_dict(), strict=False)
        model.tie_weights()
        del src
    L = p["n_layers"]
    n_params = sum(t.numel() for t in model.parameters())
    err = check_manual_forward(model, device, vocab)
    if device.type == "cuda":  # after the exactness check
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log(f"preset={args.preset} device={device_desc(device)} params={n_params / 1e6:.2f}M "
        f"train_tokens={N} layers={L} amp_bf16={amp} manual-forward max|diff|={err:.2e}", logf)
    log(f"hyper-parameters: {json.dumps(p)}", logf)

    decay, no_decay = [], []
    for n_, t in model.named_parameters():
        (decay if t.dim() >= 2 else no_decay).append(t)
    opt_kw = dict(lr=p["lr"], betas=(0.9, 0.95), eps=1e-8)
    if device.type == "cuda":
        opt_kw["fused"] = True
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], **opt_kw
    )

    state = {"step": 0, "tokens_seen": 0, "elapsed": 0.0, "best_val": float("inf"), "best_step": -1}
    best_sd = None
    ckpt_path = out / "ckpt.pt"
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        if (out / "best.pt").exists():
            best_sd = torch.load(out / "best.pt", map_location=device, weights_only=True)
        log(f"resumed from {ckpt_path} at step {state['step']} (tokens {state['tokens_seen']}, "
            f"elapsed {state['elapsed']:.0f}s, best val {state['best_val']:.4f} @ {state['best_step']})", logf)

    layers_fwd = model.model.layers
    if args.compile:
        for layer in layers_fwd:
            layer.compile()

    budget_s = args.minutes * 60 if args.minutes else None
    max_tokens = p["max_epochs"] * N if p["max_epochs"] else None

    def progress(step, elapsed, tokens):
        fr = 0.0
        if args.steps:
            fr = max(fr, step / args.steps)
        if budget_s:
            fr = max(fr, elapsed / budget_s)
        if max_tokens:
            fr = max(fr, tokens / max_tokens)
        return fr

    def lr_at(step, prog):
        warm = min(1.0, (step + 1) / max(1, p["warmup"]))
        cos = 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))
        return p["lr"] * warm * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cos)

    def save_ckpt():
        tmp = out / "ckpt.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state, "preset": p}, tmp)
        os.replace(tmp, ckpt_path)
        if best_sd is not None:
            torch.save(best_sd, out / "best.pt.tmp")
            os.replace(out / "best.pt.tmp", out / "best.pt")

    def run_val():
        nonlocal best_sd
        vb = max(1, B // 2)
        # whole batches of full windows only, so a compiled model sees a single eval shape
        n_val = min(val_ids.numel() - 1, args.val_tokens or val_ids.numel())
        n_val = max(T, (n_val // (T * vb)) * T * vb)
        r = eval_exits(model, val_ids, T, vb, exits=sorted({L // 4 - 1, L // 2 - 1, L - 1} - {-1}),
                       amp=amp, max_tokens=n_val)
        vl = r["loss"][L - 1]
        improved = vl < state["best_val"]
        if improved:
            state["best_val"] = vl
            state["best_step"] = state["step"]
            best_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        msg = " ".join(f"exit{l + 1}={v:.4f}" for l, v in r["loss"].items())
        log(f"  val step {state['step']}: {msg}{'  *best' if improved else ''}", logf)
        metrics_f.write(json.dumps({"type": "val", "step": state["step"], "tokens_seen": state["tokens_seen"],
                                    "loss": {str(l + 1): v for l, v in r["loss"].items()}}) + "\n")
        metrics_f.flush()

    model.train()
    t_start = time.time() - state["elapsed"]
    t_log, tok_log = time.time(), 0
    run_tokens_t0 = time.time()
    run_tokens = 0
    arange = torch.arange(T + 1, device=device)
    while True:
        step = state["step"]
        state["elapsed"] = time.time() - t_start
        prog = progress(step, state["elapsed"], state["tokens_seen"])
        if prog >= 1.0:
            break
        lr = lr_at(step, prog)
        for g in opt.param_groups:
            g["lr"] = lr
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        offs = torch.randint(0, N - T - 1, (B,), generator=gen).to(device)
        w = train_ids[offs.unsqueeze(1) + arange].long()
        x, y = w[:, :-1], w[:, 1:]
        exits = exits_for_step(step, L, p["exit_rotation"], p["early_exit"])
        weights = exit_weights(exits, L, p["e_scale"])
        lp = layer_drop_probs(L, p["layer_dropout"], prog)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            hs = forward_hidden(model, x, layer_p=lp, dropout=p["dropout"], training=True, collect=set(exits))
            total = 0.0
            final_loss = None
            for l in exits:
                lg = exit_logits(model, hs[l])
                ce = F.cross_entropy(lg.float().reshape(-1, lg.size(-1)), y.reshape(-1))
                total = total + weights[l] * ce
                if l == L - 1:
                    final_loss = ce
        opt.zero_grad(set_to_none=True)
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        state["step"] += 1
        state["tokens_seen"] += tokens_per_step
        tok_log += tokens_per_step
        run_tokens += tokens_per_step

        if state["step"] % args.log_every == 0 or state["step"] == 1:
            fl, tl, gn = final_loss.item(), float(total.item()), gnorm.item()
            now = time.time()
            tps = tok_log / max(1e-9, now - t_log)
            t_log, tok_log = now, 0
            ep = state["tokens_seen"] / N
            log(f"step {state['step']:6d} loss(final) {fl:.4f} loss(weighted) {tl:.4f} lr {lr:.2e} gnorm {gn:.2f} "
                f"tok/s {tps:,.0f} tokens {state['tokens_seen']:,} epoch {ep:.2f} "
                f"elapsed {now - t_start:.0f}s progress {prog:.3f} exits {[e + 1 for e in exits]}", logf)
            metrics_f.write(json.dumps({"type": "train", "step": state["step"], "loss_final": fl, "loss_weighted": tl,
                                        "lr": lr, "tok_per_s": tps, "tokens_seen": state["tokens_seen"],
                                        "elapsed": now - t_start}) + "\n")
            metrics_f.flush()
        if args.eval_every and state["step"] % args.eval_every == 0:
            run_val()
        if args.ckpt_every and state["step"] % args.ckpt_every == 0:
            state["elapsed"] = time.time() - t_start
            save_ckpt()

    state["elapsed"] = time.time() - t_start
    if not (args.eval_every and state["step"] % args.eval_every == 0):
        run_val()
    save_ckpt()
    avg_tps = run_tokens / max(1e-9, time.time() - run_tokens_t0)
    log(f"training done: steps {state['step']} tokens {state['tokens_seen']:,} elapsed {state['elapsed']:.0f}s "
        f"avg tok/s (this run, incl. eval) {avg_tps:,.0f} best val {state['best_val']:.4f} @ step {state['best_step']}", logf)

    if best_sd is not None and not args.export_last:
        model.load_state_dict(best_sd)
    export_dir = Path(args.export) if args.export else out / "export"
    export_model(model, export_dir, data / "tokenizer")
    train_meta = {
        "preset": args.preset,
        "hyper_parameters": p,
        "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip,
        "min_lr_ratio": args.min_lr_ratio,
        "seed": args.seed,
        "params": n_params,
        "steps": state["step"],
        "tokens_seen": state["tokens_seen"],
        "epochs": state["tokens_seen"] / N,
        "train_tokens_unique": N,
        "wall_seconds_training": round(state["elapsed"], 1),
        "avg_tokens_per_second_last_run": round(avg_tps),
        "exported_step": state["best_step"] if (best_sd is not None and not args.export_last) else state["step"],
        "best_val_final_exit_loss": state["best_val"],
        "device": device_desc(device),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": sys.version.split()[0],
        "bf16_autocast": amp,
        "compile": bool(args.compile),
        "command": "python -m specviz.train.train_lm " + " ".join(shlex.quote(a) for a in args.argv),
    }
    (export_dir / "training_meta.json").write_text(json.dumps(train_meta, indent=1))
    res = eval_exported(export_dir, data, device, seq_len=T)
    (export_dir / "eval_heldout.json").write_text(json.dumps(res, indent=1))
    log("held-out loss per exit: " + " ".join(f"{e['exit_layer']}:{e['loss']:.3f}" for e in res["per_exit"]), logf)
    logf.close()
    metrics_f.close()
    return res


# ----------------------------------------------------------------------------------------------
# model card


def greedy_completions(path: Path, max_new_tokens=48):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = load_exported(path, torch.device("cpu"))
    outs = []
    for src, prompt in HELDOUT_PROMPTS:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            g = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        outs.append((src, prompt, tok.decode(g[0, ids["input_ids"].shape[1]:])))
    return outs


def write_card(path: Path, data: Path, repro: str | None = None, notes: str | None = None):
    meta = json.loads((path / "training_meta.json").read_text())
    ev = json.loads((path / "eval_heldout.json").read_text())
    cfg = json.loads((path / "config.json").read_text())
    corpus = json.loads((data / "corpus_manifest.json").read_text())
    tmeta = json.loads((data / "tokens_meta.json").read_text())
    name = path.name
    is_base = meta["preset"] == "base"
    wbytes = sum(f.stat().st_size for f in path.glob("model*.safetensors"))
    epoch_bound = bool(meta["hyper_parameters"].get("max_epochs")) and \
        meta["epochs"] >= meta["hyper_parameters"]["max_epochs"] - 1e-3
    comps = greedy_completions(path)
    hp = meta["hyper_parameters"]
    lines = [
        f"# {name}",
        "",
        ("A tiny Llama-architecture causal LM for Python code, trained from scratch by specviz with a "
         "LayerSkip-style early-exit loss, so that every intermediate layer can also be used as an exit "
         "(self-speculative / early-exit drafting). It is a demo model: small, fast on CPU, and not useful "
         "for real code generation." if is_base else
         "A 3-layer draft model for speculative decoding with `specviz-tiny` (same tokenizer), trained from "
         "scratch with a plain next-token loss. It is a demo model."),
        "",
        "## Corpus and licence",
        "",
        f"- The `.py` files of the CPython {corpus['python_version'].split()[0]} standard library "
        f"(`sysconfig.get_paths()['stdlib']`, site-packages excluded), sorted by path.",
        f"- {corpus['n_files_total']} files; corpus sha256 (file list + bytes) `{corpus['corpus_sha256']}`.",
        f"- Train split: {corpus['splits']['train']['n_files']} files, {corpus['splits']['train']['bytes']:,} bytes, "
        f"{tmeta['splits']['train']['n_tokens']:,} tokens. Validation split (files chosen by a path hash, used only to "
        f"pick the best checkpoint): {corpus['splits']['val']['n_files']} files, {tmeta['splits']['val']['n_tokens']:,} tokens.",
        f"- Held out (never trained on, not used for the tokenizer or checkpoint selection): the modules "
        f"{', '.join('`' + m + '`' for m in corpus['heldout_modules'])} "
        f"({corpus['splits']['heldout']['n_files']} files, {tmeta['splits']['heldout']['n_tokens']:,} tokens). Their "
        f"tests (`test_<module>.py`, `test_json/`; {len(corpus['excluded_tests_of_heldout'])} files) are excluded from training too.",
        f"- {len(corpus['skipped_non_utf8_or_empty'])} files were skipped because they are not UTF-8 or are empty.",
        "- Licence: the training text is CPython source, under the **PSF License Agreement** (Python Software "
        "Foundation License). The weights are derived from it; treat them as covered by the same terms.",
        "",
        "## Tokenizer",
        "",
        f"Byte-level BPE (Hugging Face `tokenizers`), vocabulary {tmeta['vocab_size']}, special tokens "
        "`<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3, trained on the train split only. No normaliser, so code "
        "(tabs, newlines, indentation, unicode) round-trips exactly. Documents are joined with `</s>`; "
        f"no BOS is added. About {tmeta['splits']['train']['bytes_per_token']:.2f} bytes per token on the train split.",
        "",
        "## Architecture",
        "",
        f"`LlamaForCausalLM`: {cfg['num_hidden_layers']} decoder layers, hidden {cfg['hidden_size']}, "
        f"intermediate {cfg['intermediate_size']}, {cfg['num_attention_heads']} heads ({cfg['num_key_value_heads']} KV heads), "
        f"vocab {cfg['vocab_size']}, RoPE, max positions {cfg['max_position_embeddings']}, tied input/output embeddings. "
        f"{meta['params'] / 1e6:.2f}M parameters; weights stored as fp16 safetensors ({wbytes / 1e6:.1f} MB). "
        "Load with `dtype=torch.float32` on CPU.",
        "",
        "## Training",
        "",
        f"- Tokens seen: {meta['tokens_seen']:,} ({meta['epochs']:.1f} epochs of the train split), "
        f"{meta['steps']} steps of {hp['batch_size']} x {hp['seq_len']} tokens; exported weights are from step "
        f"{meta['exported_step']} (best final-exit validation loss {meta['best_val_final_exit_loss']:.4f}).",
        f"- Wall time: {meta['wall_seconds_training']:.0f} s of training on {meta['device']} "
        f"(bf16 autocast: {meta['bf16_autocast']}, torch {meta['torch']}, transformers {meta['transformers']}); "
        f"about {meta['avg_tokens_per_second_last_run']:,} tokens/s.",
        f"- AdamW (betas 0.9/0.95, weight decay {meta['weight_decay']}), peak lr {hp['lr']}, {hp['warmup']} warm-up steps, "
        f"cosine decay to {meta['min_lr_ratio']} x peak, grad clip {meta['grad_clip']}, residual dropout {hp['dropout']}, seed {meta['seed']}.",
    ]
    if is_base:
        lines += [
            f"- Early-exit loss (LayerSkip-style): the shared final norm + LM head is applied after intermediate layers. "
            f"Each step scores the final exit plus every {hp['exit_rotation']}-th layer (offset rotating with the step). "
            f"Exit l of L gets weight {hp['e_scale']} x l/L, the final exit weight 1, normalised to sum 1. Per-sample "
            f"layer dropout p_l = {hp['layer_dropout']} x S(t) x (exp(l ln2/(L-1)) - 1) with S(t) = exp(t ln2) - 1 ramping over training.",
        ]
    lines += [
        "",
        "## Held-out loss per exit layer",
        "",
        f"Mean next-token cross-entropy in nats/token on the held-out modules ({ev['n_tokens']:,} tokens, "
        f"{ev['windows']}), weights loaded as float32. `exit k` = shared norm + LM head after decoder layer k. "
        "`agree` = fraction of positions where that exit's argmax equals the final exit's argmax."
        + ("" if is_base else " Only the final exit of the draft model was trained; the others are shown for completeness."),
        "",
        "| exit layer | loss (nats/token) | top-1 acc | agree with final |",
        "|---:|---:|---:|---:|",
    ]
    for e in ev["per_exit"]:
        lines.append(f"| {e['exit_layer']} | {e['loss']:.3f} | {e['top1_acc']:.3f} | {e['agree_with_final_argmax']:.3f} |")
    lines += [
        "",
        "Raw numbers: `eval_heldout.json`; training details: `training_meta.json`.",
        "",
        "## Greedy completions of held-out function headers",
        "",
        "Prompt = the function header only, without the trailing newline (the tokenizer merges a newline with "
        "the indentation that follows, so prompts should not end in a bare newline); 48 new tokens, greedy, "
        "float32 on CPU. Pasted verbatim.",
        "",
    ]
    for src, prompt, comp in comps:
        lines += [f"`{src}`:", "", "```python", prompt + comp, "```", ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    lines += [
        "## How to reproduce",
        "",
        "```bash",
        repro or repro_text(path, meta, corpus),
        "```",
        "",
        "Batches are drawn from a generator seeded by the seed and the step. "
        + ("This run ended at the preset's epoch limit well before the `--minutes` budget, so its length and "
           "(apart from the first seconds, while the model compiled) its learning-rate schedule follow the "
           "step count, not the hardware's speed. " if epoch_bound else
           "This run was limited by `--minutes`, so its number of steps and the cosine schedule follow the "
           "wall clock and depend on the hardware's speed; use `--steps` for a hardware-independent run. ")
        + "GPU kernels are not bit-exact across runs, so expect small differences.",
        "",
    ]
    (path / "MODEL_CARD.md").write_text("\n".join(lines))
    return comps


REPRO = """\
# 1. CPU: corpus + tokenizer (CPython {py} standard library; the corpus sha256 must match the one above)
python -m specviz.train.corpus --out .train_data
python -m specviz.train.tokenizer --data .train_data
# 2. training (the exact command that produced these weights, on {device}):
{command}
# 3. the export lands in <out>/export/ (weights, config, tokenizer, eval_heldout.json, training_meta.json);
#    copy it to {dest}/ and write this card (greedy completions run on CPU):
python -m specviz.train.train_lm --card {dest} --data .train_data"""


def repro_text(path: Path, meta: dict, corpus: dict) -> str:
    command = meta["command"]
    if not command.startswith("python -m "):  # older metadata stored sys.argv (script path first)
        cmd = command.split(" ", 1)
        command = "python -m specviz.train.train_lm " + (cmd[1] if len(cmd) > 1 else "")
    py = corpus["python_version"].split()[0]
    try:
        dest = path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        dest = str(path)
    return REPRO.format(py=py, device=meta["device"], command=command, dest=dest)


def main(argv=None):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="base")
    ap.add_argument("--data", default=".train_data")
    ap.add_argument("--out", default=None, help="run folder (default .train_data/runs/<preset>)")
    ap.add_argument("--export", default=None, help="export folder (default <out>/export)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget for training")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt if present")
    ap.add_argument("--init-from", default=None, help="initialise weights from an exported HF model folder")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val-tokens", type=int, default=None, help="cap on val tokens per evaluation")
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--export-last", action="store_true", help="export the last weights, not the best-val ones")
    ap.add_argument("--no-early-exit", action="store_true")
    for k, t in (("n_layers", int), ("hidden", int), ("intermediate", int), ("heads", int), ("kv_heads", int),
                 ("exit_rotation", int), ("e_scale", float), ("layer_dropout", float), ("dropout", float),
                 ("lr", float), ("batch_size", int), ("seq_len", int), ("warmup", int), ("max_epochs", float)):
        ap.add_argument("--" + k.replace("_", "-"), dest=k, type=t, default=None, help="override the preset")
    ap.add_argument("--eval-only", default=None, help="evaluate an exported model folder; writes eval_heldout.json")
    ap.add_argument("--card", default=None, help="write MODEL_CARD.md for an exported model folder")
    ap.add_argument("--card-notes", default=None, help="extra paragraph for the model card's Notes section")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    if args.eval_only:
        res = eval_exported(Path(args.eval_only), Path(args.data), pick_device(args.device))
        (Path(args.eval_only) / "eval_heldout.json").write_text(json.dumps(res, indent=1))
        print(" ".join(f"{e['exit_layer']}:{e['loss']:.3f}" for e in res["per_exit"]))
        return
    if args.card:
        comps = write_card(Path(args.card), Path(args.data), notes=args.card_notes)
        for src, prompt, comp in comps:
            print(f"--- {src}\n{prompt}{comp}")
        return
    if args.out is None:
        args.out = str(Path(args.data) / "runs" / args.preset)
    if not (args.minutes or args.steps or (args.max_epochs or PRESETS[args.preset]["max_epochs"])):
        ap.error("give --minutes and/or --steps")
    train(args)


if __name__ == "__main__":
    main()
