"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"), the NVLAMB variant that
timm's ``Lamb`` implements and "ResNet strikes back" A1/A2/A3 train with.

Per step: the gradients of all parameters are divided by max(1, global norm / max_grad_norm); Adam
moments with bias correction give ``update = m_hat / (sqrt(v_hat) + eps)``; decay is added to the
update (``update += weight_decay * p``, not decoupled); for parameters with weight decay the update
is scaled by the trust ratio ``||p|| / ||update||`` (1 where either norm is 0); ``p -= lr * update``.
Parameters without weight decay (BN, biases) get no trust ratio, as timm's default
(``always_adapt=False``). The step count lives in each parameter group, so the state saves and
loads as any torch optimizer's.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class Lamb(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
                 max_grad_norm: float | None = 1.0, bias_correction: bool = True, always_adapt: bool = False):
        if lr <= 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Lamb: lr must be > 0 and eps, weight_decay >= 0 (got {lr}, {eps}, {weight_decay})")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        always_adapt=always_adapt)
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def _clip_divisor(self) -> torch.Tensor | None:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if self.max_grad_norm is None or not grads:
            return None
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return (norm / self.max_grad_norm).clamp_(min=1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        divisor = self._clip_divisor()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            group["step"] = group.get("step", 0) + 1
            t = group["step"]
            bc1, bc2 = (1 - beta1 ** t, 1 - beta2 ** t) if group["bias_correction"] else (1.0, 1.0)
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if divisor is None else p.grad / divisor
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (m / bc1) / ((v.sqrt() / bc2 ** 0.5).add_(group["eps"]))
                if wd != 0:
                    update.add_(p, alpha=wd)
                if wd != 0 or group["always_adapt"]:
                    w_norm, u_norm = p.norm(2.0), update.norm(2.0)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                    update.mul_(ratio)
                p.add_(update, alpha=-group["lr"])
        return loss
