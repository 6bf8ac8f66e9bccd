"""``elc_masked_lm``: masked-LM cross-entropy with optional label smoothing, scored on the
masked positions only (ELC-BERT ``train_elc_bert_*.py``: F.cross_entropy(label_smoothing=...),
default 0). Logs analytic FLOPs (``gflop``, ``tflops``) like ``masked_lm_flops``."""
import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from fairseq_ext.criterions.flops_logging import FlopsLoggingMixin


@dataclass
class ElcMaskedLmConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={
        "help": "label smoothing of the MLM cross-entropy (ELC-BERT --label_smoothing, default 0)"})
    tpu: bool = II("common.tpu")


class _ElcMaskedLmLoss(FairseqCriterion):
    def __init__(self, task, label_smoothing, tpu=False):
        super().__init__(task)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, model, sample, reduce=True):
        masked = sample["target"].ne(self.padding_idx)  # (B, T)
        sample_size = int(masked.sum())
        logits = model(**sample["net_input"], masked_tokens=masked)[0]  # (M, V): masked positions only
        targets = sample["target"][masked]
        loss = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=self.label_smoothing)
        nll = F.cross_entropy(logits.float(), targets, reduction="sum") if self.label_smoothing else loss
        logging_output = {"loss": loss.data, "nll_loss": nll.data, "ntokens": sample["ntokens"],
                          "nsentences": sample["nsentences"], "sample_size": sample_size}
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        nll = sum(log.get("nll_loss", 0) for log in logging_outputs)
        size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / size / math.log(2), size, round=3)
        metrics.log_scalar("nll_loss", nll / size / math.log(2), size, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("elc_masked_lm", dataclass=ElcMaskedLmConfig)
class ElcMaskedLmLoss(FlopsLoggingMixin, _ElcMaskedLmLoss):
    """Label-smoothed masked-LM loss (see module docstring)."""
