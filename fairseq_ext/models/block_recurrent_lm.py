"""Block-Recurrent Transformer: the sliding-window Transformer-XL with recurrent layers.

After google-research/meliad (``transformer_layer.py`` ``recurrent_tbase``,
``single_window_attention``, ``decoder_stack.py``; ALGORITHMS.md §3.4, §3.7) and Hutchins et al.
2022 (arXiv:2203.07852). A recurrent layer is a ``txl_lm`` layer that also carries M state vectors
(``modules.block_recurrence``), window by window:

* **token path**: the window's tokens attend to the W tokens before each of them (txl_lm) and,
  with H more heads (their own queries Q2 and scale a2), to the state S_w read *before* the
  window; the 2H heads go through one W_O (2H·d_h → d), then the residual and the MLP;
* **state path**: the states attend to themselves and to the window's 2W token keys (the
  previous window's included) and are updated by a gate: S_{w+1} = update(S_w, c).

The state starts at a learned s₀ at each document start (per lane, ``start_of_sequence``), is
carried across the windows of a segment (differentiable) and across segments (cached, detached:
truncated back-propagation), one copy per mode like the XL cache. With ``--feedback true``
(Meliad ``feedback_recurrence``) every other layer also reads the recurrent layer's S_w, so the
whole stack runs window by window.

    fairseq-train DATA --user-dir fairseq_ext --task long_document_lm --tokens-per-sample 4096 \
        --arch block_recurrent_small --criterion cross_entropy --batch-size 1 ...

A checkpoint holds the weights, the training XL caches and the training states; the evaluation
copies always start empty. A call outside a stream (no ``start_of_sequence``: ``.score()``) is
a new document. Incremental decoding (``.sample()``) updates the state every W tokens, so
generating scores every token as the whole sequence in one forward does.
"""
import logging
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn as nn

from fairseq.models import register_model

from fairseq_ext.models._common import register_presets
from fairseq_ext.models.txl_lm import (TXL_PRESETS, TxlConfig, TxlDecoder, TxlLanguageModel, TxlLayer,
                                       WindowedSelfAttention, layer_indices, linear, segment_length)
from fairseq_ext.modules.block_recurrence import GATE_TYPES, UPDATE_FORMS, StatePath, unmasked_attention
from fairseq_ext.modules.mode_state import ModeState
from fairseq_ext.modules.window_attention import (sliding_window_attention, sliding_window_attention_reference,
                                                  unit_normalise)

logger = logging.getLogger(__name__)


@dataclass
class BlockRecurrentConfig(TxlConfig):
    """txl_lm's options plus the recurrent layers'."""

    recurrent_layers: str = field(default="-3", metadata={
        "help": "comma-separated 0-based indices of the recurrent layers; negative counts from the top "
                "(Meliad recurrent_layer_indices = (-3,): layer 9 of 12); a list that starts with a "
                "minus needs '=' on the command line: --recurrent-layers=-3,-1"})
    num_states: int = field(default=512, metadata={
        "help": "M: state vectors per recurrent layer and lane (Meliad recurrent_num_states, states_512.gin)"})
    gate_type: str = field(default="fixed", metadata={
        "choices": GATE_TYPES,
        "help": "how the state update combines the old state and the candidate: 'fixed' (a learned "
                "per-channel bias, Meliad 'bias', the paper's fixed gate), 'lstm' (input and forget "
                "gates), 'full' (one learned gate from the hidden), 'residual' (sum, no gate)"})
    state_update: str = field(default="skip", metadata={
        "choices": UPDATE_FORMS,
        "help": "'skip': gate(S, W_O c), no FFN (the paper's best with --gate-type fixed: fixed:skip); "
                "'dual': a gated W_O and a gated FFN; 'single': gate(S, tanh(FFN(c)))"})
    feedback: bool = field(default=False, metadata={
        "help": "every non-recurrent layer also reads the recurrent layer's state with H more heads "
                "(Meliad feedback_recurrence, block_feedback_512.gin): the whole stack runs window by "
                "window; needs exactly one recurrent layer"})


def recurrent_layer_indices(args) -> List[int]:
    """The 0-based recurrent layers; bad entries raise naming --recurrent-layers."""
    return layer_indices(args.recurrent_layers, args.decoder_layers, "--recurrent-layers")


class StateReadingAttention(WindowedSelfAttention):
    """txl_lm's H heads plus H heads that read the recurrent state (own queries Q2 and scale a2,
    no mask, no bias): [o_self; o_cross] → W_O (2H·d_h → d). Alone (without the state path) it is
    a feedback layer; its segment runs window by window in ``BlockRecurrentDecoder``."""

    def __init__(self, args):
        super().__init__(args)
        d, H, d_h = args.decoder_embed_dim, args.decoder_attention_heads, args.attention_head_dim
        self.query2 = linear(d, H * d_h)
        self.scale2 = nn.Parameter(torch.ones(H))
        self.out_proj = linear(2 * H * d_h, d)

    def queries2(self, x):
        """x (B, T, d) -> unit-normalised Q2 (B, H, T, d_h)."""
        B, T, _ = x.shape
        return unit_normalise(self.query2(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2))

    def read_state(self, q2, state_kv, reference: bool = False):
        """Tokens -> states, without attention dropout (Meliad passes no dropout mask here)."""
        return unmasked_attention(q2, *state_kv, self.scale2, reference=reference)

    def output(self, self_heads, cross_heads):
        """(B, H, T, d_h) each -> W_O over the 2H heads, (B, T, d)."""
        heads = torch.cat([self_heads, cross_heads], 1)
        B, H2, T, D = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(B, T, H2 * D))

    def one_window(self, x, prev, state_kv, reference: bool = False):
        """One window x (B, W, d) after the (k, v) ``prev`` of the W tokens before it, reading the
        state's (k̂_s, v_s): the output (B, W, d) and the window's (k, v)."""
        q, k, v = self.project(x)
        if reference:
            local = sliding_window_attention_reference(q, k, v, prev, self.scale, self.relative_bias, self.window)
        else:
            local = sliding_window_attention(q, k, v, prev, self.scale, self.relative_bias, self.window,
                                             self.dropout_p if self.training else 0.0)
        return self.output(local, self.read_state(self.queries2(x), state_kv, reference)), (k, v)

    def forward(self, x, start_of_sequence=None, incremental_state=None, reference: bool = False, state_kv=None):
        """Incremental decoding of one token reading ``state_kv`` (a segment goes through ``one_window``)."""
        q, k, v = self.project(x)
        return self.output(self.step_heads(q, k, v, incremental_state), self.read_state(self.queries2(x), state_kv))


class RecurrentAttention(StateReadingAttention):
    """A recurrent layer's attention: the token path of ``StateReadingAttention`` reading its own
    state path (``StatePath``), whose state is cached per mode across segments."""

    def __init__(self, args):
        super().__init__(args)
        self.recurrence = StatePath(args.decoder_embed_dim, args.decoder_attention_heads, args.attention_head_dim,
                                    args.decoder_ffn_embed_dim, args.num_states, args.gate_type, args.state_update)
        self.state = ModeState("the recurrent state")

    def initial_state(self, start_of_sequence, batch: int):
        """S (B, M, d) before the segment: this mode's cached state, s₀ at document starts (and
        for a call outside a stream)."""
        s0 = self.recurrence.initial[None]
        if start_of_sequence is None:
            return s0.expand(batch, -1, -1)
        return self.state.lanes_or_reset(self.training, start_of_sequence, (s0,))[0]

    def store(self, start_of_sequence, state) -> None:
        if start_of_sequence is not None:
            self.state.set(self.training, (state,))

    def forward(self, x, start_of_sequence=None, incremental_state=None, reference: bool = False, state_kv=None):
        """x (B, L, d) -> (B, L, d); updates this mode's XL cache and state."""
        if incremental_state is not None:
            return self.step(x, incremental_state)
        W = self.window
        q, k, v = self.project(x)
        prev = self.previous_window(start_of_sequence, k)
        state = self.initial_state(start_of_sequence, x.shape[0])
        if reference:
            out = self.reference_segment(x, prev, state, start_of_sequence)
        else:
            local = sliding_window_attention(q, k, v, prev, self.scale, self.relative_bias, W,
                                             self.dropout_p if self.training else 0.0)
            state_keys, state_values, state = self.recurrence.scan(state, torch.cat([prev[0], k], 2),
                                                                   torch.cat([prev[1], v], 2), W)
            B, H, L, D = q.shape
            per_window = lambda t: t.view(B, H, L // W, W, D).transpose(1, 2).flatten(0, 1)  # (B·n, H, W, D)
            read = (state_keys.flatten(0, 1), state_values.flatten(0, 1))  # the state S_w each window reads
            cross = self.read_state(per_window(self.queries2(x)), read)
            out = self.output(local, cross.view(B, L // W, H, W, D).transpose(1, 2).reshape(B, H, L, D))
            if start_of_sequence is not None:
                self.cache.set(self.training, (k[:, :, -W:], v[:, :, -W:]))
            self.store(start_of_sequence, state)
        return out

    def reference_segment(self, x, prev, state, start_of_sequence):
        """The readable path: one window at a time, explicit softmax everywhere."""
        W, outputs = self.window, []
        for start in range(0, x.shape[1], W):
            projected = self.recurrence.project(state)
            y, kv = self.one_window(x[:, start:start + W], prev, projected[:2], reference=True)
            state = self.recurrence.step(state, projected, torch.cat([prev[0], kv[0]], 2),
                                         torch.cat([prev[1], kv[1]], 2), reference=True)
            prev = kv
            outputs.append(y)
        if start_of_sequence is not None:
            self.cache.set(self.training, prev)
        self.store(start_of_sequence, state)
        return torch.cat(outputs, 1)

    def incremental_recurrence(self, incremental_state, batch: int, like: torch.Tensor):
        """The generation's state: S, the (k̂_s, v_s) the next token reads, the (k, v) of the last
        whole window and the tokens seen; s₀ and zeros (a new document) before the first token."""
        state = self.get_incremental_state(incremental_state, "recurrence")
        if not state:
            s = self.initial_state(None, batch)
            zeros = like.new_zeros(batch, self.num_heads, self.window, self.head_dim)
            k_s, v_s = self.recurrence.project(s)[:2]
            state = {"state": s, "state_keys": k_s, "state_values": v_s, "prev_key": zeros, "prev_value": zeros,
                     "seen": torch.zeros(1, dtype=torch.long)}
            self.set_incremental_state(incremental_state, "recurrence", state)
        return state

    def step(self, x, incremental_state):
        """One new token; after every W tokens the state takes that window's update, as in the
        segment path, so the next window's tokens read S_{w+1}."""
        recurrence = self.incremental_recurrence(incremental_state, x.shape[0], x)
        out = super().forward(x, None, incremental_state, False, (recurrence["state_keys"], recurrence["state_values"]))
        recurrence = dict(recurrence, seen=recurrence["seen"] + 1)
        if int(recurrence["seen"][0]) % self.window == 0:
            window = self.get_incremental_state(incremental_state, "window")  # its last W (k, v): this window's
            s = recurrence["state"]
            s = self.recurrence.step(s, self.recurrence.project(s),
                                     torch.cat([recurrence["prev_key"], window["prev_key"]], 2),
                                     torch.cat([recurrence["prev_value"], window["prev_value"]], 2))
            k_s, v_s = self.recurrence.project(s)[:2]
            recurrence.update(state=s, state_keys=k_s, state_values=v_s,
                              prev_key=window["prev_key"], prev_value=window["prev_value"])
        self.set_incremental_state(incremental_state, "recurrence", recurrence)
        return out

    def reorder_incremental_state(self, incremental_state, new_order):
        super().reorder_incremental_state(incremental_state, new_order)
        state = self.get_incremental_state(incremental_state, "recurrence")
        if state:
            state = {key: value if key == "seen" else value.index_select(0, new_order) for key, value in state.items()}
            self.set_incremental_state(incremental_state, "recurrence", state)


class BlockRecurrentLayer(TxlLayer):
    """txl_lm's layer around a state-reading attention: the state's (k̂_s, v_s) passed in, one
    window at a time (``one_window``) or one token at a time."""

    def forward(self, x, start_of_sequence=None, incremental_state=None, reference: bool = False, state_kv=None):
        x = x + self.attention(self.dropout(self.attention_norm(x)), start_of_sequence, incremental_state,
                               reference, state_kv)
        return self.feed_forward(x)

    def one_window(self, x, prev, state_kv, reference: bool = False):
        y, kv = self.attention.one_window(self.dropout(self.attention_norm(x)), prev, state_kv, reference)
        return self.feed_forward(x + y), kv


class BlockRecurrentDecoder(TxlDecoder):
    """txl_lm's decoder with ``RecurrentAttention`` in --recurrent-layers (and, with --feedback,
    ``StateReadingAttention`` in every other layer, the stack run window by window)."""

    def __init__(self, args, dictionary):
        self.recurrent = recurrent_layer_indices(args)
        super().__init__(args, dictionary)

    def build_layer(self, args, index: int) -> TxlLayer:
        if index in self.recurrent:
            return BlockRecurrentLayer(args, RecurrentAttention)
        return BlockRecurrentLayer(args, StateReadingAttention) if args.feedback else TxlLayer(args)

    def run_layers(self, x, start_of_sequence=None, incremental_state=None, reference: bool = False):
        if not self.args.feedback:
            return super().run_layers(x, start_of_sequence, incremental_state, reference)
        source = self.layers[self.recurrent[0]].attention
        if incremental_state is None:
            return self.feedback_windows(x, start_of_sequence, reference)
        recurrence = source.incremental_recurrence(incremental_state, x.shape[0], x)
        state_kv = (recurrence["state_keys"], recurrence["state_values"])  # S_w: the recurrent layer updates it last
        for layer in self.layers:
            x = layer(x, None, incremental_state, reference, state_kv)
        return x

    def feedback_windows(self, x, start_of_sequence, reference: bool):
        """Meliad's feedback recurrence: window w runs through the whole stack, every layer
        reading S_w; the recurrent layer's window then updates it. x: (B, L, d)."""
        W, index = self.window, self.recurrent[0]
        source = self.layers[index].attention
        like = x.new_zeros(x.shape[0], source.num_heads, 1, source.head_dim)
        prevs = [layer.attention.previous_window(start_of_sequence, like) for layer in self.layers]
        state, outputs = source.initial_state(start_of_sequence, x.shape[0]), []
        for start in range(0, x.shape[1], W):
            y, projected = x[:, start:start + W], source.recurrence.project(state)
            for i, layer in enumerate(self.layers):
                y, kv = layer.one_window(y, prevs[i], projected[:2], reference)
                if i == index:
                    keys, values = torch.cat([prevs[i][0], kv[0]], 2), torch.cat([prevs[i][1], kv[1]], 2)
                prevs[i] = kv
            state = source.recurrence.step(state, projected, keys, values, reference)
            outputs.append(y)
        if start_of_sequence is not None:
            for layer, kv in zip(self.layers, prevs):
                layer.attention.cache.set(self.training, kv)
        source.store(start_of_sequence, state)
        return torch.cat(outputs, 1)


@register_model("block_recurrent_lm")
class BlockRecurrentLanguageModel(TxlLanguageModel):
    """Block-Recurrent Transformer causal LM (see the module docstring)."""

    config_class = BlockRecurrentConfig

    @classmethod
    def validate(cls, args, task):
        """txl_lm's checks, then the recurrence's, naming the option at fault."""
        super().validate(args, task)
        indices = recurrent_layer_indices(args)
        if args.num_states < 1:
            raise ValueError(f"--num-states must be at least 1, got {args.num_states}")
        if args.gate_type not in GATE_TYPES:
            raise ValueError(f"--gate-type must be one of {', '.join(GATE_TYPES)}, got {args.gate_type!r}")
        if args.state_update not in UPDATE_FORMS:
            raise ValueError(f"--state-update must be one of {', '.join(UPDATE_FORMS)}, got {args.state_update!r}")
        if not args.xl_cache:
            raise ValueError("block_recurrent_lm needs --xl-cache true: the states read the previous window's "
                             "keys, carried across segments by the XL cache")
        if args.feedback and len(indices) != 1:
            raise ValueError(f"--feedback true needs exactly one recurrent layer (the one every other layer "
                             f"reads), got --recurrent-layers {args.recurrent_layers!r}")
        if segment_length(args, task) == args.window_length:
            logger.warning("--tokens-per-sample equals --window-length: with one window per segment the state "
                           "update is never back-propagated through (truncated BPTT), so training leaves it "
                           "untrained (and DDP finds unused parameters); Meliad trains with 8 windows per segment")

    @classmethod
    def build_decoder(cls, args, task):
        return BlockRecurrentDecoder(args, task.target_dictionary)

    def flops_per_token(self, seq_len: int) -> float:
        """txl_lm's, plus per state-reading layer the queries Q2, the wider W_O and the read of M
        states, and per recurrent layer its state path once per window (W tokens): the projection,
        the states' attention to M states and 2W keys, and the update."""
        a = self.decoder.args
        d, hd, M, W, f = (a.decoder_embed_dim, a.decoder_attention_heads * a.attention_head_dim, a.num_states,
                          a.window_length, a.decoder_ffn_embed_dim)
        readers = a.decoder_layers if a.feedback else len(self.decoder.recurrent)
        read = 2 * (2 * d * hd) + 4 * M * hd
        gate_inputs = {"skip": 2 * hd, "dual": 2 * hd + f, "single": f}[a.state_update]
        gates = {"residual": 0, "fixed": 0, "full": 1, "lstm": 2}[a.gate_type] * 2 * gate_inputs * d
        update = {"skip": 2 * 2 * hd * d, "dual": 2 * 2 * hd * d + 4 * d * f, "single": 2 * 2 * hd * f + 2 * f * d}
        state = M * (2 * d * 4 * hd + 4 * (M + 2 * W) * hd + update[a.state_update] + gates) / W
        return super().flops_per_token(seq_len) + 3.0 * (readers * read + len(self.decoder.recurrent) * state)


def block_recurrent_preset(args, **preset) -> None:
    BlockRecurrentLanguageModel.fill_defaults(args, **preset)


# The txl_lm sizes (Meliad configs/size/*.gin) with Meliad's recurrence (layer -3, 512 states,
# fixed:skip); tiny (2 layers, 16 states) has its recurrent layer at the bottom, for tests and smoke runs.
BLOCK_RECURRENT_PRESETS = {
    "block_recurrent_tiny": {**TXL_PRESETS["txl_sliding_window_tiny"], "recurrent_layers": "0", "num_states": 16},
    "block_recurrent_small": dict(TXL_PRESETS["txl_sliding_window_small"]),
    "block_recurrent_medium": dict(TXL_PRESETS["txl_sliding_window_medium"]),
}
register_presets("block_recurrent_lm", BLOCK_RECURRENT_PRESETS, block_recurrent_preset)
