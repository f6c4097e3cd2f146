"""Which test-time views pay on trained runs' hold-outs (issue 17: the speedrun's TTA).

    .venv/bin/python bench/tta_views.py RUN [RUN ...] [--data ../shared/data/cifar10-train-jpg.tar.gz] [--shift 2]
        [--ensemble]

Each run's last weights score its own hold-out (a run's validation images follow its seed) under every
view a `--shift` pixel translation (reflect-padded) and a mirror can give; the schemes below are
weighted means of those views' logits, so one pass over the views scores them all. Prints accuracy
per scheme: mean over runs, over the even and the odd images (a scheme chosen on one half should
also win on the other), and per run. `level 2 (recipe)` is what the recipes' `tta_flip` + `tta_shift: 1` do
(airbench's level 2): its column must equal the runs' recorded validation accuracy.
`--ensemble`: the runs share one hold-out (the same `data.split_seed`); also score the mean of their
logits under each scheme, an ensemble whose training compute is the runs' together.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from resnet.engine.precision import default_device, resolve_precision
from resnet.serve.evaluate import eval_dataset, eval_loader
from resnet.serve.load import load


def view_logits(model, loader, precision, shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of every (dy, dx, mirror) view, dy and dx in -shift..shift: views x images x classes; the
    labels; and each image's pixel sum (which identifies the hold-out when runs are compared)."""
    outs, labels, sums = [], [], []
    with torch.no_grad(), precision.autocast():
        for x, y in loader:
            h, w = x.shape[-2:]
            padded = F.pad(x, (shift,) * 4, mode="reflect")
            views = []
            for dy in range(-shift, shift + 1):
                for dx in range(-shift, shift + 1):
                    v = padded[..., shift + dy:shift + dy + h, shift + dx:shift + dx + w]
                    views += [model(v).float(), model(torch.flip(v, dims=[3])).float()]
            outs.append(torch.stack(views))
            labels.append(y)
            sums.append(x.float().flatten(1).sum(1).cpu())
    return torch.cat(outs, 1), torch.cat(labels), torch.cat(sums)


def schemes(shift: int) -> dict[str, dict[tuple[int, int], float]]:
    """Scheme name -> weight of each translation (its mirror has the same weight)."""
    diagonal, axis = [(-1, -1), (1, 1), (-1, 1), (1, -1)], [(0, -1), (0, 1), (-1, 0), (1, 0)]
    out = {"image alone": {(0, 0): 1.0},  # (mirror dropped below)
           "flip": {(0, 0): 1.0},
           "level 2 (recipe)": {(0, 0): 0.5, (-1, -1): 0.25, (1, 1): 0.25},
           "diagonal 4": {(0, 0): 0.5, **{d: 0.125 for d in diagonal}},
           "axis 4": {(0, 0): 0.5, **{d: 0.125 for d in axis}},
           "ring 8": {(0, 0): 0.5, **{d: 0.0625 for d in diagonal + axis}},
           "all 9 1-pixel shifts": {d: 1 / 9 for d in [(0, 0), *diagonal, *axis]}}
    if shift >= 2:
        n = (2 * shift + 1) ** 2
        out["level 2, 2 pixels"] = {(0, 0): 0.5, (-2, -2): 0.25, (2, 2): 0.25}
        out[f"all {n} shifts up to {shift} pixels"] = {(dy, dx): 1 / n for dy in range(-shift, shift + 1)
                                                      for dx in range(-shift, shift + 1)}
    return out


def combine(logits: torch.Tensor, weights: dict[tuple[int, int], float], shift: int, mirror: bool) -> torch.Tensor:
    side = 2 * shift + 1
    total = torch.zeros_like(logits[0])
    for (dy, dx), w in weights.items():
        i = 2 * ((dy + shift) * side + dx + shift)
        total += w * ((logits[i] + logits[i + 1]) / 2 if mirror else logits[i])
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (last.safetensors and their config)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpg.tar.gz"))
    p.add_argument("--shift", type=int, default=2, help="largest translation, pixels")
    p.add_argument("--precision", default="auto")
    p.add_argument("--ensemble", action="store_true", help="also score the mean of the runs' logits (one shared hold-out)")
    args = p.parse_args()
    if args.shift < 1:  # the schemes take 1-pixel shifts
        p.error(f"--shift must be at least 1, got {args.shift}")
    device = default_device()
    precision = resolve_precision(args.precision, device)
    table = {name: [] for name in schemes(args.shift)}
    members, holdout = {name: [] for name in schemes(args.shift)}, None
    for run in args.runs:
        model, meta = load(checkpoint=run)
        model = model.to(device).eval()
        loader = eval_loader(eval_dataset(meta, args.data, "val"), meta, "center", 1000, device)
        logits, labels, sums = view_logits(model, loader, precision, args.shift)
        if args.ensemble:
            if holdout is not None and not (torch.equal(labels, holdout[0]) and torch.allclose(sums, holdout[1])):
                raise SystemExit(f"--ensemble: {run} validates on other images than {args.runs[0]}; "
                                 "train the members with the same data.split_seed")
            holdout = (labels, sums)
        for name, weights in schemes(args.shift).items():
            combined = combine(logits, weights, args.shift, name != "image alone")
            if args.ensemble:
                members[name].append(combined)
            right = combined.argmax(1) == labels.to(logits.device)
            table[name].append([100 * right.float().mean().item(), 100 * right[0::2].float().mean().item(),
                                100 * right[1::2].float().mean().item()])
        print(f"{run}: {len(labels)} images, {precision.name}", flush=True)
    print("\n| scheme | mean | even images | odd images | per run |\n| --- | ---: | ---: | ---: | --- |")
    for name, rows in table.items():
        mean = [statistics.fmean(col) for col in zip(*rows)]
        print(f"| {name} | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.2f} | {' '.join(f'{r[0]:.2f}' for r in rows)} |")
    if args.ensemble:
        labels = holdout[0]
        print(f"\n| scheme | ensemble of the {len(args.runs)} runs (mean of logits) |\n| --- | ---: |")
        for name, logits in members.items():
            right = torch.stack(logits).mean(0).argmax(1) == labels.to(logits[0].device)
            print(f"| {name} | {100 * right.float().mean().item():.2f} |")


if __name__ == "__main__":
    main()
