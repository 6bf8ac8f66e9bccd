"""ELC-BERT pieces in isolation: layer mixing fast vs loop, variant inits, log buckets,
relative attention fast (SDPA) vs explicit, whole-encoder parity, LAMB, cosine schedule,
span masking statistics."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fairseq_ext.modules.layer_mixing import VARIANTS, LayerMixing, initial_layer_weights
from fairseq_ext.modules.relative_attention import RelativeAttention, log_bucket_position, position_indices
from fairseq_ext.optim.elc_cosine import lr_multiplier
from fairseq_ext.optim.lamb_elc import Lamb, decay_groups
from fairseq_ext.tasks.elc_span_masked_lm import span_mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_mixing_fast_matches_loop(variant):
    torch.manual_seed(0)
    mixing = LayerMixing(variant, 5)
    with torch.no_grad():
        mixing.layer_weights.normal_()
    states = [torch.randn(7, 3, 8, requires_grad=True) for _ in range(5)]
    fast, ref = mixing(states), mixing.forward_reference(states)
    torch.testing.assert_close(fast, ref)
    g_fast = torch.autograd.grad(fast.square().sum(), [mixing.layer_weights, *states])
    g_ref = torch.autograd.grad(ref.square().sum(), [mixing.layer_weights, *states])
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b)


def test_variant_initial_weights_as_the_original():
    assert initial_layer_weights("base", 3).tolist() == [0.0, 0.0, 1.0]
    for variant in ("zero", "normalized", "weighted_output"):
        assert initial_layer_weights(variant, 4).tolist() == [0.0] * 4
    # ALGORITHMS §2.2: base gives the most recent layer e/(l+e): 0.73 at layer 1, 0.20 at layer 11
    w1, w11 = LayerMixing("base", 2).weights(), LayerMixing("base", 12).weights()
    assert w1[-1].item() == pytest.approx(math.e / (1 + math.e)) and round(w1[-1].item(), 2) == 0.73
    assert round(w11[-1].item(), 2) == 0.20 and w11[0].item() == pytest.approx(1 / (11 + math.e))
    with pytest.raises(ValueError, match="elc-variant"):
        LayerMixing("bogus", 2)


def test_log_buckets():
    rel = torch.tensor([0, 1, -1, 16, -16, 17, 100, 511, 5000, -5000])
    buckets = log_bucket_position(rel, 32, 512)
    assert buckets[:5].tolist() == [0, 1, -1, 16, -16]  # exact up to ±K/2
    assert buckets[5].item() == 17 and buckets[7].item() == 31 and buckets[8].item() == 31 and buckets[9].item() == -31
    assert 17 < buckets[6].item() < 31
    idx = position_indices(600, 32, 512)
    assert idx.min().item() == 0 and idx.max().item() == 62 and idx[5, 5].item() == 31
    assert torch.equal(idx[3, 0:3], torch.tensor([34, 33, 32]))  # r_ij = K-1 + (i-j)


def test_relative_attention_sdpa_matches_explicit_scores():
    torch.manual_seed(0)
    attn = RelativeAttention(16, 4, bucket_size=8, attention_dropout=0.0, eps=1e-7).eval()
    x, table = torch.randn(11, 2, 16), torch.randn(15, 16)
    pad = torch.zeros(2, 11, dtype=torch.bool)
    pad[1, 7:] = True
    torch.testing.assert_close(attn(x, table, pad), attn.forward_reference(x, table, pad), atol=1e-5, rtol=1e-4)
    assert attn.scale == pytest.approx(1 / math.sqrt(3 * 4))
    with pytest.raises(ValueError, match="encoder-attention-heads"):
        RelativeAttention(10, 4, 8, 0.0, 1e-7)


def lamb_step(weight_decay, grad=(0.5, -2.0, 1.0)):
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0, 0.0]))
    p.grad = torch.tensor(grad)
    Lamb([p], lr=0.01, weight_decay=weight_decay).step()
    return p.detach() - torch.tensor([3.0, 4.0, 0.0])


def test_lamb_trust_ratio_only_with_weight_decay():
    # no decay: plain Adam first step, lr * g / (|g| + eps)
    step = lamb_step(0.0)
    torch.testing.assert_close(step, -0.01 * torch.tensor([0.5, -2.0, 1.0]) / (torch.tensor([0.5, 2.0, 1.0]) + 1e-6))
    # decay: update scaled so that its norm is lr * ||theta|| = 0.01 * 5
    assert step.norm().item() != pytest.approx(0.05, rel=1e-3)
    assert lamb_step(0.1).norm().item() == pytest.approx(0.05, rel=1e-5)


def test_param_groups_follow_no_weight_decay_tags():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    b.no_weight_decay = True
    groups = decay_groups([a, b], 0.1)
    assert [(g["params"], g["weight_decay"]) for g in groups] == [([a], 0.1), ([b], 0.0)]


def test_lamb_elc_refuses_parameters_without_tags_as_fp16_hands_them():
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    a, b = torch.nn.Parameter(torch.ones(2).half()), torch.nn.Parameter(torch.ones(3).half())
    a.no_weight_decay, b.no_weight_decay = False, True
    unflattened = FP16Optimizer.build_fp32_params(None, [a, b], flatten=False)  # flatten=True needs CUDA
    flattened = [torch.nn.Parameter(torch.cat([a.float(), b.float()]))]  # what flatten=True hands over
    for fp32_copies in (unflattened, flattened):
        with pytest.raises(ValueError, match="--fp16"):
            decay_groups(fp32_copies, 0.1)
    assert len(decay_groups([a, b], 0.1)) == 2  # the tagged parameters themselves still work


def test_cosine_schedule_values():
    assert lr_multiplier(0, 16, 1000, 0.1) == 0.0
    assert lr_multiplier(8, 16, 1000, 0.1) == 0.5
    assert lr_multiplier(16, 16, 1000, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(16 + 492, 16, 1000, 0.1) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert lr_multiplier(1000, 16, 1000, 0.1) == pytest.approx(0.1)
    assert min(lr_multiplier(s, 16, 1000, 0.1) for s in range(16, 1000)) >= 0.1  # the floor


def test_span_masking_statistics_and_specials():
    cfg = SimpleNamespace(mask_prob=0.15, random_token_prob=0.1, leave_unmasked_prob=0.1, span_p=1 / 3,
                          max_span_length=10, max_span_tries=100)
    V, mask, pad = 100, 99, 1
    maskable = torch.zeros(V, dtype=torch.bool)
    maskable[4:99] = True
    random_ids = torch.arange(4, 99)
    rng = np.random.default_rng(0)
    chosen = total = masked = kept = 0
    for _ in range(400):
        tokens = torch.randint(4, 99, (64,))
        tokens[0], tokens[-1], tokens[30] = 0, 2, 3  # <s>, </s>, <unk>
        source, target = span_mask(tokens, rng, maskable, random_ids, mask, pad, cfg)
        sel = target.ne(pad)
        assert not sel[[0, 30, 63]].any()  # specials never chosen
        assert torch.equal(target[sel], tokens[sel]) and torch.equal(source[~sel], tokens[~sel])
        chosen, total = chosen + int(sel.sum()), total + 61
        masked, kept = masked + int(source[sel].eq(mask).sum()), kept + int(source[sel].eq(tokens[sel]).sum())
    assert 0.14 < chosen / total < 0.2  # budget 15%, the last span may overshoot
    assert 0.7 < masked / chosen < 0.9 and 0.05 < kept / chosen < 0.2
