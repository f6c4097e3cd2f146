"""The paper's CIFAR recipe against today's, at one epoch budget: ResNet-20 and ResNet-56 trained with
cifar10_paper and cifar10_modern (and, with --ablate, each ingredient added in turn) on the shared
CIFAR-10 JPEGs, seeded 45k/5k split. Prints a markdown table: validation error, minutes, images/s.

    .venv/bin/python bench/recipes_cifar.py --epochs 30 [--models resnet20,resnet56] [--ablate]
        [--data ../shared/data/cifar10-train-jpg.tar.gz] [--out runs/recipes-cifar] [--device cuda]
    .venv/bin/python bench/recipes_cifar.py --epochs 1 --limit small      # a check that it runs (~1 minute)

Budget: the paper's lr steps (32k and 48k of 64k iterations) are rescaled to 50% and 75% of the
budget, as the experiments do; cifar10_modern's 5-epoch warm-up is capped at a tenth of the budget.
Each run lives in OUT/<model>-<variant> and is resumed, or read back when complete, on a rerun.
Time it with nothing else running (the machines are shared; see docs/results for recorded runs).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import sys
import time
from pathlib import Path

import torch

from resnet.allocator import relaunch_tuned
from resnet.config import make_config
from resnet.engine.precision import cpu_model
from resnet.engine.trainer import Trainer, split_train_val
from resnet.engine.checkpoint import latest_state_file
from resnet.errors import ConfigError
from resnet.experiments.runner import check_same_settings, completed_epochs, read_metrics, rescale_paper_milestones

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-train-jpg.tar.gz"
# (name, recipe, overrides): cumulative, so each row says what one more ingredient bought.
VARIANTS = [
    ("paper", "cifar10_paper", []),
    ("+cosine/warm-up/Nesterov/wd", "cifar10_paper",
     ["schedule.name=cosine", "schedule.warmup_epochs=5", "schedule.warmup_start=0.1", "schedule.warmup_prefix=true",
      "optim.nesterov=true", "optim.weight_decay=0.0005", "optim.no_decay_bn_bias=true"]),
    ("+AutoAugment/Cutout", "cifar10_modern", ["label_smoothing=0.0"]),
    ("modern (+label smoothing)", "cifar10_modern", []),
    ("modern +mixup/CutMix", "cifar10_modern", ["data.mixup_alpha=0.2", "data.cutmix_alpha=1.0"]),
]
LIMITS = {"small": (2000, 500)}  # training images, validation images


def _config(recipe: str, overrides: list[str], model: str, epochs: int, data: str, device: str):
    extra = [f"data.path={data}", f"model={model}", f"epochs={epochs}"]
    cfg = make_config(recipe, [*overrides, *extra])
    if cfg.schedule.warmup_epochs > epochs / 10:  # a short budget gets a proportionally short warm-up
        cfg = dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, warmup_epochs=epochs / 10))
    return cfg


def _limit(text: str) -> str:
    if text not in LIMITS and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected {', '.join(LIMITS)} or a count of training images, got {text!r}")
    return text


def _data(cfg, limit: str | None):
    train, val = split_train_val(cfg)
    if limit:
        n_train, n_val = LIMITS[limit] if limit in LIMITS else (int(limit), max(1, int(limit) // 4))
        g = torch.Generator().manual_seed(0)
        train = train.subset(torch.randperm(len(train), generator=g)[:n_train])
        val = val.subset(torch.randperm(len(val), generator=g)[:n_val])
    return train, val


def run_one(cfg, data, run_dir: Path, device: str) -> list[dict]:
    steps = len(data[0]) // cfg.data.batch_size
    cfg = rescale_paper_milestones(cfg, steps)
    check_same_settings(run_dir, cfg)  # a folder of other settings (a recipe changed since) is refused, not reported
    if completed_epochs(run_dir) >= cfg.epochs:
        return read_metrics(run_dir)
    trainer = Trainer(cfg, run_dir, resume=latest_state_file(run_dir) is not None, data=data,
                      device=device, stream=io.StringIO())
    return trainer.fit()


def summarise(history: list[dict]) -> dict:
    seconds = sum(r["train_seconds"] for r in history)
    vals = [r["val_err"] for r in history if r.get("val_err") is not None]
    return {"val_err": vals[-1] if vals else float("nan"), "best_val_err": min(vals) if vals else float("nan"),
            "train_err": history[-1]["train_err"], "minutes": seconds / 60,
            "images_per_sec": statistics.median(r["images_per_sec"] for r in history)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, required=True, help="the budget, epochs of the 45k training images")
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--ablate", action="store_true", help="also each ingredient in turn (5 variants, not 2)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="runs/recipes-cifar")
    p.add_argument("--limit", type=_limit,
                   help="'small' (2,000 train / 500 val images) or a count: a quick check, not a result")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file (the shared CIFAR-10 JPEGs)")
    variants = VARIANTS if args.ablate else [VARIANTS[0], VARIANTS[3]]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out) / (f"e{args.epochs}" + (f"-{args.limit}" if args.limit else ""))
    data = _data(_config("cifar10_paper", [], "resnet20", args.epochs, args.data, device), args.limit)
    print(f"data: {len(data[0])} training / {len(data[1])} validation images; {args.epochs} epochs; {device}",
          file=sys.stderr)
    rows = []
    for model in args.models.split(","):
        for name, recipe, overrides in variants:
            cfg = _config(recipe, overrides, model, args.epochs, args.data, device)
            t0 = time.perf_counter()
            try:
                s = summarise(run_one(cfg, data, out / f"{model}-{name.replace('/', '_').replace(' ', '')}", device))
            except ConfigError as e:
                print(f"recipes_cifar: {e}", file=sys.stderr)
                return 2
            print(f"{model} {name}: val err {s['val_err']:.2f}% ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            rows.append((model, name, s))
    print(f"\n{args.epochs} epochs, {len(data[0])} training images, "
          f"{torch.cuda.get_device_name() if device == 'cuda' else cpu_model()}\n")
    print("| model | recipe | val err % | best val err % | train err % | minutes | images/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for model, name, s in rows:
        print(f"| {model} | {name} | {s['val_err']:.2f} | {s['best_val_err']:.2f} | {s['train_err']:.2f} | "
              f"{s['minutes']:.1f} | {s['images_per_sec']:,.0f} |")
    return 0


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    sys.exit(main())
