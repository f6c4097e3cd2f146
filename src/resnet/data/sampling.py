"""The order of an epoch's training images, with repeated augmentation (Hoffer et al. 2020,
Berman et al. 2019) as torchvision's ``RASampler`` and timm's ``--aug-repeats`` use it.

With ``repeats`` r > 1, an epoch keeps its length (n positions) but holds ceil(n / r) distinct
images, each r times, every copy with its own augmentation (each position has its own random
choices). As in torchvision, the copies of an image go to different processes of a torchrun job:
within every global batch the positions are sorted by copy number (first copies, then second
copies, ...), so copy k of an image sits about k * B/r further on, and since each process takes a
contiguous slice of the global batch, r processes get one copy each. The layout depends on the
global batch only, never on the number of processes, so a run resumes on any number of them.
"""
from __future__ import annotations

import math

import torch


def epoch_order(n: int, g: torch.Generator, repeats: int = 1, batch_size: int = 1) -> torch.Tensor:
    """Indices of the n positions of one epoch. repeats=1 is torch.randperm(n, generator=g) itself."""
    perm = torch.randperm(n, generator=g)
    if repeats <= 1:
        return perm
    order = perm[: math.ceil(n / repeats)].repeat_interleave(repeats)[:n]  # copies next to each other
    full = n // batch_size * batch_size  # within each whole batch: by copy number, then position
    pos = torch.arange(full)
    key = pos // batch_size * (repeats * batch_size) + pos % repeats * batch_size + pos % batch_size
    return torch.cat([order[:full][torch.argsort(key)], order[full:]])
