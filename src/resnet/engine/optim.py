"""Optimizers (SGD, AdamW, LAMB), learning-rate schedules and the EMA of weights; the schedule is a pure
function of the step (exact resume)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig, ScheduleConfig
from .lamb import Lamb
from .muon import Muon


def param_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool,
                 bias_lr_scale: float = 1.0) -> list[dict]:
    """One group, or two when BN parameters and biases (every 1-D tensor) are exempt from decay or
    get `bias_lr_scale` times the learning rate (their group's "lr_scale"). A scaled group's weight
    decay is divided by the scale, so that the decay a step applies (lr x decay) is the weights' own
    (airbench's "bias_scaler": BN shifts with frozen scales learn 64x faster, decay unchanged)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_bn_bias and bias_lr_scale == 1.0:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    other = {"params": no_decay, "weight_decay": 0.0 if no_decay_bn_bias else weight_decay / bias_lr_scale}
    if bias_lr_scale != 1.0:
        other["lr_scale"] = bias_lr_scale
    return [{"params": decay, "weight_decay": weight_decay}, other]


def can_fuse(groups) -> bool:
    """Whether torch's fused kernels can take every parameter: one multi-tensor kernel per step instead
    of a few ops per tensor (ResNet-20's 59 tensors: 0.25 against 0.7 ms an SGD step on one core). The
    numbers are the per-tensor loop's up to rounding: its vector code rounds some elements differently
    by one unit in the last place. Checkpoints keep the flag, so a resumed run runs the kernel it began with."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                                for p in params)


def _sgd(groups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum [ResNet §3.4, §4.2]; Nesterov optional."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           fused=can_fuse(groups) or None)


def _adamw(groups, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps or 1e-8,
                             fused=can_fuse(groups) or None)


def _lamb(groups, cfg: OptimConfig) -> torch.optim.Optimizer:
    return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps or 1e-6)


def _muon(groups, cfg: OptimConfig) -> torch.optim.Optimizer:
    return Muon(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


OPTIMIZERS = {"sgd": _sgd, "adamw": _adamw, "lamb": _lamb, "muon": _muon}


def muon_groups(groups: list[dict], cfg: OptimConfig) -> list[dict]:
    """The conv filters (4-D) out of `groups` into a Muon group of their own: lr `muon_lr` (as an
    "lr_scale" of the schedule's lr, so the schedule shapes it too), momentum `muon_momentum`,
    `muon_ns_steps` Newton-Schulz iterations, no decay."""
    filters = [p for g in groups for p in g["params"] if p.ndim == 4]
    if not filters:
        raise ValueError("optim.name=muon needs a network with trainable conv filters (Muon takes the 4-D weights)")
    rest = [{**g, "params": [p for p in g["params"] if p.ndim != 4]} for g in groups]
    muon = {"params": filters, "muon": True, "weight_decay": 0.0, "momentum": cfg.muon_momentum,
            "ns_steps": cfg.muon_ns_steps, "lr_scale": cfg.muon_lr / cfg.lr}
    return [muon] + [g for g in rest if g["params"]]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` over `model`'s parameters; with no_decay_bn_bias, BN parameters and biases
    (every 1-D tensor) are in a group of their own without weight decay, whichever the optimizer. With
    muon, the conv filters take Muon and the rest SGD (engine/muon.py)."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {cfg.name!r}")
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias, cfg.bias_lr_scale)
    if cfg.name == "muon":
        groups = muon_groups(groups, cfg)
    for group in groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    return OPTIMIZERS[cfg.name](groups, cfg)


# Group entries that are state, not settings: LAMB's step count, and the fused flag (see can_fuse)
_GROUP_STATE = ("params", "step", "fused")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`state` (a checkpoint's: moments, step counts, the fused flag) into `optimizer`, which keeps its own
    settings (weight decay, momentum, betas, lr scales): torch's load_state_dict would put back the saved
    ones, and a resumed run whose config changes them would silently train with the old values."""
    settings = [{k: v for k, v in g.items() if k not in _GROUP_STATE} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's lr on every group, times the group's own "lr_scale" (see param_groups)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class Schedule:
    """Learning rate at each iteration: step (the paper's), cosine, one-cycle or constant, with warm-ups.

    Warm-up and milestones may be given in epochs (`warmup_epochs`, `milestone_epochs`), turned into
    steps with `steps_per_epoch`. The warm-up multiplies the schedule by `warmup_start` rising linearly to
    1 (or by `warmup_start` throughout, `warmup_method: constant`: Identity Mappings' 400 steps at 0.01);
    with `warmup_prefix` the cosine begins where the warm-up ends (torchvision's recipe: SequentialLR of
    LinearLR and CosineAnnealingLR over the remaining epochs), else it spans the whole run.
    The only state is `warmup_done`, for the ResNet-110 rule: lr `warmup_lr` until the training
    error falls below `warmup_until_err` percent, then the base schedule [ResNet §4.2].
    """

    def __init__(self, cfg: ScheduleConfig, base_lr: float, total_steps: int, steps_per_epoch: int = 1):
        self.cfg, self.base_lr, self.total_steps = cfg, base_lr, max(total_steps, 1)
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch) if cfg.warmup_epochs else cfg.warmup_steps
        self.milestones = tuple(round(e * steps_per_epoch) for e in cfg.milestone_epochs) or tuple(cfg.milestones)
        self.warmup_done = not (cfg.warmup_lr > 0 and cfg.warmup_until_err > 0)

    def lr(self, step: int) -> float:
        cfg, warm = self.cfg, self.warmup_steps
        if not self.warmup_done:
            return cfg.warmup_lr
        ramp = 1.0
        if warm and step < warm:  # torchvision's LinearLR / ConstantLR warm-ups (start factor warmup_start)
            ramp = cfg.warmup_start if cfg.warmup_method == "constant" else \
                cfg.warmup_start + (1 - cfg.warmup_start) * step / warm
        if cfg.name == "onecycle":
            return self.base_lr * self._factor(step)
        if cfg.warmup_prefix and cfg.name == "cosine" and warm:
            return self.base_lr * (ramp if step < warm else self._cosine((step - warm) / max(self.total_steps - warm, 1)))
        return self.base_lr * self._factor(step) * ramp

    def _cosine(self, t: float) -> float:
        t = min(t, 1.0)
        return self.cfg.final_lr + (1 - self.cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * t))

    def _factor(self, step: int) -> float:
        cfg, total = self.cfg, self.total_steps
        if cfg.name == "step":
            return cfg.gamma ** sum(step >= m for m in self.milestones)
        if cfg.name == "cosine":
            return self._cosine(step / total)
        if cfg.name == "onecycle":  # linear up over warmup_steps, then linear down to final_lr
            up = self.warmup_steps  # none: step 0 is the peak
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


def ema_decay(decay: float, ema_steps: int = 1, adjust: bool = False, global_batch: int = 1, epochs: int = 1) -> float:
    """The decay per EMA update. With `adjust`, torchvision's recipe (references/classification/train.py,
    after pycls): alpha = 1 - decay scaled by global_batch * ema_steps / epochs, so the average spans
    the same share of the run whatever the batch, the update interval and the length."""
    if not adjust:
        return decay
    return 1.0 - min(1.0, (1.0 - decay) * global_batch * ema_steps / epochs)


class EMA:
    """Exponential moving average of weights and BN statistics (torchvision's ExponentialMovingAverage
    with use_buffers=True), for evaluation: updated every `every` steps; until step `copy_until` each
    update copies the weights instead (torchvision's recipe restarts the average through the warm-up)."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1, copy_until: int = 0):
        self.decay, self.every, self.copy_until = decay, max(1, every), copy_until
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def step(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (0-based): torchvision updates at steps 0, k, 2k, ..."""
        if step % self.every:
            return
        if step < self.copy_until:
            for k, v in model.state_dict().items():
                self.shadow[k].copy_(v)
        else:
            self.update(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # Fused (foreach) ops over all tensors at once: a GPU runs a few kernels, not one per tensor.
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        others = [k for k, v in state.items() if not v.is_floating_point()]  # BN's batch counters
        if floats:
            torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k] for k in floats], 1 - self.decay)
        if others:
            torch._foreach_copy_([self.shadow[k] for k in others], [state[k] for k in others])

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


class Lookahead:
    """hlb-CIFAR10's and airbench's lookahead: every `every` steps from step `start` on, an average of
    the weights and BN statistics moves toward the model by 1 - rho and the model is set to it, so that
    training goes on from the average. rho = decay**every * (step / total)**3 grows from about 0 (a copy)
    to decay**every at the end: move fast early, average strongly late. `sync` (each epoch's end) sets
    the model to the average once more."""

    POWER = 3.0  # airbench94 hyp['opt']['ema']['decay_pow']

    def __init__(self, decay: float, every: int, start: int, total: int):
        self.decay, self.every, self.start, self.total = decay, max(1, every), start, max(total, 1)
        self.shadow: dict[str, torch.Tensor] | None = None  # taken at the first update

    @torch.no_grad()
    def step(self, model: nn.Module, done: int) -> None:
        """After the optimizer step that makes `done` steps in all (1-based, as airbench counts)."""
        if done < self.start or done % self.every:
            return
        state = model.state_dict()
        keys = [k for k, v in state.items() if v.is_floating_point()]
        if self.shadow is None:
            self.shadow = {k: state[k].detach().clone() for k in keys}
            return
        rho = self.decay ** self.every * (done / self.total) ** self.POWER
        shadow, current = [self.shadow[k] for k in keys], [state[k] for k in keys]
        torch._foreach_lerp_(shadow, current, 1 - rho)
        torch._foreach_copy_(current, shadow)

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        if self.shadow is not None:
            state = model.state_dict()
            torch._foreach_copy_([state[k] for k in self.shadow], list(self.shadow.values()))

    def state_dict(self) -> dict:
        return dict(self.shadow or {})

    def load_state_dict(self, state: dict, model: nn.Module | None = None) -> None:
        """With `model`, the shadow goes to the device of the tensors it shadows: a checkpoint is loaded
        onto the CPU, and step's foreach ops need it where the model is (CUDA)."""
        where = model.state_dict() if model is not None else {}
        self.shadow = {k: v.to(where[k].device if k in where else v.device, copy=True)
                       for k, v in state.items()} or None
