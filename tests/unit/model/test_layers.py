"""The cheap-mask dropout and the transformer layer forward that uses it (tasks.model.layers)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tasks.model.layers import (
    Dropout,
    attention,
    dropout,
    encoder_layer,
    padded_causal_mask,
)


def test_dropout_drops_the_asked_share_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.full((1000, 1000), 3.0)
    out = dropout(x, 0.2)
    dropped = (out == 0).double().mean().item()
    assert dropped == pytest.approx(0.2, abs=0.002)  # 1e6 draws: the standard error is 0.0004
    assert out.mean().item() == pytest.approx(3.0, rel=0.005)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 3.0 * 65536 / (65536 - round(0.2 * 65536))))
    # Every 16-bit lane of the 64-bit draws is used alike: no lane is biased.
    for lane in range(4):
        assert (out.flatten()[lane::4] == 0).double().mean().item() == pytest.approx(0.2, abs=0.004)


def test_dropout_is_the_identity_in_eval_and_passes_the_mask_to_the_gradient():
    x = torch.randn(64, 33, requires_grad=True)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.3)
    module.eval()
    assert module(x) is x
    module.train()
    out = module(x)
    out.sum().backward()
    # d out / d x is the scaled keep mask: 0 where dropped, 1 / (1 - p) where kept.
    assert torch.allclose(x.grad, torch.where(out == 0, 0.0, out / x.detach()))
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.isin(x.grad, torch.tensor([0.0, scale])).all() and (x.grad == 0).any()


def test_dropout_keeps_bf16():
    out = dropout(torch.ones(100, dtype=torch.bfloat16), 0.5)
    assert out.dtype == torch.bfloat16


def additive_mask(blocked: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive form (0 / -inf) of a boolean mask `blocked` (True: may not attend): the reference
    for the masks inference builds."""
    return torch.zeros(blocked.shape, dtype=dtype).masked_fill_(blocked, float("-inf"))


def _mask(batch: int, length: int) -> torch.Tensor:
    """Causal + left padding, as the user tower builds it: True where i may attend to j."""
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    real = torch.ones(batch, length, dtype=torch.bool)
    real[0, :3] = False  # a user with a short history
    return causal & (real[:, None, :] | torch.eye(length, dtype=torch.bool))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("training", [False, True])
def test_encoder_layer_computes_what_the_torch_layer_does(activation, training):
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0 if training else 0.3,
                                       batch_first=True, norm_first=True, activation=activation)
    layer.train(training)  # with dropout 0 in training: the same function, through the training path
    x = torch.randn(3, 7, 16)
    allowed = _mask(3, 7)
    expected = layer(x, src_mask=(~allowed).repeat_interleave(2, 0))
    assert torch.allclose(encoder_layer(layer, x, allowed[:, None])[0], expected, atol=1e-5)


@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("shared_mask", [False, True])
def test_encoder_layer_last_only_is_the_last_position_of_the_full_pass(shared_mask, additive):
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.3, batch_first=True, norm_first=True).eval()
    x = torch.randn(3, 7, 16)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril() if shared_mask else _mask(3, 7)[:, None]
    mask = additive_mask(~allowed) if additive else allowed  # the same mask, in the form inference passes
    last, weights = encoder_layer(layer, x, mask, last_only=True)
    assert last.shape == (3, 1, 16) and weights is None
    assert torch.allclose(last, encoder_layer(layer, x, allowed)[0][:, -1:], atol=1e-5)


@pytest.mark.parametrize("last_only", [False, True])
@pytest.mark.parametrize("rows", [1, 7])
def test_encoder_layer_weights_are_what_multihead_attention_returns(last_only, rows):
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.3, batch_first=True, norm_first=True).eval()
    x = torch.randn(3, 7, 16)
    allowed = _mask(3, 7)
    normed = layer.norm1(x)
    _, expected = layer.self_attn(normed[:, -rows:], normed, normed, need_weights=True, average_attn_weights=True,
                                  attn_mask=(~allowed[:, -rows:]).repeat_interleave(2, 0))
    out, weights = encoder_layer(layer, x, allowed[:, None], last_only=last_only, weights=rows)
    assert weights.shape == (3, rows, 7)
    assert torch.allclose(weights, expected, atol=1e-6)
    _, from_additive = encoder_layer(layer, x, additive_mask(~allowed[:, None]), last_only=last_only, weights=rows)
    assert torch.allclose(from_additive, expected, atol=1e-6)
    # Weights change nothing: bit for bit where both calls project alike; with the weights of several
    # queries a last-position layer projects every query, and a GEMM of another shape may round differently.
    alone = encoder_layer(layer, x, allowed[:, None], last_only=last_only)[0]
    assert torch.equal(out, alone) if not (last_only and rows > 1) else torch.allclose(out, alone, atol=1e-6)


def test_attention_dropout_is_unbiased_against_plain_attention():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    allowed = _mask(2, 5)[:, None]
    plain = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=0.5)
    assert torch.allclose(attention(q, k, v, allowed, 0.0, 0.5), plain, atol=1e-6)
    draws = torch.stack([attention(q, k, v, allowed, 0.2, 0.5) for _ in range(4000)])
    assert not torch.allclose(draws[0], plain, atol=1e-3)  # dropout does act
    standard_error = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - plain).abs() <= 5 * standard_error + 1e-6).all()


def test_encoder_layer_refuses_a_post_ln_layer():
    layer = nn.TransformerEncoderLayer(8, 2, batch_first=True, norm_first=False)
    with pytest.raises(ValueError, match="pre-LN"):
        encoder_layer(layer, torch.randn(1, 3, 8), torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_padded_causal_mask_is_the_boolean_one_made_additive(dtype):
    """Inference's mask, built by broadcasting, blocks what training's boolean mask blocks: later
    positions, and padding except a padded position's own (left padding of 0, 3 and 6 places)."""
    length = 6
    pad = torch.arange(length)[None, :] < torch.tensor([[0], [3], [6]])
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    blocked = causal[None] | (pad[:, None, :] & ~torch.eye(length, dtype=torch.bool)[None])
    assert torch.equal(padded_causal_mask(causal, pad, dtype), additive_mask(blocked[:, None], dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rows_padded_to_a_bucket_give_the_same_products_and_gradients(dtype):
    """in_row_buckets pads only bf16 CPU products, to a multiple of ROW_BUCKET rows, and cuts the padding off."""
    from tasks.model.layers import ROW_BUCKET, in_row_buckets

    torch.manual_seed(0)
    linear = nn.Linear(24, 8).to(dtype)
    x = torch.randn(ROW_BUCKET + 5, 24, dtype=dtype, requires_grad=True)
    seen = []

    def product(rows):
        seen.append(rows.shape[0])
        return linear(rows)

    out = in_row_buckets(product, x)
    assert out.shape == (ROW_BUCKET + 5, 8)
    assert seen == [2 * ROW_BUCKET if dtype == torch.bfloat16 else ROW_BUCKET + 5]
    out.float().square().sum().backward()
    got_x, got_w = x.grad.clone(), linear.weight.grad.clone()
    x.grad, linear.weight.grad = None, None
    expected = linear(x)
    expected.float().square().sum().backward()
    assert torch.equal(out, expected)
    assert torch.allclose(got_x.float(), x.grad.float(), atol=1e-2) and torch.allclose(got_w.float(), linear.weight.grad.float(), atol=1e-2)


def test_rows_are_padded_under_bf16_autocast_as_training_runs_them():
    """Training autocasts fp32 weights and inputs to bf16: in_row_buckets pads there too (not where the
    product is named fp32), and the real rows and gradients are those of the unpadded product."""
    from tasks.model.layers import ROW_BUCKET, bucket_rows, in_row_buckets

    torch.manual_seed(0)
    linear = nn.Linear(24, 8)
    x = torch.randn(ROW_BUCKET + 5, 24, requires_grad=True)
    seen = []

    def product(rows):
        seen.append(rows.shape[0])
        return linear(rows)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = in_row_buckets(product, x)
        expected = linear(x)
        assert bucket_rows(x, dtype=torch.float32) is x  # a product kept in fp32 is not padded
        full = x[:ROW_BUCKET]
        assert bucket_rows(full) is full  # a whole bucket is not copied
    assert seen == [2 * ROW_BUCKET] and out.dtype == torch.bfloat16 and out.shape == (ROW_BUCKET + 5, 8)
    assert torch.equal(out, expected)
    out.float().square().sum().backward()
    got_x, got_w = x.grad.clone(), linear.weight.grad.clone()
    x.grad, linear.weight.grad = None, None
    expected.float().square().sum().backward()
    assert torch.allclose(got_x, x.grad, atol=1e-2) and torch.allclose(got_w, linear.weight.grad, atol=1e-2)
    assert bucket_rows(x) is x  # outside autocast an fp32 product runs as it is
