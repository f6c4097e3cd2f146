"""One comparison with fp32: how far a backend's or an exported model's logits are from the eager
fp32 model's, and the images the comparison runs on (random normalised inputs, or real images of
a dataset with the model's own preprocessing)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import DatasetLayoutError, ImagesTooLargeError, StreamingFolder, load_split
from ..data.cifar import cifar_archive_spec, detect_cifar_folder
from ..data.split import run_holdout
from ..data.stream import tensor_view_loader
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from ..errors import ConfigError, DataError, ExportParityError
from ..weights.sources import imagenet_wnids

# Export parity: |exported - torch| <= ATOL + RTOL * max|torch| over every logit. Folding BN and
# the runtimes' different summation orders move fp32 logits by ~1e-6 relative; a wrong graph by >1%.
ATOL, RTOL = 1e-4, 1e-3


def compare(reference: torch.Tensor, output, labels: torch.Tensor | None = None) -> dict:
    """Logits against the fp32 reference: n, top-1 agreement (fraction), max abs and relative
    difference; with `labels`, both accuracies (%)."""
    reference, output = reference.float(), torch.as_tensor(output).float()
    if reference.shape != output.shape:
        raise ExportParityError(f"output shape {tuple(output.shape)} != the reference's {tuple(reference.shape)}")
    max_abs = float((reference - output).abs().max())
    result = {"n": reference.shape[0], "agreement": float((reference.argmax(1) == output.argmax(1)).float().mean()),
              "max_abs_diff": max_abs, "max_rel_diff": max_abs / max(float(reference.abs().max()), 1e-12),
              "finite": bool(torch.isfinite(output).all())}
    if labels is not None:
        result["accuracy_fp32"] = 100.0 * float((reference.argmax(1) == labels).float().mean())
        result["accuracy"] = 100.0 * float((output.argmax(1) == labels).float().mean())
    return result


def check_close(reference: torch.Tensor, output, what: str, atol: float = ATOL, rtol: float = RTOL) -> dict:
    """`compare`, then ExportParityError past the tolerance: an export that computes something
    else is an error, not a warning. Returns the report `resnet export` prints."""
    try:
        c = compare(reference, output)
    except ExportParityError as e:
        raise ExportParityError(f"{what}: {e}") from None
    scale = float(reference.abs().max())
    ok = c["finite"] and c["max_abs_diff"] <= atol + rtol * scale
    if not ok:
        raise ExportParityError(f"{what}: exported model differs from PyTorch: max abs diff {c['max_abs_diff']:.3g}, "
                                f"relative {c['max_rel_diff']:.3g} (allowed {atol:g} + {rtol:g} x {scale:.3g}), "
                                f"top-1 agreement {100 * c['agreement']:.1f}%")
    return {"inputs": what, "n": c["n"], "max_abs_diff": c["max_abs_diff"], "max_rel_diff": c["max_rel_diff"],
            "top1_agreement": c["agreement"], "ok": ok}


@torch.no_grad()
def logits(fn, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """fp32 logits of `fn` (a module or a backend's predictor) on `images`, `batch_size` at a time."""
    return torch.cat([torch.as_tensor(fn(images[i:i + batch_size])).float()
                      for i in range(0, images.shape[0], batch_size)])


def compare_with_fp32(model: nn.Module, predictor, images: torch.Tensor, labels: torch.Tensor | None = None,
                      batch_size: int = 256) -> dict:
    """`compare` of `predictor` with the eager fp32 `model` (BN as trained) on `images`."""
    return compare(logits(model.eval(), images, batch_size), logits(predictor, images, batch_size), labels)


# --------------------------------------------------------------------------- inputs
def class_mapping(data_classes: list[str], model_classes: list[str] | None, num_classes: int,
                  by_position: bool = False, data: str = "the data", head: str = "the model's") -> list[int]:
    """Model index of each of the data's classes: by name, by ImageNet WordNet id, or (only when
    the model has no class names, or with `by_position`) by sorted position. `data` and `head`
    name the two sides in the errors."""
    if model_classes and all(c in model_classes for c in data_classes):
        return [list(model_classes).index(c) for c in data_classes]
    if num_classes == 1000:
        wnids = imagenet_wnids()
        if all(c in wnids for c in data_classes):
            return [wnids.index(c) for c in data_classes]
    if len(data_classes) == num_classes and (by_position or not model_classes):
        return list(range(num_classes))
    if len(data_classes) == num_classes:
        raise DataError(f"the data's classes ({_names(data_classes)}) are not the model's ({_names(model_classes)}); "
                        "rename the folders, or pass --map-classes-by-position to pair them in sorted order")
    raise DataError(f"{data} has {len(data_classes)} classes but {head} head has {num_classes}, and their names "
                    f"do not match ({_names(data_classes)})")


def _names(names, shown: int = 10) -> str:
    names = list(names)
    return ", ".join(names[:shown]) + (f" ... ({len(names)} in all)" if len(names) > shown else "")


def random_images(n: int, image_size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Standard-normal inputs: what normalised images look like to the first layer."""
    return torch.randn(n, channels, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def batch_inputs(images: torch.Tensor, batch: int) -> torch.Tensor:
    """A contiguous batch of `batch` images cut from `images`, repeating them when there are too few."""
    reps = -(-batch // images.shape[0])
    return images.repeat(reps, 1, 1, 1)[:batch].contiguous() if reps > 1 else images[:batch].contiguous()


def real_images(data: str, meta: dict, n: int, image_size: int | None = None, seed: int = 0,
                split: str = "val", channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`n` images of a dataset, normalised with the model's mean/std and resized to `image_size`,
    their labels and the dataset's class names (labels index these, not the model's classes:
    `class_mapping` pairs the two).

    `split='val'` takes the training run's hold-out (as `resnet eval --split val`) when the
    description has a training config, else random images of the training set; `split='train'` with a
    training config the images that run trained on (not its hold-out), else any training images. Images too large to
    hold in memory (an ImageNet folder) are streamed: only the `n` taken are decoded, through the
    model's resize and centre crop, as `resnet eval` sees them; so are those of image files for a model that
    expects a resize and crop, as `resnet eval` reads them (`serve.evaluate.eval_dataset`). Images held in
    memory (CIFAR's batches) go through that resize and crop too, unless the model takes them as they are.
    `channels`: the model's input channels, checked against the images' (one line, not a shape error inside)."""
    def take(split):
        if expects_crop(meta) and image_files(data):
            return _streamed_images(data, meta, n, image_size, seed, split)
        try:
            return _in_memory_images(data, meta, n, image_size, seed, split)
        except ImagesTooLargeError:
            return _streamed_images(data, meta, n, image_size, seed, split)
    try:
        taken = take(split)
    except DatasetLayoutError:  # no training split (ImageNet's val/ alone): without a run to hold images out of,
        if split == "test" or meta.get("config"):  # any images will do, as `resnet eval` scores such data whole
            raise
        taken = take("test")
    if channels is not None and taken[0].shape[1] != channels:
        raise DataError(f"{data} has {taken[0].shape[1]}-channel images, the model takes {channels}-channel ones")
    return taken


def expects_crop(meta: dict) -> bool:
    """Whether a model sees its images through a resize and centre crop (pretrained weights, streamed runs)
    rather than as they are (runs that held their images in memory): `resnet eval` feeds it so on every data."""
    size = int(meta.get("input_size") or 0)
    return bool(meta.get("streamed")) or bool(size) and int(meta.get("resize") or size) != size


def image_files(data: str) -> bool:
    """Whether `data` is an image tree (a folder or an archive of image files) a StreamingFolder reads, not
    CIFAR's batch files or a named data set ('cifar10', 'digits')."""
    p = Path(data).expanduser()
    if not p.exists():
        return False
    return not (detect_cifar_folder(p) is not None if p.is_dir() else cifar_archive_spec(p) is not None)


def as_is(meta: dict, images: torch.Tensor) -> bool:
    """Whether images held in memory (N x C x H x W) go to the model as they are: a model that expects no
    crop, on images of its own width (a run on the data it held in memory). Otherwise they take its resize
    and centre crop, as streamed images do (e.g. timm's weights at crop_pct 1.0, 288 -> 288, on CIFAR)."""
    return not expects_crop(meta) and images.shape[-1] == int(meta.get("input_size") or images.shape[-1])


def _in_memory_images(data: str, meta: dict, n: int, image_size: int | None, seed: int, split: str):
    ds = None
    if split == "val" and meta.get("config"):
        try:
            ds = load_split(data, "val", meta["config"])
        except ConfigError:  # that run held nothing out: any training images will do
            ds = None
    if ds is None:
        ds = load_split(data, "test" if split == "test" else "train")
        ds = _run_part(ds, meta, split) if split == "train" else ds  # (val came from load_split, with skip_bad)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n] if n < len(ds) else torch.arange(len(ds))
    if not as_is(meta, ds.images):  # e.g. ImageNet weights on CIFAR: 32 -> 256 -> centre 224, not 32 -> 224
        size, resize = _crop_sizes(meta, image_size)
        transform = eval_transform("center", size, resize, meta.get("interpolation", "bilinear"))
        loader = tensor_view_loader(ds.images[idx], ds.labels[idx], transform, 64, meta.get("mean") or ds.mean,
                                    meta.get("std") or ds.std)
        return torch.cat([x for x, _ in loader]).float().contiguous(), ds.labels[idx], list(ds.classes)
    x = ds.images[idx].float().div_(255)
    mean = torch.tensor(meta.get("mean") or ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.get("std") or ds.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    if image_size and x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous(), ds.labels[idx], list(ds.classes)


def _run_part(ds, meta: dict, split: str):
    """Of a training run's data: its hold-out (split='val') or the images it trained on ('train'); all of `ds`
    for another split, without a run, or when the run held nothing out."""
    if split not in ("val", "train") or not meta.get("config"):
        return ds
    try:
        return run_holdout(ds, meta["config"], part=split)
    except ConfigError:  # no hold-out: any of its images will do
        return ds


def _crop_sizes(meta: dict, image_size: int | None) -> tuple[int, int]:
    """(crop, shorter side before it): the model's own, or at another `image_size` the usual 224/256 margin."""
    size = image_size or int(meta.get("input_size") or 224)
    resize = int(meta.get("resize") or 0) if not image_size or image_size == meta.get("input_size") else 0
    return size, resize or round(size * 256 / 224)


def _streamed_images(data: str, meta: dict, n: int, image_size: int | None, seed: int, split: str):
    size, resize = _crop_sizes(meta, image_size)
    skip_bad = split == "val" and bool((meta.get("config") or {}).get("data", {}).get("skip_bad"))  # as eval's
    ds = StreamingFolder(data, "test" if split == "test" else "train", image_size=size, resize=resize, workers=0,
                         mean=meta.get("mean") or IMAGENET_MEAN, std=meta.get("std") or IMAGENET_STD,
                         interpolation=meta.get("interpolation", "bilinear"), skip_bad=skip_bad)
    ds = _run_part(ds, meta, split)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n] if n < len(ds) else torch.arange(len(ds))
    batches = list(ds.subset(idx).loader(min(len(idx), 64), train=False, channels_last=False))
    return (torch.cat([x for x, _ in batches]).float().contiguous(), torch.cat([y for _, y in batches]),
            list(ds.classes))
