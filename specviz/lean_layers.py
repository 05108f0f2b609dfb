"""A Llama-family decoder layer run as plain tensor code: the same operations as transformers'
layer, in the same order, without its per-module call machinery.

A one-row pass of SmolLM2 on this CPU spends ~83 % of its time in the matrix products; most of
the rest is not arithmetic but the way transformers reaches it: eleven `nn.Module` calls per layer
(each through hooks and keyword plumbing), the rotary embedding applied to queries and keys
separately, a `**kwargs` dict threaded through every call. Measured on the AMD EPYC host, one
thread, SmolLM2's 30 layers after a 100-token prefix, ms per pass (minimum of 5 x 10 passes):

| rows                         | 1     | 2     | 4     | 9     |
|------------------------------|------:|------:|------:|------:|
| transformers' layers         | 37.1  | 55.4  | 48.5  | 70.4  |
| `decoder_layer` (this module)| 34.9  | 52.2  | 43.8  | 63.9  |

`decoder_layer` computes exactly what the layer computes, bit for bit: the same norms (with the
same casts), the same projections (the modules' own forwards, so `specviz.packed_linears` still
applies), the same rotation (queries and keys rotated in one batch of heads: element-wise, so each
value is the same), the same cache update and the same attention function. Fusing the projections
into one product would save little more and changes the last bits of one-row products, so it is
not done. Whether a model's layers qualify is decided once per model by `check`: an allowed layer
class, sdpa attention, and a self-test that runs a layer both ways and requires equal outputs; any
other model keeps transformers' layers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# layer classes whose forward is norm -> attention -> residual -> norm -> gated MLP -> residual,
# with RMSNorms and rotary attention as `decoder_layer` writes them
LAYER_CLASSES = ("LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer")


def rms_norm(norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The RMSNorm of these families, with its casts (a bf16 model normalises in fp32)."""
    dtype = hidden.dtype
    wide = hidden.to(torch.float32)
    wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * wide.to(dtype)


def rotate(heads: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of [1, heads, T, D] (queries and keys stacked on the heads axis)."""
    half = heads.shape[-1] // 2
    turned = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    return heads * cos + turned * sin


def decoder_layer(layer: nn.Module, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                  mask: torch.Tensor | None, cache) -> torch.Tensor:
    """One decoder layer on `hidden` ([1, T, d]): `rope` is the rotary embedding's (cos, sin) for
    the T positions, `mask` the pass's sdpa mask, `cache` anything with transformers' `update(keys,
    values, layer_idx)`. Returns the layer's output, as `layer(hidden, ...)` would."""
    attention, mlp = layer.self_attn, layer.mlp
    rows, head_dim = hidden.shape[1], attention.head_dim
    normed = rms_norm(layer.input_layernorm, hidden)
    queries = attention.q_proj.forward(normed).view(1, rows, -1, head_dim)
    keys = attention.k_proj.forward(normed).view(1, rows, -1, head_dim)
    values = attention.v_proj.forward(normed).view(1, rows, -1, head_dim).transpose(1, 2)
    n_query_heads = queries.shape[2]
    cos, sin = rope[0].unsqueeze(1), rope[1].unsqueeze(1)
    rotated = rotate(torch.cat((queries, keys), dim=2).transpose(1, 2), cos, sin)
    keys, values = cache.update(rotated[:, n_query_heads:], values, attention.layer_idx)
    mixed, _ = sdpa_attention_forward(attention, rotated[:, :n_query_heads], keys, values, mask,
                                      dropout=0.0, scaling=attention.scaling)
    hidden = hidden + attention.o_proj.forward(mixed.reshape(1, rows, -1))
    normed = rms_norm(layer.post_attention_layernorm, hidden)
    return hidden + mlp.down_proj.forward(mlp.act_fn(mlp.gate_proj.forward(normed)) * mlp.up_proj.forward(normed))


class PrefixOnlyCache:
    """Quacks like a transformers cache for one layer: attends to a fixed prefix, stores nothing.
    Used by CLaSp's batched DP (candidate states see the real prefix but never write into it) and
    by the self-test."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    def update(self, keys, values, layer_idx, *args, **kwargs):
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


def check(model) -> str | None:
    """None if every decoder layer of `model` may run through `decoder_layer`, else the reason
    it may not (the runner then keeps transformers' layers)."""
    layers = model.model.layers
    names = {type(layer).__name__ for layer in layers}
    if not names <= set(LAYER_CLASSES):
        return f"layer class {', '.join(sorted(names - set(LAYER_CLASSES)))} is not one it writes out"
    implementation = model.config._attn_implementation
    if implementation != "sdpa":
        return f"attention {implementation!r} (it calls sdpa's)"
    if not _same_as_transformers(model):
        return "its output differed from transformers' layer in the self-test"
    return None


@torch.inference_mode()
def _same_as_transformers(model) -> bool:
    """Run the first layer both ways after a 2-token prefix, on one row without a mask (a decoding
    step) and on 3 rows with one (a verify pass), and compare bit for bit."""
    layer = model.model.layers[0]
    config, parameter = model.config, next(model.parameters())
    probe = torch.Generator().manual_seed(0)
    head_dim = layer.self_attn.head_dim
    prefix = [torch.randn(1, config.num_key_value_heads, 2, head_dim, generator=probe).to(parameter) for _ in range(2)]
    for rows in (1, 3):
        hidden = torch.randn(1, rows, config.hidden_size, generator=probe).to(parameter)
        positions = torch.arange(2, 2 + rows, device=parameter.device).unsqueeze(0)
        rope = model.model.rotary_emb(hidden, position_ids=positions)
        causal = torch.ones(rows, 2 + rows, dtype=torch.bool, device=parameter.device).tril(diagonal=2)
        visible = None if rows == 1 else causal[None, None]
        theirs = layer(hidden, attention_mask=visible, position_embeddings=rope, position_ids=positions,
                       past_key_values=PrefixOnlyCache(*prefix), use_cache=True)
        if not torch.equal(theirs, decoder_layer(layer, hidden, rope, visible, PrefixOnlyCache(*prefix))):
            return False
    return True
