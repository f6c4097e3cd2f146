"""The PIL transforms: per-image training and test presets [ResNet §3.4], on PIL + torch only.

Training, ``paper``: the shorter side resized to a random length in [256, 480], a random 224x224
crop, a horizontal flip, mean subtraction and PCA colour ("lighting") noise (Krizhevsky et al.
2012, as the paper cites). ``rrc``: the modern random-resized crop + flip. Testing: resize 256 +
centre crop 224; the paper's 10-crop test (four corners, centre, and their mirrors); the
fully-convolutional multi-scale test (the whole image with its shorter side at 224, 256, 384, 480
and 640, and mirrored, scores averaged).

Every preset takes a *lazily opened* PIL image and decodes it itself: a JPEG is decoded at 1/2,
1/4 or 1/8 scale in the DCT domain (``Image.draft``) whenever the target is that much smaller, the
"fast decode path" (a 500x375 ImageNet JPEG resized to 256 decodes at half size, about 2x faster).
Presets return uint8 H x W x C tensors (a batch of them is channels_last NCHW for free, and 4x
smaller to pass between worker processes than floats); normalisation and lighting are applied to
whole batches by :func:`normalize_batch`. Mean subtraction is per channel, as torchvision and the
authors' released models do, rather than the paper's per-pixel mean image: after random scales and
crops the two differ by a nearly constant image. `eval_preset` / `train_preset` wrap the same
presets for a per-image float tensor (a torchvision-style ``Dataset(transform=...)``).

Small images (CIFAR) are augmented on whole batches in :mod:`resnet.data.memory` instead.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..weights.preprocess import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD,  # noqa: F401
                                  IMAGENET_MEAN, IMAGENET_STD, STATS)
from .folder import load_rgb

# Krizhevsky et al. 2012 PCA of ImageNet RGB pixels on the 0..1 scale (fb.resnet.torch's values).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
MULTI_SCALES = (224, 256, 384, 480, 640)  # [ResNet §3.4]
AUGMENTS = ("paper", "rrc")
TESTS = ("center", "ten-crop", "multi-scale")
_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def interpolation(name: str) -> int:
    try:
        return _INTERP[name]
    except KeyError:
        raise ConfigError(f"interpolation must be one of {', '.join(_INTERP)}, got {name!r}") from None


def _shorter_to(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size): the shorter side to `size`, the longer to int(size * long / short),
    truncated as torchvision does (rounding made some images a pixel wider and moved the centre crop)."""
    short, long = min(w, h), max(w, h)
    new_long = max(1, int(size * long / short))
    return (size, new_long) if w <= h else (new_long, size)


def _resize_shorter(img: Image.Image, size: int, interp: int, fast: bool) -> Image.Image:
    """Decode (at reduced scale when `fast`) and resize the shorter side to `size`."""
    target = _shorter_to(*img.size, size)
    img = load_rgb(img, target if fast else None)
    return img if img.size == target else img.resize(target, interp)


def to_hwc(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(lo: int, hi: int, g: torch.Generator) -> int:
    """Uniform in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


# --------------------------------------------------------------------------- training
class PaperTrain:
    """Scale augmentation [ResNet §3.4]: shorter side to a random S in `scale`, a random `size`
    crop, a mirror with probability 1/2; returns (uint8 H x W x C, lighting RGB offset)."""

    def __init__(self, size: int = 224, scale: tuple[int, int] = (256, 480), flip: bool = True,
                 lighting: float = 0.1, interp: str = "bilinear", fast_decode: bool = True):
        if scale[0] < size:
            raise ConfigError(f"the smallest scale {scale[0]} must be at least the crop {size}")
        self.size, self.scale, self.flip, self.lighting = size, scale, flip, lighting
        self.interp, self.fast = interpolation(interp), fast_decode

    def __call__(self, img: Image.Image, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s = _randint(self.scale[0], self.scale[1], g)
        img = _resize_shorter(img, s, self.interp, self.fast)
        w, h = img.size
        left, top = _randint(0, w - self.size, g), _randint(0, h - self.size, g)
        img = img.crop((left, top, left + self.size, top + self.size))
        if self.flip and _rand(g) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_hwc(img), lighting_offset(self.lighting, g)


def lighting_offset(alphastd: float, g: torch.Generator) -> torch.Tensor:
    """AlexNet's PCA colour noise: an RGB offset sum_i alpha_i * eigval_i * eigvec_i, alpha ~ N(0, alphastd)."""
    if alphastd <= 0:
        return torch.zeros(3)
    alpha = torch.randn(3, generator=g) * alphastd
    return torch.tensor(PCA_EIGVEC) @ (alpha * torch.tensor(PCA_EIGVAL))


def rrc_box(w: int, h: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), g: torch.Generator | None = None
            ) -> tuple[int, int, int, int]:
    """Inception-style crop box (left, top, width, height), as torchvision's RandomResizedCrop."""
    area, log_r = w * h, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _rand(g))
        aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * _rand(g))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return _randint(0, w - cw, g), _randint(0, h - ch, g), cw, ch
    in_ratio = w / h  # fallback: the whole image, clamped to the ratio range, centred
    cw, ch = (w, int(round(w / ratio[0]))) if in_ratio < ratio[0] else \
        (int(round(h * ratio[1])), h) if in_ratio > ratio[1] else (w, h)
    cw, ch = min(cw, w), min(ch, h)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


class RRCTrain:
    """Random-resized crop (area 8-100%, aspect 3/4-4/3) to `size` + mirror (the modern recipe)."""

    def __init__(self, size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True,
                 lighting: float = 0.0, interp: str = "bilinear", fast_decode: bool = True):
        self.size, self.scale, self.ratio, self.flip, self.lighting = size, scale, ratio, flip, lighting
        self.interp, self.fast = interpolation(interp), fast_decode

    def __call__(self, img: Image.Image, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        w, h = img.size
        left, top, cw, ch = rrc_box(w, h, self.scale, self.ratio, g)
        if self.fast:  # decode at the smallest DCT scale that keeps the box at least `size` wide
            k = max(1, min(cw, ch) // self.size)
            img = load_rgb(img, (math.ceil(w / k), math.ceil(h / k)))
            sx, sy = img.size[0] / w, img.size[1] / h
            box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        else:
            img, box = load_rgb(img), (left, top, left + cw, top + ch)
        img = img.resize((self.size, self.size), self.interp, box=box)
        if self.flip and _rand(g) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_hwc(img), lighting_offset(self.lighting, g)


def train_transform(augment: str = "paper", size: int = 224, flip: bool = True, lighting: float | None = None,
                    interp: str = "bilinear"):
    """The training preset by name; scales follow the crop (256-480 for 224, proportionally otherwise)."""
    if augment == "paper":
        scale = (round(size * 256 / 224), round(size * 480 / 224))
        return PaperTrain(size, scale, flip, 0.1 if lighting is None else lighting, interp)
    if augment == "rrc":
        return RRCTrain(size, flip=flip, lighting=0.0 if lighting is None else lighting, interp=interp)
    raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")


class _Augmented:
    """A training preset followed by a per-image ImageAugment (data/augment.py) on its uint8 output,
    drawing from the same per-image generator (so the choices are a function of the image's seed)."""

    def __init__(self, base, augment):
        self.base, self.augment = base, augment

    def __call__(self, img: Image.Image, g: torch.Generator):
        out = self.base(img, g)
        pixels, light = out if isinstance(out, tuple) else (out, None)
        pixels = self.augment(pixels, g)
        return pixels if light is None else (pixels, light)


def with_augment(transform, augment):
    """`transform`, then `augment` on each image (the transform itself when augment is None)."""
    return transform if augment is None else _Augmented(transform, augment)


# --------------------------------------------------------------------------- testing
def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    return img.crop((left, top, left + size, top + size))


class CenterTest:
    """Shorter side to `resize`, centre crop `size` -> uint8 H x W x C. Decoded at full scale by
    default, so published accuracies of pretrained weights reproduce."""

    def __init__(self, size: int = 224, resize: int = 256, interp: str = "bilinear", fast_decode: bool = False):
        self.size, self.resize, self.interp, self.fast = size, resize, interpolation(interp), fast_decode

    def __call__(self, img: Image.Image, g=None) -> torch.Tensor:
        return to_hwc(_center_crop(_resize_shorter(img, self.resize, self.interp, self.fast), self.size))


def _five_crops(img: Image.Image, size: int) -> list[Image.Image]:
    """torchvision's five_crop: top-left, top-right, bottom-left, bottom-right, centre."""
    w, h = img.size
    boxes = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size)]
    return [img.crop((x, y, x + size, y + size)) for x, y in boxes] + [_center_crop(img, size)]


class TenCropTest(CenterTest):
    """The 10-crop test [ResNet §3.4, Krizhevsky et al.]: four corner crops and the centre crop of
    the resized image, then those of its mirror, as torchvision's TenCrop -> uint8 10 x H x W x C. (The
    first five mirrored would differ: where the width less the crop is odd, the mirror's centre crop lies a
    pixel over.)"""

    def __call__(self, img: Image.Image, g=None) -> torch.Tensor:
        img = _resize_shorter(img, self.resize, self.interp, self.fast)
        mirror = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.stack([to_hwc(c) for c in _five_crops(img, self.size) + _five_crops(mirror, self.size)])


class MultiScaleTest:
    """The fully-convolutional test [ResNet §3.4]: the whole image with its shorter side at each of
    `scales` (and mirrored when `flip`), for scores averaged over all of them -> list of uint8
    V x H_s x W_s x C tensors, one per scale."""

    def __init__(self, scales: Sequence[int] = MULTI_SCALES, flip: bool = True, interp: str = "bilinear"):
        self.scales, self.flip, self.interp = tuple(scales), flip, interpolation(interp)

    def __call__(self, img: Image.Image, g=None) -> list[torch.Tensor]:
        img = load_rgb(img)
        out = []
        for s in self.scales:
            x = to_hwc(img.resize(_shorter_to(*img.size, s), self.interp))[None]
            out.append(torch.cat([x, x.flip(2)]) if self.flip else x)
        return out


def eval_transform(test: str = "center", size: int = 224, resize: int = 256, interp: str = "bilinear"):
    """The test preset by name: center, ten-crop or multi-scale."""
    if test == "center":
        return CenterTest(size, resize, interp)
    if test == "ten-crop":
        return TenCropTest(size, resize, interp)
    if test == "multi-scale":  # the paper's scales for 224-pixel crops, proportionally otherwise
        return MultiScaleTest(tuple(round(s * size / 224) for s in MULTI_SCALES), interp=interp)
    raise ConfigError(f"the test must be one of {', '.join(TESTS)}, got {test!r}")


# --------------------------------------------------------------------------- batches
def normalize_batch(x_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    light: torch.Tensor | None = None, device=None, channels_last: bool = True) -> torch.Tensor:
    """uint8 ... x H x W x C (on any device) -> float ... x C x H x W on `device`:
    (x/255 + light - mean)/std, with `light` a per-image RGB offset (lighting noise).
    4-D input gives channels_last memory (no copy of the layout), unless channels_last=False."""
    device = torch.device(device) if device is not None else x_u8.device
    x = x_u8.to(device, non_blocking=True)
    c = x.shape[-1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device)
    shift = -mean_t
    if light is not None:
        shift = shift + light.to(device, non_blocking=True).view(*x.shape[:-3], 1, 1, c)
    out = torch.addcmul(shift / std_t, x, (1.0 / (255.0 * std_t)))  # one fused pass
    dims = list(range(out.ndim - 3)) + [out.ndim - 1, out.ndim - 3, out.ndim - 2]
    out = out.permute(*dims)
    return out if channels_last and out.ndim == 4 else out.contiguous()


# --------------------------------------------------------------------------- per-image tensors
def _normalized(x_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return normalize_batch(x_u8[None], mean, std, channels_last=False)[0]


def eval_preset(size: int = 224, resize: int = 256, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised float C x H x W: shorter side to ``resize``, centre crop ``size``
    (:class:`CenterTest`; the paper's 10-crop and fully-convolutional tests are the other presets)."""
    test = CenterTest(size, resize)
    return lambda img: _normalized(test(img), mean, std)


def train_preset(size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 generator: torch.Generator | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised float C x H x W: random-resized crop + mirror (:class:`RRCTrain`).
    Randomness uses ``generator`` or torch's global RNG, which DataLoader seeds per worker."""
    crop = RRCTrain(size, scale, ratio, flip)
    return lambda img: _normalized(crop(img, generator)[0], mean, std)
