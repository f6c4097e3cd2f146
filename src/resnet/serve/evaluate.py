"""`resnet eval`: a checkpoint or pretrained weights scored on a dataset split; the numbers and optional plots.

One road for every kind of data: CIFAR and small image folders are held in memory, larger images
are streamed, and either way the model sees its own preprocessing (the checkpoint's mean/std, the
weights' resize and crop). The test presets: a single centre crop (`--tta-flip` averages it with its
mirror), the paper's 10-crop test, or the fully-convolutional multi-scale test [ResNet §3.4]; the
last two include the mirrors already. In-memory images take the 10-crop and multi-scale tests
through the same PIL presets as image files.

The ten-crop and multi-scale tests average their views as probabilities (softmax), as Krizhevsky et
al. and the paper do; the reported loss is then the negative log of the averaged probability of the
true class. `--tta-flip` averages logits, as training's `tta_flip` validation (airbench's TTA) does:
the committed speedrun and `cifar10_fast` check numbers were measured so.
An evaluation folder may hold a subset of the model's classes: folders named like the model's
classes, or ImageNet's WordNet ids (n01440764 ...) for ImageNet weights, are matched by name.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..data import DatasetLayoutError, ImagesTooLargeError, MemoryLoader, StreamingFolder, has_test_split, load_split
from ..data.cifar import fetch_named
from ..data.split import run_holdout
from ..data.stream import image_channels, tensor_view_loader
from ..data.transforms import MULTI_SCALES, eval_transform
from ..deploy.backends import first_images, require_dynamic_sizes
from ..deploy.choose import inference_model
from ..deploy.parity import as_is, class_mapping, expects_crop, image_files  # (`benchmark --data` reads too)
from ..engine.checkpoint import resolve_weights_path
from ..engine.evaluate import evaluate
from ..engine.plots import plot_confusion
from ..engine.precision import default_device
from ..errors import ConfigError, DataError
from .load import load, num_outputs


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


def view_work(test: str, tta_flip: bool = False) -> int:
    """How many centre crops' worth of compute a test preset runs an image through, for `--backend auto`'s
    judgement of whether a fast backend pays for its preparation: 10 for ten-crop, 2 with --tta-flip, and for
    the multi-scale test its scales' pixels (a square image's shorter side at 224..640 for 224-pixel crops),
    mirrored: about 36."""
    if test == "ten-crop":
        return 10
    if test == "multi-scale":
        return round(2 * sum((s / MULTI_SCALES[0]) ** 2 for s in MULTI_SCALES))
    return 2 if tta_flip else 1


def eval_dataset(meta: dict, data: str, split: str, workers: int = -1, test: str = "center"):
    """The images to score: an InMemoryDataset (CIFAR, digits, small image folders) or a
    StreamingFolder (large images, and models that expect a resize and crop: pretrained weights,
    streamed runs), with the model's preprocessing. `val` is the training run's hold-out."""
    source_split = "test" if split == "test" else "train"
    size = int(meta["input_size"])
    # CIFAR's batches and the named data sets have no image files to stream: held in memory, they take
    # the model's resize and crop in `eval_loader`
    streamed = expects_crop(meta) and image_files(data)
    if not streamed:
        try:
            return load_split(data, split, meta.get("config"))
        except ImagesTooLargeError:
            pass  # stream them
    ds = StreamingFolder(data, source_split, image_size=size, resize=int(meta.get("resize") or size), test=test,
                         workers=workers, mean=meta["mean"], std=meta["std"],
                         interpolation=meta.get("interpolation", "bilinear"),
                         skip_bad=split == "val" and bool((meta.get("config") or {}).get("data", {}).get("skip_bad")))
    return run_holdout(ds, meta.get("config")) if split == "val" else ds


def eval_loader(ds, meta: dict, test: str, batch_size: int, device, workers: int = -1):
    """Normalised batches of `ds` under the `test` preset, with the model's mean/std (a model sees
    its inputs as it was trained, whatever the data's own statistics)."""
    if isinstance(ds, StreamingFolder):
        return (ds if ds.test == test else ds.with_options(test=test)).loader(batch_size, train=False, device=device)
    if test == "center" and as_is(meta, ds.images):
        return MemoryLoader(ds.images, ds.labels, batch_size, train=False, mean=meta["mean"], std=meta["std"],
                            device=device, channels_last=True)
    size = int(meta["input_size"])
    transform = eval_transform(test, size, int(meta.get("resize") or size), meta.get("interpolation", "bilinear"))
    return tensor_view_loader(ds.images, ds.labels, transform, batch_size, meta["mean"], meta["std"], device,
                              name=getattr(ds, "name", "images"), workers=0 if workers < 0 else workers)


class _Mapped:
    """A loader whose labels are re-indexed into the model's classes."""

    def __init__(self, loader, mapping: torch.Tensor):
        self.loader, self.mapping = loader, mapping

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x, self.mapping.to(y.device)[y]


def _ran(net, requested: str) -> str:
    """The backend that ran (what `auto` chose, when it prepared one), for the report."""
    predictor = getattr(net, "predictor", None)
    return predictor.backend if predictor is not None else requested


# Pretrained weights (no training run to hold images out of) on data without a test split, such as the
# shared CIFAR-10 JPEGs, are scored on all of its images rather than refused.
def _note_trained_on(meta: dict, data: str, split: str) -> None:
    """A folder with no split level is its own test split: when it is the one the run trained on, its
    "test" error counts the training images too, so say so (`--split val` scores the run's hold-out)."""
    trained_on = ((meta.get("config") or {}).get("data") or {}).get("path")
    if split != "test" or not trained_on or Path(trained_on).expanduser().resolve() != Path(data).expanduser().resolve():
        return
    if not has_test_split(data):
        print(f"note: {data} is the data this run trained on and has no test split of its own: its 'test' error "
              "counts the training images; --split val scores the run's hold-out", file=sys.stderr)


def run_eval(checkpoint: str | None = None, data: str | None = None, *, weights: str | None = None,
             model: str | None = None, split: str = "test", test: str = "center", tta_flip: bool = False,
             precision: str = "auto", batch_size: int | None = None, workers: int = -1, plots: str | None = None,
             device=None, backend: str = "auto", map_classes_by_position: bool = False) -> dict:
    """Top-1/top-5 error (%), loss and per-class accuracy of a checkpoint (or of pretrained
    `weights`) on `data`, through the inference `backend` (see `deploy.choose.inference_model`)."""
    if data is None:
        raise DataError("give the data to evaluate on (--data)")
    if split not in ("test", "val", "train"):  # (any other name read the training images of a streamed folder)
        raise ConfigError(f"split must be test, val or train, got {split!r}")
    fetch_named(data)  # `--data cifar10`: download it when absent
    if test == "multi-scale":
        require_dynamic_sizes(backend, "--test multi-scale")
    net, meta = load(checkpoint, weights, model)
    device = torch.device(device) if device else default_device()
    num_classes = num_outputs(net)
    try:
        ds = eval_dataset(meta, data, split, workers, test)
    except DatasetLayoutError:
        if split != "test" or meta.get("config"):
            raise
        ds, split = eval_dataset(meta, data, "train", workers, test), "train"  # see below
        print(f"note: {data} has no test split; scoring all {len(ds)} of its images", file=sys.stderr)
    else:
        _note_trained_on(meta, data, split)
    mapping = torch.tensor(class_mapping(list(ds.classes), meta.get("classes"), num_classes, map_classes_by_position,
                                         data, "the checkpoint's" if checkpoint else "the weights'"))
    channels, wanted = image_channels(ds), int(getattr(net.config, "in_chans", 3))
    if channels != wanted:  # (a digits network on RGB image files): one line, not a shape error deep inside
        raise DataError(f"{data} has {channels}-channel images, the model takes {wanted}-channel ones")
    streamed = isinstance(ds, StreamingFolder)
    batch_size = batch_size or (64 if streamed or test != "center" or not as_is(meta, ds.images) else 1000)
    if test == "multi-scale":
        batch_size = min(batch_size, 8)  # whole images of different shapes: scored one by one
    loader = _Mapped(eval_loader(ds, meta, test, batch_size, device, workers), mapping)
    # int8 calibrates on centre crops of the first images (views of one size; labels unused)
    calibration = lambda: first_images(eval_loader(ds, meta, "center", min(batch_size, 64), device,  # noqa: E731
                                                   workers))
    side = int(meta.get("input_size") or 224)
    runner, prec = inference_model(net, backend, precision, device, calibration,
                                   dynamic_sizes=test == "multi-scale",
                                   work=(len(ds) * view_work(test, tta_flip), batch_size, side))
    if hasattr(runner, "predictor"):  # the last, shorter batch at the shape compiled for the others (10 views a crop)
        runner.predictor.pad_to = batch_size * (10 if test == "ten-crop" else 1)
    scorer = ViewAverage(runner) if test != "center" else runner
    result = evaluate(scorer, loader, prec, num_classes, tta_flip=tta_flip and test == "center")
    rows = torch.tensor(result.pop("confusion"))[mapping]
    per_class = rows.gather(1, mapping.view(-1, 1)).view(-1).double() / rows.sum(1).clamp(min=1).double()
    result.update(per_class_acc=[100.0 * float(a) for a in per_class], classes=list(ds.classes), split=split,
                  test=test, tta_flip=tta_flip, backend=_ran(runner, backend), checkpoint=str(checkpoint or weights),
                  # a run folder is scored by its best validation epoch's weights, else its last
                  weights_file=str(resolve_weights_path(checkpoint)) if checkpoint else None,
                  weights=weights, model=meta.get("model"), confusion=rows[:, mapping].tolist(),
                  streamed=streamed)
    if plots:
        Path(plots).mkdir(parents=True, exist_ok=True)
        result["confusion_png"] = str(plot_confusion(result["confusion"], list(ds.classes),
                                                     Path(plots) / "confusion.png"))
    return result
