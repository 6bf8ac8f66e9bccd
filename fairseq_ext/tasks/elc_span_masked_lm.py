"""``elc_span_masked_lm``: masked LM with ELC-BERT's span masking, sequence shortening and the
switch to 4x longer sequences late in training (ltgoslo/elc-bert ``pre_training/dataset.py``,
``train_elc_bert_*.py``; Charpentier & Samuel 2023, arXiv:2311.02265).

Masking per sequence (``SpanMaskingStrategy``): budget n ~ Binomial(#maskable, --mask-prob);
up to --max-span-tries times while fewer than n are chosen, draw a span length
Geometric(--span-p) mod --max-span-length and a uniform offset, select the maskable tokens of
the span, and for the whole span at once use <mask> (p = 1 - random - keep), random real tokens
(--random-token-prob) or keep them (--leave-unmasked-prob). Special symbols are never chosen.

Length switch: once --long-after x max_update updates are done, the next epoch's batches use
blocks of --long-factor x --tokens-per-sample tokens and --long-factor times fewer sentences
(same tokens per update); the optimizer, schedule and update count continue. fairseq rebuilds
the epoch iterator at every epoch boundary (``Trainer.get_train_iterator`` ->
``task.get_batch_iterator``), so the switch happens at the first epoch boundary past the threshold.
"""
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from fairseq import utils
from fairseq.data import BaseWrapperDataset, PrependTokenDataset, RightPadDataset, SortDataset, TokenBlockDataset, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from omegaconf import II

from fairseq_ext.checkpoints import require_registered
from fairseq_ext.modules.inference_logits import special_symbol_ids


@dataclass
class ElcSpanMaskedLMConfig(MaskedLMConfig):
    """masked_lm's options (--mask-prob 0.15 = mask_p, --random-token-prob 0.1 = random_p,
    --leave-unmasked-prob 0.1 = keep_p, as the original) plus the span/shortening/switch ones."""

    span_p: float = field(default=1 / 3, metadata={
        "help": "p of the geometric span length (SpanMaskingStrategy: Geometric(1/3))"})
    max_span_length: int = field(default=10, metadata={
        "help": "span lengths are Geometric(span_p) mod this value, i.e. 0..9 (original)"})
    max_span_tries: int = field(default=100, metadata={
        "help": "spans drawn at most this many times per sequence (original: 100)"})
    short_p: float = field(default=0.1, metadata={
        "help": "probability of truncating a training sequence to a uniform random length (Dataset short_p)"})
    long_after: float = field(default=0.9, metadata={
        "help": "fraction of --max-update after which training continues with longer sequences "
                "(train_elc_bert_*.py long_after); >= 1 disables the switch"})
    long_factor: int = field(default=4, metadata={
        "help": "after the switch: sequences this many times longer, batches this many times smaller (128 -> 512)"})
    max_update: int = II("optimization.max_update")
    train_subset: str = II("dataset.train_subset")


class SpanMaskDataset(BaseWrapperDataset):
    """(source or target) of ELC-BERT's shortened, span-masked version of each item.

    Items start with <s> (kept). Both copies come from one deterministic draw seeded by
    (seed, epoch, index), so source and target agree; target is pad where nothing is predicted.
    """

    def __init__(self, dataset, maskable_ids, pad_idx, mask_idx, cfg, seed, return_target, shorten):
        super().__init__(dataset)
        self.maskable = torch.zeros(int(maskable_ids.max()) + 1, dtype=torch.bool)
        self.maskable[maskable_ids] = True
        self.random_ids = maskable_ids
        self.pad_idx, self.mask_idx, self.cfg, self.seed = pad_idx, mask_idx, cfg, seed
        self.return_target, self.shorten = return_target, shorten
        self.epoch = 1

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epoch = epoch

    def __getitem__(self, index):
        source, target = self._masked(self.seed, self.epoch, index)
        return target if self.return_target else source

    @lru_cache(maxsize=8)
    def _masked(self, seed, epoch, index):
        rng = np.random.default_rng([seed, epoch, index])
        tokens = self.dataset[index]
        if self.shorten and len(tokens) > 2 and rng.random() < self.cfg.short_p:
            tokens = tokens[: 1 + rng.integers(1, len(tokens) - 1)]  # keep <s> and >= 1 token
        return span_mask(tokens, rng, self.maskable, self.random_ids, self.mask_idx, self.pad_idx, self.cfg)


def span_mask(tokens, rng, maskable_table, random_ids, mask_idx, pad_idx, cfg):
    """(source, target) of one sequence under SpanMaskingStrategy (see module docstring)."""
    T = len(tokens)
    maskable = maskable_table[tokens.clamp(max=len(maskable_table) - 1)] & (tokens < len(maskable_table))
    budget = rng.binomial(int(maskable.sum()), cfg.mask_prob)
    chosen = torch.zeros(T, dtype=torch.bool)
    source = tokens.clone()
    mask_p = 1.0 - cfg.random_token_prob - cfg.leave_unmasked_prob
    for _ in range(cfg.max_span_tries):
        if int(chosen.sum()) >= budget:
            break
        length = int(rng.geometric(cfg.span_p)) % cfg.max_span_length
        offset = int(rng.integers(-(length - 1), T + length)) if length > 0 else int(rng.integers(0, T))
        span = torch.zeros(T, dtype=torch.bool)
        span[max(0, offset): max(0, min(T - 1, offset + length))] = True
        span &= maskable
        chosen |= span
        choice = rng.random()
        if choice < mask_p:
            source[span] = mask_idx
        elif choice < mask_p + cfg.random_token_prob:
            picks = rng.integers(0, len(random_ids), int(span.sum()))
            source[span] = random_ids[torch.from_numpy(picks)]
    target = torch.full_like(tokens, pad_idx)
    target[chosen] = tokens[chosen]
    return source, target


@register_task("elc_span_masked_lm", dataclass=ElcSpanMaskedLMConfig)
class ElcSpanMaskedLMTask(MaskedLMTask):
    """masked_lm with ELC-BERT's span masking, short_p shortening and the long-sequence switch."""

    cfg: ElcSpanMaskedLMConfig

    def __init__(self, cfg, dictionary=None):
        super().__init__(cfg, dictionary)
        for name in ("mask_prob", "random_token_prob", "leave_unmasked_prob", "short_p", "span_p"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(cfg, name)}")
        if cfg.random_token_prob + cfg.leave_unmasked_prob > 1.0:
            raise ValueError("--random-token-prob + --leave-unmasked-prob must be <= 1")
        if cfg.long_factor < 1 or cfg.max_span_length < 1:
            raise ValueError("--long-factor and --max-span-length must be >= 1")
        special = set(special_symbol_ids(self.source_dictionary).tolist()) | {self.mask_idx}
        self.maskable_ids = torch.tensor([i for i in range(len(self.source_dictionary)) if i not in special])
        self.num_updates = 0

    def build_model(self, cfg, from_checkpoint=False):
        require_registered(cfg)  # a checkpoint of an arch this version lacks: say what to do
        return super().build_model(cfg, from_checkpoint)

    # ---------------------------------------------------------------- data
    def _blocks(self, split, epoch, combine, tokens_per_sample):
        paths = utils.split_paths(self.cfg.data)
        split_path = f"{paths[(epoch - 1) % len(paths)]}/{split}"
        dataset = data_utils.load_indexed_dataset(split_path, self.source_dictionary, combine=combine)
        if dataset is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({split_path})")
        dataset = TokenBlockDataset(dataset, dataset.sizes, tokens_per_sample - 1, pad=self.source_dictionary.pad(),
                                    eos=self.source_dictionary.eos(), break_mode=self.cfg.sample_break_mode)
        return PrependTokenDataset(dataset, self.source_dictionary.bos())

    def _masked_dataset(self, split, epoch, combine, tokens_per_sample):
        blocks = self._blocks(split, epoch, combine, tokens_per_sample)
        pad = self.source_dictionary.pad()
        make = lambda target: SpanMaskDataset(blocks, self.maskable_ids, pad, self.mask_idx, self.cfg,
                                              self.cfg.seed, target, shorten=split == self.cfg.train_subset)
        src, tgt = make(False), make(True)
        with data_utils.numpy_seed(self.cfg.seed + epoch):
            shuffle = np.random.permutation(len(src))
        return SortDataset(self._regular_dataset(src, RightPadDataset(tgt, pad_idx=pad)),
                           sort_order=[shuffle, src.sizes])

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        self.datasets[split] = self._masked_dataset(split, epoch, combine, self.cfg.tokens_per_sample)

    # ---------------------------------------------------------------- length switch
    def long_phase(self) -> bool:
        return 0 < self.cfg.long_after < 1 and self.cfg.max_update > 0 and \
            self.num_updates >= int(self.cfg.long_after * self.cfg.max_update)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self.num_updates = update_num
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None, *args, epoch=1, **kwargs):
        train = self.cfg.train_subset
        if dataset is self.datasets.get(train) and self.long_phase():
            factor = self.cfg.long_factor
            if f"{train}_long" not in self.datasets:
                self.datasets[f"{train}_long"] = self._masked_dataset(train, epoch, False, factor * self.cfg.tokens_per_sample)
            dataset = self.datasets[f"{train}_long"]
            max_sentences = max(1, max_sentences // factor) if max_sentences else None
            max_positions = factor * self.cfg.tokens_per_sample
        return super().get_batch_iterator(dataset, max_tokens, max_sentences, max_positions, *args, epoch=epoch, **kwargs)
