"""``masked_lm_ext``: fairseq's masked_lm with EIFY/fairseq's two additions.

* ``--omit-mask``: ``<mask>`` is kept out of the dictionary; its id is ``len(dict)``, which a
  ``--zero-mask`` model of ``roberta_ext`` turns into an exact zero input vector. The task's
  dictionary maps the literal ``<mask>`` to that id, so stock
  ``RobertaHubInterface.fill_mask`` works unchanged (EIFY/fairseq patched ``encode_line``).
* ``--mask-prob 0``: every token is a target and the input is left intact, for self-masking
  models that zero their own inputs (EIFY/fairseq ``zero_clap_self_masking.yaml``).

Self-masking models (``--self-mask-prob p``) zero a Bernoulli(p) subset of their inputs in
training only, so that ``fill_mask`` / ``extract_features`` see the whole input. EIFY/fairseq's
model masks in eval mode too, so its validation loss is the denoising loss. ``valid_step`` gives
the same figure: it replaces a Bernoulli(p) subset of the validation inputs by the zero-mask id.
"""
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import (
    Dictionary,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from fairseq.utils import safe_getattr

from fairseq_ext.checkpoints import require_registered

MASK_SYMBOL = "<mask>"


class OutOfVocabMaskDictionary(Dictionary):
    """A Dictionary where ``<mask>`` is no symbol but has the id ``len(self)``."""

    def add_symbol(self, word, n=1, overwrite=False):
        # masked_lm's __init__ "adds" <mask>: it gets the out-of-vocabulary id instead
        return len(self.symbols) if word == MASK_SYMBOL else super().add_symbol(word, n, overwrite)

    def index(self, sym):
        return len(self.symbols) if sym == MASK_SYMBOL else super().index(sym)

    def __getitem__(self, idx):
        return MASK_SYMBOL if idx == len(self.symbols) else super().__getitem__(idx)

    @classmethod
    def from_dictionary(cls, dictionary: Dictionary) -> "OutOfVocabMaskDictionary":
        if MASK_SYMBOL in dictionary:
            raise ValueError(f"--omit-mask: dict.txt already holds {MASK_SYMBOL}; remove that line")
        new = cls()
        new.__dict__.update(dictionary.__dict__)
        return new


@dataclass
class MaskedLMExtConfig(MaskedLMConfig):
    omit_mask: bool = field(default=False, metadata={
        "help": "keep <mask> out of the dictionary (id len(dict)); for zero-mask models "
                "(EIFY/fairseq omit_mask)"})


@register_task("masked_lm_ext", dataclass=MaskedLMExtConfig)
class MaskedLMExtTask(MaskedLMTask):
    """masked_lm with an out-of-vocabulary mask id and a mask-prob-0 (self-masking) path."""

    cfg: MaskedLMExtConfig

    def __init__(self, cfg: MaskedLMExtConfig, dictionary=None):
        dictionary = dictionary or self.load_dict(cfg)
        if cfg.omit_mask:
            dictionary = OutOfVocabMaskDictionary.from_dictionary(dictionary)
        super().__init__(cfg, dictionary)

    def build_model(self, cfg, from_checkpoint=False):
        """With --omit-mask the mask id is len(dict), no embedding row: only a zero-mask
        model reads it (others fail mid-training with an IndexError)."""
        require_registered(cfg)  # a checkpoint of an arch this version lacks: say what to do
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.omit_mask and not safe_getattr(getattr(model, "args", None), "zero_mask", False):
            raise ValueError("--omit-mask keeps <mask> out of the dictionary, so it needs a "
                             "model with --zero-mask true (e.g. a roberta_ext_zero_clap_* arch); "
                             f"--arch {safe_getattr(cfg, 'arch', safe_getattr(cfg, '_name'))} has no zero mask")
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if self.cfg.mask_prob > 0:
            return super().load_dataset(split, epoch, combine, **kwargs)
        dataset = self._load_dataset_split(split, epoch, combine)
        pad = self.source_dictionary.pad()
        with data_utils.numpy_seed(self.cfg.seed):
            shuffle = np.random.permutation(len(dataset))
        # every token is its own target; the model zeroes its inputs (self-masking)
        self.datasets[split] = SortDataset(
            self._regular_dataset(dataset, RightPadDataset(dataset, pad_idx=pad)),
            sort_order=[shuffle, dataset.sizes])

    def valid_step(self, sample, model, criterion):
        """A self-masking model is validated on its training (denoising) loss, as in
        EIFY/fairseq, not on copying an intact input."""
        prob = safe_getattr(getattr(model, "args", None), "self_mask_prob", 0.0)
        if prob > 0:
            sample = self.self_masked(sample, prob)
        return super().valid_step(sample, model, criterion)

    def self_masked(self, sample, prob: float):
        """A copy of ``sample`` with a Bernoulli(prob) subset of each sentence's tokens replaced
        by the mask id (a zero input vector for --zero-mask models). The draw depends only on
        --seed and the sentence's index, so every validation (in training or fairseq-validate,
        at any batch size) sees the same masks."""
        tokens = sample["net_input"]["src_tokens"]  # (B, T)
        draws = np.stack([np.random.default_rng([self.cfg.seed, int(index)]).random(tokens.size(1))
                          for index in sample["id"].tolist()])  # (B, T) uniform
        zeroed = torch.from_numpy(draws < prob).to(tokens.device) & tokens.ne(self.source_dictionary.pad())
        net_input = {**sample["net_input"], "src_tokens": tokens.masked_fill(zeroed, self.mask_idx)}
        return {**sample, "net_input": net_input}
