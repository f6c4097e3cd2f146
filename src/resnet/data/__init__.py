"""Data: CIFAR pickles, class-per-folder images, in-memory batches with tensor augmentation.

``load_dataset(path)`` is the one entry point; it returns an :class:`InMemoryDataset` whose
``loader(batch_size, train)`` yields normalised batches.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cifar import CifarFormatError, default_cache_dir, detect_cifar_folder, load_cifar, SPECS, \
    cifar_archive_spec
from .folder import DatasetLayoutError, ImageDecodeError, index_from_names, is_archive, scan, walk_archive
from .memory import ImagesTooLargeError, InMemoryDataset, MemoryLoader, load_image_folder
from .digits import SIDES as DIGITS, load_digits
from .split import run_holdout, stratified_split
from .stream import ImageFolderDataset, StreamingFolder
from .transforms import STATS, eval_preset, train_preset
from ..errors import ConfigError, DataError

__all__ = [
    "load_dataset", "load_split", "InMemoryDataset", "MemoryLoader", "ImageFolderDataset", "StreamingFolder", "stratified_split",
    "load_cifar", "load_image_folder", "scan", "train_preset", "eval_preset", "STATS",
    "default_cache_dir", "CifarFormatError", "DatasetLayoutError", "ImageDecodeError",
    "ImagesTooLargeError", "DataError", "has_test_split",
]


def load_dataset(path: str | Path, split: str = "train", cache_dir: str | Path | None = None,
                 download: bool = False, skip_bad: bool = False) -> InMemoryDataset:
    """Load a dataset into memory, detecting its kind from ``path``:

    * a CIFAR-10/100 batch folder (``cifar-10-batches-py``, ``cifar-100-python``) or its parent;
    * an official CIFAR ``.tar.gz`` (extracted once into ``cache_dir``), or the name
      ``"cifar10"``/``"cifar100"`` (looked up in ``cache_dir``; ``download=True`` fetches it);
    * the name ``"digits"`` (or ``"digits16"``): scikit-learn's handwritten digits at 32x32 (16x16), no
      download (see digits.py);
    * a class-per-folder image tree or its ``.tar``/``.tar.gz`` with images up to 64x64,
      decoded once and cached in ``cache_dir``, by default the cache folder
      (``$RESNET_CACHE``, ``$XDG_CACHE_HOME/resnet`` or ``~/.cache/resnet``), never next to the data.

    ``split`` is 'train' or 'test'; an image tree with ``train/`` and ``test/`` (or ``val/``)
    folders gives that folder, a tree without split folders is used whole.

    Bad input raises an error naming the file: ImageDecodeError (an image that cannot be read or
    decoded, or a decompression bomb), ImagesTooLargeError (too large or of another size than
    the rest), DatasetLayoutError (no class folders, an empty class folder, no images, a symlink
    loop), CifarFormatError (a CIFAR file that is unsafe or not in the official format); all are
    ValueErrors. With ``skip_bad=True`` an image tree's bad images and symlink loops are left out
    instead and listed as (path, reason) in ``ds.info["skipped"]`` (``ds.skipped``); layout
    errors and CIFAR errors are raised either way.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    p = Path(path).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    if not p.exists():
        if str(path) in DIGITS:
            return load_digits(split, str(path))
        if str(path) in SPECS:
            return _from_cifar(load_cifar(str(path), split, cache, download), str(path))
        if p.is_symlink():
            raise FileNotFoundError(f"{p}: a broken symlink or a symlink loop")
        raise FileNotFoundError(
            f"{p}: no such file or folder. Pass a CIFAR folder or archive, a class-per-folder "
            "image tree or its .tar.gz, or 'cifar10'/'cifar100' with download=True.")
    if p.is_dir() and detect_cifar_folder(p) is not None or p.is_file() and cifar_archive_spec(p):
        return _from_cifar(load_cifar(p, split, cache), str(p))
    if p.is_file() and not is_archive(p):
        raise DatasetLayoutError(f"{p}: not a dataset folder or a .tar/.tar.gz archive")
    ds = load_image_folder(p, split, cache, skip_bad=skip_bad)
    if len(ds) == 0:
        raise DatasetLayoutError(f"{p}: no images found")
    return ds


def has_test_split(path: str | Path) -> bool:
    """Whether ``load_dataset(path, "test")`` gives a test set of its own: CIFAR (the test batch),
    'digits', or an image tree with a ``test/`` (or ``val/``) folder beside ``train/``. A tree without
    split folders is not one (``load_dataset`` would return its training images for "test")."""
    p = Path(path).expanduser()
    if not p.exists():
        return str(path) in DIGITS or str(path) in SPECS
    if p.is_dir() and detect_cifar_folder(p) is not None or p.is_file() and cifar_archive_spec(p):
        return True
    if is_archive(p):
        names = walk_archive(p)  # one pass over the archive for both looks
        index = lambda split: index_from_names(p, *names, split)  # noqa: E731
    else:
        index = lambda split: scan(p, split)  # noqa: E731
    try:
        return index("test").prefix != index("train").prefix
    except DatasetLayoutError:  # split folders without a test one (the shared CIFAR-10 JPEGs: train/ only)
        return False


def load_split(path: str | Path, split: str, run_config: dict | None = None,
               cache_dir: str | Path | None = None) -> InMemoryDataset:
    """`split` of a dataset in memory: 'train', 'test', or 'val' (the hold-out of the training run
    whose saved configuration is `run_config`, rebuilt from its seed and data.val_size)."""
    if split == "val":  # the training set as the run loaded it: without the images data.skip_bad left out
        data = (run_config or {}).get("data", {})
        train = load_dataset(path, "train", cache_dir=cache_dir or data.get("cache_dir") or None,
                             skip_bad=bool(data.get("skip_bad", False)))
        return run_holdout(train, run_config)
    return load_dataset(path, split, cache_dir=cache_dir)


def _from_cifar(data, source: str) -> InMemoryDataset:
    mean, std = STATS[data.name]
    if data.labels.numel() == 0:
        raise CifarFormatError(f"{source}: the {data.name} batches hold no images")
    images = data.images.contiguous(memory_format=torch.channels_last)  # what MemoryLoader gathers from
    return InMemoryDataset(images, data.labels, data.classes, mean, std, data.name, source)
