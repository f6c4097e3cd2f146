"""Training losses, registered by name (``loss`` in the config), for hard labels and soft targets.

* ``ce``: cross-entropy. Hard labels (B,) with ``label_smoothing`` as torch's; soft targets
  (B x classes, from mixup/CutMix, already smoothed there) as timm's ``SoftTargetCrossEntropy``:
  ``mean over the batch of sum_c -t_c log softmax(z)_c``.
* ``bce``: binary cross-entropy per class, the mean over batch and classes, as timm's
  ``BinaryCrossEntropy`` that "ResNet strikes back" trains with (Wightman et al. 2021, §3): hard
  labels become one-hot targets smoothed to (eps / classes, 1 - eps + eps / classes); with
  ``bce_target_thresh`` > 0 targets above it become 1 and the rest 0 (timm's target_threshold).

Label smoothing of soft targets happens where they are made (data/mixing.py), once.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..data.mixing import one_hot_smooth

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(num_classes: int, label_smoothing: float = 0.0, **_) -> Loss:
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if target.dtype == torch.long:
            return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return loss


def binary_cross_entropy(num_classes: int, label_smoothing: float = 0.0, bce_target_thresh: float = 0.0,
                         **_) -> Loss:
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if target.dtype == torch.long:
            target = one_hot_smooth(target, num_classes, label_smoothing)
        if bce_target_thresh > 0:
            target = (target > bce_target_thresh).float()
        return F.binary_cross_entropy_with_logits(logits, target.to(logits))
    return loss


LOSSES = {"ce": cross_entropy, "bce": binary_cross_entropy}


def make_loss(name: str, num_classes: int, label_smoothing: float = 0.0, bce_target_thresh: float = 0.0) -> Loss:
    try:
        build = LOSSES[name]
    except KeyError:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}") from None
    return build(num_classes, label_smoothing=label_smoothing, bce_target_thresh=bce_target_thresh)
