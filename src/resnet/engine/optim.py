"""Optimizer and learning-rate schedules; the schedule is a pure function of the step (exact resume)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """One group, or two when BN parameters and biases (every 1-D tensor) are exempt from decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum [ResNet §3.4, §4.2]; Nesterov optional."""
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


class Schedule:
    """Learning rate at each iteration: step (the paper's), cosine, one-cycle or constant, with warm-ups.

    The only state is `warmup_done`, for the ResNet-110 rule: lr `warmup_lr` until the training
    error falls below `warmup_until_err` percent, then the base schedule [ResNet §4.2].
    """

    def __init__(self, cfg: ScheduleConfig, base_lr: float, total_steps: int):
        self.cfg, self.base_lr, self.total_steps = cfg, base_lr, max(total_steps, 1)
        self.warmup_done = not (cfg.warmup_lr > 0 and cfg.warmup_until_err > 0)

    def lr(self, step: int) -> float:
        cfg = self.cfg
        if not self.warmup_done:
            return cfg.warmup_lr
        factor = self._factor(step)
        if cfg.warmup_steps and step < cfg.warmup_steps and cfg.name != "onecycle":
            factor *= cfg.warmup_start + (1 - cfg.warmup_start) * step / cfg.warmup_steps
        return self.base_lr * factor

    def _factor(self, step: int) -> float:
        cfg, total = self.cfg, self.total_steps
        if cfg.name == "step":
            return cfg.gamma ** sum(step >= m for m in cfg.milestones)
        if cfg.name == "cosine":
            t = min(step / total, 1.0)
            return cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if cfg.name == "onecycle":  # linear up over warmup_steps, then linear down to final_lr
            up = max(cfg.warmup_steps, 1)
            if step < up:
                return cfg.warmup_start + (1 - cfg.warmup_start) * step / up
            t = min((step - up) / max(total - up, 1), 1.0)
            return 1 - (1 - cfg.final_lr) * t
        return 1.0

    def observe_train_error(self, err_percent: float) -> None:
        if not self.warmup_done and err_percent < self.cfg.warmup_until_err:
            self.warmup_done = True

    def state_dict(self) -> dict:
        return {"warmup_done": self.warmup_done}

    def load_state_dict(self, state: dict) -> None:
        self.warmup_done = bool(state["warmup_done"])


class EMA:
    """Exponential moving average of weights (and a copy of BN statistics), for evaluation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v, 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
