"""Meliad's kernel initialiser: flax variance scaling, fan in, truncated normal (ALGORITHMS.md §3.1)."""
import math

import torch
import torch.nn as nn


def truncated_normal_(weight: torch.Tensor, fan_in: int, scale: float = 1.0) -> torch.Tensor:
    """Variance ``scale``, fan in, truncated at 2σ (flax): std sqrt(scale/fan_in) after truncation."""
    std = math.sqrt(scale / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def linear(in_features: int, out_features: int, scale: float = 1.0) -> nn.Linear:
    """A bias-free projection (Meliad's dense layers have no bias) with that initialisation."""
    layer = nn.Linear(in_features, out_features, bias=False)
    truncated_normal_(layer.weight, in_features, scale)
    return layer
