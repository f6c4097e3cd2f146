"""What a network expects of its inputs: per-channel mean/std of each dataset family, and the
evaluation preprocessing (resize, crop, interpolation) a set of weights was published with."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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


@dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing: shorter side to `resize`, centre crop `crop`, (x/255 - mean)/std."""
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def crop_pct(self) -> float:
        """timm's name for crop / resize (0.875 for 224 of 256)."""
        return self.crop / self.resize

    @classmethod
    def from_crop_pct(cls, crop: int, crop_pct: float, **kwargs) -> "Preprocess":
        """timm's rule: the shorter side goes to floor(crop / crop_pct) (224 at 0.95: 235)."""
        return cls(resize=math.floor(crop / crop_pct + 1e-9), crop=crop, **kwargs)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def native_preprocess(input_size: int) -> Preprocess:
    """The preprocessing of a network's dataset family when nothing else is known (a randomly
    initialised registered model): ImageNet's for 224-pixel nets, CIFAR-10's for 32-pixel nets,
    whole images (no crop to undo)."""
    mean, std = STATS["imagenet" if input_size >= 64 else "cifar10"]
    return Preprocess(resize=input_size, crop=input_size, mean=mean, std=std)
