"""LTG-BERT's disentangled attention with log-bucketed relative positions (Samuel et al. 2023,
"Trained on 100 million words and still in shape", arXiv:2303.09859; DeBERTa, He et al. 2021).

Scores add content-to-position and position-to-content terms to the content term, with the
same query/key projection for content and positions, and a 1/sqrt(3 d_h) scale:
    a_ij = (q_i.k_j + q_i.k^p[r_ij] + k_j.q^p[r_ij]) / sqrt(3 d_h),   r_ij = K-1 + bucket(i-j).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def log_bucket(relative: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Exact offsets up to bucket_size/2, then logarithmic buckets up to max_position - 1
    (ltgoslo/elc-bert ``make_log_bucket_position``): values in [-(K-1), K-1]."""
    mid = bucket_size // 2
    sign = torch.sign(relative)
    magnitude = relative.abs().clamp(max=max_position - 1)
    log_pos = torch.ceil(torch.log(magnitude.clamp(min=1) / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    return torch.where(magnitude <= mid, relative, (sign * log_pos).long())


def relative_index(seq_len: int, bucket_size: int, max_position: int, device=None) -> torch.Tensor:
    """(T, T) index r_ij = K-1 + bucket(i - j) into the (2K-1)-row position table."""
    pos = torch.arange(seq_len, device=device)
    return bucket_size - 1 + log_bucket(pos[:, None] - pos[None, :], bucket_size, max_position)


class DisentangledSelfAttention(nn.Module):
    """One LTG-BERT attention block: pre-LN (no affine), attention, post-LN (affine), dropout.

    ``forward`` runs SDPA with the positional terms as an additive bias; ``reference=True``
    computes the scores and an explicit masked softmax, as the original does.
    """

    def __init__(self, embed_dim: int, heads: int, dropout: float, attention_dropout: float, eps: float = 1e-7):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"--encoder-embed-dim ({embed_dim}) must be divisible by --encoder-attention-heads ({heads})")
        self.heads, self.head_dim = heads, embed_dim // heads
        self.scale = 1.0 / math.sqrt(3 * self.head_dim)
        self.pre_norm = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.in_proj_qk = nn.Linear(embed_dim, 2 * embed_dim)
        self.in_proj_v = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.post_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.position_dropout = nn.Dropout(attention_dropout)
        self.attention_dropout = attention_dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, d) -> (..., H, T, d_h)."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

    def position_bias(self, q, k, positions, index):
        """(B, H, T, T) content-to-position plus position-to-content terms, unscaled.

        q, k: (B, H, T, d_h); positions: (2K-1, d) normalised table; index: (T, T)."""
        q_pos, k_pos = self.in_proj_qk(self.position_dropout(positions)).chunk(2, dim=-1)
        q_pos, k_pos = self.split_heads(q_pos), self.split_heads(k_pos)  # (H, 2K-1, d_h)
        batch_index = index.expand(*q.shape[:2], -1, -1)
        c2p = (q @ k_pos.transpose(-1, -2)).gather(-1, batch_index)  # q_i . k^p[r_ij]
        p2c = (k @ q_pos.transpose(-1, -2)).gather(-1, batch_index.transpose(-1, -2))  # k_j . q^p[r_ij], as [j, i]
        return c2p + p2c.transpose(-1, -2)

    def forward(self, x, positions, index, key_padding_mask=None, reference=False):
        """x: (B, T, d); key_padding_mask: (B, T) bool, True at padding. Returns (B, T, d)."""
        h = self.pre_norm(x)
        q, k = (self.split_heads(t) for t in self.in_proj_qk(h).chunk(2, dim=-1))
        v = self.split_heads(self.in_proj_v(h))
        bias = self.position_bias(q, k, positions, index) * self.scale
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if reference:
            probs = torch.softmax(q @ k.transpose(-1, -2) * self.scale + bias, dim=-1)
            context = F.dropout(probs, self.attention_dropout, self.training) @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale,
                                                     dropout_p=self.attention_dropout if self.training else 0.0)
        context = context.transpose(1, 2).flatten(2)  # (B, T, d)
        return self.dropout(self.post_norm(self.out_proj(context)))

    def flops_per_token(self, seq_len: int, table_rows: int) -> float:
        d = self.heads * self.head_dim
        return 8.0 * d * d + 4.0 * seq_len * d + 4.0 * table_rows * d
