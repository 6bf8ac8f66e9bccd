"""Memorizing Transformer: the sliding-window Transformer-XL with a kNN memory in some layers.

After google-research/meliad (``transformer_layer.py`` ``_query_external_memory``,
``memory_layer.py``, ``attention.external_attention``; ALGORITHMS.md §3.3, §3.7) and Wu et al.
2022 (arXiv:2203.08913). A memory layer is a ``txl_lm`` layer whose attention also reads a
non-differentiable memory of the past (key, value) pairs of its lane's document
(``modules.knn_memory``). Within each segment, in this order:

1. **reset** the memory of lanes whose document starts (``start_of_sequence``);
2. **retrieve** k neighbours per query q̂ (no gradient into the memory or through the search);
3. local attention, as ``txl_lm`` (XL cache plus window);
4. external attention over the k retrieved pairs, p = softmax(a_h q̂·k̃) with the *same*
   learned per-head scale a_h, no position bias, no mask; y_ext = Σ p ṽ;
5. the per-head gate g_h = σ(b_h) (b_h init 0): o = (1 − g)·o_local + g·y_ext, before W_O;
6. **write** the segment's unit-normalised keys and its values (detached).

So the memory never holds the current segment.

    fairseq-train DATA --user-dir fairseq_ext --task long_document_lm --tokens-per-sample 512 \
        --arch memorizing_small --criterion cross_entropy --batch-size 8 ...

A checkpoint holds the training memory (and cache); evaluation keeps its own, always starting
empty. A call outside a stream (no ``start_of_sequence``: ``.score()``, a stock task) is a new
document with an empty memory (y_ext = 0) and writes nothing. Incremental decoding
(``.sample()``) keeps a memory in fairseq's incremental state and writes it every W
(``--window-length``) tokens, so generating equals streaming segments of W tokens.
"""
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn as nn

from fairseq.models import register_model

from fairseq_ext.models._common import register_presets
from fairseq_ext.models.txl_lm import (TXL_PRESETS, TxlConfig, TxlDecoder, TxlLanguageModel, TxlLayer,
                                       WindowedSelfAttention, layer_indices, segment_length)
from fairseq_ext.modules.knn_memory import (TOPK_METHODS, KnnMemory, empty_memory, retrieve,
                                            retrieve_reference, write)


@dataclass
class MemorizingConfig(TxlConfig):
    """txl_lm's options plus the kNN memory's."""

    memory_layers: str = field(default="-4", metadata={
        "help": "comma-separated 0-based indices of the layers with a kNN memory; negative counts "
                "from the top (Meliad memory_layer_indices = (-4,): layer 8 of 12); a list that "
                "starts with a minus needs '=' on the command line: --memory-layers=-4,-1"})
    memory_size: int = field(default=32768, metadata={
        "help": "D: (key, value) pairs per lane and head (Meliad external_memory_32k.gin); a whole "
                "segment is written at once, so it must be a multiple of --tokens-per-sample"})
    memory_neighbors: int = field(default=32, metadata={
        "help": "k: neighbours retrieved per query (the paper's 32; Meliad's gin uses 128)"})
    memory_topk: str = field(default="bucketed", metadata={
        "choices": TOPK_METHODS,
        "help": "'bucketed': Meliad's approximate top-k, the arg-max of each of k buckets "
                "(slot mod k; needs --memory-size a multiple of --memory-neighbors), the "
                "original's default; 'exact': the true top-k"})


def memory_layer_indices(args) -> List[int]:
    """The 0-based memory layers; bad entries raise naming --memory-layers."""
    return layer_indices(args.memory_layers, args.decoder_layers, "--memory-layers")


class MemoryAttention(WindowedSelfAttention):
    """txl_lm's attention plus the kNN memory (one per mode), the external attention and the
    per-head gate (see the module docstring for the order)."""

    def __init__(self, args):
        super().__init__(args)
        self.neighbors, self.topk = args.memory_neighbors, args.memory_topk
        self.gate_bias = nn.Parameter(torch.zeros(self.num_heads))  # b_h: g = σ(0) = 0.5 at init
        self.memory = KnnMemory(args.memory_size)

    def retrieve(self, q, memory, reference: bool = False):
        """(B, H, T, d_h) queries -> retrieved keys and values, each (B, H, T, k, d_h)."""
        if reference:
            return retrieve_reference(q, memory, self.neighbors, self.topk)
        return retrieve(q, memory, self.neighbors, self.topk)

    def external_attention(self, q, retrieved):
        """softmax_j(a_h q̂·k̃_j) ṽ_j over the query's own k neighbours, in fp32 like the
        memory: (B, H, T, d_h)."""
        keys, values = retrieved
        with torch.autocast(q.device.type, enabled=False):
            logits = self.scale.view(1, -1, 1, 1) * torch.einsum("bhtd,bhtkd->bhtk", q.float(), keys)
            return torch.einsum("bhtk,bhtkd->bhtd", logits.softmax(-1), values)

    def combine(self, local, external):
        """(1 − g_h)·o_local + g_h·y_ext per head, before W_O."""
        gate = torch.sigmoid(self.gate_bias).view(1, -1, 1, 1)
        return (1 - gate) * local + gate * external.to(local.dtype)

    def segment_heads(self, q, k, v, start_of_sequence, reference: bool = False):
        if start_of_sequence is None:  # a new document outside a stream: its memory is empty, y_ext = 0
            return self.combine(super().segment_heads(q, k, v, None, reference), torch.zeros_like(q))
        memory = self.memory.lanes(self.training, start_of_sequence, k)  # 1. reset
        retrieved = self.retrieve(q, memory, reference)  # 2. retrieve
        local = super().segment_heads(q, k, v, start_of_sequence, reference)  # 3. local attention
        out = self.combine(local, self.external_attention(q, retrieved))  # 4.-5. external, gate
        self.memory.store(self.training, write(memory, k, v))  # 6. write
        return out

    def step_heads(self, q, k, v, incremental_state):
        """One new token; its key and value wait in ``pending`` until W of them are written."""
        B, H, _, d = q.shape
        state = self.get_incremental_state(incremental_state, "memory")
        if not state:
            keys, values, count = empty_memory(B, H, self.memory.size, d, q.device)
            state = {"keys": keys, "values": values, "count": count,
                     "pending_keys": k[:, :, :0], "pending_values": v[:, :, :0]}
        memory = (state["keys"], state["values"], state["count"])
        retrieved = self.retrieve(q, memory)
        out = self.combine(super().step_heads(q, k, v, incremental_state), self.external_attention(q, retrieved))
        pending_keys = torch.cat([state["pending_keys"], k.detach()], 2)
        pending_values = torch.cat([state["pending_values"], v.detach()], 2)
        if pending_keys.shape[2] == self.window:
            memory = write(memory, pending_keys, pending_values)
            pending_keys, pending_values = pending_keys[:, :, :0], pending_values[:, :, :0]
        self.set_incremental_state(incremental_state, "memory", {
            "keys": memory[0], "values": memory[1], "count": memory[2],
            "pending_keys": pending_keys, "pending_values": pending_values})
        return out

    def reorder_incremental_state(self, incremental_state, new_order):
        super().reorder_incremental_state(incremental_state, new_order)
        state = self.get_incremental_state(incremental_state, "memory")
        if state:
            self.set_incremental_state(incremental_state, "memory",
                                       {key: value.index_select(0, new_order) for key, value in state.items()})


class MemorizingDecoder(TxlDecoder):
    """txl_lm's decoder whose --memory-layers use ``MemoryAttention``."""

    def build_layer(self, args, index: int) -> TxlLayer:
        return TxlLayer(args, MemoryAttention if index in memory_layer_indices(args) else None)


@register_model("memorizing_lm")
class MemorizingLanguageModel(TxlLanguageModel):
    """Memorizing Transformer causal LM (see the module docstring)."""

    config_class = MemorizingConfig

    @classmethod
    def validate(cls, args, task):
        """txl_lm's checks, then the memory's, naming the option at fault."""
        super().validate(args, task)
        memory_layer_indices(args)
        D, k, W = args.memory_size, args.memory_neighbors, args.window_length
        if args.memory_topk not in TOPK_METHODS:
            raise ValueError(f"--memory-topk must be one of {', '.join(TOPK_METHODS)}, got {args.memory_topk!r}")
        if D < 1 or k < 1:
            raise ValueError(f"--memory-size ({D}) and --memory-neighbors ({k}) must be positive")
        segment = segment_length(args, task)
        if segment is not None and D % segment:
            raise ValueError(f"--memory-size {D} must be a multiple of --tokens-per-sample {segment} "
                             "(a segment is written to the memory in one piece)")
        if D % W:
            raise ValueError(f"--memory-size {D} must be a multiple of --window-length {W} "
                             "(generation writes the memory every W tokens)")
        if k > D:
            raise ValueError(f"--memory-neighbors {k} must not exceed --memory-size {D}")
        if args.memory_topk == "bucketed" and D % k:
            raise ValueError(f"--memory-topk bucketed needs --memory-size {D} to be a multiple of "
                             f"--memory-neighbors {k} (one bucket per neighbour)")

    @classmethod
    def build_decoder(cls, args, task):
        return MemorizingDecoder(args, task.target_dictionary)

    def flops_per_token(self, seq_len: int) -> float:
        """txl_lm's, plus per memory layer the search over D slots (forward only: it is not
        differentiated) and the external attention over k neighbours (forward and backward)."""
        a = self.decoder.args
        hd = a.decoder_attention_heads * a.attention_head_dim
        memory = len(memory_layer_indices(a)) * (2 * a.memory_size * hd + 3 * 4 * a.memory_neighbors * hd)
        return super().flops_per_token(seq_len) + memory


def memorizing_preset(args, **preset) -> None:
    MemorizingLanguageModel.fill_defaults(args, **preset)


# The txl_lm sizes (Meliad configs/size/*.gin); tiny (2 layers) has its memory in the top layer
# and a small one, for tests and smoke runs.
MEMORIZING_PRESETS = {
    "memorizing_tiny": {**TXL_PRESETS["txl_sliding_window_tiny"], "memory_layers": "-1", "memory_size": 256},
    "memorizing_small": dict(TXL_PRESETS["txl_sliding_window_small"]),
    "memorizing_medium": dict(TXL_PRESETS["txl_sliding_window_medium"]),
}
register_presets("memorizing_lm", MEMORIZING_PRESETS, memorizing_preset)
