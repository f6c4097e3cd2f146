"""Run folders: where `resnet train` writes, and how it continues one.

A new run needs data and gets its own folder (`runs/MODEL-TIME`, or `out`); a folder that already
holds a run is never overwritten (continue it with `resume`). A resumed run starts from the
config.yaml saved in its folder, with the command line's settings and overrides on top (e.g. more
epochs).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..config import TrainConfig, make_config, merge, parse_overrides, read_yaml_mapping
from ..data.cifar import fetch_named
from ..errors import CheckpointError, ConfigError
from . import checkpoint
from .trainer import Trainer, train_trainer


def expand_overrides(items) -> dict:
    """`key=value` overrides; `num_classes=N` is shorthand for model_args.num_classes=N (fine-tuning:
    the new head's size)."""
    return parse_overrides([f"model_args.{i}" if i.startswith("num_classes=") else i for i in items or []])


def plan_run(settings: dict | None = None, overrides=None, recipe: str | None = None, out: str | None = None,
             resume: str | None = None) -> tuple[TrainConfig, Path]:
    """(config, run folder) of a new run or of the run to continue.

    `settings`: nested config values from the command line's own flags (model, data.path, ...),
    under `overrides` (`key=value` strings)."""
    settings = merge(settings or {}, expand_overrides(overrides))
    if resume:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise CheckpointError(f"--resume {run_dir}: no config.yaml there; is it a run folder of `resnet train`?")
        saved_config = read_yaml_mapping(saved.read_text(), f"--resume {run_dir}: its config.yaml")
        checkpoint.resumable_state_file(run_dir)  # now, not after the data has loaded
        began, asked = saved_config.get("model"), settings.get("model")
        if began and asked and asked != began:  # now, before the data loads (the trainer checks the state too)
            raise CheckpointError(f"--resume {run_dir}: that run trains {began}, not {asked}")
        return make_config(None, merge(saved_config, settings)), run_dir
    if not settings.get("data", {}).get("path"):
        raise ConfigError("--data PATH is required (a CIFAR folder or archive, or a class-per-folder image tree)")
    cfg = make_config(recipe, settings)
    run_dir = Path(out) if out else Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists() or p == Path(p.anchor or "."))
    if existing.exists() and not existing.is_dir():  # now, not after the data has loaded (a raw errno then)
        raise ConfigError(f"--out {run_dir}: {existing} is a file; give a folder for the run")
    if checkpoint.latest_state_file(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --out")
    return cfg, run_dir


def train_run(settings: dict | None = None, overrides=None, recipe: str | None = None, out: str | None = None,
              resume: str | None = None, stream=None, device=None, callbacks=()) -> tuple[list[dict], Path, Trainer]:
    """`resnet train` and `resnet.train`: plan the run (see `plan_run`), train it: (history, run folder, trainer)."""
    cfg, run_dir = plan_run(settings, overrides, recipe, out, resume)
    fetch_named(cfg.data.path, cfg.data.cache_dir or None)  # `--data cifar10`: download it when absent
    new_folder = not resume and not run_dir.exists()
    try:
        trainer = Trainer(cfg, run_dir, resume=bool(resume), device=device, stream=stream, callbacks=callbacks)
        return train_trainer(trainer), trainer.run_dir, trainer  # (under torchrun: rank 0's folder)
    except BaseException:
        # a new run that failed before its first checkpoint (bad data, a NaN at once) holds nothing to resume:
        # leave no half-written folder behind (a later --out there would be refused as "already holds a run")
        if new_folder and checkpoint.latest_state_file(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
