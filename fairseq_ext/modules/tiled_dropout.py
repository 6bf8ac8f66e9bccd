"""Meliad's tiled dropout: one mask of shape (1, tile, d) repeated over batch and positions.

Meliad (``nn_components.tiled_dropout``) draws the dropout mask for a block of 128 positions
and tiles it along the sequence and across the batch, which is much cheaper than one mask per
element on TPU and regularises the same way in expectation.
"""
import torch
import torch.nn as nn

MELIAD_DROPOUT_TILE = 128


class TiledDropout(nn.Module):
    def __init__(self, p: float, tile: int = MELIAD_DROPOUT_TILE):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.tile = tile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d)."""
        if not self.training or self.p == 0.0:
            return x
        T = x.shape[1]
        keep = torch.rand(1, min(T, self.tile), x.shape[-1], device=x.device) >= self.p
        reps = -(-T // keep.shape[1])
        mask = keep.repeat(1, reps, 1)[:, :T].to(x.dtype) / (1.0 - self.p)
        return x * mask
