"""Muon (Keller Jordan 2024, "Muon: An optimizer for hidden layers in neural networks"; airbench94_muon,
94% on CIFAR-10 in 8 epochs where SGD needs 9.9) for the conv filters, SGD for everything else.

A Muon parameter (a group with ``muon=True``: the 4-D conv filters) takes Nesterov momentum, then
replaces the momentum's matrix (out_channels x in_channels*kh*kw) by an approximately orthogonal one
from a quintic Newton-Schulz iteration (singular values pushed to ~1, directions kept), and steps by
``lr`` along it. Before the step the filter is rescaled to Frobenius norm sqrt(out_channels), as
airbench94_muon does: every conv here feeds a BatchNorm, so the scale carries no meaning and fixing it
keeps the effective step size the schedule's. No weight decay on these (the normalisation replaces it).
The other groups (BN shifts, biases, the classifier) take plain SGD with momentum and weight decay,
as torch.optim.SGD computes it, so one optimizer (one state_dict, one schedule) covers the network.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

# quintic Newton-Schulz coefficients that maximise the slope at zero (Muon's; singular values end in ~[0.5, 1.5])
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """The quintic Newton-Schulz iteration on a 2-D matrix: ~U V^T of its SVD U S V^T. bf16 on a GPU
    (Muon's), fp32 on a CPU (many have no fast bf16 matmul; its cost is <1% of a training step here)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    x = x / (x.norm() + eps)  # top singular value <= 1
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


def newton_schulz_flops(shape: torch.Size, steps: int = 3) -> int:
    """FLOPs of `orthogonalize` on a parameter of this shape (2 per multiply-add; the three matmuls an
    iteration: X X^T, S S, (bS + cS S) X)."""
    rows, cols = shape[0], int(torch.Size(shape[1:]).numel())
    m, n = min(rows, cols), max(rows, cols)
    return steps * (2 * m * m * n + 2 * m ** 3 + 2 * m * m * n)


class Muon(Optimizer):
    """Groups flagged ``muon=True`` get Muon (their ``lr``, ``momentum``, Nesterov always); the others
    SGD with ``momentum``, ``nesterov`` and ``weight_decay`` (coupled, as torch.optim.SGD)."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 3):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"Muon: lr must be > 0, momentum in [0, 1), weight_decay >= 0, ns_steps >= 1 "
                             f"(got {lr}, {momentum}, {weight_decay}, {ns_steps})")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, muon=False,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)

    @property
    def flops_per_step(self) -> int:
        """The Newton-Schulz FLOPs of one step (what Muon adds to the forward and backward passes)."""
        return sum(newton_schulz_flops(p.shape, g["ns_steps"]) for g in self.param_groups if g["muon"]
                   for p in g["params"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["muon"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if momentum:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(momentum).add_(g)
                    g = g.add(buf, alpha=momentum) if (nesterov or group["muon"]) else buf
                if group["muon"]:
                    p.mul_(p.size(0) ** 0.5 / p.norm().clamp_min(1e-12))
                    g = orthogonalize(g.reshape(p.size(0), -1), group["ns_steps"]).view_as(p)
                p.add_(g, alpha=-lr)
        return loss
