"""Small images held in memory as one uint8 tensor, and batched tensor augmentation.

Decoding 50,000 JPEGs takes longer than a training epoch on two cores, so images up to 64x64
are decoded once and cached as a safetensors file in the cache folder (``default_cache_dir()``,
never next to the data: a shared data set folder or a git checkout is not the place for 150 MB). Augmentation is the
paper's (He et al. 2015, Section 4.2): 4-pixel zero padding, a random 32x32 crop and a
horizontal flip, then per-channel mean/std normalisation, all as a few tensor ops per batch.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ConfigError, DataError
from ..files import shareable, sweep_temporaries
from .augment import slice_params
from .sampling import epoch_order
from .cifar import default_cache_dir
from .folder import (SPLIT_NAMES, DatasetLayoutError, FolderIndex, ImageDecodeError, _reason, decode_image,
                     index_from_names, is_archive, iter_encoded, scan, walk_archive, walk_tree)
from .split import epoch_generator

MAX_SIDE = 64  # larger images are streamed (stream.StreamingFolder), not held in memory
CACHE_VERSION = "1"


class ImagesTooLargeError(DataError):
    """Images above MAX_SIDE (or of mixed sizes) cannot be held as one tensor. `too_large`: some image is above
    MAX_SIDE (streaming is the way to train on them), not merely of another size than the rest."""

    def __init__(self, message: str, too_large: bool = True):
        super().__init__(message)
        self.too_large = too_large

    def __reduce__(self):  # rebuilt with its flag when a worker process raises it
        return type(self), (str(self), self.too_large)


@dataclass
class InMemoryDataset:
    """Images as one uint8 tensor (N x 3 x H x W), labels int64, and what to normalise with."""
    images: torch.Tensor  # uint8 N x 3 x H x W, usually channels_last in memory
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    source: str = ""
    info: dict = field(default_factory=dict)  # e.g. decode time, cache file, skipped files

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every file a ``skip_bad=True`` load left out (empty otherwise)."""
        return [tuple(x) for x in self.info.get("skipped", [])]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "InMemoryDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return InMemoryDataset(self.images[idx], self.labels[idx], self.classes, self.mean,
                               self.std, self.name, self.source, dict(self.info))

    def loader(self, batch_size: int, train: bool, **kwargs) -> "MemoryLoader":
        return MemoryLoader(self.images, self.labels, batch_size, train, self.mean, self.std,
                            **kwargs)


# --------------------------------------------------------------------------- decoding
PROBE_LIMIT = 16  # with skip_bad: this many too-large images first means the dataset is too large


def _decode_chunk(chunk: list[tuple[str, bytes]], prefix: str = "", max_side: int = MAX_SIDE
                  ) -> tuple[dict[tuple[int, ...], tuple[np.ndarray, list[str]]], list[tuple[str, str, str]]]:
    """Decode (key, bytes) pairs; images grouped by shape as {shape: (stacked, keys)}, in feed
    order, and the problems as (key, kind, message) with kind 'decode' or 'large'. Messages name
    the file as ``prefix + key``."""
    arrs: dict[tuple[int, ...], list[np.ndarray]] = {}
    keys: dict[tuple[int, ...], list[str]] = {}
    problems: list[tuple[str, str, str]] = []
    for key, data in chunk:
        try:
            a = np.asarray(decode_image(data, prefix + key))
        except ImageDecodeError as e:
            problems.append((key, "decode", str(e)))
            continue
        if max(a.shape[:2]) > max_side:
            problems.append((key, "large", f"{prefix + key}: {a.shape[1]}x{a.shape[0]}, larger than "
                                          f"{max_side}x{max_side}"))
            continue
        arrs.setdefault(a.shape, []).append(a)
        keys.setdefault(a.shape, []).append(key)
    return {shape: (np.stack(a), keys[shape]) for shape, a in arrs.items()}, problems


class _ChunkDecoder:
    """Decodes encoded images fed one by one, in chunks; once a first chunk fills up (a dataset
    worth it), chunks go to ``workers`` forked processes while the caller keeps reading.

    Problems (undecodable images, sizes) are collected, not raised: ``finish`` reports them, so
    that the caller raises only for images it wants (an archive holds other splits too)."""

    def __init__(self, workers: int | None, chunk: int, max_side: int, prefix: str = "",
                 skip_bad: bool = False, split: str | None = None):
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self.chunk, self.max_side, self.prefix, self.skip_bad = chunk, max_side, prefix, skip_bad
        # folder names that mark an image of another split than `split` (an archive holds them all)
        self._other_splits = {n for s, names in SPLIT_NAMES.items() if s != split for n in names} \
            if split in SPLIT_NAMES else set()
        self.names: list[str] = []
        self._buf: list[tuple[str, bytes]] = []
        self._done: list = []  # results or AsyncResults, in feed order
        self._pool = None
        self._probed, self._too_large = False, 0

    def _probe(self, name: str, data: bytes) -> None:
        """Fail fast, before reading a large archive to its end, when the images are too large."""
        try:
            w, h = decode_image(data, self.prefix + name).size
        except ImageDecodeError:
            return  # reported with its chunk
        if max(w, h) <= self.max_side:
            self._probed = True
            return
        self._too_large += 1
        if not self.skip_bad or self._too_large >= PROBE_LIMIT:
            raise ImagesTooLargeError(
                f"{self.prefix + name} is {w}x{h}: only images up to {self.max_side}x{self.max_side} "
                "are decoded into memory; `resnet train` and `resnet eval` stream larger ones by themselves "
                "(data.stream=true to ask for it; in code, resnet.data.StreamingFolder).")

    def add(self, name: str, data: bytes) -> None:
        if not self._probed and not self._other_splits.intersection(p.lower() for p in name.split("/")[:-1]):
            self._probe(name, data)  # probe only images that may be of the wanted split
        self.names.append(name)
        self._buf.append((name, data))
        if len(self._buf) >= self.chunk:
            if self._pool is None and self.workers > 1 and sys.platform != "win32" \
                    and "fork" in multiprocessing.get_all_start_methods():
                self._pool = multiprocessing.get_context("fork").Pool(self.workers)
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            chunk, self._buf = self._buf, []
            args = (chunk, self.prefix, self.max_side)
            self._done.append(self._pool.apply_async(_decode_chunk, args) if self._pool
                              else _decode_chunk(*args))

    def finish(self, wanted: set[str] | None = None) -> tuple[np.ndarray, list[str], list[tuple[str, str, str]]]:
        """(N x H x W x 3 uint8 of the images kept, their keys in feed order, problems). Kept
        images have the most common size among the `wanted` keys (all when None: an archive's other
        split may differ in size); others become problems of kind 'size'."""
        self._flush()
        results = [r if isinstance(r, tuple) else r.get() for r in self._done]
        problems = [p for _, probs in results for p in probs]
        counts: dict[tuple[int, ...], int] = {}
        first = None
        for groups, _ in results:
            for shape, (_, keys) in groups.items():
                k = len(keys) if wanted is None else sum(key in wanted for key in keys)
                if k:
                    counts[shape] = counts.get(shape, 0) + k
                    first = shape if first is None else first
        if not counts:
            return np.zeros((0, 1, 1, 3), np.uint8), [], problems
        common = max(counts, key=lambda sh: (counts[sh], sh == first))
        arrays, kept = [], []
        for groups, _ in results:
            for shape, (a, keys) in groups.items():
                if shape == common:
                    arrays.append(a)
                    kept.extend(keys)
                else:
                    problems.extend(
                        (k, "size", f"{self.prefix + k}: {shape[1]}x{shape[0]}, unlike the other "
                                    f"images ({common[1]}x{common[0]})") for k in keys)
        return np.concatenate(arrays), kept, problems

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def decode_source(source: str | Path, split: str | None = None, workers: int | None = None,
                  chunk: int = 1000, max_side: int = MAX_SIDE, skip_bad: bool = False
                  ) -> tuple[FolderIndex, torch.Tensor, torch.Tensor]:
    """Decode a class-per-folder tree (folder or archive) into (index, uint8 N x 3 x H x W in
    channels_last memory, int64 labels), samples in ``index.samples`` order.

    An image that cannot be read or decoded raises ImageDecodeError, one of another size than
    the rest ImagesTooLargeError, both naming the file. With ``skip_bad`` such images are left
    out instead and listed, with the reason, in ``index.skipped`` (then the tensors hold fewer
    than ``len(index.samples)`` images). An archive is read once: images are decoded while it
    is being read, before the class layout is known (images outside the split are decoded too,
    but problems there are ignored)."""
    source = Path(source).expanduser()
    archive = is_archive(source)
    # only an archive feeds images of other splits; a folder's keys are absolute paths, whose folders above
    # the data (/data/test/imagenet/...) must not pass for another split and turn the early size probe off
    dec = _ChunkDecoder(workers, chunk, max_side, f"{source}:" if archive else "", skip_bad,
                        split if archive else None)
    unreadable: list[tuple[str, str, str]] = []
    try:
        if archive:
            index = index_from_names(source, *walk_archive(source, dec.add), split)
        else:
            index = scan(source, split, skip_bad=skip_bad)
            for name, data, _ in iter_encoded(
                    index, on_error=lambda n, e: unreadable.append((n, "decode", str(e)))):
                dec.add(name, data)
        arrays, kept, problems = dec.finish({k for k, _ in index.samples})
    finally:
        dec.close()
    wanted = {k: i for i, (k, _) in enumerate(index.samples)}
    problems = sorted((p for p in unreadable + problems if p[0] in wanted), key=lambda p: wanted[p[0]])
    if problems and not skip_bad:
        key, kind, msg = problems[0]
        more = f" ({len(problems) - 1} more bad image(s))" if len(problems) > 1 else ""
        hint = " Or pass skip_bad=True (`resnet train --skip-bad`) to leave bad images out and list them."
        if kind == "decode":
            raise ImageDecodeError(msg + more + "." + hint)
        raise ImagesTooLargeError(
            f"{msg}{more}: in-memory datasets need one image size up to {max_side}x{max_side}. "
            "Resize the images, or stream them (data.stream=true; in code, resnet.data.StreamingFolder)." + hint,
            too_large=any(k == "large" for _, k, _ in problems))
    index.skipped = index.skipped + [(dec.prefix + k, _reason(msg, dec.prefix + k))
                                     for k, _, msg in problems]
    pos = {n: i for i, n in enumerate(kept)}
    keys = [k for k, _ in index.samples if k in pos]
    if not keys:
        first = f"; first: {index.skipped[0][0]}: {index.skipped[0][1]}" if index.skipped else ""
        raise DatasetLayoutError(f"{source}: no usable images, all {len(index.samples)} were "
                                 f"skipped{first}")
    if keys != kept:  # archive order -> index order, dropping images outside the split
        arrays = arrays[np.fromiter((pos[k] for k in keys), dtype=np.int64, count=len(keys))]
    labels = [label for k, label in index.samples if k in pos]
    # N x 3 x H x W in channels_last memory: the layout the decoder produced and the one
    # MemoryLoader gathers from, so no copy is made here or there.
    images = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2)
    return index, images, torch.tensor(labels, dtype=torch.int64)


def channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over all pixels of uint8 images, on the 0..1 scale (rounded to
    4 digits). Exact: from a 256-bin histogram per channel (5x faster than float sums here)."""
    c = images.shape[1]
    offset = torch.arange(c, dtype=torch.int16) * 256
    hist = torch.zeros(c * 256, dtype=torch.int64)
    for i in range(0, images.shape[0], chunk):
        px = images[i:i + chunk].permute(0, 2, 3, 1).reshape(-1, c).to(torch.int16) + offset
        hist += torch.bincount(px.view(-1).long(), minlength=c * 256)
    h = hist.view(c, 256).double()
    v = torch.arange(256, dtype=torch.float64) / 255
    n = h.sum(1).clamp_min(1)
    mean = (h * v).sum(1) / n
    std = ((h * v * v).sum(1) / n - mean * mean).clamp_min(0).sqrt()
    return tuple(round(x, 4) for x in mean.tolist()), _usable_std(round(x, 4) for x in std.tolist())


def _usable_std(std) -> tuple[float, ...]:
    """A channel that never varies (every pixel one value: a blank channel) has std 0, and normalising by it made
    every input NaN: such a channel is divided by 1 instead (it normalises to 0 all the same)."""
    return tuple(s if s > 0 else 1.0 for s in std)


# --------------------------------------------------------------------------- cache
def fingerprint(source: Path) -> str:
    """Hash of the source's absolute path, size and mtime (for a folder: of every entry)."""
    source = Path(source).resolve()
    h = hashlib.sha256(f"{CACHE_VERSION}|{source}".encode())
    if source.is_file():
        st = source.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        for cur, dnames, fnames in walk_tree(source):
            for f in sorted(fnames):
                try:
                    st = os.stat(os.path.join(cur, f))
                except OSError:  # a dangling link or a link loop: decoding will report it
                    st = os.lstat(os.path.join(cur, f))
                h.update(f"|{os.path.relpath(os.path.join(cur, f), source)}|{st.st_size}|"
                         f"{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_dirs(source: Path, cache_dir: Path | None = None) -> list[Path]:
    """Where the cache of ``source`` lives: ``cache_dir`` if the user gave one (``data.cache_dir``),
    else the toolkit's cache folder (``$RESNET_CACHE``, ``$XDG_CACHE_HOME/resnet`` or
    ``~/.cache/resnet``); `resnet cache list` / `resnet cache clear` show and remove them there."""
    return [Path(cache_dir) if cache_dir is not None else default_cache_dir()]


def _stem(source: Path) -> str:
    stem = Path(source).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


SKIP_TAG = "+skipbad"  # a cache made with skip_bad that left images out: never read without it


def cache_name(source: Path, split: str | None, skipped: bool = False) -> str:
    tag = SKIP_TAG if skipped else ""
    return f"{_stem(source)}.{split or 'all'}{tag}.{fingerprint(source)}.resnet-u8.safetensors"


def _remove_stale(written: Path, source: str) -> None:
    """Delete caches of earlier versions of the same source and split in that folder."""
    prefix = written.name.split(".resnet-u8.")[0].rsplit(".", 1)[0]  # '<stem>.<split>[+skipbad]'
    prefix = prefix.removesuffix(SKIP_TAG)
    others = [*written.parent.glob(f"{glob_escape(prefix)}.*.resnet-u8.safetensors"),
              *written.parent.glob(f"{glob_escape(prefix + SKIP_TAG)}.*.resnet-u8.safetensors")]
    for other in others:
        if other == written:
            continue
        try:
            with safe_open(str(other), framework="pt") as f:
                stale = (f.metadata() or {}).get("source") == source
            if stale:
                other.unlink()
        except Exception:  # not ours to judge: leave it
            continue


def _read_cache(path: Path) -> InMemoryDataset | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("version") != CACHE_VERSION:
                return None
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
        if meta.get("layout") != "NHWC" or images.ndim != 4 or labels.shape[0] != images.shape[0]:
            return None
        images = images.permute(0, 3, 1, 2)  # channels_last view, no copy
        return InMemoryDataset(images, labels, json.loads(meta["classes"]),
                               tuple(json.loads(meta["mean"])), _usable_std(json.loads(meta["std"])),
                               meta.get("name", ""), meta.get("source", ""),
                               {"cache": str(path), "skipped": json.loads(meta.get("skipped", "[]"))})
    except Exception as e:  # a damaged cache is rebuilt, not fatal
        warnings.warn(f"ignoring unreadable cache {path}: {e}")
        return None


def _write_cache(folder: Path, name: str, ds: InMemoryDataset) -> Path | None:
    meta = {"version": CACHE_VERSION, "layout": "NHWC", "classes": json.dumps(ds.classes), "mean": json.dumps(ds.mean),
            "std": json.dumps(ds.std), "name": ds.name, "source": ds.source,
            "skipped": json.dumps(ds.info.get("skipped", []))}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(folder, names="*.resnet-u8.safetensors")  # writes of a cache killed earlier (SIGKILL)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            save_file({"images": ds.images.permute(0, 2, 3, 1).contiguous(),
                       "labels": ds.labels.contiguous()}, tmp, meta)
            shareable(tmp)  # mkstemp makes it private; a cache is shared
            os.replace(tmp, folder / name)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return folder / name
    except (OSError, SafetensorError):  # safetensors' writer reports a full disk (ENOSPC, EFBIG) as its own error
        return None


def load_image_folder(source: str | Path, split: str | None = "train",
                      cache_dir: str | Path | None = None, workers: int | None = None,
                      max_side: int = MAX_SIDE, skip_bad: bool = False) -> InMemoryDataset:
    """A class-per-folder tree (folder or archive) of small images, decoded once and cached.

    Mean/std are computed from the decoded images and stored in the cache. With ``skip_bad``,
    images that cannot be decoded or differ in size from the rest are left out and listed as
    (path, reason) in ``ds.info["skipped"]`` (also ``ds.skipped``); a cache that left images out
    is named apart and is never read by a load without ``skip_bad``."""
    source = Path(source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    names = [cache_name(source, split)] + ([cache_name(source, split, True)] if skip_bad else [])
    candidates = cache_dirs(source, Path(cache_dir) if cache_dir is not None else None)
    for name in names:
        for folder in candidates:
            if (folder / name).is_file():
                ds = _read_cache(folder / name)
                if ds is not None:
                    return ds
    t0 = time.perf_counter()
    index, images, labels = decode_source(source, split, workers=workers, max_side=max_side,
                                          skip_bad=skip_bad)
    mean, std = channel_stats(images)
    seconds = time.perf_counter() - t0
    skipped = [list(x) for x in index.skipped]
    ds = InMemoryDataset(images, labels, index.classes, mean, std, _stem(source),
                         str(source.resolve()), {"decode_seconds": round(seconds, 2), "skipped": skipped})
    if skipped:
        warnings.warn(f"{source}: left out {len(skipped)} bad file(s) (skip_bad); first: "
                      f"{skipped[0][0]}: {skipped[0][1]}")
    name = cache_name(source, split, bool(skipped))
    for folder in candidates:
        written = _write_cache(folder, name, ds)
        if written is not None:
            ds.info["cache"] = str(written)
            _remove_stale(written, ds.source)
            break
    else:
        warnings.warn(f"could not write a cache for {source} in {', '.join(map(str, candidates))}; "
                      "it will be decoded again next time")
    return ds


# --------------------------------------------------------------------------- batches
def _crop_nhwc(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, pad: int, mode: str = "zeros",
               size: int = 0) -> torch.Tensor:
    """Pad a contiguous uint8 B x H x W x C batch by ``pad`` (zeros, or `mode="reflect"`: mirrored
    about the edge pixels) and crop H x W (``size`` x ``size`` when given) at per-image offsets
    (oy, ox). One gather of whole crop rows: every row of the crop is contiguous in the padded batch,
    so an overlapping strided view lists each possible row."""
    b, hin, win, c = x.shape
    hp, wp = hin + 2 * pad, win + 2 * pad
    h, w = (size, size) if size else (hin, win)
    if not pad:
        xp = x
    elif mode == "reflect":  # two index gathers (uint8 has no reflection-pad kernel)
        xp = x.index_select(1, _reflect_index(hin, pad, x.device)).index_select(2, _reflect_index(win, pad, x.device))
    else:
        xp = torch.nn.functional.pad(x.view(b, hin, win * c), (pad * c, pad * c, pad, pad))
    rows = xp.reshape(-1).as_strided((b * hp * wp - w + 1, w * c), (c, 1))  # row k: W pixels from pixel k
    dev = x.device
    first = (torch.arange(b, device=dev) * hp + oy.to(dev)).view(b, 1) + torch.arange(h, device=dev)
    start = first * wp + ox.to(dev).view(b, 1)
    return rows.index_select(0, start.view(-1)).view(b, h, w, c)


def _reflect_index(n: int, pad: int, device) -> torch.Tensor:
    """Source positions of a length-n axis reflect-padded by `pad` (torch's "reflect": the edge is not repeated)."""
    i = torch.arange(-pad, n + pad, device=device).abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def _fits_on(device: torch.device, images: torch.Tensor) -> bool:
    """Whether to keep the images on a CUDA device: when they take under a quarter of its free memory."""
    if device.type != "cuda" or images.device == device:
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() < free // 4


class MemoryLoader:
    """Batches of (normalised float images, int64 labels) from uint8 images in memory.

    Shuffling and augmentation come from a generator seeded by (seed, epoch): call
    ``set_epoch(epoch)`` before iterating and a resumed run sees exactly the same batches.
    ``train=False`` keeps order and skips augmentation. Images are kept (or copied once) as
    B x H x W x C; outputs are channels_last unless ``channels_last=False``."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, drop_last: bool | None = None,
                 device: str | torch.device = "cpu", channels_last: bool = True, pad: int = 4,
                 flip: bool | str = True, augment=None, repeats: int = 1, pad_mode: str = "zeros",
                 early_crop: int = 0, early_crop_epochs: int = 0, augment_until: int | None = None):
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images_u8.dtype} "
                             f"{tuple(images_u8.shape)}")
        if labels.shape[0] != images_u8.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {images_u8.shape[0]} images")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.nhwc = images_u8.permute(0, 2, 3, 1)
        if not self.nhwc.is_contiguous():  # NCHW input: one copy, so batches gather whole rows
            self.nhwc = self.nhwc.contiguous()
        self.labels = labels.to(torch.int64)
        if _fits_on(torch.device(device), self.nhwc):
            # The whole uint8 set on the GPU (CIFAR-10: 150 MB): batches are gathered, cropped, flipped
            # and normalised there, with no copy from the host per step (CIFAR nets are launch-bound there).
            self.nhwc, self.labels = self.nhwc.to(device), self.labels.to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.drop_last = train if drop_last is None else drop_last
        self.device = torch.device(device)
        self.channels_last, self.pad, self.flip = channels_last, pad if train else 0, flip if train else False
        self.pad_mode = pad_mode
        # after crop and flip: a policy, erasing, Cutout (data/augment.py); repeated augmentation (data/sampling.py)
        self.augment, self.repeats = (augment, repeats) if train else (None, 1)
        _, c, h, w = images_u8.shape
        if early_crop and not 1 <= early_crop < min(h, w):
            raise ConfigError(f"data.early_crop must be below the images' {h}x{w}, got {early_crop}")
        # data.early_crop: the first early_crop_epochs train on random crops of the unpadded images, no Cutout
        self.early_crop, self.early_crop_epochs = (early_crop, early_crop_epochs) if train else (0, 0)
        self.augment_until = augment_until  # `augment` in epochs before this one only (None: all; data.no_augment_epochs)
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        if mean_t.numel() != c or std_t.numel() != c:
            raise ValueError(f"mean/std need {c} values, got {mean_t.numel()}/{std_t.numel()}")
        # x_norm = (x/255 - mean)/std = x*scale + shift: one fused op on the uint8 batch. The
        # per-channel vectors are tiled along a row (W x C) so the op broadcasts over a long
        # contiguous inner dimension instead of a 3-wide one (3x faster here).
        scale, shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        if channels_last:
            self._scale, self._shift = scale.repeat(w).to(self.device), shift.repeat(w).to(self.device)
        else:  # NCHW: transpose the uint8 batch (4x less to move), then broadcast over H*W
            self._scale, self._shift = scale.view(c, 1, 1).to(self.device), shift.view(c, 1, 1).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crop_side(self) -> int:
        """The side of this epoch's early crops; 0 when it trains on whole (padded) images."""
        return self.early_crop if self.epoch < self.early_crop_epochs else 0

    def __len__(self) -> int:
        n = self.nhwc.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self) -> torch.Generator:
        return epoch_generator(self.seed, self.epoch)

    def epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order, oy, ox, flip) for every position of this epoch (see `plan`)."""
        return self.plan()[:4]

    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict | None]:
        """(order, oy, ox, flip, augment choices) for every position of this epoch, drawn up front.
        Within each batch the images to mirror come first (batch order is immaterial to training), so a
        batch is mirrored with one slice instead of a scatter; not with repeated augmentation, whose
        layout of each global batch (epoch_order) puts the copies of an image on different processes."""
        n = self.nhwc.shape[0]
        if not self.train:
            z = torch.zeros(n, dtype=torch.long)
            return torch.arange(n), z, z, torch.zeros(n, dtype=torch.bool), None
        g = self._generator()
        order = epoch_order(n, g, self.repeats, self.batch_size)
        side, (h, w) = self.crop_side(), self.nhwc.shape[1:3]
        span_y, span_x = (h - side + 1, w - side + 1) if side else (2 * self.pad + 1,) * 2  # the crop's corners
        oy = torch.randint(0, span_y, (n,), generator=g)
        ox = torch.randint(0, span_x, (n,), generator=g)
        if self.flip == "alternate":  # a fixed random half of the images mirrored in even epochs, the rest in odd ones
            half = torch.rand(n, generator=epoch_generator(self.seed, -1)) < 0.5
            flip = half[order] ^ bool(self.epoch % 2)
        elif self.flip:
            flip = torch.rand(n, generator=g) < 0.5
        else:
            flip = torch.zeros(n, dtype=torch.bool)
        augmented = self.augment is not None and not side and (self.augment_until is None or self.epoch < self.augment_until)
        aug = self.augment.sample(n, g, (h, w)) if augmented else None
        if self.repeats > 1:  # keep epoch_order's layout: the copies of an image on different processes
            return order, oy, ox, flip, aug  # (batch() mirrors images anywhere in the batch)
        key = torch.arange(n) // self.batch_size * 2 + (~flip).long()
        group = torch.argsort(key, stable=True)
        return order[group], oy[group], ox[group], flip[group], None if aug is None else slice_params(aug, group)

    def batch(self, plan, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised (x, y) of the plan's positions `sl` (a whole batch, or a process's slice of one)."""
        order, oy, ox, flip, aug = plan
        idx = order[sl]
        x = self.nhwc.index_select(0, idx.to(self.nhwc.device))
        side = self.crop_side()
        if side:
            x = _crop_nhwc(x, oy[sl], ox[sl], 0, size=side)
        elif self.pad:
            x = _crop_nhwc(x, oy[sl], ox[sl], self.pad, self.pad_mode)
        mirror = flip[sl]
        k = int(mirror.sum())
        if k and bool(mirror[:k].all()):
            x[:k] = x[:k].flip(2)  # the flipped ones come first (plan)
        elif k:
            which = torch.nonzero(mirror).view(-1).to(x.device)
            x.index_copy_(0, which, x.index_select(0, which).flip(2))
        if aug is not None:
            x = self.augment.apply_nhwc(x, slice_params(aug, sl))
        return self.normalize(x), self.labels.index_select(0, idx.to(self.labels.device)).to(
            self.device, non_blocking=True)

    def normalize(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        """uint8 B x H x W x C -> float B x C x H x W on the device, (x/255 - mean)/std."""
        b, h, w, c = x_nhwc.shape
        x = x_nhwc.to(self.device, non_blocking=True)
        if not self.channels_last:
            return torch.addcmul(self._shift, x.permute(0, 3, 1, 2).contiguous(), self._scale)
        row = w * c  # the tiled vectors' first W pixels (fewer than the images' for early crops)
        return torch.addcmul(self._shift[:row], x.view(b, h, row), self._scale[:row]).view(b, h, w, c).permute(0, 3, 1, 2)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.plan()
        dev = self.nhwc.device
        if dev.type != "cpu":  # the epoch's plan to the device once, not three small copies a batch
            order, oy, ox, flip, aug = plan
            plan = (order.to(dev), oy.to(dev), ox.to(dev), flip, aug)  # flip stays: its counts are read
        for i in range(len(self)):
            yield self.batch(plan, slice(i * self.batch_size, (i + 1) * self.batch_size))
