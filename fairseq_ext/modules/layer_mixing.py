"""Every-Layer-Counts mixing (Charpentier & Samuel 2023, "Not all layers are equally as
important: Every Layer Counts BERT", arXiv:2311.02265).

The input of layer l is a learned convex combination of the embedding output and the outputs
of all earlier layers: x_l = sum_i softmax(alpha_l)_i h_i. ``mix`` stacks the states and takes
one weighted sum; ``mix_reference`` is the loop the original writes.
"""
from typing import List

import torch
import torch.nn as nn


def mix(weights: torch.Tensor, states: List[torch.Tensor]) -> torch.Tensor:
    """softmax(weights) . stack(states): weights (n,), states n x (B, T, d) -> (B, T, d)."""
    return torch.einsum("n,n...->...", torch.softmax(weights, dim=0).to(states[0].dtype), torch.stack(states))


def mix_reference(weights: torch.Tensor, states: List[torch.Tensor]) -> torch.Tensor:
    probs = torch.softmax(weights, dim=0)
    out = probs[0] * states[0]
    for p, h in zip(probs[1:], states[1:]):
        out = out + p * h
    return out


def initial_layer_weights(layer: int, variant: str) -> torch.Tensor:
    """alpha_l (l + 1 entries): uniform (zeros) for zero/normalized/weighted_output; for base,
    zeros with the last entry 1, favouring the previous layer (elc-bert model_elc_bert_base)."""
    weights = torch.zeros(layer + 1)
    if variant == "base":
        weights[-1] = 1.0
    return weights


class LayerWeights(nn.Module):
    """The alpha_l of every layer (``prev_layer_weights`` in the original)."""

    def __init__(self, layers: int, variant: str):
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(initial_layer_weights(i, variant)) for i in range(layers))

    def forward(self, layer: int, states: List[torch.Tensor], reference: bool = False) -> torch.Tensor:
        return (mix_reference if reference else mix)(self.weights[layer], states)
