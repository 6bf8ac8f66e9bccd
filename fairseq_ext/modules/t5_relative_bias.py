"""T5 relative position bias with unidirectional buckets, one table per layer (Meliad).

Raffel et al. 2020 (T5) bucket relative distances: exact for short ones, logarithmic up to
``max_distance``. Meliad (``position_t5.py``) uses the causal ("unidirectional") variant, where
only n = max(q_pos - k_pos, 0) matters, with 32 buckets, max distance 128 and one [H, 32] table
per layer (T5 shares one across layers). The bias is added to q·k *before* the per-head scale.
"""
import math
from functools import lru_cache

import torch
import torch.nn as nn


def unidirectional_buckets(distance: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bucket of each distance n = q_pos - k_pos (negative -> 0): n itself below num_buckets/2,
    then logarithmic in n up to max_distance, clipped to the last bucket."""
    n = distance.clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return torch.where(n < exact, n, large)


def bucket_reference(n: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """One distance at a time, written as in ALGORITHMS.md §3.1 (for tests)."""
    n = max(n, 0)
    exact = num_buckets // 2
    if n < exact:
        return n
    return min(num_buckets - 1, exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact)))


@lru_cache(maxsize=32)
def _bucket_grid(num_queries: int, num_keys: int, num_buckets: int, max_distance: int, device: str):
    """(T, S) buckets for T queries aligned to the last T of S keys."""
    q_pos = torch.arange(num_keys - num_queries, num_keys, device=device)
    k_pos = torch.arange(num_keys, device=device)
    return unidirectional_buckets(q_pos[:, None] - k_pos[None, :], num_buckets, max_distance)


class T5RelativeBias(nn.Module):
    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        if num_buckets < 2 or max_distance <= num_buckets // 2:
            raise ValueError(f"--relative-position-max-distance ({max_distance}) must exceed half of "
                             f"--relative-position-buckets ({num_buckets})")
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        # flax default_embed_init: variance scaling 1.0, fan_in = number of buckets
        self.table = nn.Parameter(torch.randn(num_heads, num_buckets) / math.sqrt(num_buckets))

    def forward(self, num_queries: int, num_keys: int) -> torch.Tensor:
        """(H, T, S) bias for T queries aligned to the last T of S keys."""
        buckets = _bucket_grid(num_queries, num_keys, self.num_buckets, self.max_distance, str(self.table.device))
        return self.table[:, buckets]
