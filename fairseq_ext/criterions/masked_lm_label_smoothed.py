"""Masked-LM cross-entropy with label smoothing (ELC-BERT's ``F.cross_entropy(...,
label_smoothing=...)``; default 0 as the original's code)."""
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.masked_lm import MaskedLmConfig, MaskedLmLoss


@dataclass
class MaskedLmLabelSmoothedConfig(MaskedLmConfig):
    label_smoothing: float = field(default=0.0, metadata={
        "help": "label smoothing of the masked-token cross-entropy (ELC-BERT label_smoothing, default 0)"})


@register_criterion("masked_lm_label_smoothed", dataclass=MaskedLmLabelSmoothedConfig)
class MaskedLmLabelSmoothedLoss(MaskedLmLoss):
    """fairseq's masked_lm loss (scores masked positions only) with label smoothing."""

    def __init__(self, cfg: MaskedLmLabelSmoothedConfig, task):
        super().__init__(cfg, task)
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
        self.label_smoothing = cfg.label_smoothing

    def forward(self, model, sample, reduce=True):
        masked_tokens = sample["target"].ne(self.padding_idx)
        sample_size = int(masked_tokens.sum())
        logits = model(**sample["net_input"], masked_tokens=masked_tokens)[0]  # (N, V), masked only
        targets = sample["target"][masked_tokens]
        loss = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=self.label_smoothing)
        logging_output = {"loss": loss.data, "ntokens": sample["ntokens"],
                          "nsentences": sample["nsentences"], "sample_size": sample_size}
        return loss, sample_size, logging_output
