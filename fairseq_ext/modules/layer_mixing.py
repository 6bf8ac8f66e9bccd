"""Every-Layer-Counts layer weighting (Charpentier & Samuel 2023, "Not all layers are equally
as important: Every Layer Counts BERT", arXiv:2311.02265; ltgoslo/elc-bert).

Layer ℓ reads x_ℓ = Σ_{i≤ℓ} softmax(α_ℓ)_i · h_i, a learned mixture of the embedding output h_0
and every earlier layer output.

FAST path: ``LayerHistory`` copies each output once into a preallocated (L+1, T, B, d) buffer and
every mixture is one tensordot over a prefix of it, in a custom autograd function that keeps the
buffer prefix (not a fresh stack per layer) for the weights' gradient: O(L) copies and saved
activations instead of the O(L²) of re-stacking the outputs for each layer. The loop over
earlier outputs is the REFERENCE path.
"""
from typing import List, Optional

import torch
import torch.nn as nn

VARIANTS = ("base", "zero", "normalized", "weighted_output")


def initial_layer_weights(variant: str, size: int) -> torch.Tensor:
    """α at init: 'base' zeros with the last (most recent layer) entry 1, the others all zeros."""
    alpha = torch.zeros(size)
    if variant == "base":
        alpha[-1] = 1.0
    return alpha


class _MixStored(torch.autograd.Function):
    """out = Σ_i w_i · h_i, computed from ``stored`` (the h_i's values, no history, shape (n, T, B, d))
    while the gradient flows to the h_i's themselves. ``stored`` is kept on ctx, not through
    save_for_backward: the encoder writes later rows of the same buffer (rows ≥ n) after this call,
    which the version counter would flag although the rows read here never change."""

    @staticmethod
    def forward(ctx, weights, stored, *states):
        ctx.stored = stored
        ctx.save_for_backward(weights)
        ctx.state_dtypes = [s.dtype for s in states]
        return torch.tensordot(weights.to(stored.dtype), stored, dims=1)

    @staticmethod
    def backward(ctx, grad):
        (weights,) = ctx.saved_tensors
        grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_weights = torch.tensordot(ctx.stored, grad.to(ctx.stored.dtype), dims=grad.dim()).to(weights.dtype)
        scaled = weights.to(grad.dtype).view(-1, *([1] * grad.dim())) * grad  # (n, T, B, d)
        grad_states = [g.to(dtype) for g, dtype in zip(scaled.unbind(0), ctx.state_dtypes)]
        return (grad_weights, None, *grad_states)


class LayerMixing(nn.Module):
    """Softmax-weighted sum of a stack of layer outputs with learnable raw weights α."""

    def __init__(self, variant: str, size: int):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"--elc-variant must be one of {VARIANTS}, got {variant!r}")
        self.layer_weights = nn.Parameter(initial_layer_weights(variant, size))

    def weights(self) -> torch.Tensor:
        return self.layer_weights.softmax(-1)

    def forward(self, states: List[torch.Tensor], stored: Optional[torch.Tensor] = None) -> torch.Tensor:
        """states: len(α) tensors (T, B, d) -> their mixture (T, B, d). stored: the same values as
        one (len(α), T, B, d) tensor without history (``LayerHistory`` keeps one); stacked here if absent."""
        if stored is None:
            stored = torch.stack([s.detach() for s in states])
        return _MixStored.apply(self.weights(), stored, *states)

    def forward_reference(self, states: List[torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        out = w[0] * states[0]
        for weight, state in zip(w[1:], states[1:]):
            out = out + weight * state
        return out


class LayerHistory:
    """h_0 .. h_ℓ of one forward: the tensors themselves (for autograd and return_all_hiddens)
    and, when ``buffered`` (some layer mixes them), their values in one preallocated
    (capacity, T, B, d) buffer, each copied in once."""

    def __init__(self, first: torch.Tensor, capacity: int, buffered: bool = True):
        self.states = []
        self.buffer = first.new_empty((capacity, *first.shape)) if buffered else None
        self.append(first)

    def append(self, state: torch.Tensor) -> None:
        if self.buffer is not None:
            self.buffer[len(self.states)].copy_(state.detach())
        self.states.append(state)

    def mix(self, mixing: LayerMixing, reference: bool = False) -> torch.Tensor:
        if reference:
            return mixing.forward_reference(self.states)
        return mixing(self.states, self.buffer[: len(self.states)])
