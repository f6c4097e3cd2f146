"""The cifar10_speedrun recipe on the shared CIFAR-10 JPEGs (45k/5k): accuracy against training PFLOP.

    .venv/bin/python bench/speedrun.py [--data ../shared/data/cifar10-train-jpg.tar.gz] [--epochs N]
        [--seeds 1] [--first-seed 0] [--out runs/speedrun] [--branch-from DIR] [--recipe NAME|FILE] [key=value ...]

Trains the recipe (one run per seed) and prints, per validated epoch, the training compute so far
(FlopCounterMode's count of the forward and backward passes: the same on every machine), the
validation accuracy (with the recipe's test-time flips and shifts) and the minutes on this machine.
Target (issue 17): >= 91.5% validation accuracy within 0.6 PFLOP; stretch 0.4 PFLOP. Run with
nothing else on the machine for the minutes to mean anything; the PFLOP and accuracy do not depend on it.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from resnet.allocator import relaunch_tuned
from resnet.config import make_config
from resnet.engine.trainer import Trainer, TrainingInterrupted
from resnet.errors import ConfigError


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpg.tar.gz"))
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed ... first-seed + seeds - 1")
    p.add_argument("--out", default="runs/speedrun")
    p.add_argument("--branch-from", metavar="DIR",
                   help="continue DIR/seedN (a copy of a run stopped after some epoch) with the overrides, into "
                        "OUT/seedN: a setting that changes only the last epochs costs only those epochs")
    p.add_argument("--recipe", default="cifar10_speedrun",
                   help="a shipped recipe or a YAML file, e.g. docs/recipes/cifar10_speedrun_e18.yaml (the recipe "
                        "before proxy selection, which the README's earlier speedrun commands ran)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = p.parse_args()
    finals = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        extra = [f"data.path={args.data}", f"seed={seed}", *args.overrides]
        if args.epochs:
            extra.append(f"epochs={args.epochs}")
        try:
            cfg = make_config(args.recipe, extra)
        except ConfigError as e:  # an override that does not fit the recipe: one line, as `resnet train` says it
            sys.exit(f"speedrun: {e}")
        start = time.perf_counter()
        run = Path(args.out) / f"seed{seed}"
        if args.branch_from:
            if run.exists():
                sys.exit(f"--branch-from: {run} exists; pick another --out")
            shutil.copytree(Path(args.branch_from) / f"seed{seed}", run)
        trainer = Trainer(cfg, run, resume=bool(args.branch_from))
        try:
            history = trainer.fit()
        except TrainingInterrupted as e:  # paused (SIGTERM while something else is timed): a checkpoint is written
            print(f"speedrun: {e}; its table is not printed", file=sys.stderr)
            sys.exit(e.exit_code)
        minutes = (time.perf_counter() - start) / 60
        print(f"\n{args.recipe} seed {seed}: {cfg.model}, batch {cfg.data.batch_size}, {cfg.epochs} epochs, "
              f"{trainer.precision.name} (validation {trainer.eval_precision.name}), compiled: {trainer.compiled}, {torch.get_num_threads()} threads")
        print("| epoch | training PFLOP | val accuracy | minutes (training) |\n| ---: | ---: | ---: | ---: |")
        train_min = 0.0
        for r in history:
            train_min += r["train_seconds"] / 60  # (an epoch's "seconds" hold its validation and checkpoint too)
            if r.get("val_err") is not None:
                print(f"| {r['epoch']} | {r['train_pflop']:.3f} | {100 - r['val_err']:.2f}% | {train_min:.1f} |")
        finals.append(100 - history[-1]["val_err"])
        print(f"final: {finals[-1]:.2f}% at {history[-1]['train_pflop']:.3f} PFLOP, {minutes:.1f} min in all "
              "(data, whitening, validation included)", flush=True)
    if len(finals) > 1:
        print(f"\n{len(finals)} seeds: {statistics.fmean(finals):.2f}% ± {statistics.stdev(finals):.2f}")
    print("target: >= 91.5% within 0.6 PFLOP (stretch 0.4)", file=sys.stderr)


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    main()
