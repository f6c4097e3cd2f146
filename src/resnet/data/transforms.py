"""Mean/std constants and per-image presets for streamed (large) images, PIL + torch only.

Small images (CIFAR) are augmented on whole batches in :mod:`resnet.data.memory` instead.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

# Per-channel statistics of the training images on the 0..1 scale (pixel std, not the
# often-copied per-image std 0.2023/0.1994/0.2010).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    return img.crop((left, top, left + size, top + size))  # pads with black if the image is smaller


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        generator: torch.Generator | None = None) -> Image.Image:
    """A crop of random area fraction and aspect ratio, resized to size x size (the
    Inception-style crop torchvision's RandomResizedCrop uses; 10 tries, then a centre crop)."""
    w, h = img.size
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _rand(generator))
        aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * _rand(generator))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            return img.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    in_ratio = w / h  # fallback: the whole image, clamped to the ratio range, centred
    cw, ch = (w, int(round(w / ratio[0]))) if in_ratio < ratio[0] else \
        (int(round(h * ratio[1])), h) if in_ratio > ratio[1] else (w, h)
    cw, ch = min(cw, w), min(ch, h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image -> float32 C x H x W, normalised: (x/255 - mean) / std."""
    x = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8, copy=True)).permute(2, 0, 1)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.float().div_(255).sub_(m).div_(s)


def eval_preset(size: int = 224, resize: int = 256, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side to ``resize``, centre-crop ``size``, normalise (the usual
    single-crop ImageNet evaluation; the paper's 10-crop and fully-convolutional tests differ)."""
    def apply(img: Image.Image) -> torch.Tensor:
        return to_tensor(center_crop(resize_shorter(img, resize), size), mean, std)
    return apply


def train_preset(size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 generator: torch.Generator | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """Random-resized crop + horizontal flip + normalise. (The paper, Section 3.4, samples a
    224 crop from an image resized to a shorter side in [256, 480]; RandomResizedCrop is the
    stronger, now-standard choice.) Randomness uses ``generator`` or torch's global RNG, which
    DataLoader seeds per worker."""
    def apply(img: Image.Image) -> torch.Tensor:
        img = random_resized_crop(img, size, scale, ratio, generator)
        if flip and _rand(generator) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img, mean, std)
    return apply
