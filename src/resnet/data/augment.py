"""Augmentation policies (RandAugment, TrivialAugmentWide, AutoAugment, timm's RandAugment) and the
per-image augmentation that runs after crop and flip: a policy, then random erasing and/or Cutout.

A policy draws, for n images at once from a seeded ``torch.Generator``, which ops of
:mod:`resnet.data.ops` each image goes through and with what argument (``sample``), then applies
them (``apply``). The in-memory loader draws a whole epoch's choices with its (seed, epoch)
generator and applies them batch by batch; a streaming worker draws one image's choices with that
image's generator. Either way a resumed run sees the same images.

Names, as the tools people know them (``data.auto_augment``):
  ``ra``        torchvision RandAugment (Cubuk et al. 2020): 2 ops, magnitude ``data.ra_magnitude`` of 31 bins
  ``ta_wide``   torchvision TrivialAugmentWide (Müller & Hutter 2021): one op, uniform magnitude, wide ranges
  ``imagenet``  torchvision AutoAugment, ImageNet policy (Cubuk et al. 2019)
  ``cifar10``   torchvision AutoAugment, CIFAR-10 policy
  ``rand-m7-mstd0.5-inc1``  timm's RandAugment spec (``--aa``): m magnitude (0-10), n ops, mstd magnitude
                noise, inc1 the increasing-severity ops; each op applied with probability 0.5
(``randaugment``, ``trivialaugment`` and ``autoaugment`` are accepted for the first three.)
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from ..config import register_check
from ..errors import ConfigError
from .erasing import Cutout, RandomErasing
from .ops import OP_INDEX, apply_ops

# torchvision's ops in the order of its _augmentation_space, and how each maps onto ours:
# (our op, how the magnitude becomes the argument)
_TV_OPS = {"Identity": ("identity", "none"), "ShearX": ("shear_x", "x"), "ShearY": ("shear_y", "x"),
           "TranslateX": ("translate_x", "int"), "TranslateY": ("translate_y", "int"), "Rotate": ("rotate", "x"),
           "Brightness": ("brightness", "1+x"), "Color": ("color", "1+x"), "Contrast": ("contrast", "1+x"),
           "Sharpness": ("sharpness", "1+x"), "Posterize": ("posterize", "int"), "Solarize": ("solarize", "x"),
           "AutoContrast": ("autocontrast", "none"), "Equalize": ("equalize", "none"), "Invert": ("invert", "none")}
_RA_OPS = list(_TV_OPS)[:-1]  # RandAugment and TrivialAugmentWide: no Invert


def _tv_space(bins: int, h: int, w: int, wide: bool = False) -> dict[str, tuple[torch.Tensor | None, bool]]:
    """torchvision's magnitudes per op (None: no magnitude) and whether each is signed."""
    lin = lambda hi: torch.linspace(0.0, hi, bins)  # noqa: E731
    bits = 6 if wide else 4
    return {"Identity": (None, False), "ShearX": (lin(0.99 if wide else 0.3), True),
            "ShearY": (lin(0.99 if wide else 0.3), True),
            "TranslateX": (lin(32.0 if wide else 150.0 / 331.0 * w), True),
            "TranslateY": (lin(32.0 if wide else 150.0 / 331.0 * h), True),
            "Rotate": (lin(135.0 if wide else 30.0), True),
            **{k: (lin(0.99 if wide else 0.9), True) for k in ("Brightness", "Color", "Contrast", "Sharpness")},
            "Posterize": (8 - (torch.arange(bins) / ((bins - 1) / bits)).round().int().float(), False),
            "Solarize": (torch.linspace(255.0, 0.0, bins), False),
            "AutoContrast": (None, False), "Equalize": (None, False), "Invert": (None, False)}


def _tv_arg(kind: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """The op argument from a torchvision magnitude; kind 0 none, 1 x, 2 int(x), 3 1+x."""
    return torch.where(kind == 2, mag.trunc(), torch.where(kind == 3, 1 + mag, torch.where(kind == 0, 0 * mag, mag)))


_KINDS = {"none": 0, "x": 1, "int": 2, "1+x": 3}


def _tv_tables(names: Sequence[str], bins: int, h: int, w: int, wide: bool = False):
    """(our op index, argument kind, signed, magnitudes bins-wide) per torchvision op name."""
    space = _tv_space(bins, h, w, wide)
    prim = torch.tensor([OP_INDEX[_TV_OPS[n][0]] for n in names])
    kind = torch.tensor([_KINDS[_TV_OPS[n][1]] for n in names])
    signed = torch.tensor([space[n][1] for n in names])
    mags = torch.stack([space[n][0] if space[n][0] is not None else torch.zeros(bins) for n in names])
    return prim, kind, signed, mags


class Policy:
    """Draws (ops, args), both n x slots, for n images; -1 = no op in that slot."""
    slots = 1
    fill_mean = False  # timm's policies fill with the mean colour, torchvision's with black

    def sample(self, n: int, g: torch.Generator, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class RandAugment(Policy):
    """torchvision.transforms.RandAugment: `num_ops` ops drawn uniformly (with replacement) from 14,
    each at magnitude bin `magnitude` of `bins`, signed ops negated with probability 1/2."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, bins: int = 31):
        if not 0 <= magnitude < bins:
            raise ValueError(f"data.ra_magnitude must be in [0, {bins - 1}], got {magnitude}")
        self.slots, self.magnitude, self.bins = num_ops, magnitude, bins

    def sample(self, n, g, size):
        prim, kind, signed, mags = _tv_tables(_RA_OPS, self.bins, *size)
        op = torch.randint(len(_RA_OPS), (n, self.slots), generator=g)
        negate = torch.randint(2, (n, self.slots), generator=g).bool() & signed[op]
        mag = mags[op, self.magnitude]
        return prim[op], _tv_arg(kind[op], torch.where(negate, -mag, mag))


class TrivialAugmentWide(Policy):
    """torchvision.transforms.TrivialAugmentWide: exactly one op of 14, its magnitude uniform over
    31 bins of the wide ranges, signed ops negated with probability 1/2."""
    bins = 31

    def sample(self, n, g, size):
        prim, kind, signed, mags = _tv_tables(_RA_OPS, self.bins, *size, wide=True)
        op = torch.randint(len(_RA_OPS), (n, 1), generator=g)
        level = torch.randint(self.bins, (n, 1), generator=g)
        negate = torch.randint(2, (n, 1), generator=g).bool() & signed[op]
        mag = mags[op, level]
        return prim[op], _tv_arg(kind[op], torch.where(negate, -mag, mag))


# torchvision's AutoAugment policies (Cubuk et al. 2019, Appendix): 25 sub-policies of two
# (op, probability, magnitude bin of 10) each.
_AA_POLICIES = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None))],
    "cifar10": [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None))],
}


class AutoAugment(Policy):
    """torchvision.transforms.AutoAugment: one of 25 sub-policies, each of its two ops applied with
    its probability at its magnitude (bins of 10), signed ops negated with probability 1/2."""
    slots = 2

    def __init__(self, policy: str = "imagenet"):
        self.policy = policy
        self.table = _AA_POLICIES[policy]

    def sample(self, n, g, size):
        names = list(_TV_OPS)
        prim, kind, signed, mags = _tv_tables(names, 10, *size)
        op = torch.tensor([[names.index(name) for name, _, _ in sub] for sub in self.table])
        prob = torch.tensor([[p for _, p, _ in sub] for sub in self.table])
        level = torch.tensor([[m or 0 for _, _, m in sub] for sub in self.table])
        pick = torch.randint(len(self.table), (n,), generator=g)
        u = torch.rand(n, 2, generator=g)
        negate = (torch.randint(2, (n, 2), generator=g) == 0) & signed[op[pick]]
        mag = mags[op[pick], level[pick]]
        ops = torch.where(u <= prob[pick], prim[op[pick]], torch.full_like(prim[op[pick]], -1))
        return ops, _tv_arg(kind[op[pick]], torch.where(negate, -mag, mag))


# timm's RandAugment (timm/data/auto_augment.py): op -> (our op, how the level becomes the argument).
# levels run 0-10 (_LEVEL_DENOM); "neg" arguments are negated with probability 1/2.
_TIMM_OPS = {"AutoContrast": ("autocontrast", None), "Equalize": ("equalize", None), "Invert": ("invert", None),
             "Rotate": ("rotate", "rotate"), "Posterize": ("posterize", "posterize"),
             "PosterizeIncreasing": ("posterize", "posterize_inc"), "Solarize": ("solarize", "solarize"),
             "SolarizeIncreasing": ("solarize", "solarize_inc"), "SolarizeAdd": ("solarize_add", "solarize_add"),
             **{k: (k.lower(), "enhance") for k in ("Color", "Contrast", "Brightness", "Sharpness")},
             **{k + "Increasing": (k.lower(), "enhance_inc") for k in ("Color", "Contrast", "Brightness", "Sharpness")},
             "ShearX": ("shear_x", "shear"), "ShearY": ("shear_y", "shear"),
             "TranslateXRel": ("translate_x", "translate_x"), "TranslateYRel": ("translate_y", "translate_y")}
_TIMM_RAND = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
              "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
_TIMM_RAND_INC = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                  "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                  "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


def _timm_arg(fn: str | None, level: torch.Tensor, sign: torch.Tensor, h: int, w: int) -> torch.Tensor:
    t = level / 10.0
    return {None: lambda: 0 * t, "rotate": lambda: sign * t * 30.0, "shear": lambda: sign * t * 0.3,
            "translate_x": lambda: sign * t * 0.45 * w, "translate_y": lambda: sign * t * 0.45 * h,
            "posterize": lambda: (t * 4).trunc(), "posterize_inc": lambda: 4 - (t * 4).trunc(),
            "solarize": lambda: (t * 256).trunc(), "solarize_inc": lambda: 256 - (t * 256).trunc(),
            "solarize_add": lambda: (t * 110).trunc(), "enhance": lambda: t * 1.8 + 0.1,
            "enhance_inc": lambda: (1.0 + sign * t * 0.9).clamp_min(0.1)}[fn]()


class TimmRandAugment(Policy):
    """timm's RandAugment ("rand-m9-mstd0.5-inc1"): `num_ops` ops drawn with replacement from 15, each
    applied with probability `prob`, at magnitude `magnitude` (0-10) plus N(0, mstd) noise (uniform
    on [0, magnitude] for mstd > 100), clipped to [0, 10]; `increasing` uses the ops whose severity
    grows with the magnitude. Fills with the mean colour, as timm does."""
    fill_mean = True

    def __init__(self, magnitude: float = 10, num_ops: int = 2, mstd: float = 0.0, increasing: bool = False,
                 prob: float = 0.5):
        self.magnitude, self.slots, self.mstd, self.prob = float(magnitude), num_ops, mstd, prob
        self.names = _TIMM_RAND_INC if increasing else _TIMM_RAND

    def sample(self, n, g, size):
        h, w = size
        k = self.slots
        op = torch.randint(len(self.names), (n, k), generator=g)
        apply = torch.rand(n, k, generator=g) <= self.prob
        if self.mstd > 100:
            level = torch.rand(n, k, generator=g) * self.magnitude
        else:
            level = self.magnitude + self.mstd * torch.randn(n, k, generator=g)
        level = level.clamp(0, 10)
        sign = torch.where(torch.rand(n, k, generator=g) > 0.5, -1.0, 1.0)
        ops = torch.full((n, k), -1, dtype=torch.long)
        args = torch.zeros(n, k)
        for j, name in enumerate(self.names):
            ours, fn = _TIMM_OPS[name]
            hit = (op == j) & apply
            ops[hit] = OP_INDEX[ours]
            args = torch.where(hit, _timm_arg(fn, level, sign, h, w), args)
        return ops, args


def parse_timm_spec(spec: str) -> TimmRandAugment:
    """'rand-m7-mstd0.5-inc1' -> TimmRandAugment(magnitude=7, mstd=0.5, increasing=True)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"data.auto_augment={spec!r}: a timm spec starts with 'rand-' (e.g. rand-m9-mstd0.5-inc1)")
    kwargs: dict = {}
    for part in parts[1:]:
        m = re.fullmatch(r"(mstd|inc|m|n|p)(\d+(?:\.\d+)?)", part)
        if m is None:
            raise ValueError(f"data.auto_augment={spec!r}: cannot read {part!r} (known: m, n, mstd, inc, p)")
        key, val = m.groups()
        key = {"m": "magnitude", "n": "num_ops", "inc": "increasing", "p": "prob"}.get(key, key)
        kwargs[key] = bool(int(float(val))) if key == "increasing" else int(val) if key == "num_ops" else float(val)
    return TimmRandAugment(**kwargs)


_ALIASES = {"randaugment": "ra", "trivialaugment": "ta_wide", "autoaugment": "imagenet"}
POLICY_NAMES = ("ra", "ta_wide", "imagenet", "cifar10")


def make_policy(name: str, ra_magnitude: int = 9) -> Policy | None:
    """The policy named by data.auto_augment ('' = none); ValueError naming the setting otherwise."""
    name = _ALIASES.get(name, name)
    if not name or name == "none":
        return None
    if name == "ra":
        return RandAugment(2, ra_magnitude)
    if name == "ta_wide":
        return TrivialAugmentWide()
    if name in _AA_POLICIES:
        return AutoAugment(name)
    if name.startswith("rand"):
        return parse_timm_spec(name)
    raise ValueError(f"data.auto_augment must be one of {', '.join(POLICY_NAMES)}, a timm spec such as "
                     f"rand-m9-mstd0.5-inc1, or empty; got {name!r}")


def slice_params(params: dict, index) -> dict:
    return {k: v[index] for k, v in params.items()}


class ImageAugment:
    """What follows crop and flip for each training image: the policy's ops, then random erasing,
    then Cutout (the order of torchvision's preset and of AutoAugment's CIFAR pipeline). Fills are
    the dataset's mean colour for erasing/Cutout (0 after normalisation, as torchvision and DeVries &
    Taylor erase) and for timm's policies, black for torchvision's."""

    def __init__(self, policy: Policy | None = None, erasing: RandomErasing | None = None,
                 cutout: Cutout | None = None, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 interpolation: str = "bilinear"):
        self.policy, self.erasing, self.cutout, self.interpolation = policy, erasing, cutout, interpolation
        self.mean_u8 = tuple(min(255, round(255 * m)) for m in mean)

    def sample(self, n: int, g: torch.Generator, size: tuple[int, int]) -> dict:
        out: dict = {}
        if self.policy is not None:
            out["ops"], out["args"] = self.policy.sample(n, g, size)
        for part in (self.erasing, self.cutout):
            if part is not None:
                out.update(part.sample(n, g, size))
        return out

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """uint8 B x C x H x W (any layout) -> uint8 B x C x H x W."""
        if self.policy is not None:
            fill = self.mean_u8 if self.policy.fill_mean else (0, 0, 0)
            x = apply_ops(x, params["ops"], params["args"], fill[:x.shape[1]], self.interpolation)
        for part in (self.erasing, self.cutout):
            if part is not None:
                x = part.apply(x, params)
        return x

    def apply_nhwc(self, x_nhwc: torch.Tensor, params: dict) -> torch.Tensor:
        return self.apply(x_nhwc.permute(0, 3, 1, 2), params).permute(0, 2, 3, 1).contiguous()

    def __call__(self, hwc: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One image (uint8 H x W x C), its choices drawn from its own generator: the streamed path."""
        params = self.sample(1, g, (hwc.shape[0], hwc.shape[1]))
        return self.apply_nhwc(hwc[None], params)[0]


def build_image_augment(data_cfg, mean: Sequence[float], std: Sequence[float]) -> ImageAugment | None:
    """The ImageAugment that data.auto_augment, data.random_erase and data.cutout describe (None if none)."""
    policy = make_policy(data_cfg.auto_augment, data_cfg.ra_magnitude)
    erasing = RandomErasing(data_cfg.random_erase, mode=data_cfg.erase_mode, mean=mean, std=std) \
        if data_cfg.random_erase > 0 else None
    cutout = Cutout(data_cfg.cutout, mean=mean) if data_cfg.cutout > 0 else None
    if policy is None and erasing is None and cutout is None:
        return None
    return ImageAugment(policy, erasing, cutout, mean, data_cfg.interpolation)


@register_check
def _check_policy(cfg) -> None:
    """data.auto_augment and data.ra_magnitude name a policy (checked with the rest of the config)."""
    try:
        make_policy(cfg.data.auto_augment, cfg.data.ra_magnitude)
    except ValueError as e:
        raise ConfigError(str(e)) from None
