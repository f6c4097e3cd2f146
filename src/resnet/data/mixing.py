"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on whole batches, with mixed soft targets.

As timm's ``Mixup`` in batch mode (``mixup_alpha``, ``cutmix_alpha``, ``mixup_prob``, ``switch_prob``,
``label_smoothing``): a batch is mixed with probability ``mixup_prob``; when both alphas are set,
CutMix is chosen with probability ``switch_prob``, else mixup; the weight lam ~ Beta(alpha, alpha).
Mixup blends every image with its partner, ``lam * x + (1 - lam) * x_partner``; CutMix pastes the
partner's box of side ``sqrt(1 - lam)`` (of the image's sides, centred on a uniform pixel, clipped
at the border) and sets lam to the share of the image left unpasted. The targets are
``lam * smooth(y) + (1 - lam) * smooth(y_partner)``, smoothing as timm's ``mixup_target``
(off = eps / classes, on = 1 - eps + off), which is also what torch's cross-entropy with
``label_smoothing`` does to a soft target.

Two departures, both for seeded runs across processes. The draws come from a generator keyed by
(seed, epoch, batch index), so a resumed run mixes the same way. Partners are neighbours, 0<->1,
2<->3, ... (timm pairs i with B-1-i): batch order is already random, and with neighbours every
process of a torchrun job, holding an even-sized contiguous slice of the global batch and drawing
the same lam and box, mixes its slice exactly as one process would mix the whole batch.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def partners(n: int, device=None) -> torch.Tensor:
    """Each position's partner: its neighbour (0<->1, 2<->3, ...); an odd last one is its own."""
    idx = torch.arange(n, device=device) ^ 1
    return idx.clamp_max(n - 1)


def one_hot_smooth(y: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((y.shape[0], num_classes), off, dtype=torch.float32, device=y.device)
    return out.scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


class Mixer:
    """Mixes (x, y) batches in place of the loader's; call with the epoch and the batch's index."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 mixup_prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.0, seed: int = 0):
        for name, v in (("data.mixup_alpha", mixup_alpha), ("data.cutmix_alpha", cutmix_alpha)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        for name, v in (("data.mixup_prob", mixup_prob), ("data.switch_prob", switch_prob)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.mixup_prob, self.switch_prob, self.smoothing, self.seed = mixup_prob, switch_prob, label_smoothing, seed

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mixup_prob > 0

    def _rng(self, epoch: int, batch: int) -> np.random.Generator:
        key = hashlib.sha256(f"mix:{self.seed}:{epoch}:{batch}".encode()).digest()
        return np.random.default_rng(int.from_bytes(key[:8], "little"))

    def draw(self, epoch: int, batch: int, size: tuple[int, int]) -> tuple[float, tuple[int, int, int, int] | None]:
        """(lam, CutMix box (y0, y1, x0, x1) or None) of one batch, as timm's _params_per_batch."""
        rng = self._rng(epoch, batch)
        if not self.enabled or rng.random() >= self.mixup_prob:
            return 1.0, None
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.random() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        lam = float(rng.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        if not use_cutmix:
            return lam, None
        h, w = size
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
        x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
        lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)  # timm's correct_lam: the area actually kept
        return lam, (int(y0), int(y1), int(x0), int(x1))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mixed images, soft targets B x classes, lam). x is float B x C x H x W (normalised)."""
        lam, box = self.draw(epoch, batch, (x.shape[-2], x.shape[-1]))
        other = partners(x.shape[0], x.device)
        target = one_hot_smooth(y, self.num_classes, self.smoothing)
        if lam == 1.0:
            return x, target, lam
        if box is None:
            x = x * lam + x.index_select(0, other) * (1.0 - lam)
        else:
            y0, y1, x0, x1 = box
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x.index_select(0, other)[:, :, y0:y1, x0:x1]
        return x, target * lam + target.index_select(0, other) * (1.0 - lam), lam
