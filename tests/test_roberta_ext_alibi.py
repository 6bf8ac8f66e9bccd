"""ALiBi slopes and bias, and the SDPA fast path against the explicit-softmax reference."""
import pytest
import torch

from fairseq_ext.modules.alibi import (
    alibi_bias,
    alibi_slopes,
    biased_attention,
    biased_attention_reference,
)


def test_slopes_for_12_heads_match_the_documented_list():
    expected = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -k for k in (0.5, 1.5, 2.5, 3.5)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


@pytest.mark.parametrize("heads", [1, 2, 8, 16])
def test_slopes_for_powers_of_two_are_geometric(heads):
    expected = [2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)]
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(expected))


def test_slopes_for_any_head_count_are_distinct_and_in_range():
    for heads in (3, 5, 6, 7, 12, 20, 24):
        slopes = alibi_slopes(heads)
        assert slopes.shape == (heads,) and len(set(slopes.tolist())) == heads
        assert bool(((slopes > 0) & (slopes < 1)).all())


def test_slopes_reject_zero_heads():
    with pytest.raises(ValueError, match="--encoder-attention-heads"):
        alibi_slopes(0)


def test_asymmetric_rows_for_unit_slope():
    bias = alibi_bias(torch.tensor([1.0]), 5, asymmetric=True)[0]
    torch.testing.assert_close(bias[0], torch.tensor([0.0, -0.5, -1.5, -2.5, -3.5]))
    torch.testing.assert_close(bias[1], torch.tensor([-1.0, 0.0, -0.5, -1.5, -2.5]))
    torch.testing.assert_close(bias[4], torch.tensor([-4.0, -3.0, -2.0, -1.0, 0.0]))


def test_symmetric_bias_is_minus_slope_times_distance():
    slopes = torch.tensor([0.5, 0.25])
    bias = alibi_bias(slopes, 4, asymmetric=False)
    i = torch.arange(4)
    distance = (i[None, :] - i[:, None]).abs().float()
    torch.testing.assert_close(bias, -slopes[:, None, None] * distance)
    assert torch.equal(bias, bias.transpose(1, 2))


def _qkv(bsz=3, heads=4, seq_len=7, head_dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(bsz, heads, seq_len, head_dim, generator=gen, requires_grad=True) for _ in range(3)]


def _padding(lengths, seq_len):
    return torch.arange(seq_len)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T), True at pads


def _outputs_and_grads(attention, q, k, v, bias, pad):
    """Outputs at real query positions and the gradients of their weighted sum."""
    out = attention(q, k, v, bias, pad)
    real = torch.ones(out.shape[0], 1, out.shape[2], 1) if pad is None else (~pad)[:, None, :, None].float()
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    grads = torch.autograd.grad((out * real * weights).sum(), (q, k, v))
    return out * real, grads


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("with_padding", [True, False])
@pytest.mark.parametrize("asymmetric", [True, False])
def test_fast_path_matches_reference_values_and_gradients(with_bias, with_padding, asymmetric):
    q, k, v = _qkv()
    bias = alibi_bias(alibi_slopes(4), 7, asymmetric) if with_bias else None
    pad = _padding([7, 4, 2], 7) if with_padding else None
    fast, grads_fast = _outputs_and_grads(biased_attention, q, k, v, bias, pad)
    ref, grads_ref = _outputs_and_grads(biased_attention_reference, q, k, v, bias, pad)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)


def test_padded_keys_get_no_weight():
    """Changing the values of padded keys must not change any output."""
    q, k, v = _qkv()
    bias = alibi_bias(alibi_slopes(4), 7, True)
    pad = _padding([7, 4, 2], 7)
    out = biased_attention(q, k, v, bias, pad)
    v2 = v.detach().clone()
    v2[pad[:, None, :, None].expand_as(v2)] = 1e3
    torch.testing.assert_close(biased_attention(q, k, v2, bias, pad), out)
