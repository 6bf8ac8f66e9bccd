"""``elc_span_masked_lm``: the ELC-BERT / LTG-BERT pre-training data recipe on fairseq's
masked_lm pipeline (ltgoslo/elc-bert ``pre_training/dataset.py``, ``train_elc_bert_*.py``).

* span masking and short_p shortening (``fairseq_ext.data.span_masking``), flags with the
  original defaults (fairseq already names a task ``span_masked_lm``, hence the prefix);
* the sequence-length switch: once ``--long-after`` of ``--max-update`` is done, training goes
  on at ``--long-factor`` x the length and 1/``--long-factor`` the batch (same tokens per
  update), without a restart. fairseq builds batches once per epoch, so the switch happens at
  the first epoch boundary after the threshold; a run resumed from a checkpoint switches at
  the first epoch boundary after its first update.
"""
from dataclasses import dataclass, field

import numpy as np
from fairseq.data import RightPadDataset, SortDataset, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from omegaconf import II

from fairseq_ext.data.span_masking import SpanMaskedDataset


@dataclass
class ElcSpanMaskedLMConfig(MaskedLMConfig):
    """--mask-prob (0.15), --random-token-prob (0.1) and --leave-unmasked-prob (0.1) are
    fairseq's names for the original's mask_p, random_p and keep_p, with the same defaults."""

    span_geometric_p: float = field(default=1 / 3, metadata={
        "help": "span lengths are Geometric(p) mod --max-span-length (ELC-BERT SpanMaskingStrategy)"})
    max_span_length: int = field(default=10, metadata={"help": "span lengths are taken modulo this (0..9 by default)"})
    short_p: float = field(default=0.1, metadata={
        "help": "probability of truncating a training sequence to a uniform random length (ELC-BERT short_p)"})
    long_after: float = field(default=0.9, metadata={
        "help": "fraction of --max-update after which training continues at --long-factor x the length and "
                "1/--long-factor the batch (ELC-BERT long_after); 0 or >= 1 never switches"})
    long_factor: int = field(default=4, metadata={"help": "length multiplier of the long phase (128 -> 512 in ELC-BERT)"})
    max_update: int = II("optimization.max_update")
    train_subset: str = II("dataset.train_subset")


@register_task("elc_span_masked_lm", dataclass=ElcSpanMaskedLMConfig)
class ElcSpanMaskedLMTask(MaskedLMTask):
    cfg: ElcSpanMaskedLMConfig

    def __init__(self, cfg, dictionary=None):
        super().__init__(cfg, dictionary)
        if not 0 <= cfg.mask_prob <= 1 or cfg.random_token_prob + cfg.leave_unmasked_prob > 1:
            raise ValueError("--mask-prob must be in [0, 1] and --random-token-prob + --leave-unmasked-prob <= 1")
        if cfg.long_factor < 1:
            raise ValueError(f"--long-factor must be >= 1, got {cfg.long_factor}")
        self.num_updates = 0
        self.long_phase = False

    def span_masked(self, dataset, split, return_target):
        c = self.cfg
        return SpanMaskedDataset(dataset, self.source_dictionary, self.mask_idx, c.seed, c.mask_prob,
                                 c.random_token_prob, c.leave_unmasked_prob, c.span_geometric_p, c.max_span_length,
                                 c.short_p if split == c.train_subset else 0.0, return_target)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        dataset = self._load_dataset_split(split, epoch, combine)
        src = self.span_masked(dataset, split, return_target=False)
        tgt = RightPadDataset(self.span_masked(dataset, split, return_target=True), pad_idx=self.source_dictionary.pad())
        with data_utils.numpy_seed(self.cfg.seed):
            shuffle = np.random.permutation(len(src))
        self.datasets[split] = SortDataset(self._regular_dataset(src, tgt), sort_order=[shuffle, src.sizes])

    # -- sequence-length switch ------------------------------------------------------------
    def long_phase_due(self) -> bool:
        c = self.cfg
        return 0 < c.long_after < 1 and c.max_update > 0 and self.num_updates >= c.long_after * c.max_update

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self.num_updates = update_num
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def max_positions(self):
        return self.cfg.tokens_per_sample * (self.cfg.long_factor if self.long_phase else 1)

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None, **kwargs):
        is_train = dataset is self.datasets.get(self.cfg.train_subset)
        if is_train and not self.long_phase and self.long_phase_due():
            self.switch_to_long_sequences()
            kwargs["disable_iterator_cache"] = True
        if is_train and self.long_phase:
            dataset = self.datasets[self.cfg.train_subset]
            max_sentences = max(1, max_sentences // self.cfg.long_factor) if max_sentences else None
            max_positions = self.max_positions()
        return super().get_batch_iterator(dataset, max_tokens, max_sentences, max_positions, **kwargs)

    def switch_to_long_sequences(self):
        """Rebuild the train split at long_factor x tokens_per_sample (the original reloads its
        512-token cache); optimizer and schedule go on."""
        self.long_phase = True
        self.cfg.tokens_per_sample *= self.cfg.long_factor
        self.load_dataset(self.cfg.train_subset)
