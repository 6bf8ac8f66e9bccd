"""Stock masked_lm / cross_entropy losses that also log analytic training FLOPs.

fairseq already logs throughput (``wps``, ``ups``) from the trainer; what it cannot know is the
model's cost. ``masked_lm_flops`` and ``cross_entropy_flops`` are the stock criterions, unchanged
(same options, same loss), plus one logging-output key, ``flops`` = analytic training FLOPs of
the batch (``fairseq_ext.flops.model_flops_per_token`` × tokens). Logging outputs are summed over
workers and micro-batches by fairseq's trainer, and ``reduce_metrics`` turns the sum into

* ``gflop``: GFLOPs per update (averaged over the log interval), and
* ``tflops``: achieved TFLOP/s (a speed meter like ``wps``),

so both show in the progress bar, ``--log-format json``, tensorboard and wandb. Use them with
any model: plugin models state their cost with ``flops_per_token``; stock RoBERTa and
transformer LMs use the formula of ``fairseq_ext.flops``.
"""
from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig
from fairseq.criterions.masked_lm import MaskedLmConfig, MaskedLmLoss
from fairseq.logging import metrics

from fairseq_ext.flops import model_flops_per_token


class FlopsLoggingMixin:
    """Adds ``flops`` to a criterion's training logging output and logs it in reduce_metrics."""

    def forward(self, model, sample, reduce=True):
        loss, sample_size, logging_output = super().forward(model, sample, reduce)
        if model.training:
            flops = self.batch_flops(model, sample, sample_size)
            if flops is not None:
                logging_output["flops"] = flops
        return loss, sample_size, logging_output

    def batch_flops(self, model, sample, sample_size):
        """Analytic training FLOPs of the batch (None when the model's cost is unknown)."""
        per_token = model_flops_per_token(model, sample["net_input"]["src_tokens"].size(1))
        return None if per_token is None else per_token * sample["ntokens"]

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        flops = sum(log.get("flops", 0) for log in logging_outputs)
        if flops:
            metrics.log_scalar("gflop", flops / 1e9, weight=1, round=2, priority=95)
            metrics.log_speed("tflops", flops / 1e12, priority=96, round=4)


@dataclass
class MaskedLmFlopsConfig(MaskedLmConfig):
    pass


@register_criterion("masked_lm_flops", dataclass=MaskedLmFlopsConfig)
class MaskedLmFlopsLoss(FlopsLoggingMixin, MaskedLmLoss):
    """fairseq's masked_lm loss, logging FLOPs. The output head runs on masked tokens only,
    so the stock formula uses the batch's real masked fraction (sample_size / ntokens)."""

    def batch_flops(self, model, sample, sample_size):
        fraction = float(sample_size) / max(sample["ntokens"], 1)
        per_token = model_flops_per_token(model, sample["net_input"]["src_tokens"].size(1), mask_prob=fraction)
        return None if per_token is None else per_token * sample["ntokens"]


@dataclass
class CrossEntropyFlopsConfig(CrossEntropyCriterionConfig):
    pass


@register_criterion("cross_entropy_flops", dataclass=CrossEntropyFlopsConfig)
class CrossEntropyFlopsCriterion(FlopsLoggingMixin, CrossEntropyCriterion):
    """fairseq's cross_entropy loss (language models), logging FLOPs."""
