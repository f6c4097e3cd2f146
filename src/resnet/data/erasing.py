"""Random erasing (Zhong et al. 2020, as torchvision.transforms.RandomErasing and timm's) and
Cutout (DeVries & Taylor 2017) on uint8 batches, one box per image drawn up front.

Both erase after normalisation in their references: torchvision fills with 0 (the mean colour once
normalised), timm's ``pixel`` mode with N(0, 1) noise per pixel, Cutout multiplies by a 0 mask.
Here images are still uint8 when erased (batches are normalised in one pass afterwards), so the
fill is the dataset's mean colour rounded to uint8 (within 0.5/255 of the reference), and the
noise is ``mean + std * N(0, 1)`` clipped to 0..255 (the reference's noise is not clipped).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

ERASE_MODES = ("const", "pixel")


def _box_mask(boxes: torch.Tensor, h: int, w: int, device) -> torch.Tensor:
    """B x 1 x H x W bool: inside (top, left, height, width) of each image; height 0 = nothing."""
    boxes = boxes.to(device)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    top, left, bh, bw = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return inside[:, None]


class RandomErasing:
    """With probability `p`, erase one rectangle of area `scale` (fraction of the image) and aspect
    `ratio` (log-uniform), placed uniformly; 10 tries, then nothing (torchvision's defaults)."""

    def __init__(self, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3), mode: str = "const",
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25)):
        if not 0 <= p <= 1:
            raise ValueError(f"data.random_erase must be a probability in [0, 1], got {p}")
        if mode not in ERASE_MODES:
            raise ValueError(f"data.erase_mode must be one of {', '.join(ERASE_MODES)}, got {mode!r}")
        self.p, self.scale, self.ratio, self.mode = p, scale, ratio, mode
        self.mean = torch.tensor(mean, dtype=torch.float32) * 255
        self.std = torch.tensor(std, dtype=torch.float32) * 255

    def sample(self, n: int, g: torch.Generator, size: tuple[int, int]) -> dict:
        h, w = size
        tries = 10
        erase = torch.rand(n, generator=g) < self.p
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, tries, generator=g))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=g))
        bh = torch.sqrt(area * aspect).round().long()
        bw = torch.sqrt(area / aspect).round().long()
        ok = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
        first = torch.argmax(ok.long(), 1)  # the first try that fits
        pick = lambda t: t.gather(1, first[:, None]).squeeze(1)  # noqa: E731
        bh, bw = pick(bh), pick(bw)
        u = torch.rand(n, 2, generator=g)
        top = (u[:, 0] * (h - bh + 1)).long().clamp_max(h - 1)
        left = (u[:, 1] * (w - bw + 1)).long().clamp_max(w - 1)
        keep = erase & ok.any(1)
        boxes = torch.stack([top, left, bh, bw], 1) * keep[:, None]
        seeds = torch.randint(0, 2 ** 62, (n,), generator=g)  # per-image noise, for mode=pixel
        return {"erase_box": boxes, "erase_seed": seeds}

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        b, c, h, w = x.shape
        boxes = params["erase_box"]
        mask = _box_mask(boxes, h, w, x.device)
        if self.mode == "const":
            fill = self.mean[:c].round().to(torch.uint8).view(1, c, 1, 1).to(x.device)
            return torch.where(mask, fill, x)
        out = x.clone()
        for i in torch.nonzero(boxes[:, 2] > 0).view(-1).tolist():
            top, left, bh, bw = boxes[i].tolist()
            z = torch.randn(c, bh, bw, generator=torch.Generator().manual_seed(int(params["erase_seed"][i])))
            noise = self.mean[:c].view(c, 1, 1) + self.std[:c].view(c, 1, 1) * z
            out[i, :, top:top + bh, left:left + bw] = noise.round().clamp(0, 255).to(torch.uint8).to(x.device)
        return out


class Cutout:
    """One `size` x `size` square centred on a uniformly drawn pixel, clipped at the border, filled with
    the mean colour, on every image (DeVries & Taylor 2017: size 16 on CIFAR-10, 8 on CIFAR-100)."""

    def __init__(self, size: int, mean: Sequence[float] = (0.5, 0.5, 0.5)):
        if size < 1:
            raise ValueError(f"data.cutout must be a side in pixels >= 1, got {size}")
        self.size = size
        self.fill = tuple(min(255, round(255 * m)) for m in mean)

    def sample(self, n: int, g: torch.Generator, size: tuple[int, int]) -> dict:
        h, w = size
        cy = torch.randint(h, (n,), generator=g)
        cx = torch.randint(w, (n,), generator=g)
        half = self.size // 2
        y0, y1 = (cy - half).clamp(0, h), (cy + half).clamp(0, h)
        x0, x1 = (cx - half).clamp(0, w), (cx + half).clamp(0, w)
        return {"cutout_box": torch.stack([y0, x0, y1 - y0, x1 - x0], 1)}

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        b, c, h, w = x.shape
        mask = _box_mask(params["cutout_box"], h, w, x.device)
        fill = torch.tensor(self.fill[:c], dtype=torch.uint8, device=x.device).view(1, c, 1, 1)
        return torch.where(mask, fill, x)
