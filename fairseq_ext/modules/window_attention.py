"""Strictly causal sliding-window attention with unit-normalised queries and keys (Meliad).

Transformer-XL (Dai et al. 2019) with a sliding window as in google-research/meliad
(``transformer_layer.py``, ``attention.py``): a segment of L tokens is split into windows of W;
window w attends from its W queries to 2W keys, the previous window's and its own, and a token
attends to the W tokens before it but never to itself. The first window's "previous window" is
the cache carried from the last segment (zeros at a document start, and not masked: Meliad's
zero keys act as attention sinks). Queries and keys are unit-normalised; the logits are
a_h·(q̂·k̂ + b_h[bucket]) with a learned per-head scale a_h and the T5 bias b added before the
scale. Without a cache (``xl_cache=False``, Meliad's ``use_long_xl_architecture=False``) a
segment has no past: its first window attends only inside itself, and its first token, which has
no key, attends to a null logit (Meliad's "safe softmax").

``sliding_window_attention`` is the fast path (every query block of a segment in one SDPA call
over the W + C keys it can see);
``sliding_window_attention_reference`` the readable loop over windows with an explicit softmax.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

NULL_LOGIT = -1000.0  # Meliad's safe softmax: an extra logit so that a fully masked row attends to nothing


QUERY_BLOCK = 128


def unit_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x·rsqrt(‖x‖² + eps) over the last dimension (Meliad ``normalize_keys``)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def allowed_keys(num_queries: int, num_keys: int, window: int, device) -> torch.Tensor:
    """(T, S) bool: query i (aligned to the last T of S keys) may attend key j iff 1 <= i' - j <= W."""
    distance = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None] \
        - torch.arange(num_keys, device=device)[None, :]
    return (distance >= 1) & (distance <= window)


def logit_bias(scale: torch.Tensor, bias: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(H, T, S): a_h·b_h where allowed, -inf elsewhere (added to (a_h·q̂)·k̂)."""
    return (scale[:, None, None] * bias).masked_fill(~allowed, float("-inf"))


def with_null_key(keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor):
    """Prepend a zero key and value whose logit is NULL_LOGIT. keys: (..., S, D), bias: (H, T, S)."""
    zeros = keys.new_zeros(*keys.shape[:-2], 1, keys.shape[-1])
    null = bias.new_full((*bias.shape[:-1], 1), NULL_LOGIT)
    return torch.cat([zeros, keys], -2), torch.cat([zeros, values], -2), torch.cat([null, bias], -1)


def attend(q, keys, values, bias, dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA of pre-scaled queries q (N, H, T, D) over (N, H, S, D) with an additive (H, T, S) bias."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, scale=1.0)


def sliding_window_attention(q, k, v, prev: Optional[Tuple[torch.Tensor, torch.Tensor]], scale,
                             relative_bias: Callable[[int, int], torch.Tensor], window: int,
                             dropout_p: float = 0.0) -> torch.Tensor:
    """q, k, v: (B, H, L, D), q and k unit-normalised, L a multiple of W; prev: the (k, v) of the W
    tokens before the segment, (B, H, W, D), or None when the segment has no past (no cache: the
    first window's tokens see only earlier tokens of their window); scale: (H,); relative_bias(T, S):
    the (H, T, S) bias of T queries aligned to the last T of S keys. Returns (B, H, L, D)."""
    if prev is None:
        first = first_window_attention(q[:, :, :window], k[:, :, :window], v[:, :, :window], scale,
                                       relative_bias(window, window), window, dropout_p)
        if q.shape[2] == window:
            return first
        past = (k[:, :, :window], v[:, :, :window])
        rest = sliding_window_attention(q[:, :, window:], k[:, :, window:], v[:, :, window:], past,
                                        scale, relative_bias, window, dropout_p)
        return torch.cat([first, rest], 2)
    B, H, L, D = q.shape
    C = query_block(window)
    m = L // C
    keys, values = (_blocks(torch.cat([p, t], 2), window + C, C) for p, t in zip(prev, (k, v)))  # (B, m, H, W+C, D)
    queries = (q * scale.view(1, H, 1, 1)).view(B, H, m, C, D).transpose(1, 2)  # (B, m, H, C, D)
    mask = logit_bias(scale, relative_bias(C, window + C), allowed_keys(C, window + C, window, q.device))
    flat = lambda t: t.reshape(B * m, H, *t.shape[-2:])
    out = attend(flat(queries), flat(keys), flat(values), mask, dropout_p)  # (B·m, H, C, D)
    return out.view(B, m, H, C, D).transpose(1, 2).reshape(B, H, L, D)


def query_block(window: int) -> int:
    """Queries attend in blocks of C (128, or W when W is not a multiple of it) to the W + C keys
    they can see: a W-wide band of keys costs (W + C)/W of the useful work instead of 2."""
    return QUERY_BLOCK if window % QUERY_BLOCK == 0 else window


def _blocks(x: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """(B, H, S, D) -> (B, (S - size)/step + 1, H, size, D): overlapping blocks along S."""
    return x.unfold(2, size, step).permute(0, 2, 1, 4, 3)


def first_window_attention(q, k, v, scale, bias, window: int, dropout_p: float = 0.0) -> torch.Tensor:
    """A window with no past, (B, H, W, D): strictly causal inside it, and the first token, which
    has no key, attends to Meliad's null logit only (a zero output). bias: (H, W, W)."""
    mask = logit_bias(scale, bias, allowed_keys(window, window, window, q.device))
    keys, values, mask = with_null_key(k, v, mask)
    return attend(q * scale.view(1, -1, 1, 1), keys, values, mask, dropout_p)


def sliding_window_attention_reference(q, k, v, prev, scale, relative_bias, window: int) -> torch.Tensor:
    """The same, one window at a time with an explicit softmax (no dropout)."""
    B, H, L, D = q.shape
    bias = relative_bias(window, 2 * window)  # (H, W, 2W): a window over [previous window; window]
    outputs = []
    for start in range(0, L, window):
        qw, kw, vw = (t[:, :, start:start + window] for t in (q, k, v))
        if prev is None:
            keys, values, window_bias = kw, vw, bias[:, :, window:]
        else:
            keys, values, window_bias = torch.cat([prev[0], kw], 2), torch.cat([prev[1], vw], 2), bias
        logits = scale.view(1, H, 1, 1) * (qw @ keys.transpose(-1, -2) + window_bias)
        logits = logits.masked_fill(~allowed_keys(window, keys.shape[2], window, q.device), float("-inf"))
        if prev is None:
            logits = torch.cat([logits.new_full((*logits.shape[:-1], 1), NULL_LOGIT), logits], -1)
            values = torch.cat([values.new_zeros(B, H, 1, D), values], 2)
        outputs.append(torch.softmax(logits, -1) @ values)
        prev = (kw, vw)
    return torch.cat(outputs, 2)
