"""``lamb_elc``: the LAMB of ELC-BERT (ltgoslo/elc-bert ``pre_training/lamb.py``).

Bias-corrected Adam direction u = m̂/(√v̂ + ε); where weight decay applies, u ← u + wd·θ and the
step is scaled by the trust ratio ‖θ‖/‖u‖ (You et al. 2020, arXiv:1904.00962); where it does not
(biases, norms, embeddings, ELC layer weights: the original's no-decay group) the trust ratio is
1, i.e. a plain Adam step. apex's FusedLAMB (fairseq's ``lamb``) scales every group, hence a new
name. Parameters tagged ``no_weight_decay = True`` by the model form the no-decay group.
"""
from dataclasses import dataclass, field
from typing import List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II


@dataclass
class LambElcConfig(FairseqDataclass):
    lamb_betas: str = field(default="(0.9, 0.98)", metadata={"help": "betas (train_elc_bert_*.py: 0.9, 0.98)"})
    lamb_eps: float = field(default=1e-6, metadata={"help": "epsilon (original: 1e-6)"})
    weight_decay: float = field(default=0.1, metadata={
        "help": "weight decay of the decayed group (original: 0.1); the no-decay group always gets 0"})
    lr: List[float] = II("optimization.lr")


class Lamb(torch.optim.Optimizer):
    """LAMB with the trust ratio only where weight decay is non-zero (see module docstring)."""

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"lamb_elc: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @property
    def supports_memory_efficient_fp16(self):
        return False

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                grad = p.grad.float()
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                ratio = 1.0
                if group["weight_decay"] > 0:
                    update.add_(p.float(), alpha=group["weight_decay"])
                    w_norm, u_norm = p.float().norm(), update.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((-group["lr"] * ratio * update).to(p.dtype))
        return loss


def decay_groups(params, weight_decay):
    """Two groups: decayed parameters, and those tagged ``no_weight_decay`` (decay 0)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        return params
    if params and not any(hasattr(p, "no_weight_decay") for p in params):
        raise ValueError(
            "--optimizer lamb_elc: no parameter carries the no_weight_decay tag, so the "
            "original's no-decay group would be lost. Under --fp16 / --memory-efficient-fp16 "
            "fairseq's FP16Optimizer hands the optimizer flattened fp32 copies without the tags: "
            "train lamb_elc in fp32 (or with --bf16-autocast true on a GPU); with another model "
            "than elc_bert, use --optimizer lamb")
    decay = [p for p in params if not getattr(p, "no_weight_decay", False)]
    no_decay = [p for p in params if getattr(p, "no_weight_decay", False)]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]


@register_optimizer("lamb_elc", dataclass=LambElcConfig)
class LambElcOptimizer(FairseqOptimizer):
    def __init__(self, cfg: LambElcConfig, params):
        super().__init__(cfg)
        self._optimizer = Lamb(decay_groups(params, cfg.weight_decay), **self.optimizer_config)

    @property
    def optimizer_config(self):
        return {"lr": self.cfg.lr[0], "betas": eval(self.cfg.lamb_betas), "eps": self.cfg.lamb_eps,
                "weight_decay": self.cfg.weight_decay}
