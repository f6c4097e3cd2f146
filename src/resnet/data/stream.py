"""Large images streamed from a class-per-folder tree (the ImageNet layout) through a DataLoader.

Worker processes open, decode (at reduced JPEG scale where the preset allows) and augment each
image into uint8; the main process moves whole batches to the device (from pinned memory on CUDA)
and normalises them there in one pass. Shuffling and every random choice of the augmentation come
from generators seeded by (seed, epoch) and each image's place in the epoch, never from worker
state, so a resumed run sees exactly the batches an uninterrupted one would, whatever the number of
workers or of processes sharing the global batch (each rank takes its slice of every global batch).
"""
from __future__ import annotations

import math
import os
import tarfile
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image

from .cifar import SPECS as CIFAR_NAMES, cifar_archive_spec, detect_cifar_folder
from .digits import SIDES as DIGITS_NAMES
from .folder import FolderIndex, ImageDecodeError, _member_name, load_rgb, open_image, scan
from .sampling import epoch_order
from .split import epoch_generator, holdout
from .transforms import AUGMENTS, IMAGENET_MEAN, IMAGENET_STD, TESTS, eval_transform, normalize_batch, train_transform, \
    with_augment
from ..errors import ConfigError


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


class SampleReader:
    """Opens samples of a FolderIndex lazily (header only): file paths, or members of a tar archive
    through one handle per process (a handle does not survive a fork or a pickle)."""

    def __init__(self, index: FolderIndex):
        self.index = index
        self._tar, self._tar_pid, self._members = None, None, {}

    def open(self, key: str) -> tuple[Image.Image, str]:
        """(lazily opened image, the name errors use)."""
        if not self.index.is_archive:
            return open_image(key, key), key
        if self._tar is None or self._tar_pid != os.getpid():
            self._tar, self._tar_pid = tarfile.open(self.index.source, "r:*"), os.getpid()
            self._members = {_member_name(m): m for m in self._tar}
        name = f"{self.index.source}:{key}"
        with self._tar.extractfile(self._members[key]) as f:  # type: ignore[union-attr]
            return open_image(f.read(), name), name

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_tar=None, _tar_pid=None, _members={})
        return state


class TensorReader:
    """Samples of uint8 N x C x H x W images held in memory, opened as PIL images, so that the test
    presets (ten-crop, multi-scale) run on in-memory data exactly as on image files."""

    def __init__(self, images_u8: torch.Tensor, name: str = "images"):
        self.images, self.name = images_u8, name
        self.channels = int(images_u8.shape[1])

    def open(self, key) -> tuple[Image.Image, str]:
        pixels = self.images[int(key)].permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(pixels if pixels.shape[2] > 1 else pixels[:, :, 0]), f"{self.name}[{int(key)}]"


class Decode(torch.utils.data.Dataset):
    """dataset[(i, seed)] -> (pixels, lighting offset or None, label): sample i opened by `reader`
    and passed through `transform` with a generator seeded by `seed`. With `skip_bad`, an
    undecodable image is replaced by the next decodable one in training (and warned about); in
    evaluation (`leave_out`) it is left out (None, warned about): a replacement would count twice."""

    def __init__(self, reader, samples: list[tuple[str, int]], transform, skip_bad: bool = False,
                 leave_out: bool = False):
        self.reader, self.samples, self.transform, self.skip_bad = reader, samples, transform, skip_bad
        self.leave_out = leave_out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        i, seed = item
        if not self.skip_bad:
            return self.get(i, seed)
        if self.leave_out:
            try:
                return self.get(i, seed)
            except ImageDecodeError as e:
                warnings.warn(f"data.skip_bad: {e}; left out of the evaluation", stacklevel=2)
                return None
        for k in range(min(len(self.samples), 100)):
            try:
                return self.get((i + k) % len(self.samples), seed)
            except ImageDecodeError as e:
                warnings.warn(f"data.skip_bad: {e}; using the next image instead", stacklevel=2)
        raise ImageDecodeError(f"no decodable image among the 100 after {self.samples[i][0]}")

    def get(self, i: int, seed: int):
        """Sample i with the generator of `seed` (the one place a sample is read: a hook for tests
        that count decodes)."""
        key, label = self.samples[i]
        img, name = self.reader.open(key)
        with img:
            if getattr(img, "filename", None) in ("", None):
                img.filename = name  # for error messages
            out = self.transform(img, torch.Generator().manual_seed(seed))
        pixels, light = out if isinstance(out, tuple) else (out, None)
        channels = getattr(self.reader, "channels", 3)
        if channels == 1:  # the presets make RGB; a greyscale source comes back as its one channel
            pixels = [p[..., :1] for p in pixels] if isinstance(pixels, list) else pixels[..., :1]
        return pixels, light, label


class ImageFolderDataset(torch.utils.data.Dataset):
    """A class-per-folder tree as a torchvision-style dataset: ``ds[i] -> (transform(rgb PIL), label)``,
    decoded on demand (e.g. with :func:`resnet.data.transforms.eval_preset`).

    Works on a folder or an uncompressed ``.tar`` (a ``.tar.gz`` works but every read decompresses
    from the start: extract it first). The toolkit's own training and evaluation stream through
    :class:`StreamingFolder`, which batches and normalises on the device."""

    def __init__(self, root: str | Path, split: str | None = None, transform=None, target_transform=None):
        self.index = scan(root, split)
        self.classes, self.samples = self.index.classes, self.index.samples
        self.transform, self.target_transform = transform, target_transform
        self.reader = SampleReader(self.index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        key, label = self.samples[i]
        img, name = self.reader.open(key)
        with img:
            rgb = load_rgb(img, name=name)
        out = self.transform(rgb) if self.transform else rgb
        return out, (self.target_transform(label) if self.target_transform else label)


def _collate(items):
    items = [item for item in items if item is not None]  # images left out (Decode.leave_out)
    if not items:
        return None, None, None
    pixels, lights, labels = zip(*items)
    y = torch.tensor(labels, dtype=torch.int64)
    if isinstance(pixels[0], list):  # multi-scale: per image, one tensor per scale
        return list(pixels), None, y
    light = torch.stack(lights) if lights[0] is not None else None
    return torch.stack(pixels), light, y


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of (index, seed) keys: this rank's contiguous slice of every global batch of a
    (seed, epoch)-seeded permutation; per-image seeds belong to positions in the global order."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool | None = None,
                 rank: int = 0, world_size: int = 1, repeats: int = 1):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.repeats = n, batch_size, shuffle, seed, repeats
        self.drop_last = shuffle if drop_last is None else drop_last
        self.epoch, self.start = 0, 0
        self.shard(rank, world_size)

    def shard(self, rank: int, world_size: int) -> None:
        if self.batch_size % world_size:
            raise ConfigError(f"the global batch {self.batch_size} does not split over {world_size} processes: "
                             f"make data.batch_size a multiple of {world_size}")
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = epoch_generator(self.seed, self.epoch)
            order = epoch_order(self.n, g, self.repeats, self.batch_size).tolist()  # data/sampling.py
            seeds = torch.randint(0, 2 ** 62, (self.n,), generator=g).tolist()
        else:
            order, seeds = list(range(self.n)), [0] * self.n
        per_rank = self.batch_size // self.world_size
        start, self.start = self.start, 0
        for b in range(start, len(self)):
            start = b * self.batch_size
            end = min(start + self.batch_size, self.n)
            if end - start < self.batch_size and self.world_size > 1:  # the last, partial batch
                per_rank = math.ceil((end - start) / self.world_size)
            lo = min(start + self.rank * per_rank, end)
            hi = min(lo + per_rank, end)
            if lo < hi:  # a short last batch may leave the higher ranks nothing: no empty batch (it cannot be
                # collated), so those ranks yield one batch fewer. Training always drops the last batch;
                # only evaluation-style use (drop_last=False, world_size > 1) sees this.
                yield [(order[j], seeds[j]) for j in range(lo, hi)]


class StreamLoader:
    """Normalised (x, y) batches on `device` from a DataLoader over `Decode`; ``set_epoch`` first.

    x is B x C x H x W (channels_last), B x V x C x H x W for the ten-crop test, or for the
    multi-scale test a list (one per image) of lists (one per scale) of V x C x H x W tensors."""

    def __init__(self, dataset: Decode, sampler: EpochBatchSampler, mean, std, device="cpu",
                 channels_last: bool = True, workers: int = 0, persistent: bool = False):
        self.dataset, self.sampler = dataset, sampler
        self.mean, self.std = tuple(mean), tuple(std)
        self.device, self.channels_last = torch.device(device), channels_last
        self.workers, self.persistent = workers, persistent and workers > 0
        self._loader, self._skip = None, 0

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip_batches(self, count: int) -> None:
        """The next pass starts with `count` placeholder (None, None) batches that are never decoded
        (a mid-epoch resume skips the batches done before the interruption)."""
        self.sampler.start = self._skip = count

    def shard(self, rank: int, world_size: int) -> "StreamLoader":
        self.sampler.shard(rank, world_size)
        return self

    def __len__(self) -> int:
        return len(self.sampler)

    def _data_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            extra = dict(prefetch_factor=4, persistent_workers=self.persistent) if self.workers else {}
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.sampler, num_workers=self.workers, collate_fn=_collate,
                pin_memory=self.device.type == "cuda", **extra)
        return self._loader

    def _normalize(self, x, light=None):
        return normalize_batch(x, self.mean, self.std, light, self.device, self.channels_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip, self._skip = self._skip, 0
        for _ in range(skip):
            yield None, None
        for x, light, y in self._data_loader():
            if y is None:  # every image of the batch was left out (Decode.leave_out)
                continue
            if isinstance(x, list):
                x = [[self._normalize(v) for v in views] for views in x]
            else:
                x = self._normalize(x, light)
            yield x, y.to(self.device, non_blocking=True)


class StreamingFolder:
    """A class-per-folder tree of images of any size, decoded per batch: what the Trainer uses when
    images are too large to hold in memory. Mirrors InMemoryDataset's `classes`, `labels`, `mean`,
    `std`, `name`, `info`, `subset` and `loader`.

    `augment` is the training preset (``paper`` | ``rrc``), `image_size` the training crop,
    `val_image_size` the evaluation crop (default image_size: train and test at different sizes, as
    FixRes, torchvision's 176/224 and RSB A3's 160/224), `resize` the shorter side before the centre
    crop of evaluation (default val_image_size * 256/224), `test` the evaluation preset (``center`` |
    ``ten-crop`` | ``multi-scale``)."""

    in_chans = 3

    def __init__(self, source: str | Path, split: str | None = "train", image_size: int = 224,
                 augment: str = "paper", resize: int = 0, test: str = "center", workers: int = -1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 interpolation: str = "bilinear", lighting: float | None = None, skip_bad: bool = False,
                 index: FolderIndex | None = None, samples: list[tuple[str, int]] | None = None,
                 val_image_size: int = 0):
        if augment not in AUGMENTS:
            raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        if test not in TESTS:
            raise ConfigError(f"the test must be one of {', '.join(TESTS)}, got {test!r}")
        self.index = index if index is not None else scan(source, split, skip_bad=skip_bad)
        if index is None and self.index.is_archive and str(source).lower().endswith((".gz", ".tgz")):
            warnings.warn(f"{source}: streaming from a compressed archive decompresses from its start on every "
                          "random read; extract it (or use an uncompressed .tar) for speed", stacklevel=2)
        self.samples = list(self.index.samples if samples is None else samples)
        self.classes = self.index.classes
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.source, self.split = str(source), split
        self.name = Path(str(source).rstrip("/")).name.split(".tar")[0].split(".tgz")[0]
        self.image_size, self.augment, self.test = image_size, augment, test
        self.val_image_size = val_image_size or image_size
        self.resize = resize or round(self.val_image_size * 256 / 224)
        self.workers = default_workers() if workers < 0 else workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.interpolation, self.lighting, self.skip_bad = interpolation, lighting, skip_bad
        self.info: dict = {"skipped": list(getattr(self.index, "skipped", None) or [])}  # as InMemoryDataset.info

    @property
    def input_size(self) -> int:
        """The side the model is evaluated (and should be used) at."""
        return self.val_image_size

    def __len__(self) -> int:
        return len(self.samples)

    def _options(self) -> dict:
        return dict(image_size=self.image_size, augment=self.augment, resize=self.resize, test=self.test,
                    workers=self.workers, mean=self.mean, std=self.std, interpolation=self.interpolation,
                    lighting=self.lighting, skip_bad=self.skip_bad, val_image_size=self.val_image_size)

    def subset(self, indices) -> "StreamingFolder":
        idx = torch.as_tensor(indices, dtype=torch.long).tolist()
        return StreamingFolder(self.source, self.split, index=self.index, samples=[self.samples[i] for i in idx],
                               **self._options())

    def with_options(self, **changes) -> "StreamingFolder":
        return StreamingFolder(self.source, self.split, index=self.index, samples=self.samples,
                               **{**self._options(), **changes})

    def loader(self, batch_size: int, train: bool, seed: int = 0, device="cpu", channels_last: bool = True,
               flip: bool = True, drop_last: bool | None = None, rank: int = 0, world_size: int = 1,
               augment=None, repeats: int = 1, **_ignored) -> StreamLoader:
        """Training batches (shuffled, augmented, drop_last) or evaluation batches (in order, the test
        preset). `augment` (data/augment.py ImageAugment) runs per image in the workers after crop and
        flip; `repeats` > 1 is repeated augmentation. Keywords of MemoryLoader that do not apply here
        (pad, pad_mode, early_crop, augment_until: the Trainer rejects their settings on streamed data) are ignored."""
        if train:
            transform = with_augment(train_transform(self.augment, self.image_size, flip, self.lighting,
                                                     self.interpolation), augment)
        else:
            transform = eval_transform(self.test, self.val_image_size, self.resize, self.interpolation)
        sampler = EpochBatchSampler(len(self), batch_size, shuffle=train, seed=seed, drop_last=drop_last,
                                    rank=rank, world_size=world_size, repeats=repeats if train else 1)
        dataset = Decode(SampleReader(self.index), self.samples, transform, self.skip_bad, leave_out=not train)
        return StreamLoader(dataset, sampler, self.mean, self.std, device, channels_last, self.workers,
                            persistent=train)


def tensor_view_loader(images_u8: torch.Tensor, labels: torch.Tensor, transform, batch_size: int, mean, std,
                       device="cpu", name: str = "images", workers: int = 0) -> StreamLoader:
    """Evaluation batches of in-memory uint8 N x C x H x W images through a per-image test preset
    (ten-crop, multi-scale): the streamed pipeline with the tensor as its source."""
    samples = [(i, int(label)) for i, label in enumerate(labels.tolist())]
    dataset = Decode(TensorReader(images_u8, name), samples, transform)
    return StreamLoader(dataset, EpochBatchSampler(len(samples), batch_size, shuffle=False), mean, std, device,
                        True, workers)


def streaming_split(cfg) -> tuple[StreamingFolder, StreamingFolder | None]:
    """split_train_val for large images: the same seeded, stratified hold-out, streamed."""
    d = cfg.data
    p = Path(d.path).expanduser()
    if (d.path in CIFAR_NAMES or d.path in DIGITS_NAMES) and not p.exists() \
            or p.is_dir() and detect_cifar_folder(p) is not None or p.is_file() and cifar_archive_spec(p):
        raise ConfigError(f"data.stream=true streams image files; {d.path} is "
                          f"{'the digits arrays' if d.path in DIGITS_NAMES else 'CIFAR batches'}, held in memory: "
                          "leave data.stream false for it")
    data = StreamingFolder(d.path, "train", image_size=d.image_size, augment=d.augment, resize=d.resize,
                           workers=d.workers, skip_bad=d.skip_bad, val_image_size=d.val_image_size,
                           interpolation=d.interpolation)
    return holdout(data, d.val_size, cfg.holdout_seed)


def image_channels(data) -> int:
    """Input channels of an InMemoryDataset or a StreamingFolder."""
    return int(data.in_chans) if hasattr(data, "in_chans") else int(data.images.shape[1])


def input_size(data) -> int:
    return int(data.input_size) if hasattr(data, "input_size") else int(data.images.shape[-1])


def train_size(data) -> int:
    """The side the model trains at: a StreamingFolder's training crop (data.image_size, which may differ from
    the evaluation crop `input_size`, as torchvision's 176/224), else the images' own."""
    return int(data.image_size) if isinstance(data, StreamingFolder) else int(data.images.shape[-1])


def train_shape(data) -> tuple[int, int]:
    """(height, width) the model trains at: `train_size` squared for streamed data (square crops), else the
    in-memory images' own (they may be wider than tall)."""
    if isinstance(data, StreamingFolder):
        return train_size(data), train_size(data)
    return int(data.images.shape[-2]), int(data.images.shape[-1])


def preprocess_meta(data) -> dict:
    """What `predict` / `eval` need to preprocess like the training run's evaluation."""
    if isinstance(data, StreamingFolder):
        return {"resize": data.resize, "interpolation": data.interpolation, "streamed": True}
    return {}
