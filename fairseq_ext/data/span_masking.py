"""ELC-BERT / LTG-BERT span masking and sequence shortening (ltgoslo/elc-bert,
``pre_training/dataset.py``: ``SpanMaskingStrategy`` and ``Dataset.__getitem__``).

A budget n ~ Binomial(#maskable tokens, mask_p) is filled with spans of length
Geometric(1/3) mod max_span (at most 100 tries); each span is, as a whole, replaced by <mask>
(1 - random_p - keep_p), by random tokens (random_p) or kept (keep_p). Special symbols are
never selected. Draws depend only on (seed, epoch, index), as fairseq's MaskTokensDataset.
"""
from functools import lru_cache

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, Dictionary

MAX_TRIES = 100


def shorten(tokens: np.ndarray, short_p: float, rng: np.random.Generator) -> np.ndarray:
    """With probability short_p keep <s> and a uniform 1..len-2 of the following tokens."""
    if len(tokens) > 3 and rng.random() < short_p:
        return tokens[:1 + rng.integers(1, len(tokens) - 1)]
    return tokens


def span_mask(tokens: np.ndarray, maskable: np.ndarray, rng: np.random.Generator, mask_p: float,
              random_p: float, keep_p: float, span_p: float, max_span: int):
    """(replacement kind per position: 0 none, 1 mask, 2 random, 3 keep) for one sequence."""
    length = len(tokens)
    kind = np.zeros(length, dtype=np.int64)
    budget = rng.binomial(int(maskable.sum()), mask_p)
    for _ in range(MAX_TRIES):
        if (kind > 0).sum() >= budget:
            break
        span = rng.geometric(span_p) % max_span
        if span == 0:
            continue
        start = rng.integers(-(span - 1), length + span)
        positions = np.arange(max(0, start), min(length - 1, start + span))
        positions = positions[maskable[positions] & (kind[positions] == 0)]
        draw = rng.random()
        kind[positions] = 1 if draw < 1 - random_p - keep_p else (2 if draw < 1 - keep_p else 3)
    return kind


class SpanMaskedDataset(BaseWrapperDataset):
    """Source (``return_target=False``) or target view of span-masked sequences; both views
    draw the same randomness. Targets are the original ids at selected positions, pad elsewhere."""

    def __init__(self, dataset, dictionary: Dictionary, mask_idx: int, seed: int, mask_p: float,
                 random_p: float, keep_p: float, span_p: float, max_span: int, short_p: float,
                 return_target: bool):
        super().__init__(dataset)
        self.dictionary, self.mask_idx, self.seed = dictionary, mask_idx, seed
        self.mask_p, self.random_p, self.keep_p = mask_p, random_p, keep_p
        self.span_p, self.max_span, self.short_p = span_p, max_span, short_p
        self.return_target = return_target
        self.epoch = 0

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True  # the draws change with the epoch, the batches do not

    def set_epoch(self, epoch, **unused):
        super().set_epoch(epoch)
        self.epoch = epoch

    def __getitem__(self, index):
        return self._item(self.seed, self.epoch, index)

    @lru_cache(maxsize=8)
    def _item(self, seed, epoch, index):
        rng = np.random.default_rng((seed, epoch, index))
        tokens = shorten(self.dataset[index].numpy(), self.short_p, rng)
        maskable = tokens >= self.dictionary.nspecial
        if self.mask_idx < len(self.dictionary):
            maskable &= tokens != self.mask_idx
        kind = span_mask(tokens, maskable, rng, self.mask_p, self.random_p, self.keep_p, self.span_p, self.max_span)
        if self.return_target:
            return torch.from_numpy(np.where(kind > 0, tokens, self.dictionary.pad()))
        random_ids = rng.integers(self.dictionary.nspecial, min(self.mask_idx, len(self.dictionary)), len(tokens))
        out = np.where(kind == 1, self.mask_idx, tokens)
        return torch.from_numpy(np.where(kind == 2, random_ids, out))
