"""Evaluation: loss, top-1/top-5 error, per-class accuracy and the confusion matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import Precision
from ..errors import DataError


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, precision: Precision, tta_flip: bool = False,
                   tta_shift: int = 0) -> torch.Tensor:
    """fp32 logits; with `tta_flip`, the logits (not probabilities) averaged over the image and its mirror;
    with `tta_shift` = s, half of that and a quarter each of the same for the image shifted s pixels up-left
    and down-right (reflected borders): airbench's test-time augmentation (its "level 2", s = 1)."""
    with precision.autocast():
        logits = _views(model, x, tta_flip)
        if tta_shift:
            s, (h, w) = tta_shift, x.shape[-2:]
            padded = F.pad(x, (s, s, s, s), mode="reflect")
            shifted = [padded[..., :h, :w], padded[..., 2 * s:2 * s + h, 2 * s:2 * s + w]]
            logits = 0.5 * logits + 0.25 * sum(_views(model, v, tta_flip) for v in shifted)
    return logits


def _views(model: nn.Module, x: torch.Tensor, tta_flip: bool) -> torch.Tensor:
    logits = model(x).float()
    return (logits + model(torch.flip(x, dims=[3])).float()) / 2 if tta_flip else logits


@torch.no_grad()
def evaluate(model: nn.Module, loader, precision: Precision, num_classes: int, tta_flip: bool = False,
             tta_shift: int = 0) -> dict:
    """Metrics over a loader of (images, labels); errors in percent."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    top1 = top5 = n = 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in loader:
        logits = predict_logits(model, x, precision, tta_flip, tta_shift).cpu()
        y = y.cpu()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 += int((topk[:, 0] == y).sum())
        top5 += int((topk == y[:, None]).any(1).sum())
        confusion += torch.bincount(y * num_classes + topk[:, 0], minlength=num_classes ** 2).view(num_classes, -1)
        n += y.numel()
    model.train(was_training)
    if n == 0:
        raise DataError("evaluation set is empty")
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    return {"loss": float(loss_sum) / n, "top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - top5 / n),
            "n": n, "per_class_acc": [100.0 * float(a) for a in per_class], "confusion": confusion.tolist()}
