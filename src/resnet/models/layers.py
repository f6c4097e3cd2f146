"""Convolutions and shortcut connections shared by every block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .onednn_guard import NCHWConv2d, hits_onednn_6035, onednn_avx2_path
from ..errors import ConfigError

SHORTCUT_OPTIONS = ("A", "B", "C")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BN follows or precedes it)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias; in NCHW where oneDNN#6035 would break its backward pass (onednn_guard)."""
    if hits_onednn_6035(in_planes, 1, stride) and onednn_avx2_path():
        return NCHWConv2d(in_planes, out_planes, 1, stride=stride, bias=False)
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A [ResNet §3.3]: identity with stride-s subsampling and zero-padded extra channels.

    Parameter-free, so a ResNet with option A has exactly the parameters of its plain twin.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        if out_planes < in_planes:
            raise ConfigError(f"option A cannot reduce channels ({in_planes} -> {out_planes}); use shortcut='B'")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_planes - self.in_planes
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x

    def extra_repr(self) -> str:
        return f"{self.in_planes}->{self.out_planes}, stride={self.stride}"


def make_shortcut(option: str | None, in_planes: int, out_planes: int, stride: int, norm: bool = True) -> nn.Module | None:
    """The shortcut of a residual block, or None for a pure identity.

    A: zero-padding identity when dimensions change; B: projection only when they change;
    C: projection on every block [ResNet §3.3, Table 3]; None: no shortcut (plain blocks).
    `norm=False` drops the BN after the projection (pre-activation units project the
    already-normalised input).
    """
    if option is None:
        return None
    if option not in SHORTCUT_OPTIONS:
        raise ConfigError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {option!r}")
    changes = stride != 1 or in_planes != out_planes
    if option == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride) if changes else None
    if option == "B" and not changes:
        return None
    layers: list[nn.Module] = [conv1x1(in_planes, out_planes, stride)]
    if norm:
        layers.append(nn.BatchNorm2d(out_planes))
    return nn.Sequential(*layers)  # named `downsample.0`, `downsample.1` as in torchvision


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a sample's residual branch, rescale the rest."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that, in training, normalises each group of `ghost` consecutive images by that group's
    own statistics (Hoffer et al. 2017's ghost batch norm; Page's "How to train your ResNet" part 8
    used groups of 32 of a 512 batch): the noisier statistics regularise like a small batch does,
    at the large batch's speed. Running statistics are the whole batch's (what the groups average to),
    so evaluation, BN folding and export see a plain BatchNorm2d with the same state dict."""

    def __init__(self, num_features: int, ghost: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if ghost < 1:
            raise ConfigError(f"ghost_batch must be >= 1 image, got {ghost}")
        self.ghost = ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost:
            return super().forward(x)
        if self.track_running_stats:
            self._update_running_stats(x)
        # slices along the batch are views (channels_last keeps each image contiguous); a last group
        # smaller than `ghost` (a batch that does not divide) is normalised by its own statistics too
        return torch.cat([F.batch_norm(part, None, None, self.weight, self.bias, True, 0.0, self.eps)
                          for part in x.split(self.ghost)])

    @torch.no_grad()
    def _update_running_stats(self, x: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)  # None: cumulative
        var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=1)  # unbiased, as BatchNorm2d keeps it
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(var.to(self.running_var.dtype), m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost={self.ghost}"


def use_ghost_batch_norm(model: nn.Module, ghost: int) -> None:
    """Turn every BatchNorm2d of `model` into a GhostBatchNorm2d with groups of `ghost` images, in place.
    The new modules hold the very same parameters and buffers (device, frozen scales and state dict
    keys unchanged: checkpoints and weights files stay interchangeable)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                ghost_bn = GhostBatchNorm2d(child.num_features, ghost, eps=child.eps, momentum=child.momentum,
                                            affine=child.affine, track_running_stats=child.track_running_stats,
                                            device="meta")
                ghost_bn._parameters.update(child._parameters)
                ghost_bn._buffers.update(child._buffers)
                ghost_bn.train(child.training)
                setattr(parent, name, ghost_bn)
