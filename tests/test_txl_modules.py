"""Sliding-window attention, T5 buckets, tiled dropout and the per-mode state: fast path vs reference."""
import pytest
import torch

from fairseq_ext.modules.mode_state import ModeState
from fairseq_ext.modules.t5_relative_bias import T5RelativeBias, bucket_reference, unidirectional_buckets
from fairseq_ext.modules.tiled_dropout import TiledDropout
from fairseq_ext.modules.window_attention import (allowed_keys, sliding_window_attention,
                                                  sliding_window_attention_reference, unit_normalise)


def test_unidirectional_buckets_match_the_formula_one_distance_at_a_time():
    distances = torch.arange(-5, 600)
    expected = torch.tensor([bucket_reference(int(n)) for n in distances])
    assert torch.equal(unidirectional_buckets(distances), expected)
    # exact below 16, log-spaced up to 128, clipped to bucket 31 beyond
    assert unidirectional_buckets(torch.tensor([0, 15, 16, 127, 128, 10_000])).tolist() == [0, 15, 16, 31, 31, 31]


def test_relative_bias_aligns_queries_to_the_last_keys():
    bias = T5RelativeBias(num_heads=2)
    grid = bias(3, 5)  # (H, 3, 5): query i sits at key position 2 + i
    assert grid.shape == (2, 3, 5)
    for i in range(3):
        for j in range(5):
            assert torch.equal(grid[:, i, j], bias.table[:, bucket_reference(2 + i - j)])


def test_window_mask_is_strictly_causal_over_the_previous_w_tokens():
    allowed = allowed_keys(4, 8, 4, "cpu")  # queries at positions 4..7 over keys 0..7
    for i in range(4):
        assert allowed[i].nonzero().flatten().tolist() == list(range(i, i + 4))  # never its own key 4+i


def random_qkv(B=2, H=3, L=12, D=8, W=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (unit_normalise(torch.randn(B, H, L, D, generator=g)) for _ in range(2))
    v = torch.randn(B, H, L, D, generator=g)
    prev = (unit_normalise(torch.randn(B, H, W, D, generator=g)), torch.randn(B, H, W, D, generator=g))
    scale = torch.rand(H, generator=g) * 3 + 0.5
    return q, k, v, prev, scale


@pytest.mark.parametrize("window", [4, 256])  # 256: queries attend in blocks of 128 (query_block)
def test_fast_path_equals_reference_values_and_gradients(window):
    q, k, v, prev, scale = random_qkv(L=3 * window, W=window, D=4)
    table = T5RelativeBias(3)
    results = []
    for attention in (sliding_window_attention, sliding_window_attention_reference):
        inputs = [t.clone().requires_grad_() for t in (q, k, v, scale)]
        table.zero_grad()
        out = attention(inputs[0], inputs[1], inputs[2], prev, inputs[3], table, window)
        out.square().sum().backward()
        results.append([out] + [t.grad for t in inputs] + [table.table.grad.clone()])
    for got, want in zip(*results):  # output, then gradients of q, k, v, the scale and the bias table
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("length", [4, 12])
def test_fast_path_equals_reference_without_cache(length):
    q, k, v, prev, scale = random_qkv(L=length)
    table = T5RelativeBias(3)
    bias = lambda T, S: table(T, S).detach()
    fast = sliding_window_attention(q, k, v, None, scale, bias, 4)
    torch.testing.assert_close(fast, sliding_window_attention_reference(q, k, v, None, scale, bias, 4), atol=1e-5, rtol=1e-5)
    assert torch.all(fast[:, :, 0] == 0)  # the first token has no key: the null logit takes it all
    with_past = sliding_window_attention(q, k, v, prev, scale, bias, 4)
    assert not torch.allclose(with_past[:, :, :4], fast[:, :, :4])  # the first window differs
    torch.testing.assert_close(with_past[:, :, 8:], fast[:, :, 8:])  # later windows see the segment only


def test_token_outputs_depend_only_on_the_previous_w_tokens():
    q, k, v, prev, scale = random_qkv(L=12, W=4)
    table = T5RelativeBias(3)
    bias = lambda T, S: table(T, S).detach()
    out = sliding_window_attention(q, k, v, prev, scale, bias, 4)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5], v2[:, :, 5] = 1.0, 7.0  # token 5 is seen by tokens 6..9 only
    changed = (sliding_window_attention(q, k2, v2, prev, scale, bias, 4) - out).abs().amax(dim=(0, 1, 3)) > 0
    assert changed.nonzero().flatten().tolist() == [6, 7, 8, 9]


def test_tiled_dropout_repeats_one_mask_every_128_positions_and_across_the_batch():
    drop = TiledDropout(0.5).train()
    y = drop(torch.ones(3, 300, 16))
    assert torch.equal(y[:, :128], y[:, 128:256]) and torch.equal(y[0], y[2])
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(2, 5, 3)), torch.ones(2, 5, 3))


def test_mode_state_keeps_modes_apart_resets_lanes_and_saves_only_training():
    state = ModeState("test state")
    empty = (torch.zeros(1, 2),)
    state.set(True, (torch.ones(3, 2),))
    got = state.lanes_or_reset(True, torch.tensor([False, True, False]), empty)[0]
    assert got[:, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(RuntimeError, match="--batch-size"):
        state.lanes_or_reset(False, torch.tensor([False, False, False]), empty)  # evaluation holds nothing
    assert state.lanes_or_reset(False, torch.tensor([True, True]), empty)[0].shape == (2, 2)
    assert state.get(False) is None
    restored = ModeState("copy")
    restored.set_extra_state(state.get_extra_state())
    assert torch.equal(restored.get(True)[0], torch.ones(3, 2)) and restored.get(False) is None
