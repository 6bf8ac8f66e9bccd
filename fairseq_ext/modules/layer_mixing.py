"""Every-Layer-Counts layer weighting (Charpentier & Samuel 2023, "Not all layers are equally
as important: Every Layer Counts BERT", arXiv:2311.02265; ltgoslo/elc-bert).

Layer ℓ reads x_ℓ = Σ_{i≤ℓ} softmax(α_ℓ)_i · h_i, a learned mixture of the embedding output h_0
and every earlier layer output. FAST path: the outputs stay in one list, are stacked once per
layer and reduced with one tensordot; the loop over earlier outputs is the REFERENCE path.
"""
from typing import List

import torch
import torch.nn as nn

VARIANTS = ("base", "zero", "normalized", "weighted_output")


def initial_layer_weights(variant: str, size: int) -> torch.Tensor:
    """α at init: 'base' zeros with the last (most recent layer) entry 1, the others all zeros."""
    alpha = torch.zeros(size)
    if variant == "base":
        alpha[-1] = 1.0
    return alpha


class LayerMixing(nn.Module):
    """Softmax-weighted sum of a stack of layer outputs with learnable raw weights α."""

    def __init__(self, variant: str, size: int):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"--elc-variant must be one of {VARIANTS}, got {variant!r}")
        self.layer_weights = nn.Parameter(initial_layer_weights(variant, size))

    def weights(self) -> torch.Tensor:
        return self.layer_weights.softmax(-1)

    def forward(self, states: List[torch.Tensor]) -> torch.Tensor:
        """states: len(α) tensors of one shape (T, B, d) -> their mixture (T, B, d)."""
        stacked = torch.stack(states, dim=0)  # (ℓ+1, T, B, d)
        return torch.tensordot(self.weights().to(stacked.dtype), stacked, dims=1)

    def forward_reference(self, states: List[torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        out = w[0] * states[0]
        for weight, state in zip(w[1:], states[1:]):
            out = out + weight * state
        return out
