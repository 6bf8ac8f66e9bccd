"""One GLOM time step for text (Hinton 2021, "How to represent part-whole hierarchies in a
neural network"; the text port of ArneBinder/GlomImpl, ``GlomAttention``).

The state (B, T, d) holds L levels of width d/L. Each level attends to itself at every other
position with no Q/K/V projections (q = k = v = the level), then levels exchange information
with their neighbours. Two aggregation rules exist in the original repository:

* ``paper`` (master @9ed8118): z_i = (A_i + h_i + sin(U_i h_{i-1}) + sin(D_i h_{i+1})) / n_i,
  n_i counting the terms present (3 at the outermost levels, 4 inside);
* ``tridiagonal`` (branch ``model_learns_well``, where the long-run results come from):
  z_i = P_ii A_i + P_i,i-1 A_{i-1} + P_i,i+1 A_{i+1}, no skip connection.

The output is LN(concat_i z_i + b) over all d features. Levels are read ``interleaved``
(level i = features i, i+L, ..., as the original's ``view(B, T, d/L, L)``) or ``contiguous``,
and always written contiguously, as the original does.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

AGGREGATIONS = ("paper", "tridiagonal")
LAYOUTS = ("interleaved", "contiguous")


def level_weights(n: int, width: int) -> nn.Parameter:
    """n stacked Linear(width, width) weights, (n, out, in), N(0, 0.02) as the original."""
    return nn.Parameter(torch.randn(n, width, width) * 0.02)


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-level Linear: x (B, n, T, w) with weight (n, w, w) and bias (n, w)."""
    return torch.einsum("bntw,nvw->bntv", x, weight) + bias[:, None, :]


def shift_levels(x: torch.Tensor, up: bool) -> torch.Tensor:
    """Pad a message tensor of L-1 levels to L: messages from below land on levels 1..L-1
    (``up``), messages from above on levels 0..L-2."""
    pad = x.new_zeros(x[:, :1].shape)
    return torch.cat([pad, x], dim=1) if up else torch.cat([x, pad], dim=1)


class GlomStep(nn.Module):
    """The shared GLOM layer; ``forward`` is the fast path, ``forward_reference`` a per-level
    loop with explicit softmax that tests compare with it."""

    def __init__(self, embed_dim: int, levels: int, aggregation: str = "paper",
                 layout: str = "interleaved", temperature: float = 1.0, layer_norm_eps: float = 1e-12):
        super().__init__()
        check_glom_shape(embed_dim, levels, aggregation, layout)
        self.levels, self.width = levels, embed_dim // levels
        self.aggregation, self.layout, self.temperature = aggregation, layout, temperature
        n_side = levels - 1
        if aggregation == "tridiagonal":  # P_ii; P_i,i-1 and P_i,i+1 are up/down below
            self.self_weight = level_weights(levels, self.width)
            self.self_bias = nn.Parameter(torch.zeros(levels, self.width))
        self.up_weight, self.down_weight = level_weights(n_side, self.width), level_weights(n_side, self.width)
        self.up_bias = nn.Parameter(torch.zeros(n_side, self.width))
        self.down_bias = nn.Parameter(torch.zeros(n_side, self.width))
        self.out_bias = nn.Parameter(torch.zeros(embed_dim))
        self.layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        sizes = torch.full((levels,), 4.0)
        sizes[0] -= 1
        sizes[-1] -= 1
        self.register_buffer("term_counts", sizes.view(1, levels, 1, 1), persistent=False)

    def split_levels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, L, T, d/L) in the configured layout, made contiguous: one copy
        here saves the attention and projection matmuls from slow strided inputs (on CPU the
        interleaved view made every step ~2.5x slower)."""
        bsz, seq_len, _ = x.shape
        if self.layout == "interleaved":
            return x.view(bsz, seq_len, self.width, self.levels).permute(0, 3, 1, 2).contiguous()
        return x.view(bsz, seq_len, self.levels, self.width).permute(0, 2, 1, 3).contiguous()

    def merge_levels(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L, T, d/L) -> LN(contiguous concat + b): (B, T, d)."""
        bsz, _, seq_len, _ = z.shape
        return self.layer_norm(z.permute(0, 2, 1, 3).reshape(bsz, seq_len, -1) + self.out_bias)

    def aggregate(self, attended: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.aggregation == "paper":
            from_below = torch.sin(project(h[:, :-1], self.up_weight, self.up_bias))
            from_above = torch.sin(project(h[:, 1:], self.down_weight, self.down_bias))
            return (attended + h + shift_levels(from_below, up=True) + shift_levels(from_above, up=False)) / self.term_counts
        from_below = project(attended[:, :-1], self.up_weight, self.up_bias)
        from_above = project(attended[:, 1:], self.down_weight, self.down_bias)
        return project(attended, self.self_weight, self.self_bias) + shift_levels(from_below, up=True) \
            + shift_levels(from_above, up=False)

    def forward(self, x: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
        """x: (B, T, d); key_padding_mask: (B, T) bool, True at padding. One SDPA call for all
        levels (levels play the role of heads)."""
        h = self.split_levels(x)  # (B, L, T, d/L)
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(h, h, h, attn_mask=keep,
                                                  scale=self.temperature / math.sqrt(self.width))
        return self.merge_levels(self.aggregate(attended, h))

    def forward_reference(self, x: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
        """The same step level by level, as the original writes it."""
        h = self.split_levels(x)
        levels = range(self.levels)
        attended = []
        for i in levels:
            scores = h[:, i] @ h[:, i].transpose(1, 2) / math.sqrt(self.width)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
            attended.append(torch.softmax(self.temperature * scores, dim=-1) @ h[:, i])
        z = []
        for i in levels:
            if self.aggregation == "paper":
                terms = [attended[i], h[:, i]]
                if i > 0:
                    terms.append(torch.sin(F.linear(h[:, i - 1], self.up_weight[i - 1], self.up_bias[i - 1])))
                if i < self.levels - 1:
                    terms.append(torch.sin(F.linear(h[:, i + 1], self.down_weight[i], self.down_bias[i])))
                z.append(sum(terms) / len(terms))
            else:
                zi = F.linear(attended[i], self.self_weight[i], self.self_bias[i])
                if i > 0:
                    zi = zi + F.linear(attended[i - 1], self.up_weight[i - 1], self.up_bias[i - 1])
                if i < self.levels - 1:
                    zi = zi + F.linear(attended[i + 1], self.down_weight[i], self.down_bias[i])
                z.append(zi)
        return self.merge_levels(torch.stack(z, dim=1))

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: attention (scores + weighted sum, 4·T·d) and the level
        projections (2 or 3 per level, 2·(d/L)^2 each)."""
        projections = (2 if self.aggregation == "paper" else 3) * self.levels - 2
        return 4.0 * seq_len * self.levels * self.width + projections * 2.0 * self.width ** 2


def check_glom_shape(embed_dim: int, levels: int, aggregation: str, layout: str) -> None:
    """Build-time errors naming the option (fairseq's names: levels = heads)."""
    if levels < 2:
        raise ValueError(f"GLOM needs at least 2 levels (--encoder-attention-heads), got {levels}")
    if embed_dim % levels:
        raise ValueError(f"--encoder-embed-dim ({embed_dim}) must be divisible by the number of levels "
                         f"(--encoder-attention-heads {levels})")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"--glom-aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"--glom-level-layout must be one of {LAYOUTS}, got {layout!r}")
