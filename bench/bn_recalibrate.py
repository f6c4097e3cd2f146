"""Does re-estimating BN statistics after training pay (issue 17: the speedrun)?

    .venv/bin/python bench/bn_recalibrate.py RUN [RUN ...] [--images 8192] [--data ../shared/data/cifar10-train-jpg.tar.gz]

A speedrun net's BN running statistics at the end are the lookahead average of the last batches'
statistics, and those batches were translated and Cutout-ed. Each run's last weights are scored on
their own hold-out (with the run's TTA) as saved, then after its BN statistics are re-estimated, as a
plain average over `--images` of the run's own training images (never the hold-out), seen clean,
clean with half of them mirrored, or as training saw them less Cutout (2-pixel reflect translation,
mirrored half). The forward passes cost `--images` x the forward FLOPs (printed, in PFLOP: training
compute, if a recipe adopts it). The `as saved` column must equal the runs' recorded accuracy.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnet.data import load_dataset
from resnet.data.split import holdout, holdout_seed
from resnet.engine.evaluate import evaluate
from resnet.engine.precision import default_device, resolve_precision
from resnet.models.counting import measure
from resnet.serve.evaluate import eval_loader
from resnet.serve.load import load


def recalibrate(model: nn.Module, batches, precision) -> nn.Module:
    """A copy of `model` whose BN running statistics are the plain mean over `batches` (momentum None)."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad(), precision.autocast():
        for x in batches:
            model(x)
    return model.eval()


def forward_pflop(model: nn.Module, image_size: int, images: int) -> float:
    """PFLOP of `images` forward passes (FlopCounterMode's count, as the runs' train_pflop counts)."""
    return 2 * measure(model, image_size).macs * images / 1e15


def views(loader, kind: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    for x, _ in loader:
        if kind == "clean":
            yield x
            continue
        flip = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(flip[:, None, None, None].to(x.device), torch.flip(x, dims=[3]), x)
        if kind == "translated":
            h, w = x.shape[-2:]
            padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
            dy, dx = (int(v) for v in torch.randint(0, 5, (2,), generator=g))  # one offset a batch: enough for a mean
            x = padded[..., dy:dy + h, dx:dx + w]
        yield x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpg.tar.gz"))
    p.add_argument("--images", type=int, default=8192, help="training images the statistics are averaged over")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    device = default_device()
    precision = resolve_precision(args.precision, device)
    full = load_dataset(args.data, "train")
    kinds = {"clean": "clean", "clean, mirrored half": "mirrored", "translated, mirrored half": "translated"}
    table = {k: [] for k in ["as saved", *kinds]}
    pflops = []
    for run in args.runs:
        model, meta = load(checkpoint=run)
        model = model.to(device).eval()
        cfg = meta["config"]
        train, val = holdout(full, cfg["data"]["val_size"], holdout_seed(cfg))
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.images]
        train_loader = eval_loader(train.subset(pick), meta, "center", 1024, device)
        pflops.append(forward_pflop(model, int(meta.get("input_size") or model.config.input_size), len(pick)))
        val_loader = eval_loader(val, meta, "center", 1000, device)
        tta = (bool(cfg.get("tta_flip")), int(cfg.get("tta_shift") or 0))

        def acc(m):
            return 100 - evaluate(m, val_loader, precision, len(meta["classes"]), *tta)["top1_err"]
        table["as saved"].append(acc(model))
        for name, kind in kinds.items():
            table[name].append(acc(recalibrate(model, views(train_loader, kind, 0), precision)))
        print(f"{run}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in table.items()), flush=True)
    cost = f"{min(pflops):.4f}" + (f"-{max(pflops):.4f}" if max(pflops) > min(pflops) else "")
    print(f"\n{len(args.runs)} runs, {args.images} images for the statistics ({cost} PFLOP each re-estimation), "
          f"{precision.name}\n")
    print("| BN statistics | mean | vs as saved | per run |\n| --- | ---: | ---: | --- |")
    base = statistics.fmean(table["as saved"])
    for name, accs in table.items():
        mean = statistics.fmean(accs)
        print(f"| {name} | {mean:.2f} | {mean - base:+.2f} | {' '.join(f'{a:.2f}' for a in accs)} |")


if __name__ == "__main__":
    main()
