"""A fairseq post/pre-LN encoder layer whose self-attention runs through SDPA with an
optional additive bias (ALiBi) shared by the whole batch.

fairseq's ``MultiheadAttention`` adds a float ``attn_mask`` by materialising the full
B*H x T x T score matrix, and ``TransformerEncoderLayer.forward`` turns any mask into a
binary one. This layer keeps everything else of ``TransformerEncoderLayer`` (LayerNorms,
FFN, dropouts, parameter names, so stock RoBERTa state dicts load) and swaps the attention.
Tensors are batch-first here, (B, T, C), the layout SDPA wants.
"""
from typing import Optional

import torch.nn as nn
from fairseq.modules import TransformerEncoderLayer
from torch import Tensor

from fairseq_ext.modules.alibi import biased_attention, biased_attention_reference


def check_heads_divide_width(embed_dim: int, num_heads: int) -> None:
    """Build-time error naming the flags (fairseq's own is an unnamed AssertionError)."""
    if num_heads < 1 or embed_dim % num_heads:
        raise ValueError(f"--encoder-embed-dim ({embed_dim}) must be divisible by "
                         f"--encoder-attention-heads ({num_heads})")


class SDPASelfAttention(nn.Module):
    """Multi-head self-attention with fairseq's parameter names (q/k/v/out_proj)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        check_heads_divide_width(embed_dim, num_heads)
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: Tensor) -> Tensor:
        bsz, seq_len, _ = x.shape
        return x.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None,
                bias: Optional[Tensor] = None, reference: bool = False) -> Tensor:
        """x: (B, T, C); key_padding_mask: (B, T) bool; bias: (H, T, T). Returns (B, T, C)."""
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if reference:
            out = biased_attention_reference(q, k, v, bias, key_padding_mask)
        else:
            dropout_p = self.dropout if self.training else 0.0
            out = biased_attention(q, k, v, bias, key_padding_mask, dropout_p)
        bsz, _, seq_len, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(bsz, seq_len, -1))


class BiasedEncoderLayer(TransformerEncoderLayer):
    """``TransformerEncoderLayer`` with ``SDPASelfAttention``; same parameters and order."""

    def build_self_attention(self, embed_dim, cfg):
        # cfg: the TransformerConfig that TransformerEncoderLayerBase.__init__ passes
        return SDPASelfAttention(embed_dim, cfg.encoder.attention_heads, cfg.attention_dropout)

    def forward(self, x: Tensor, encoder_padding_mask: Optional[Tensor] = None,
                attn_bias: Optional[Tensor] = None, reference: bool = False) -> Tensor:
        """x: (B, T, C); encoder_padding_mask: (B, T) bool or None; attn_bias: (H, T, T)."""
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x = self.self_attn(x, encoder_padding_mask, attn_bias, reference)
        x = self.residual_connection(self.dropout_module(x), residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.activation_dropout_module(self.activation_fn(self.fc1(x)))
        x = self.residual_connection(self.dropout_module(self.fc2(x)), residual)
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x
