"""ALBERT's factorised embedding (Lan et al. 2020, arXiv:1909.11942, section 3.1) and the
matching masked-LM head, shared by the GLOM and ALBERT models of the plugin.

Tokens and positions are embedded at a small width E and projected to the model width d, so
the V x E table stays small; the head maps back to E and scores with the tied E-wide table.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import PositionalEmbedding


class FactorisedEmbedding(nn.Module):
    """e = Dropout(LN_E(W_tok[x] + W_pos[p])): (B, T) ids -> (B, T, E). The LN eps is the
    family's own (its original's). Learned positions: inputs longer than ``max_positions``
    (--max-positions, by default --tokens-per-sample) are refused."""

    def __init__(self, embed_tokens: nn.Embedding, max_positions: int, padding_idx: int, dropout: float,
                 layer_norm_eps: float):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.max_positions = max_positions
        width = embed_tokens.embedding_dim
        self.embed_positions = PositionalEmbedding(max_positions, width, padding_idx, learned=True)
        self.layer_norm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src_tokens: torch.Tensor) -> torch.Tensor:
        seq_len = src_tokens.size(1)
        if seq_len > self.max_positions:
            raise ValueError(f"input of {seq_len} tokens is longer than the model accepts "
                             f"({self.max_positions}; --max-positions)")
        x = self.embed_tokens(src_tokens) + self.embed_positions(src_tokens)
        return self.dropout(self.layer_norm(x))


class FactorisedLMHead(nn.Module):
    """logits = W_tok · LN_E(gelu(W_o f[..., :in_dim] + b_o)) + b_V (ALBERT's MLM head; GLOM reads
    only level 0, the first ``in_dim`` features). Only masked positions are scored in training."""

    def __init__(self, in_dim: int, weight: nn.Parameter, layer_norm_eps: float):
        super().__init__()
        self.in_dim = in_dim
        vocab, width = weight.shape
        self.dense = nn.Linear(in_dim, width)
        self.layer_norm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.weight = weight  # (V, E), tied to the token embedding
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, features: torch.Tensor, masked_tokens=None, **unused) -> torch.Tensor:
        if masked_tokens is not None:
            features = features[masked_tokens, :]
        x = self.layer_norm(F.gelu(self.dense(features[..., :self.in_dim]), approximate="tanh"))
        return F.linear(x, self.weight) + self.bias

    def flops_per_token(self) -> float:
        vocab, width = self.weight.shape
        return 2.0 * self.in_dim * width + 2.0 * width * vocab
