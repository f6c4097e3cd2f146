"""`resnet predict`: load a checkpoint or pretrained weights, preprocess as the model expects, top-k.

Images are decoded in DataLoader workers with the model's own evaluation preprocessing (shorter
side to `resize`, centre crop, its mean/std), batched, and scored; each image gives its top-k class
names and probabilities. A model trained on an image folder names that folder's classes; ImageNet
weights name the 1,000 ImageNet classes shipped with the package.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from ..data.folder import FolderIndex, ImageDecodeError, decode_image, is_image_file, walk_tree
from ..data.stream import Decode, EpochBatchSampler, SampleReader, StreamLoader, default_workers
from ..data.transforms import CenterTest
from ..deploy.backends import first_images
from ..deploy.choose import inference_model
from ..engine.precision import default_device
from .load import class_names, load, num_outputs
from ..errors import ConfigError, DataError


def list_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], bool]:
    """Image files named directly, and those under named folders (recursively, sorted); and whether
    any folder was named."""
    out, any_folder = [], False
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            any_folder = True
            # through symlinked folders, as a data set loads (Path.rglob does not follow them); hidden ones left out
            out.extend(sorted(Path(cur) / f for cur, _, names in walk_tree(p) for f in names
                              if is_image_file(f) and not f.startswith(".") and (Path(cur) / f).is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not out:
        raise FileNotFoundError(f"no images ({', '.join(('.jpg', '.png', '...'))}) in {', '.join(map(str, inputs))}")
    return out, any_folder


class _Tolerant(Decode):
    """An unreadable image becomes a blank one plus its error, instead of stopping the run."""

    def __init__(self, *args, size: int = 224, channels: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.size, self.channels = size, channels

    def __getitem__(self, item):
        try:
            pixels, _, _ = super().__getitem__(item)
            return pixels, None, -1
        except (ImageDecodeError, OSError):
            return torch.zeros(self.size, self.size, self.channels, dtype=torch.uint8), None, item[0]


class _Grey:
    """A test preset's RGB H x W x 3 uint8 -> H x W x 1 luma (PIL's 'L' weights), for a network trained on
    one-channel images (scikit-learn's digits: `resnet demo`); images decode as RGB."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img, g=None) -> torch.Tensor:
        rgb = self.transform(img, g).float()
        return (rgb @ torch.tensor([0.299, 0.587, 0.114])).round().clamp(0, 255).to(torch.uint8)[..., None]


class _Bar:
    def __init__(self, total: int, stream):
        self.total, self.stream = total, stream

    def update(self, done: int) -> None:
        width = 24
        bar = "#" * int(width * done / max(self.total, 1))
        end = "\n" if done == self.total else ""
        self.stream.write(f"\rpredict [{bar:<{width}}] {done}/{self.total} images{end}")
        self.stream.flush()


@torch.no_grad()
def predict(paths: Sequence[Path], model: torch.nn.Module, meta: dict, topk: int = 5, batch_size: int = 32,
            precision: str = "auto", device=None, workers: int | None = None, progress=None,
            backend: str = "auto") -> Iterator[dict]:
    """For each image, in order: {"path", "topk": [{"index", "name", "prob"}, ...]} or {"path", "error"}.
    The model runs through the inference `backend` (see `deploy.choose.inference_model`)."""
    for name, value in (("topk", topk), ("batch_size", batch_size)):  # (the API's; the command checks its own)
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    device = torch.device(device) if device else default_device()
    num_classes = num_outputs(model) if hasattr(model, "fc") else None
    size, resize = int(meta["input_size"]), int(meta.get("resize") or meta["input_size"])
    transform = CenterTest(size, resize, meta.get("interpolation", "bilinear"))
    channels = int(getattr(getattr(model, "config", None), "in_chans", 3))
    transform = _Grey(transform) if channels == 1 else transform
    index = FolderIndex(source=Path("."), prefix="", classes=[], samples=[(str(p), 0) for p in paths])
    dataset = _Tolerant(SampleReader(index), index.samples, transform, size=size, channels=channels)
    workers = min(default_workers(), 4) if workers is None or workers < 0 else workers  # -1: the default
    workers = min(workers, max(0, len(paths) // batch_size))  # a few images: decode them here
    def loader():
        return StreamLoader(dataset, EpochBatchSampler(len(paths), batch_size, shuffle=False), meta["mean"],
                            meta["std"], device, True, workers)

    # int8 calibrates on the images it is asked about (their first 256; nothing else is at hand), leaving out
    # the blank stand-ins of files that did not decode (their zeros would widen the activations' ranges)
    def calibration():
        try:
            return first_images((x[failed < 0], failed) for x, failed in loader())
        except DataError:  # no file decodes: only error lines follow, so the stand-ins may calibrate
            return first_images(loader())
    model, prec = inference_model(model, backend, precision, device, calibration, work=(len(paths), batch_size, size))
    if hasattr(model, "predictor"):  # the last, shorter batch at the shape compiled for the others
        model.predictor.pad_to = batch_size
    done = 0
    for x, failed in loader():
        with prec.autocast():
            logits = model(x).float()
        names = class_names(meta, num_classes or logits.shape[1])
        probs = logits.softmax(1)
        k = min(topk, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        for row in range(x.shape[0]):
            path = str(paths[done + row])
            if int(failed[row]) >= 0:
                yield {"path": path, "error": _decode_error(path)}
                continue
            yield {"path": path, "topk": [{"index": int(i), "name": names[int(i)], "prob": round(float(p), 6)}
                                          for p, i in zip(top_p[row], top_i[row])]}
        done += x.shape[0]
        if progress is not None:
            progress.update(done)


def _decode_error(path: str) -> str:
    try:
        decode_image(path)
    except (ImageDecodeError, OSError) as e:
        return str(e)
    return f"{path}: cannot decode image"


def format_text(result: dict) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    lines = [result["path"]]
    lines += [f"  {r['prob'] * 100:6.2f}%  {r['name']} ({r['index']})" for r in result["topk"]]
    return "\n".join(lines)


def run_predict(inputs: Sequence[str], checkpoint: str | None = None, weights: str | None = None,
                model: str | None = None, topk: int = 5, as_json: bool = False, batch_size: int = 32,
                precision: str = "auto", workers: int | None = None, out=None, err=None,
                backend: str = "auto") -> int:
    """Print the top-k of every image (text, or one JSON object per line); returns the number of failures."""
    out, err = out or sys.stdout, err or sys.stderr
    net, meta = load(checkpoint, weights, model)
    paths, any_folder = list_images(inputs)
    bar = _Bar(len(paths), err) if any_folder and len(paths) > batch_size else None
    failures = 0
    for result in predict(paths, net, meta, topk, batch_size, precision, workers=workers, progress=bar,
                          backend=backend):
        failures += "error" in result
        out.write((json.dumps(result) if as_json else format_text(result)) + "\n")
    out.flush()
    return failures


def iter_jsonl(text: str) -> Iterable[dict]:
    return (json.loads(line) for line in text.splitlines() if line.strip())
