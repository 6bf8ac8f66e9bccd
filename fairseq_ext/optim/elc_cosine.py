"""``elc_cosine``: linear warmup, then cosine decay with a floor (ELC-BERT
``cosine_schedule_with_warmup``): multiplier = step/warmup during warmup, then
max(min_factor, min_factor + (1 - min_factor)·½(1 + cos(π·progress))).

The schedule is a function of --max-update (warmup length and cosine period), as in the
original: resuming with another --max-update reshapes the rest of the curve from that update on
(the lr jumps to the new curve's value); keep --max-update to continue the same schedule."""
import math
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class ElcCosineConfig(FairseqDataclass):
    warmup_fraction: float = field(default=0.016, metadata={
        "help": "warmup lasts floor(warmup_fraction x max_update) updates (original: 1.6%%). The "
                "whole schedule follows --max-update: a resumed run with another --max-update "
                "continues on the new curve, not the old one"})
    min_factor: float = field(default=0.1, metadata={"help": "floor of the lr multiplier (original min_factor 0.1)"})
    max_update: int = II("optimization.max_update")
    lr: List[float] = II("optimization.lr")


def lr_multiplier(step: int, warmup: int, total: int, min_factor: float) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(min_factor, min_factor + (1 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@register_lr_scheduler("elc_cosine", dataclass=ElcCosineConfig)
class ElcCosineSchedule(FairseqLRScheduler):
    def __init__(self, cfg: ElcCosineConfig, optimizer):
        super().__init__(cfg, optimizer)
        if cfg.max_update <= 0:
            raise ValueError("--lr-scheduler elc_cosine needs --max-update > 0")
        if not 0 <= cfg.min_factor <= 1 or not 0 <= cfg.warmup_fraction < 1:
            raise ValueError("--min-factor must be in [0, 1] and --warmup-fraction in [0, 1)")
        self.base_lr = cfg.lr[0]
        self.warmup = int(cfg.warmup_fraction * cfg.max_update)
        self.step_update(0)

    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        lr = self.base_lr * lr_multiplier(num_updates, self.warmup, self.cfg.max_update, self.cfg.min_factor)
        self.optimizer.set_lr(lr)
        return lr
