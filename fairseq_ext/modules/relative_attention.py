"""Disentangled relative self-attention with log-scaled position buckets (LTG-BERT).

Samuel et al. 2023, "Trained on 100 million words and still in shape: BERT meets British
National Corpus" (LTG-BERT), as used by ELC-BERT (ltgoslo/elc-bert, ``Attention``). Content and
position share ONE query/key projection W_qk; the score of query i and key j is

    a_ij = s · ( q_i·k_j + q_i·k_p[r_ij] + k_j·q_p[r_ij] ),   s = 1/sqrt(3·d_h)

with r_ij = K − 1 + bucket(i − j). States are sequence-first (T, B, d) as in the original.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

ORIGINAL_MAX_POSITION = 512  # position_indices buffer size of the original


def log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Bucket of each relative distance: exact up to ±bucket_size/2, log-spaced beyond, saturating
    at ±(bucket_size − 1) (original ``make_log_bucket_position``)."""
    mid = bucket_size // 2
    sign = torch.sign(relative_pos)
    abs_pos = relative_pos.abs().clamp(min=mid, max=max_position - 1)  # clamp(min) keeps log finite
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)).long() + mid
    return torch.where(relative_pos.abs() <= mid, relative_pos, sign * log_pos)


def position_indices(length: int, bucket_size: int, max_position: int, device=None) -> torch.Tensor:
    """(T, T) index r_ij = K − 1 + bucket(i − j) into the (2K − 1)-row relative table."""
    pos = torch.arange(length, device=device)
    relative = pos.unsqueeze(1) - pos.unsqueeze(0)  # (T, T): i − j
    return bucket_size - 1 + log_bucket_position(relative, bucket_size, max_position)


class RelativeAttention(nn.Module):
    """Pre-LN (no affine) disentangled attention; out = Dropout(LN_post(W_o ctx + b_o)).

    One rate, ``attention_dropout`` (--attention-dropout), drops the relative table, the
    attention probabilities and the output, as the original's single
    ``Dropout(attention_probs_dropout_prob)`` in ``Attention`` (ltgoslo/ltg-bert and elc-bert)."""

    def __init__(self, embed_dim: int, num_heads: int, bucket_size: int, attention_dropout: float,
                 eps: float, length_follows_query: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"--encoder-embed-dim {embed_dim} must be divisible by --encoder-attention-heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.bucket_size = bucket_size
        # base/normalized ELC rebuild the buckets with max_position = query length beyond 512
        self.length_follows_query = length_follows_query
        self.scale = 1.0 / math.sqrt(3 * self.head_dim)
        self.pre_norm = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.in_proj_qk = nn.Linear(embed_dim, 2 * embed_dim)
        self.in_proj_v = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.post_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.dropout = nn.Dropout(attention_dropout)
        self._indices: Optional[torch.Tensor] = None

    def bucket_indices(self, length: int, device) -> torch.Tensor:
        max_position = ORIGINAL_MAX_POSITION
        if length > ORIGINAL_MAX_POSITION and self.length_follows_query:
            max_position = length
        cached = self._indices
        if cached is None or cached.size(0) < length or cached.device != device or length > ORIGINAL_MAX_POSITION:
            cached = position_indices(max(length, ORIGINAL_MAX_POSITION), self.bucket_size, max_position, device)
            self._indices = cached if length <= ORIGINAL_MAX_POSITION else None
        return cached[:length, :length]

    def _project(self, x, relative_table):
        """Heads of content q, k, v (B, H, T, d_h) and positional q_p, k_p (H, 2K−1, d_h)."""
        T, B, _ = x.shape
        x = self.pre_norm(x)
        q, k = self.in_proj_qk(x).chunk(2, dim=-1)
        v = self.in_proj_v(x)
        heads = lambda t: t.view(T, B, self.num_heads, self.head_dim).permute(1, 2, 0, 3)  # (B, H, T, d_h)
        q_p, k_p = self.in_proj_qk(self.dropout(relative_table)).chunk(2, dim=-1)
        rel_heads = lambda t: t.view(-1, self.num_heads, self.head_dim).transpose(0, 1)  # (H, 2K−1, d_h)
        return heads(q), heads(k), heads(v), rel_heads(q_p), rel_heads(k_p)

    def position_bias(self, q, k, q_p, k_p):
        """s·(q_i·k_p[r_ij] + k_j·q_p[r_ij]) as (B, H, T, T): score against all 2K−1 buckets, then gather."""
        T = q.size(2)
        idx = self.bucket_indices(T, q.device)
        c2p = torch.einsum("bhqd,hrd->bhqr", q, k_p)  # (B, H, T, 2K−1)
        p2c = torch.einsum("bhkd,hrd->bhkr", k, q_p)  # (B, H, T_k, 2K−1)
        index = idx.expand(*q.shape[:2], T, T)
        c2p = c2p.gather(-1, index)  # [b,h,i,j] = q_i·k_p[r_ij]
        p2c = p2c.gather(-1, index.transpose(-1, -2)).transpose(-1, -2)  # [b,h,i,j] = k_j·q_p[r_ij]
        return (c2p + p2c) * self.scale

    def _output(self, ctx):
        B, H, T, D = ctx.shape
        ctx = ctx.permute(2, 0, 1, 3).reshape(T, B, H * D)  # (T, B, d)
        return self.dropout(self.post_norm(self.out_proj(ctx)))

    def forward(self, x, relative_table, key_padding_mask=None):
        """x: (T, B, d); relative_table: (2K−1, d); key_padding_mask: (B, T) True at pad."""
        q, k, v, q_p, k_p = self._project(x, relative_table)
        bias = self.position_bias(q, k, q_p, k_p).to(q.dtype)
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                             dropout_p=self.dropout.p if self.training else 0.0)
        return self._output(ctx)

    def forward_reference(self, x, relative_table, key_padding_mask=None):
        """Explicit per-term scores, masked softmax and weighted sum (no SDPA), for tests."""
        q, k, v, q_p, k_p = self._project(x, relative_table)
        T = q.size(2)
        idx = self.bucket_indices(T, q.device)
        scores = q @ k.transpose(-1, -2)
        for i in range(T):
            for j in range(T):
                r = idx[i, j]
                scores[:, :, i, j] += (q[:, :, i] * k_p[:, r]).sum(-1) + (k[:, :, j] * q_p[:, r]).sum(-1)
        scores = scores * self.scale
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        probs = self.dropout(scores.softmax(-1))
        return self._output(probs @ v)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: q/k/v/out projections, content and two positional score
        terms, the weighted sum (the positional projection of the table is per batch, ignored)."""
        d = self.num_heads * self.head_dim
        return 2.0 * 4 * d * d + 2.0 * 2 * seq_len * d + 2.0 * 2 * (2 * self.bucket_size - 1) * d
