"""Optimizers (SGD, AdamW, LARS) with weight decay kept off norm and bias parameters,
the linear warm-up + cosine learning-rate schedule, methods' per-iteration hyperparameter
schedules (apply_schedule) and per-tensor gradient clipping."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights that decay, and norm/bias/1-d parameters that must not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR/BYOL: SGD with momentum whose per-layer step is
    scaled by trust_coefficient * ||w|| / ||g + wd*w||; groups flagged lars_exclude skip the scaling."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                                        torch.ones_like(w_norm))
                    grad = grad.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    on_cuda = next(model.parameters()).is_cuda
    if name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, fused=on_cuda or None)
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; allowed: sgd, adamw, lars")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the base LR, then cosine decay to 0 at total_steps."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def group_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each param group's settings as built (no parameters): the base that schedules scale."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def apply_schedule(optimizer: torch.optim.Optimizer, base: list[dict], factors: dict[str, float]) -> None:
    """group[key] = base value x factor for every group: a per-iteration schedule (SSLMethod.optimizer_schedule).

    Scaling the as-built values keeps groups built with 0 (norm and bias weight decay) at 0, and sets
    the same values on a resumed run as on the uninterrupted one."""
    for key, factor in factors.items():
        if key in ("lr", "initial_lr"):
            raise ValueError("the learning rate follows the trainer's warm-up + cosine schedule; "
                             "a method's optimizer_schedule cannot set it")
        for group, built in zip(optimizer.param_groups, base):
            if key not in built:
                raise ValueError(f"optimizer_schedule: {type(optimizer).__name__} has no setting {key!r}")
            group[key] = built[key] * factor


@torch.no_grad()
def clip_grad_per_tensor(parameters, max_norm: float, eps: float = 1e-6) -> None:
    """Scale each gradient tensor whose L2 norm exceeds max_norm down to max_norm (DINO's clip_gradients:
    per tensor, not one global norm). Branch-free, so it never waits for the device."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + eps), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)
