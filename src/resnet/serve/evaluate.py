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

import warnings
from pathlib import Path

import torch
from torch import nn

from ..data import MemoryLoader, load_dataset
from ..data.split import holdout
from ..data.stream import StreamingFolder
from ..deploy.backends import first_images, inference_model
from ..engine.checkpoint import load_model
from ..engine.evaluate import evaluate
from ..engine.precision import default_device
from .predict import load_any


def eval_data(meta: dict, path: str, split: str, cache_dir: str | None = None):
    """The images to evaluate on. `val` rebuilds the training run's hold-out from its seed and size."""
    if split == "test":
        return load_dataset(path, "test", cache_dir=cache_dir)
    data = load_dataset(path, "train", cache_dir=cache_dir)
    if split == "train":
        return data
    cfg = meta.get("config", {})
    _, val = holdout(data, cfg.get("data", {}).get("val_size", 5000), cfg.get("seed", 0))
    if val is None:
        raise ValueError("this checkpoint's run had no validation split (data.val_size=0); use --split test")
    return val


def run_eval(checkpoint: str, data: str, split: str = "test", precision: str = "auto", tta_flip: bool = False,
             batch_size: int = 1000, plots: str | None = None, device=None, backend: str = "auto") -> dict:
    """Top-1/top-5 error, loss and per-class accuracy of a checkpoint on `data`, run through the
    inference `backend` (see `inference.inference_model`)."""
    model, meta = load_model(checkpoint)
    device = torch.device(device) if device else default_device()
    ds = eval_data(meta, data, split)
    classes = meta.get("classes") or ds.classes
    if len(ds.classes) != len(classes):
        raise ValueError(f"{data} has {len(ds.classes)} classes but the checkpoint's head has {len(classes)}")
    # The checkpoint's normalisation, not the dataset's: a model sees inputs as it was trained.
    loader = MemoryLoader(ds.images, ds.labels, batch_size, train=False, mean=meta["mean"], std=meta["std"],
                          device=device, channels_last=True)
    net, prec = inference_model(model, backend, precision, device, lambda: first_images(loader))
    result = evaluate(net, loader, prec, len(classes), tta_flip)
    result.update(classes=classes, split=split, checkpoint=str(checkpoint), backend=backend)
    if plots:
        from ..engine.plots import plot_confusion

        Path(plots).mkdir(parents=True, exist_ok=True)
        result["confusion_png"] = str(plot_confusion(result["confusion"], classes, Path(plots) / "confusion.png"))
    return result


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
        return StreamingFolder(data, "test", **opts)
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
                    workers: int = -1, plots: str | None = None, device=None, backend: str = "auto") -> dict:
    """Top-1/top-5 error (%), loss and per-class accuracy of a checkpoint or of pretrained weights on
    an image folder, with the `test` preset (center | ten-crop | multi-scale)."""
    net, meta = load_any(checkpoint, weights, model)
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
