"""The kNN memory of the Memorizing Transformer (Wu et al. 2022, arXiv:2203.08913).

After google-research/meliad (``memory_layer.py``: ``MemoryOnTpu``, ``BatchedMemory``,
``_retrieve_topk_gatherless``; ALGORITHMS.md §3.3): one independent FIFO ring of D (key, value)
pairs per (batch lane, head), written with a segment's unit-normalised keys and its values
(never differentiated) *after* the segment used the memory, emptied on a lane whose document
starts. A query q̂ retrieves k pairs by inner product (a cosine search, the keys being unit
vectors), either

* ``exact``: the true top-k, computed over chunks of the memory with a running top-k, so the
  (queries × slots) score matrix never exists whole (peak memory ~ queries × (chunk + k));
* ``bucketed``: Meliad's approximate top-k: slot s belongs to bucket s mod k and each bucket
  gives its arg-max (exactly k neighbours, one per bucket; needs D % k == 0).

Empty slots score ``EMPTY_SCORE`` (-1e6, as Meliad), so a filled slot always wins over an empty
one; where fewer than k slots (or none of a bucket's) are filled, an empty slot is returned, and
its key and value are zero vectors, as in Meliad (whose attention does not mask them either).

**Precision.** The memory's keys and values are stored in fp32 and the scores are computed in
fp32 even under bf16 autocast: bf16's 8-bit mantissa would make near neighbours tie (cosines
differing in the third digit), and the −1e6 sentinel must stay far below every real score.

The state is a tuple ``Memory = (keys (B, H, D, d_h), values (B, H, D, d_h), count (B,))`` where
``count`` is the number of tokens a lane wrote since its last reset: the next write goes to
slot ``count mod D``, and slot s is filled iff s < count. ``KnnMemory`` keeps one per mode
(``ModeState``: the training copy is saved in checkpoints, evaluation has its own);
incremental decoding keeps one in fairseq's incremental state.

``retrieve`` is the fast path; ``retrieve_reference`` (the full score matrix, a loop over the
buckets) is what the tests compare it with.
"""
from typing import Tuple

import torch

from fairseq_ext.modules.mode_state import ModeState

EMPTY_SCORE = -1e6  # Meliad: the score of a slot whose key is all zeros
RETRIEVAL_CHUNK = 2048  # memory slots scored at once by the fast path
TOPK_METHODS = ("exact", "bucketed")

Memory = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def empty_memory(lanes: int, heads: int, size: int, head_dim: int, device) -> Memory:
    """Zero keys and values (fp32) and no token written."""
    zeros = torch.zeros(lanes, heads, size, head_dim, device=device)
    return zeros, zeros.clone(), torch.zeros(lanes, dtype=torch.long, device=device)


def write(memory: Memory, keys: torch.Tensor, values: torch.Tensor) -> Memory:
    """Append T (key, value) pairs per lane and head at each lane's pointer, wrapping around
    (FIFO), *in place* into the memory's tensors. keys, values: (B, H, T, d_h), T <= D."""
    memory_keys, memory_values, count = memory
    B, H, D, d = memory_keys.shape
    T = keys.shape[2]
    slots = (count[:, None] + torch.arange(T, device=count.device)) % D  # (B, T)
    index = slots[:, None, :, None].expand(B, H, T, d)
    memory_keys.scatter_(2, index, keys.detach().to(memory_keys.dtype))
    memory_values.scatter_(2, index, values.detach().to(memory_values.dtype))
    return memory_keys, memory_values, count + T


def filled_slots(memory: Memory) -> torch.Tensor:
    """(B·H, D) bool: the slots written since the lane's last reset."""
    keys, _, count = memory
    B, H, D, _ = keys.shape
    filled = torch.arange(D, device=count.device)[None, :] < count[:, None]  # (B, D)
    return filled[:, None, :].expand(B, H, D).reshape(B * H, D)


def slot_scores(queries: torch.Tensor, keys: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """(N, T, d), (N, S, d), (N, S) -> (N, T, S) fp32 inner products, EMPTY_SCORE where empty
    (autocast off: it would run the product in bf16)."""
    with torch.autocast(queries.device.type, enabled=False):
        scores = queries.float() @ keys.float().transpose(1, 2)
    return scores.masked_fill(~filled[:, None, :], EMPTY_SCORE)


def exact_topk(queries, keys, filled, k: int, chunk: int = RETRIEVAL_CHUNK) -> torch.Tensor:
    """(N, T, k) slot indices of the k best scores, a chunk of the memory at a time, merging each
    chunk's scores with the running top-k (ties between equal scores may resolve differently
    from one ``topk`` over all slots)."""
    N, T, _ = queries.shape
    best_scores = best_slots = None
    for start in range(0, keys.shape[1], chunk):
        scores = slot_scores(queries, keys[:, start:start + chunk], filled[:, start:start + chunk])
        slots = torch.arange(start, start + scores.shape[-1], device=queries.device).expand(N, T, -1)
        if best_scores is not None:
            scores, slots = torch.cat([best_scores, scores], -1), torch.cat([best_slots, slots], -1)
        best_scores, position = scores.topk(min(k, scores.shape[-1]), dim=-1)
        best_slots = slots.gather(-1, position)
    return best_slots


def bucketed_topk(queries, keys, filled, k: int, chunk: int = RETRIEVAL_CHUNK) -> torch.Tensor:
    """(N, T, k) slot indices: the arg-max of each bucket {s : s mod k = j} (Meliad's approximate
    top-k), a chunk of whole rows of k slots at a time with a running maximum per bucket; the
    first of equal maxima wins, as ``argmax``."""
    N, T, _ = queries.shape
    chunk = max(chunk // k, 1) * k
    buckets = torch.arange(k, device=queries.device)
    best_scores = queries.new_full((N, T, k), float("-inf"), dtype=torch.float32)
    best_slots = torch.zeros(N, T, k, dtype=torch.long, device=queries.device)
    for start in range(0, keys.shape[1], chunk):
        scores = slot_scores(queries, keys[:, start:start + chunk], filled[:, start:start + chunk])
        top, row = scores.view(N, T, -1, k).max(dim=2)  # (N, T, k): slot = start + row·k + bucket
        better = top > best_scores
        best_scores = torch.where(better, top, best_scores)
        best_slots = torch.where(better, start + row * k + buckets, best_slots)
    return best_slots


def gather_slots(table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """table (N, D, d), slots (N, T, k) -> (N, T, k, d)."""
    lanes = torch.arange(table.shape[0], device=table.device)[:, None, None]
    return table[lanes, slots]


def _retrieve(queries, memory: Memory, k: int, select) -> Tuple[torch.Tensor, torch.Tensor]:
    keys, values, _ = memory
    B, H, T, d = queries.shape
    flat = lambda t: t.reshape(B * H, t.shape[2], d)
    with torch.no_grad():  # the search is not differentiated (Meliad: stop_gradient on the queries)
        slots = select(flat(queries.detach()), flat(keys), filled_slots(memory), k)
    shape = (B, H, T, k, d)
    return gather_slots(flat(keys), slots).view(shape), gather_slots(flat(values), slots).view(shape)


def retrieve(queries: torch.Tensor, memory: Memory, k: int, method: str = "bucketed",
             chunk: int = RETRIEVAL_CHUNK) -> Tuple[torch.Tensor, torch.Tensor]:
    """queries (B, H, T, d_h) unit-normalised -> the retrieved keys and values, each
    (B, H, T, k, d_h) fp32, constants (the memory is never differentiated)."""
    select = {"exact": exact_topk, "bucketed": bucketed_topk}[method]
    return _retrieve(queries, memory, k, lambda q, keys, filled, k: select(q, keys, filled, k, chunk))


def reference_exact_topk(queries, keys, filled, k: int) -> torch.Tensor:
    return slot_scores(queries, keys, filled).topk(k, dim=-1).indices


def reference_bucketed_topk(queries, keys, filled, k: int) -> torch.Tensor:
    scores = slot_scores(queries, keys, filled)
    return torch.stack([scores[..., j::k].argmax(-1) * k + j for j in range(k)], -1)


def retrieve_reference(queries, memory: Memory, k: int, method: str = "bucketed"):
    """``retrieve`` from the full (queries × D) score matrix; buckets one at a time."""
    select = {"exact": reference_exact_topk, "bucketed": reference_bucketed_topk}[method]
    return _retrieve(queries, memory, k, select)


class KnnMemory(ModeState):
    """The memory of one layer, one ``Memory`` per mode, on the device of the queries."""

    def __init__(self, size: int, name: str = "the kNN memory"):
        super().__init__(name)
        self.size = size

    def lanes(self, training: bool, start_of_sequence: torch.Tensor, like: torch.Tensor) -> Memory:
        """This mode's memory for a segment: a fresh copy (so writing into it leaves the stored
        one alone until ``store``; one pass over the memory, cheap next to the search, which
        reads all of it for every query), with the lanes that start a document emptied.
        like: (B, H, T, d_h)."""
        _, H, _, d = like.shape
        return self.lanes_or_reset(training, start_of_sequence, empty_memory(1, H, self.size, d, like.device))

    def store(self, training: bool, memory: Memory) -> None:
        self.set(training, memory)
