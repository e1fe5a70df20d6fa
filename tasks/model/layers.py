"""Dropout with a cheap random mask, and the transformer layers that use it.

On a CPU, torch's dropout draws one Mersenne-Twister number per element (`bernoulli_`), and at
the sizes of a training step that is slow: ~16 ns an element, 10 % (K=4) to 24 % (K=1) of an
ML-1M step with 200-item histories (the attention probabilities alone are [batch x heads, 200,
200] per layer). Here one 64-bit draw makes four 16-bit ones, so the mask costs a quarter of the draws, and the
keep test is a vectorised integer compare: ~4x faster. The drop probability is rounded to a
multiple of 1/65536 and the kept values are scaled by the exact inverse of the keep
probability, so the layer stays unbiased (E[dropout(x)] = x). On a GPU torch's own dropout is
already fast and is used unchanged.

`encoder_layer` is nn.TransformerEncoderLayer's forward pass (pre-LN) over the layer's own
modules and weights with this dropout in place of torch's (the text tower's packed BERT layer
uses `attention` and `dropout` the same way): checkpoints and state dicts are unchanged, and in
eval mode the functions equal the modules' own (tests/unit/model/test_layers.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

_LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ~p, scale the rest to keep the mean."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    threshold = round(p * _LEVELS)  # drop a 16-bit draw below this: probability threshold / 65536
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = draws.view(torch.int16)[:n].view(x.shape) >= threshold - _LEVELS // 2
    scale = torch.tensor(_LEVELS / (_LEVELS - threshold), dtype=x.dtype)
    return x * torch.where(keep, scale, torch.zeros((), dtype=x.dtype))  # the mask in one pass


class Dropout(nn.Module):
    """nn.Dropout with `dropout`'s cheap mask (no state: swaps in for nn.Dropout in a checkpoint)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def padded_causal_mask(causal: torch.Tensor, pad: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive mask (0 / -inf) of a left-padded causal pass, [B, 1, L, L], which
    scaled_dot_product_attention would otherwise make of a boolean one in every layer: made once a
    pass, by broadcasting rather than from a boolean [B, L, L]. Position i sees j <= i (`causal` [L, L] True above the diagonal), no
    real position sees padding (`pad` [B, L]), and a padded position sees itself alone (a row with
    nothing to see would be NaN)."""
    upper = torch.zeros(causal.shape, dtype=dtype, device=causal.device).masked_fill_(causal, float("-inf"))
    keys = torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill_(pad, float("-inf"))
    mask = upper[None] + keys[:, None, :]
    mask.diagonal(dim1=1, dim2=2).masked_fill_(pad, 0.0)
    return mask[:, None]


def _apply_mask(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Scores with a boolean mask (True: may attend) or an additive one (0 / -inf) applied, in place."""
    if allowed.dtype == torch.bool:
        return scores.masked_fill_(~allowed, float("-inf"))
    return scores.add_(allowed)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, p: float, scale: float
              ) -> torch.Tensor:
    """Softmax attention [B, H, L, hd] with a mask broadcast over heads, boolean (True: may attend) or
    additive (0 / -inf, padded_causal_mask), and dropout p on the attention probabilities."""
    if p <= 0.0 or q.device.type != "cpu":
        if allowed.dtype != torch.bool and allowed.dtype != q.dtype:
            allowed = allowed.to(q.dtype)  # under autocast q is bf16, and the mask must match it
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p, scale=scale)
    scores = q @ k.transpose(-1, -2)  # a new tensor, and its product's backward does not read it: edit in place
    if allowed.dtype == torch.bool:
        scores.mul_(scale).masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    else:
        scores.mul_(scale).add_(allowed)
    # In v's dtype: under bf16 the CPU kernels still accumulate in fp32 and round once, as a fp32 softmax
    # cast to bf16 does, without the two casts of [B, H, L, L] each way (~25 % of the attention's time).
    return dropout(scores.softmax(-1), p) @ v


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False,
                  weights: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nn.TransformerEncoderLayer's forward (batch_first, norm_first) for x [B, L, d] and a mask
    `allowed` [B, 1, L, L] or [L, L] (True: position i may attend to j; or additive, 0 / -inf).
    With last_only the last position's output alone, [B, 1, d]: its query over every key, its
    feed-forward pass (inference reads nothing else from a model's top layer). With `weights` > 0
    also the self-attention probabilities of the last `weights` queries averaged over heads,
    [B, weights, L], what nn.MultiheadAttention's need_weights returns, from the same projections
    (else None)."""
    if not (layer.norm_first and layer.self_attn.batch_first):
        raise ValueError("encoder_layer implements the pre-LN, batch-first layer only")
    p = layer.dropout.p if layer.training else 0.0
    mha = layer.self_attn
    batch, length, dim = x.shape
    heads = mha.num_heads
    scale = 1.0 / math.sqrt(dim // heads)
    normed = layer.norm1(x)
    if last_only and weights <= 1:  # the keys and values of every position, the query of the last alone
        weight, bias = mha.in_proj_weight, mha.in_proj_bias
        q = F.linear(normed[:, -1:], weight[:dim], bias[:dim]).view(batch, 1, heads, dim // heads).transpose(1, 2)
        k, v = F.linear(normed, weight[dim:], bias[dim:]).view(
            batch, length, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
    else:
        q, k, v = F.linear(normed, mha.in_proj_weight, mha.in_proj_bias).view(
            batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    averaged = None
    if weights:
        scores = (q[:, :, -weights:] @ k.transpose(-1, -2)).mul_(scale)
        averaged = _apply_mask(scores, allowed[..., -weights:, :]).softmax(-1).mean(1)
    if last_only:
        q, x, allowed, length = q[:, :, -1:], x[:, -1:], allowed[..., -1:, :], 1  # q: a view where it is one already
    context = attention(q, k, v, allowed, p, scale)
    x = x + dropout(mha.out_proj(context.transpose(1, 2).reshape(batch, length, dim)), p)
    hidden = dropout(layer.activation(layer.linear1(layer.norm2(x))), p)
    return x + dropout(layer.linear2(hidden), p), averaged


# bf16 matmuls on a CPU go through oneDNN, which compiles a primitive for each shape it meets (~8 ms
# for a [1,000 x 1,536] x [1,536 x 384] product that then runs in under 1 ms) and keeps them in a
# bounded cache (tasks/training/launcher.py, ONEDNN_CACHE). The rows of some products vary with
# every batch (the packed tokens of the items a step refreshes, the positions that have a target):
# padded with zero rows up to a multiple of this, they come in a few shapes that the cache keeps.
ROW_BUCKET = 64


def bucket_rows(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """x padded with zero rows to a multiple of ROW_BUCKET where a bf16 CPU matmul will take it (x's
    dtype, autocast's or `dtype` is bf16), else x itself. Products of it are cut back to x's rows."""
    rows = x.shape[0]
    bucketed = -(-rows // ROW_BUCKET) * ROW_BUCKET
    on_bf16 = dtype == torch.bfloat16 or x.dtype == torch.bfloat16 or (
        dtype is None and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    if bucketed == rows or x.device.type != "cpu" or not on_bf16:
        return x
    return torch.cat([x, x.new_zeros((bucketed - rows, *x.shape[1:]))])


def in_row_buckets(fn, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """fn(x) for a row-wise fn (a Linear, a product of x's rows), where a bf16 CPU matmul will run it
    on x padded with zero rows to a multiple of ROW_BUCKET (bucket_rows); the padding's rows are cut
    off the result (their gradient is zero). `dtype`: the product's dtype when it is not autocast's or x's."""
    padded = bucket_rows(x, dtype)
    return fn(x) if padded is x else fn(padded)[: x.shape[0]]


def use_bf16(precision: str, device) -> bool:
    """bf16 autocast on a GPU, and on CPUs whose instruction set does bf16 natively (else it is slower)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32 (train.precision), got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags

