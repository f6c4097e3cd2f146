"""The two protocols of the papers' CIFAR numbers [ResNet §4.2]: `val`, the schedule run on a 45k/5k split
and scored on the 5k held out; `final`, that schedule (its iterations and lr steps, fixed on 45k/5k)
trained on all training images (data.val_size=0) and scored on the test set, when the data has one."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError
from ..config import TrainConfig
from ..data import has_test_split
from ..data.split import holdout_count
from ..engine.precision import default_device
from ..files import atomic_write_text
from ..serve.evaluate import run_eval
from .runner import Experiment, RunSpec, count, final_weights

PROTOCOLS = ("val", "final", "both")


def final_config(cfg: TrainConfig, n_images: int) -> TrainConfig:
    """All `n_images` training images, no hold-out, for as many iterations as `cfg` runs on its split:
    the paper stops at 64k iterations whatever the set's size (182 epochs of 45k = 164 of 50k)."""
    held = holdout_count(cfg.data.val_size, n_images)
    batch = cfg.data.batch_size
    steps_split, steps_full = (n_images - held) // batch, n_images // batch
    if steps_split < 1:
        raise ConfigError(f"data.batch_size={batch} exceeds the {n_images - held} images left to train on")
    epochs = max(1, round(cfg.epochs * steps_split / steps_full))
    return dataclasses.replace(cfg, epochs=epochs, data=dataclasses.replace(cfg.data, val_size=0))


def final_experiment(kind: str, out: Path, cfg: TrainConfig, specs: list[RunSpec], stream, jobs: int
                     ) -> tuple[Experiment, dict]:
    """An experiment of the final protocol in `out`: `cfg` is the schedule on its split (data.val_size),
    the experiment trains on every training image for that schedule's iterations. Loads the data."""
    exp = Experiment(kind, out, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_size=0)),
                     specs, stream, jobs)
    n = len(exp.data()[0])  # every training image (the data stays loaded: final_config keeps val_size=0)
    exp.cfg = final_config(cfg, n)
    info = {"protocol": "final", "train_images": n, "split_images": n - holdout_count(cfg.data.val_size, n),
            "split_epochs": cfg.epochs, "epochs": exp.cfg.epochs,
            "iterations": exp.cfg.epochs * (n // cfg.data.batch_size), "test_split": has_test_split(cfg.data.path)}
    return exp, info


def score_on_test(exp: Experiment, results: list[tuple[RunSpec, list[dict]]]) -> dict[str, dict]:
    """Each final run's last weights on the data's test split (it must have one): {run name: {'top1_err',
    'n', ...}}, also written to runs/<name>/test.json. The weights as trained, in fp32: `--backend auto`
    would score a large network's job (ResNet-1202 on 10k images) through int8 or bf16 instead."""
    out = {}
    device = default_device()
    backend = "eager-fp32" if device.type == "cpu" else "auto"  # on CUDA, auto at fp32 is the fp32 model
    for spec, _ in results:
        run_dir = exp.out / "runs" / spec.name
        r = run_eval(str(final_weights(run_dir)), exp.cfg.data.path, split="test", precision="fp32",
                     batch_size=exp.cfg.data.eval_batch_size, device=device, backend=backend)
        keep = {k: r[k] for k in ("top1_err", "top5_err", "loss", "n", "backend")}
        atomic_write_text(run_dir / "test.json", json.dumps({**keep, "data": exp.cfg.data.path}, indent=1))
        out[spec.name] = keep
    return out


def describe_protocol(info: dict, data: str) -> str:
    """One sentence for the report: what trained on what, and what the error is measured on."""
    if info["protocol"] == "val":
        return (f"**val**: trained on {info['train_images']:,} images, error on the {info['val_images']:,} held out "
                f"(seeded, stratified; hold-out seed {info['split_seed']}), {count(info['iterations'], 'iteration')}.")
    where = (f"error on the {info['test_images']:,} images of the test split" if info.get("test_images")
             else f"**no test split in `{data}`**, so no error is measured: the final weights are in "
                  "`final/runs/*/last.safetensors` (`resnet eval --checkpoint RUN --data cifar10 --split test` "
                  "scores them on CIFAR-10's test images)")
    return (f"**final**: the schedule fixed on {info['split_images']:,} images ({count(info['split_epochs'], 'epoch')}) run "
            f"on all {info['train_images']:,} training images (data.val_size=0) for the same iterations "
            f"({count(info['epochs'], 'epoch')}, {count(info['iterations'], 'iteration')}); {where}.")
