"""Evaluation: loss, top-1/top-5 error, per-class accuracy and the confusion matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import Precision
from ..errors import DataError


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, precision: Precision, tta_flip: bool = False) -> torch.Tensor:
    """fp32 logits; with `tta_flip`, averaged over the image and its mirror."""
    with precision.autocast():
        logits = model(x).float()
        if tta_flip:
            logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, loader, precision: Precision, num_classes: int, tta_flip: bool = False) -> dict:
    """Metrics over a loader of (images, labels); errors in percent."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    top1 = top5 = n = 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in loader:
        logits = predict_logits(model, x, precision, tta_flip).cpu()
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
