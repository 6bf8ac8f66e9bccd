"""Whole documents streamed segment after segment on a fixed number of batch lanes.

Recurrent and memory LMs (Transformer-XL, Memorizing and Block-Recurrent Transformers) carry
state from one segment to the next, so each batch lane must read one document in order
(google-research/meliad ``text_dataset.py``, ``_batched_interleave_generator``) and say where
a document starts (``start_of_sequence``), where the state is reset. fairseq's
``TruncatedBPTTDataset`` streams one concatenated corpus and knows no document boundaries.

Layout (one item of ``DocumentStreamDataset`` is one whole batch):

* The split is a fairseq binary from ``fairseq_ext.data.prepare``: one item per paragraph, each
  ending with eos, documents separated by an item holding only eos (an empty line). A document
  is the concatenation of its items; an empty document (two empty lines in a row) is skipped
  and gets no index.
* The stream of a document is ``[eos] + tokens``; a segment of L tokens has the input
  ``stream[k*L : k*L+L]`` and the target ``stream[k*L+1 : k*L+L+1]``, so every document token
  is a target exactly once. The short tail is padded (input and target); the next document
  starts at the next segment of the lane, never mid-segment.
* Documents are list-scheduled over the global lanes (lanes per rank x data-parallel ranks):
  the lane that frees first (lowest lane on ties) takes the next document of the order. A lane
  with nothing left gets all-pad segments (start flag True) until the longest lane ends, so
  every rank yields the same number of batches. Rank r keeps lanes [r*B, (r+1)*B).
"""
import heapq
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset

IDLE = -1  # document index of a lane with no document left


@dataclass(frozen=True)
class DocumentIndex:
    """Where every non-empty document of a split lies in the concatenation of its items."""

    first_token: np.ndarray  # (D,) offset of the document's first token
    num_tokens: np.ndarray  # (D,) its token count (= its number of targets)
    item_ends: np.ndarray  # (items,) offset just past each item
    num_empty: int  # empty documents skipped

    @classmethod
    def from_sizes(cls, sizes: np.ndarray) -> "DocumentIndex":
        """Documents from item sizes: an item of size 1 can only be a separator (eos alone),
        because every paragraph item is at least one token plus its eos."""
        sizes = np.asarray(sizes, dtype=np.int64)
        item_ends = np.cumsum(sizes)
        separator = sizes == 1
        content = np.flatnonzero(~separator)
        doc_key = (np.cumsum(separator) - separator)[content]  # separators before each item
        opens = np.r_[True, doc_key[1:] != doc_key[:-1]] if len(content) else np.zeros(0, bool)
        first_item = content[opens]
        last_item = content[np.r_[opens[1:], True]] if len(content) else content
        first_token = item_ends[first_item] - sizes[first_item]
        num_tokens = item_ends[last_item] - first_token
        num_empty = int(separator.sum()) + 1 - len(first_item) if len(sizes) else 0
        return cls(first_token, num_tokens, item_ends, num_empty)

    def __len__(self) -> int:
        return len(self.first_token)


@dataclass(frozen=True)
class LaneSchedule:
    """For each global lane, its documents and the step each one starts at."""

    starts: List[np.ndarray]  # per lane: start step of each of its documents (increasing)
    documents: List[np.ndarray]  # per lane: document indices, same order
    num_steps: int  # steps until the longest lane ends

    @classmethod
    def list_schedule(cls, order: np.ndarray, num_segments: np.ndarray, num_lanes: int) -> "LaneSchedule":
        """The lane that frees first takes the next document of ``order``."""
        free = [(0, lane) for lane in range(num_lanes)]  # (step the lane frees at, lane): a heap
        starts: List[List[int]] = [[] for _ in range(num_lanes)]
        documents: List[List[int]] = [[] for _ in range(num_lanes)]
        for doc in order:
            step, lane = heapq.heappop(free)
            starts[lane].append(step)
            documents[lane].append(int(doc))
            heapq.heappush(free, (step + int(num_segments[doc]), lane))
        return cls([np.array(s, dtype=np.int64) for s in starts],
                   [np.array(d, dtype=np.int64) for d in documents],
                   max(step for step, _ in free))

    def locate(self, lane: int, step: int, num_segments: np.ndarray) -> Tuple[int, int]:
        """(document, segment within it) on ``lane`` at ``step``; (IDLE, 0) past its last one."""
        j = int(np.searchsorted(self.starts[lane], step, side="right")) - 1
        if j < 0:
            return IDLE, 0
        doc, segment = int(self.documents[lane][j]), step - int(self.starts[lane][j])
        return (doc, segment) if segment < num_segments[doc] else (IDLE, 0)


class DocumentStreamDataset(FairseqDataset):
    """Item ``step`` is the batch of this rank's B lanes at that step (see the module docstring).

    ``shuffle_seed`` None keeps the documents in the given order (validation, test); otherwise
    each epoch lists them in a permutation drawn from (shuffle_seed, epoch), never reordering
    tokens inside a document. The schedule of an epoch is rebuilt by ``set_epoch``.
    """

    def __init__(self, tokens, index: DocumentIndex, documents: np.ndarray, tokens_per_sample: int,
                 lanes_per_rank: int, rank: int, world_size: int, pad: int, eos: int,
                 shuffle_seed: Optional[int] = None, epoch: int = 1):
        super().__init__()
        self.tokens, self.index, self.documents = tokens, index, np.asarray(documents, dtype=np.int64)
        self.tokens_per_sample, self.lanes_per_rank = tokens_per_sample, lanes_per_rank
        self.rank, self.world_size, self.pad, self.eos = rank, world_size, pad, eos
        self.num_lanes = lanes_per_rank * world_size
        self.shuffle_seed = shuffle_seed
        self.num_segments = -(-index.num_tokens // tokens_per_sample)  # (D,) ceil
        self.flag_starts = True  # False for a model without state: net_input gets no start_of_sequence
        self.epoch = None
        self.set_epoch(epoch)

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Build this epoch's schedule (only a shuffled dataset changes with the epoch)."""
        epoch = max(int(epoch), 1)
        if self.epoch is not None and (self.shuffle_seed is None or epoch == self.epoch):
            return
        self.epoch = epoch
        self.schedule = LaneSchedule.list_schedule(self.order(epoch), self.num_segments, self.num_lanes)

    def order(self, epoch: int) -> np.ndarray:
        """Document indices in the order lanes take them this epoch."""
        if self.shuffle_seed is None:
            return self.documents
        return np.random.default_rng([self.shuffle_seed, epoch]).permutation(self.documents)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return self.shuffle_seed is None  # a shuffled stream has a new length every epoch

    # ------------------------------------------------------------------ batches
    def __len__(self) -> int:
        return self.schedule.num_steps

    def __getitem__(self, step: int) -> Dict:
        B, L = self.lanes_per_rank, self.tokens_per_sample
        src = torch.full((B, L), self.pad, dtype=torch.long)
        target = torch.full((B, L), self.pad, dtype=torch.long)
        lengths = torch.zeros(B, dtype=torch.long)
        start = torch.ones(B, dtype=torch.bool)  # an idle lane counts as a fresh start
        for b in range(B):
            doc, segment = self.locate(self.rank * B + b, step)
            if doc == IDLE:
                continue
            inputs, targets = self.segment_tokens(doc, segment)
            n = len(inputs)
            src[b, :n], target[b, :n], lengths[b], start[b] = inputs, targets, n, segment == 0
        first_lane = self.rank * B
        net_input = {"src_tokens": src, "src_lengths": lengths}
        if self.flag_starts:
            net_input["start_of_sequence"] = start
        return {
            "id": step * self.num_lanes + torch.arange(first_lane, first_lane + B),  # (B,)
            "nsentences": B,
            "ntokens": int(lengths.sum()),
            "net_input": net_input,
            "target": target,
        }

    def collater(self, samples: List[Dict]) -> Dict:
        """Each item already is a batch; the iterator asks for one item at a time."""
        assert len(samples) == 1, "long_document_lm batches are items; use its get_batch_iterator"
        return samples[0]

    def segment_tokens(self, doc: int, segment: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of one segment, both (m,) with m = min(L, tokens left)."""
        L, n = self.tokens_per_sample, int(self.index.num_tokens[doc])
        lo, hi = segment * L, min(segment * L + L, n)  # stream[lo:hi] is the input
        chunk = self.read(int(self.index.first_token[doc]) + max(lo - 1, 0), hi - max(lo - 1, 0))
        if segment == 0:
            chunk = torch.cat([chunk.new_tensor([self.eos]), chunk])  # stream[0] is the eos
        return chunk[:-1], chunk[1:]

    def read(self, offset: int, length: int) -> torch.Tensor:
        """``length`` tokens from ``offset`` of the concatenation of all items."""
        ends = self.index.item_ends
        first = int(np.searchsorted(ends, offset, side="right"))
        last = int(np.searchsorted(ends, offset + length - 1, side="right"))
        items = torch.cat([self.tokens[i].long() for i in range(first, last + 1)])
        skip = offset - (int(ends[first - 1]) if first else 0)
        return items[skip:skip + length]

    # ------------------------------------------------------------------ metadata
    def locate(self, lane: int, step: int) -> Tuple[int, int]:
        """(document index, segment within it) of global ``lane`` at ``step``; IDLE if none."""
        return self.schedule.locate(lane, step, self.num_segments)

    def lane_documents(self, step: int) -> torch.Tensor:
        """(B,) document index each of this rank's lanes holds at ``step`` (IDLE = -1)."""
        first = self.rank * self.lanes_per_rank
        return torch.tensor([self.locate(lane, step)[0] for lane in range(first, first + self.lanes_per_rank)])

    def document_of(self, sample_id: int) -> int:
        """Document index behind a batch's ``id`` entry (any rank's; IDLE for an all-pad lane)."""
        step, lane = divmod(int(sample_id), self.num_lanes)
        return self.locate(lane, step)[0]

    def document_token_counts(self) -> np.ndarray:
        """(D,) tokens of every document of the split by index: what eval-lm scores for it."""
        return self.index.num_tokens
