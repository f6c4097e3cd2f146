"""Which test-time views pay on a trained run's hold-out (issue 17: the speedrun's TTA).

    .venv/bin/python bench/tta_views.py RUN [RUN ...] [--data ../shared/data/cifar10-train-jpg.tar.gz]

Scores each run's validation images (bf16 autocast, as the trainer validates) under test-time
augmentations that cost inference only, never training PFLOP: the image alone, with its mirror,
airbench's level 2 (flip, plus half weight on 1-pixel shifts up-left and down-right: the recipe's
`tta_shift: 1`), the four diagonal or the four axis-aligned 1-pixel shifts, all nine 1-pixel shifts,
and level 2 with 2-pixel shifts. Shifted views are reflect-padded crops. Prints accuracy (%) per scheme.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from resnet.serve.evaluate import eval_dataset, eval_loader
from resnet.serve.load import load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpg.tar.gz"))
    args = p.parse_args()
    for run in args.runs:
        net, meta = load(run, None, None)
        net.eval()
        batches = list(eval_loader(eval_dataset(meta, args.data, "val"), meta, "center", 1000, torch.device("cpu")))
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        views: dict[tuple, torch.Tensor] = {}

        def view(dy: int, dx: int, mirrored: bool = False, pad: int = 2) -> torch.Tensor:
            """Logits of the images shifted by (dy, dx) pixels, mirrored or not (cached)."""
            if (dy, dx, mirrored) not in views:
                h, w = x.shape[-2:]
                shifted = F.pad(x, (pad,) * 4, mode="reflect")[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]
                shifted = torch.flip(shifted, dims=[3]) if mirrored else shifted
                with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                    views[dy, dx, mirrored] = torch.cat([net(c).float() for c in shifted.split(500)])
            return views[dy, dx, mirrored]

        flip = lambda dy, dx: (view(dy, dx) + view(dy, dx, True)) / 2  # noqa: E731
        mean = lambda shifts: sum(flip(*s) for s in shifts) / len(shifts)  # noqa: E731
        schemes = {
            "image": view(0, 0), "flip": flip(0, 0),
            "level 2 (recipe)": 0.5 * flip(0, 0) + 0.5 * mean([(-1, -1), (1, 1)]),
            "diagonal 4": 0.5 * flip(0, 0) + 0.5 * mean([(-1, -1), (1, 1), (-1, 1), (1, -1)]),
            "axis 4": 0.5 * flip(0, 0) + 0.5 * mean([(0, -1), (0, 1), (-1, 0), (1, 0)]),
            "all 9": mean([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]),
            "level 2, 2 pixels": 0.5 * flip(0, 0) + 0.5 * mean([(-2, -2), (2, 2)]),
        }
        print(f"\n{run} ({len(y)} validation images)\n| views | accuracy |\n| --- | ---: |")
        for name, logits in schemes.items():
            print(f"| {name} | {100.0 * float((logits.argmax(1) == y).float().mean()):.2f}% |")


if __name__ == "__main__":
    main()
