"""Seeded, stratified hold-out split (the paper's 45k/5k CIFAR-10 validation, Section 4.2), its
rebuild from a run's configuration, and the seed of each epoch's order and augmentation."""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from ..config import DataConfig
from ..errors import ConfigError


def stratified_split(labels: torch.Tensor | Sequence[int], val_size: int | float,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx), sorted int64 index tensors.

    ``val_size`` is a count (int) or a fraction in (0, 1). Each class gives its share of the
    validation set, rounded by largest remainder so the total is exact: 5,000 of CIFAR-10's
    50,000 gives exactly 500 per class. The same labels and seed give the same split."""
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    n = y.numel()
    if isinstance(val_size, float) and val_size < 1.0:
        if val_size <= 0.0:
            raise ConfigError(f"a fractional val_size must lie in (0, 1), got {val_size}")
        k = int(round(val_size * n))
    elif isinstance(val_size, float) and not val_size.is_integer():
        raise ConfigError(f"val_size must be a count or a fraction in (0, 1), got {val_size}")
    else:
        k = int(val_size)
    if not 0 <= k <= n:
        raise ConfigError(f"val_size {val_size} is out of range for {n} samples")
    classes, counts = torch.unique(y, return_counts=True)
    exact = counts.double() * k / max(n, 1)
    quota = exact.floor().long()
    remainder = k - int(quota.sum())
    if remainder:  # largest fractional parts first; ties broken by class order (stable sort)
        order = torch.argsort(exact - quota, descending=True, stable=True)
        quota[order[:remainder]] += 1
    g = torch.Generator().manual_seed(seed)
    val_parts = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(y == c).flatten()
        val_parts.append(members[torch.randperm(members.numel(), generator=g)[:q]])
    val = torch.cat(val_parts).sort().values if val_parts else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


def holdout(data, val_size: int | float, seed: int = 0):
    """(train, val or None) subsets of a dataset with `.labels` and `.subset()`: the one place the
    training set is split, for training, `resnet eval --split val` and the experiments alike."""
    count = int(round(val_size * len(data))) if val_size < 1 else int(val_size)
    if count == 0:
        return data, None
    if count >= len(data):
        kind = "a fraction" if val_size < 1 else "a count"
        raise ConfigError(f"data.val_size={val_size:g} ({kind}) holds out {count} of the {len(data)} training images "
                          f"and leaves none to train on: give a fraction (e.g. data.val_size=0.1, the default) "
                          f"or a count below {len(data)}")
    train_idx, val_idx = stratified_split(data.labels, count, seed=seed)
    return data.subset(train_idx), data.subset(val_idx)


def holdout_seed(cfg: dict) -> int:
    """The hold-out seed of a saved run's config (a dict): data.split_seed, else the run's seed
    (runs saved before split_seed existed used their own seed)."""
    seed = (cfg.get("data") or {}).get("split_seed", -1)
    return seed if seed is not None and seed >= 0 else cfg.get("seed", 0)


def holdout_count(val_size: int | float, n: int) -> int:
    """How many of `n` images `holdout` sets aside for `val_size` (a fraction below 1, else a count)."""
    return int(round(val_size * n)) if val_size < 1 else int(val_size)


def run_holdout(data, run_config: dict | None, part: str = "val"):
    """The validation images a training run held out, rebuilt from its saved configuration (seed and
    data.val_size): what `resnet eval --split val` and the experiments score. part="train": the images it
    trained on instead (the rest), e.g. to calibrate int8 on images other than those it is checked on."""
    if not run_config:
        raise ConfigError("--split val needs a checkpoint of a training run (it rebuilds that run's hold-out); "
                          "use --split test")
    val_size = run_config.get("data", {}).get("val_size", DataConfig().val_size)
    train, val = holdout(data, val_size, holdout_seed(run_config))
    if val is None:
        raise ConfigError("this checkpoint's run had no validation split (data.val_size=0); use --split test")
    return train if part == "train" else val


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order and augmentation: distinct and reproducible per (seed,
    epoch), whichever loader (in memory or streamed) and however many workers draw from it."""
    key = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
