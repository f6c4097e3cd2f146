"""`resnet eval`: a checkpoint or named weights scored on a dataset split; the numbers and optional plots.

In-memory data (CIFAR, small image folders): `run_eval`. Image folders of any size:
`run_eval_stream`, with a single centre crop, the paper's 10-crop test, or the fully-convolutional
multi-scale test [ResNet §3.4], for checkpoints and pretrained weights.

Scores of several views are averaged as probabilities (softmax), as Krizhevsky et al. and the
paper do; the reported loss is then the negative log of the averaged probability of the true class.
An evaluation folder may hold a subset of the model's classes: folders named like the model's
classes, or ImageNet's WordNet ids (n01440764 ...) for ImageNet weights, are matched by name.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..data import DatasetLayoutError, ImagesTooLargeError, MemoryLoader, load_dataset
from ..data.split import holdout
from ..data.stream import StreamingFolder
from ..deploy.backends import first_images, inference_model
from ..engine.evaluate import evaluate
from ..engine.precision import default_device
from .predict import load_any


def _whole_if_no_test(meta: dict, load_test, load_train, data: str):
    """The test split; for pretrained weights (no training run to hold images out of) on data with
    no test split, all of the data's images instead, said on stderr. Returns (images, split scored)."""
    try:
        return load_test(), "test"
    except DatasetLayoutError:
        if meta.get("config"):
            raise
    ds = load_train()
    print(f"note: {data} has no test split; scoring all {len(ds)} of its images", file=sys.stderr)
    return ds, "train"


def eval_data(meta: dict, path: str, split: str, cache_dir: str | None = None):
    """The images to evaluate on. `val` rebuilds the training run's hold-out from its seed and size."""
    return _eval_data(meta, path, split, cache_dir)[0]


def _eval_data(meta: dict, path: str, split: str, cache_dir: str | None = None):
    if split == "test":
        return _whole_if_no_test(meta, lambda: load_dataset(path, "test", cache_dir=cache_dir),
                                 lambda: load_dataset(path, "train", cache_dir=cache_dir), path)
    data = load_dataset(path, "train", cache_dir=cache_dir)
    if split == "train":
        return data, split
    cfg = meta.get("config", {})
    _, val = holdout(data, cfg.get("data", {}).get("val_size", 5000), cfg.get("seed", 0))
    if val is None:
        raise ValueError("this checkpoint's run had no validation split (data.val_size=0); use --split test")
    return val, split


def run_eval(checkpoint: str | None, data: str, split: str = "test", precision: str = "auto", tta_flip: bool = False,
             batch_size: int = 1000, plots: str | None = None, device=None, backend: str = "auto",
             weights: str | None = None, model: str | None = None) -> dict:
    """Top-1/top-5 error, loss and per-class accuracy of a checkpoint (or of `weights`) on `data`
    held in memory, run through the inference `backend` (see `inference.inference_model`)."""
    net, meta = load_any(checkpoint, weights, model)
    ds, split = _eval_data(meta, data, split)
    return _score_in_memory(net, meta, ds, dict(split=split, checkpoint=str(checkpoint or weights), data=data),
                            precision, tta_flip, batch_size, plots, device, backend)


def _score_in_memory(net, meta: dict, ds, info: dict, precision: str, tta_flip: bool, batch_size: int,
                     plots: str | None, device, backend: str) -> dict:
    device = torch.device(device) if device else default_device()
    classes = meta.get("classes") or ds.classes
    if len(ds.classes) != len(classes):
        whose = "checkpoint's" if meta.get("config") else "weights'"
        raise ValueError(f"{info['data']} has {len(ds.classes)} classes but the {whose} head has {len(classes)}")
    # The checkpoint's normalisation, not the dataset's: a model sees inputs as it was trained.
    loader = MemoryLoader(ds.images, ds.labels, batch_size, train=False, mean=meta["mean"], std=meta["std"],
                          device=device, channels_last=True)
    net, prec = inference_model(net, backend, precision, device, lambda: first_images(loader))
    result = evaluate(net, loader, prec, len(classes), tta_flip)
    result.update(classes=classes, split=info["split"], checkpoint=info["checkpoint"], backend=backend)
    if plots:
        from ..engine.plots import plot_confusion

        Path(plots).mkdir(parents=True, exist_ok=True)
        result["confusion_png"] = str(plot_confusion(result["confusion"], classes, Path(plots) / "confusion.png"))
    return result


def evaluate_weights(data: str, weights: str, model: str | None = None, split: str = "test", test: str = "center",
                     precision: str = "auto", tta_flip: bool = False, batch_size: int | None = None, workers: int = -1,
                     plots: str | None = None, device=None, backend: str = "auto") -> dict:
    """`resnet eval --weights`: a small-image network (CIFAR's 32x32) on images of its input size is
    scored in memory (decoded once and cached); anything else is streamed with the weights' resize and crop."""
    net, meta = load_any(None, weights, model)
    size = int(meta.get("input_size") or 224)
    if test == "center" and size <= 64 and int(meta.get("resize") or size) == size:
        try:
            ds, used = _eval_data(meta, data, split)
        except ImagesTooLargeError:
            ds = None
        if ds is not None and int(ds.images.shape[-1]) == size:
            return _score_in_memory(net, meta, ds, dict(split=used, checkpoint=weights, data=data), precision,
                                    tta_flip, batch_size or 1000, plots, device, backend)
    return run_eval_stream(data, weights=weights, model=model, split=split, test=test, precision=precision,
                           batch_size=batch_size or 64, workers=workers, plots=plots, device=device, backend=backend,
                           loaded=(net, meta))


class ViewAverage(nn.Module):
    """Wraps a classifier: B x V x C x H x W (ten-crop) or per-image lists of per-scale V x C x H x W
    tensors (multi-scale) -> log of the view-averaged softmax, usable wherever logits are."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last)).float().softmax(1)

    def forward(self, x):
        if isinstance(x, list):
            probs = [torch.cat([self._probs(v) for v in scales]).mean(0, keepdim=True) for scales in x]
            return torch.cat(probs).clamp_min(1e-30).log()
        if x.ndim == 5:
            b, v = x.shape[:2]
            return self._probs(x.flatten(0, 1)).view(b, v, -1).mean(1).clamp_min(1e-30).log()
        return self.model(x)


def label_map(data_classes: list[str], model_classes: list[str] | None, num_classes: int) -> list[int]:
    """Model index of each of the data's classes (by name, by ImageNet WordNet id, or by position)."""
    if model_classes and all(c in model_classes for c in data_classes):
        return [model_classes.index(c) for c in data_classes]
    if num_classes == 1000:
        from ..weights import imagenet_wnids

        wnids = imagenet_wnids()
        if all(c in wnids for c in data_classes):
            return [wnids.index(c) for c in data_classes]
    if len(data_classes) == num_classes:
        if model_classes:
            warnings.warn("the data's class folders are named differently from the model's classes; "
                          "matching them by sorted position", stacklevel=2)
        return list(range(num_classes))
    raise ValueError(f"the data has {len(data_classes)} classes ({', '.join(data_classes[:4])} ...) that do not "
                     f"match the model's {num_classes} by name, and their numbers differ")


def eval_folder(meta: dict, data: str, split: str, test: str, workers: int = -1) -> StreamingFolder:
    """The images to score, with the model's preprocessing; `val` is the training run's hold-out."""
    size = int(meta["input_size"])
    opts = dict(image_size=size, resize=int(meta.get("resize") or size), test=test, workers=workers,
                mean=meta["mean"], std=meta["std"], interpolation=meta.get("interpolation", "bilinear"))
    if split == "test":
        return _whole_if_no_test(meta, lambda: StreamingFolder(data, "test", **opts),
                                 lambda: StreamingFolder(data, "train", **opts), data)[0]
    ds = StreamingFolder(data, "train", **opts)
    if split == "train":
        return ds
    cfg = meta.get("config")
    if not cfg:
        raise ValueError("--split val needs a checkpoint of a training run (it rebuilds that run's hold-out); "
                         "use --split test")
    _, val = holdout(ds, cfg.get("data", {}).get("val_size", 5000), cfg.get("seed", 0))
    if val is None:
        raise ValueError("this checkpoint's run had no validation split (data.val_size=0); use --split test")
    return val


class _Mapped:
    def __init__(self, loader, mapping: torch.Tensor):
        self.loader, self.mapping = loader, mapping

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x, self.mapping.to(y.device)[y]


def run_eval_stream(data: str, checkpoint: str | None = None, weights: str | None = None, model: str | None = None,
                    split: str = "test", test: str = "center", precision: str = "auto", batch_size: int = 64,
                    workers: int = -1, plots: str | None = None, device=None, backend: str = "auto",
                    loaded=None) -> dict:
    """Top-1/top-5 error (%), loss and per-class accuracy of a checkpoint or of pretrained weights on
    an image folder, with the `test` preset (center | ten-crop | multi-scale)."""
    net, meta = loaded or load_any(checkpoint, weights, model)
    device = torch.device(device) if device else default_device()
    num_classes = net.fc.out_features
    ds = eval_folder(meta, data, split, test, workers)
    mapping = torch.tensor(label_map(ds.classes, meta.get("classes"), num_classes))
    if test == "multi-scale":
        batch_size = min(batch_size, 8)  # whole images of different shapes: scored one by one
    loader = _Mapped(ds.loader(batch_size, train=False, device=device), mapping)
    # int8 calibrates on centre crops of the first images (views of one size; labels unused)
    calibration = lambda: first_images(eval_folder(meta, data, split, "center", workers).loader(  # noqa: E731
        min(batch_size, 64), train=False, device=device))
    net, prec = inference_model(net, backend, precision, device, calibration)
    scorer = ViewAverage(net) if test != "center" else net
    result = evaluate(scorer, loader, prec, num_classes)
    confusion = torch.tensor(result["confusion"])
    rows = confusion[mapping]
    per_class = rows.gather(1, mapping.view(-1, 1)).view(-1).double() / rows.sum(1).clamp(min=1).double()
    result.update(per_class_acc=[100.0 * float(a) for a in per_class], classes=list(ds.classes), split=split,
                  test=test, backend=backend, checkpoint=str(checkpoint or weights), weights=weights, model=meta.get("model"))
    if plots:
        from ..engine.plots import plot_confusion

        Path(plots).mkdir(parents=True, exist_ok=True)
        sub = rows[:, mapping].tolist()
        result["confusion_png"] = str(plot_confusion(sub, list(ds.classes), Path(plots) / "confusion.png"))
    del result["confusion"]
    result["confusion"] = rows[:, mapping].tolist()
    return result
