"""`resnet eval`: a checkpoint, rebuilt alone, on a dataset split; the numbers and optional plots."""
from __future__ import annotations

from pathlib import Path

import torch

from .data import MemoryLoader, load_dataset
from .data.split import holdout, holdout_seed
from .engine.checkpoint import load_model
from .engine.evaluate import evaluate
from .engine.precision import default_device
from .inference import first_images, inference_model


def eval_data(meta: dict, path: str, split: str, cache_dir: str | None = None):
    """The images to evaluate on. `val` rebuilds the training run's hold-out from its seed and size."""
    if split == "test":
        return load_dataset(path, "test", cache_dir=cache_dir)
    data = load_dataset(path, "train", cache_dir=cache_dir)
    if split == "train":
        return data
    cfg = meta.get("config", {})
    _, val = holdout(data, cfg.get("data", {}).get("val_size", 5000), holdout_seed(cfg))
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
        from .plots import plot_confusion

        Path(plots).mkdir(parents=True, exist_ok=True)
        result["confusion_png"] = str(plot_confusion(result["confusion"], classes, Path(plots) / "confusion.png"))
    return result
