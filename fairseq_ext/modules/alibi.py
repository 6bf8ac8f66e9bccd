"""ALiBi attention biases (Press et al., 2022, "Train Short, Test Long", arXiv:2108.12409)
and the biased self-attention that applies them.

The bidirectional (encoder) form follows EIFY/fairseq ``utils.alibi``: the symmetric bias is
``-m_h * |i - j|``; the asymmetric one penalises keys to the right of the query half a slope
less (ofirpress/attention_with_linear_biases#5), so the model can tell left from right.

Fast path: ``biased_attention`` calls ``F.scaled_dot_product_attention`` with the (H, T, T)
bias broadcast over the batch. Key padding is folded into the keys instead of the bias: one
extra query/key channel (constant 1 on the query side, ``-PAD_KEY_VALUE`` on padded keys) gives
every padded key a score below -1000, so no (B, H, T, T) mask is ever materialised.
Reference path: ``biased_attention_reference`` computes the full score matrix and an explicit
softmax; tests compare the two.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Key channel of padded keys in the fast path: their score is -PAD_KEY_VALUE/sqrt(D), below
# -1000 for head dims up to 512 (exp of it is 0 in every float type); it fits in fp16.
PAD_KEY_VALUE = 3e4
# SDPA's memory-efficient kernels want head dims in multiples of 8: the padding channel
# is widened to 8 with zeros.
_PAD_CHANNELS = 8


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head slopes m_h, shape (H,).

    A power of two H gets the geometric sequence 2^(-8(h+1)/H). Otherwise the slopes of the
    nearest lower power of two H' come first, then every other slope of the 2H' sequence
    (indices 0, 2, 4, ...) until H are filled, as in the ALiBi paper's code and EIFY/fairseq
    (for H = 12 the list is not monotonic).
    """
    if num_heads < 1:
        raise ValueError(f"--encoder-attention-heads must be >= 1 for ALiBi, got {num_heads}")

    def geometric(n: int):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    base = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(base) + geometric(2 * base)[0::2][: num_heads - base]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, seq_len: int, asymmetric: bool = True) -> Tensor:
    """Additive attention bias of shape (H, T, T): B[h, i, j] = -m_h * d(i, j).

    Symmetric: d = |i - j|. Asymmetric: d = |i - j| - 0.5 * [j > i], so for m = 1 the first
    rows are [0, -.5, -1.5, ...] and [-1, 0, -.5, ...].
    """
    pos = torch.arange(seq_len, device=slopes.device)
    offset = pos[None, :] - pos[:, None]  # (T, T): j - i
    distance = offset.abs().to(slopes.dtype)
    if asymmetric:
        distance = distance - 0.5 * (offset > 0).to(slopes.dtype)
    return -slopes[:, None, None] * distance[None]  # (H, T, T)


def _fold_key_padding(q: Tensor, k: Tensor, key_padding_mask: Tensor):
    """Append channels to q (B, H, T, D) and k so that q'.k'_j = q.k_j - PAD_KEY_VALUE*[j pad].

    The extra query channel is the constant 1, the extra key channel is -PAD_KEY_VALUE on
    padded keys and 0 elsewhere. Both are constants, so gradients reach q and k unchanged
    (a padded key's softmax weight is exactly 0, so its huge channel never enters a gradient).
    """
    bsz, heads, tgt_len, _ = q.shape
    q_extra = q.new_zeros(bsz, heads, tgt_len, _PAD_CHANNELS)
    q_extra[..., 0] = 1.0
    k_extra = k.new_zeros(bsz, heads, k.size(2), _PAD_CHANNELS)
    k_extra[..., 0] = key_padding_mask[:, None, :].to(k.dtype) * -PAD_KEY_VALUE  # (B, 1, S)
    return torch.cat([q, q_extra], dim=-1), torch.cat([k, k_extra], dim=-1)


def biased_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None,
                     key_padding_mask: Optional[Tensor] = None, dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(D) + bias, padded keys excluded) v through SDPA.

    q, k, v: (B, H, T, D); bias: (H, T, T) float or None; key_padding_mask: (B, T) bool,
    True at padding, or None. Returns (B, H, T, D).
    """
    scale = 1.0 / math.sqrt(q.size(-1))
    attn_mask = None if bias is None else bias.to(q.dtype)  # broadcast over the batch
    if key_padding_mask is not None:
        if attn_mask is None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S) bool, broadcast
        else:
            q, k = _fold_key_padding(q, k, key_padding_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          scale=scale)


def biased_attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None,
                               key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """The explicit-softmax definition of ``biased_attention`` (no dropout), for tests."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if bias is not None:
        scores = scores + bias[None]
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)
