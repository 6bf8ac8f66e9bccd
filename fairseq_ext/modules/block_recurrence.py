"""The recurrent cell of the Block-Recurrent Transformer (Hutchins et al. 2022, arXiv:2203.07852).

After google-research/meliad (``transformer_layer.py`` ``recurrent_tbase``,
``single_window_attention``; ``transformer_base.py`` ``post_attn_ffn``; ``nn_components.MLP._gate``;
ALGORITHMS.md §3.4). M state vectors S ∈ R^{B×M×d} are read by the tokens of a window and then
updated from that window, once per window of W tokens:

* projection (a "pure" transformer base, no dropout): n = RMSNorm(S) + P (learned state IDs),
  K_s, V_s, Q_s, Q2_s = n·W_{K,V,Q,Q2}, keys and queries unit-normalised per head;
* the tokens of window w read S_w (the state *before* the window): softmax(a2_h q̂2·k̂_s) V_s,
  no mask, no position bias (``unmasked_attention``);
* the states attend to themselves (r_self, scale a^r) and to the window's 2W token keys, the
  previous window's included (r_cross, scale a2^r); c = [r_self; r_cross] over 2H heads;
* S_{w+1} = update(S_w, c) with one of three forms and four gates (``StateUpdate``, ``StateGate``).

``StatePath.scan`` runs every window of a segment in one loop over windows (SDPA attention);
``reference=True`` computes each attention with an explicit softmax.
"""
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_ext.modules.meliad_init import linear
from fairseq_ext.modules.window_attention import unit_normalise

GATE_TYPES = ("fixed", "lstm", "full", "residual")
UPDATE_FORMS = ("single", "dual", "skip")
RMS_NORM_EPS = 1e-6


def unmasked_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: torch.Tensor,
                    reference: bool = False) -> torch.Tensor:
    """Unmasked attention softmax(a_h q̂·k̂) v without position bias or dropout (Meliad
    ``simple_attention`` without a mask): q (N, H, T, D), keys and values (N, H, S, D), scale (H,).
    Returns (N, H, T, D)."""
    q = q * scale.view(1, -1, 1, 1)
    if reference:
        return torch.softmax(q @ keys.transpose(-1, -2), -1) @ values
    return F.scaled_dot_product_attention(q, keys, values, scale=1.0)


class StateGate(nn.Module):
    """Combines the previous value s with a candidate y (Meliad ``MLP._gate``); h is the hidden
    input of the candidate's last layer (c for a one-layer projection, the ReLU activations for an FFN).

    * ``residual``: s + y;
    * ``fixed`` (Meliad "bias"): σ(b)⊙s + (1−σ(b))⊙y, b ~ N(0, 0.1): about half the state kept at init;
    * ``lstm``: σ(W_f h + b_f + 1)⊙s + σ(W_i h + b_i − 1)⊙y, W variance scaling 0.1, b ~ N(0, 0.1);
    * ``full``: g = σ(W h + b + 1), g⊙s + (1−g)⊙y.
    """

    def __init__(self, gate_type: str, dim: int, hidden_dim: int):
        super().__init__()
        if gate_type not in GATE_TYPES:
            raise ValueError(f"--gate-type must be one of {', '.join(GATE_TYPES)}, got {gate_type!r}")
        self.gate_type = gate_type
        gates = {"residual": 0, "fixed": 1, "full": 1, "lstm": 2}[gate_type]
        if gates:
            self.bias = nn.Parameter(torch.randn(gates, dim) * 0.1)
        if gate_type in ("lstm", "full"):
            self.weight = linear(hidden_dim, gates * dim, scale=0.1)

    def forward(self, s: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.gate_type == "residual":
            return s + y
        if self.gate_type == "fixed":
            keep = torch.sigmoid(self.bias[0])
            return keep * s + (1 - keep) * y
        pre = self.weight(h).unflatten(-1, (-1, s.shape[-1])) + self.bias  # (..., gates, d)
        if self.gate_type == "full":
            keep = torch.sigmoid(pre[..., 0, :] + 1)
            return keep * s + (1 - keep) * y
        return torch.sigmoid(pre[..., 0, :] + 1) * s + torch.sigmoid(pre[..., 1, :] - 1) * y


class StateUpdate(nn.Module):
    """S_{w+1} from S_w and the state's attention output c (…, 2H·d_h) (Meliad ``post_attn_ffn``):

    * ``skip``: gate(S, W_O c), no FFN (the paper's best with the fixed gate, "fixed:skip");
    * ``dual``: s′ = gate₁(S, W_O c), then gate₂(s′, FFN(RMSNorm(s′)));
    * ``single``: gate(S, tanh(FFN(c))), the FFN reading the raw concatenation (no W_O, no norm).
    """

    def __init__(self, form: str, gate_type: str, dim: int, heads_dim: int, ffn_dim: int):
        super().__init__()
        if form not in UPDATE_FORMS:
            raise ValueError(f"--state-update must be one of {', '.join(UPDATE_FORMS)}, got {form!r}")
        self.form = form
        if form == "single":
            self.fc1, self.fc2 = linear(heads_dim, ffn_dim), linear(ffn_dim, dim)
            self.gate = StateGate(gate_type, dim, ffn_dim)
            return
        self.out_proj = linear(heads_dim, dim)
        self.gate = StateGate(gate_type, dim, heads_dim)
        if form == "dual":
            self.ffn_norm = nn.RMSNorm(dim, eps=RMS_NORM_EPS)
            self.fc1, self.fc2 = linear(dim, ffn_dim), linear(ffn_dim, dim)
            self.gate2 = StateGate(gate_type, dim, ffn_dim)

    def forward(self, state: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.form == "single":
            h = F.relu(self.fc1(c))
            return self.gate(state, torch.tanh(self.fc2(h)), h)
        state = self.gate(state, self.out_proj(c), c)
        if self.form == "skip":
            return state
        h = F.relu(self.fc1(self.ffn_norm(state)))
        return self.gate2(state, self.fc2(h), h)


class StatePath(nn.Module):
    """The M recurrent states of one layer: learned initial state and IDs, projections, the
    states' attention and their update (see the module docstring)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, ffn_dim: int, num_states: int,
                 gate_type: str, update_form: str):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.initial = nn.Parameter(torch.randn(num_states, dim) * 0.1)  # s₀ ~ N(0, 0.1)
        self.state_ids = nn.Parameter(torch.randn(num_states, dim))  # P_s ~ N(0, 1), added after the norm
        self.norm = nn.RMSNorm(dim, eps=RMS_NORM_EPS)
        self.kvqq = linear(dim, 4 * num_heads * head_dim)
        self.scale = nn.Parameter(torch.ones(num_heads))  # a^r, states -> states
        self.scale2 = nn.Parameter(torch.ones(num_heads))  # a2^r, states -> tokens
        self.update = StateUpdate(update_form, gate_type, dim, 2 * num_heads * head_dim, ffn_dim)

    def project(self, state: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """S (B, M, d) -> k̂_s, v_s, q̂_s, q̂2_s, each (B, H, M, d_h)."""
        B, M, _ = state.shape
        n = self.norm(state) + self.state_ids
        k, v, q, q2 = self.kvqq(n).view(B, M, 4, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return unit_normalise(k), v, unit_normalise(q), unit_normalise(q2)

    def step(self, state, projected, keys, values, reference: bool = False) -> torch.Tensor:
        """S_{w+1} from S_w, its projection and the window's 2W token keys and values (B, H, 2W, d_h)."""
        k_s, v_s, q_s, q2_s = projected
        r_self = unmasked_attention(q_s, k_s, v_s, self.scale, reference=reference)
        r_cross = unmasked_attention(q2_s, keys, values, self.scale2, reference=reference)
        B, H, M, D = r_self.shape
        c = torch.cat([r_self, r_cross], 1).transpose(1, 2).reshape(B, M, 2 * H * D)
        return self.update(state, c)

    def scan(self, state, keys, values, window: int, reference: bool = False):
        """Every window of a segment: keys and values (B, H, W + L, d_h), the previous window's
        W first. Returns the (k̂_s, v_s) each window's tokens read, (B, L/W, H, M, d_h) each,
        and the state after the last window."""
        read: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, keys.shape[2] - window, window):
            projected = self.project(state)
            read.append(projected[:2])
            state = self.step(state, projected, keys[:, :, start:start + 2 * window],
                              values[:, :, start:start + 2 * window], reference)
        return torch.stack([k for k, _ in read], 1), torch.stack([v for _, v in read], 1), state
