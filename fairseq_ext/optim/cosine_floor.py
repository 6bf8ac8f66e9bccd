"""ELC-BERT's learning-rate schedule (``cosine_schedule_with_warmup``, min_factor 0.1): linear
warm-up over a fraction of the updates, then cosine decay to a floor."""
import math
from dataclasses import dataclass, field
from typing import List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class CosineFloorConfig(FairseqDataclass):
    warmup_fraction: float = field(default=0.016, metadata={
        "help": "linear warm-up over floor(fraction x --max-update) updates (ELC-BERT: 0.016)"})
    min_factor: float = field(default=0.1, metadata={"help": "floor of the multiplier after warm-up (ELC-BERT: 0.1)"})
    max_update: int = II("optimization.max_update")
    lr: List[float] = II("optimization.lr")


def cosine_floor_factor(step: int, total: int, warmup: int, min_factor: float) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(min_factor, min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


@register_lr_scheduler("cosine_floor", dataclass=CosineFloorConfig)
class CosineFloorSchedule(FairseqLRScheduler):
    def __init__(self, cfg: CosineFloorConfig, optimizer):
        super().__init__(cfg, optimizer)
        if cfg.max_update <= 0:
            raise ValueError("--lr-scheduler cosine_floor needs --max-update (its length)")
        self.warmup = int(cfg.warmup_fraction * cfg.max_update)
        self.step_update(0)

    def step_update(self, num_updates):
        lr = self.cfg.lr[0] * cosine_floor_factor(num_updates, self.cfg.max_update, self.warmup, self.cfg.min_factor)
        self.optimizer.set_lr(lr)
        return lr
