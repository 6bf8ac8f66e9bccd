"""LAMB as ELC-BERT implements it (ltgoslo/elc-bert ``pre_training/lamb.py``; You et al. 2020,
arXiv:1904.00962), and its parameter groups.

The step is Adam's bias-corrected u = m/(sqrt(v) + eps); only where weight decay applies is
wd * theta added and the step scaled by the trust ratio ||theta|| / ||u||. The no-decay group
(biases, norms, embeddings, layer weights) takes plain Adam steps. apex's FusedLAMB applies the
trust ratio everywhere, hence this optimizer. A model marks its no-decay parameters with
``p.no_weight_decay = True`` (ELC-BERT does, by the original's name rules); unmarked
parameters decay.
"""
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II


@dataclass
class LambElcConfig(FairseqDataclass):
    lamb_betas: Any = field(default=(0.9, 0.98), metadata={"help": "betas of the moment estimates (ELC-BERT: 0.9, 0.98)"})
    lamb_eps: float = field(default=1e-6, metadata={"help": "epsilon added to sqrt(v) (ELC-BERT: 1e-6)"})
    weight_decay: float = field(default=0.1, metadata={"help": "decoupled weight decay of the decay group (ELC-BERT: 0.1)"})
    lr: List[float] = II("optimization.lr")


class LambElc(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @property
    def supports_memory_efficient_fp16(self):
        return False

    @property
    def supports_flat_params(self):
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
                trust = 1.0
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * p.float()
                    w_norm, u_norm = p.float().norm(), update.norm()
                    trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((-group["lr"] * trust * update).to(p.dtype))
        return loss


def decay_groups(params, weight_decay: float):
    """[decay group, no-decay group] from the ``no_weight_decay`` marks (empty groups dropped)."""
    no_decay = [p for p in params if getattr(p, "no_weight_decay", False)]
    decay = [p for p in params if not getattr(p, "no_weight_decay", False)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@register_optimizer("lamb_elc", dataclass=LambElcConfig)
class FairseqLambElc(FairseqOptimizer):
    def __init__(self, cfg: LambElcConfig, params):
        super().__init__(cfg)
        self._optimizer = LambElc(decay_groups(list(params), cfg.weight_decay), **self.optimizer_config)

    @property
    def optimizer_config(self):
        betas = self.cfg.lamb_betas
        return {"lr": self.cfg.lr[0], "betas": eval(betas) if isinstance(betas, str) else tuple(betas),
                "eps": self.cfg.lamb_eps, "weight_decay": self.cfg.weight_decay}
