"""Handwritten digits that need no download: the 1,797 8x8 images shipped inside scikit-learn
(UCI optdigits test set), scaled to 32x32 so that CIFAR networks run on them unchanged ('digits'), or
to 16x16 ('digits16': a quarter of the compute a step, what `resnet demo` trains on, so that it fits slow machines).

A fixed, stratified 297-image test split (seed 0) leaves 1,500 for training and validation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .memory import InMemoryDataset
from .split import stratified_split
from ..errors import MissingExtraError

NAME = "digits"
TEST_SIZE = 297
SIDE = 32
SIDES = {"digits": SIDE, "digits16": 16}  # the data sets' names: their side in pixels


def load_digits(split: str = "train", name: str = NAME) -> InMemoryDataset:
    """`name`'s images (see SIDES) of `split`, 'train' or 'test'."""
    side = SIDES[name]
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise MissingExtraError("the 'digits' dataset comes from scikit-learn: pip install scikit-learn "
                          "(bin/with-env installs it)") from None
    bunch = sk_load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None]  # N x 1 x 8 x 8, values 0..16
    big = F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)
    images = (big * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = stratified_split(labels, TEST_SIZE, seed=0)
    idx = train_idx if split == "train" else test_idx
    images, labels = images[idx], labels[idx]
    mean = images.float().mean().item() / 255.0
    std = images.float().std().item() / 255.0
    return InMemoryDataset(images, labels, [str(d) for d in range(10)], (mean,), (std,), name, "scikit-learn")
