"""The `resnet` command: thin subcommands, each parsing its arguments and calling one library function."""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _meta_model(name: str, **kwargs):
    """Build on the meta device: sizes and MACs need shapes, not memory or initialisation."""
    from .models import create_model

    with torch.device("meta"):
        return create_model(name, **kwargs)


def cmd_summary(args) -> int:
    from .models import get_entry
    from .models.complexity import format_table, measure

    entry = get_entry(args.name)
    c = measure(_meta_model(args.name), args.image_size or entry.input_size, args.name)
    print(json.dumps(c.to_dict()) if args.json else format_table(c))
    return 0


def cmd_models(args) -> int:
    from .models import get_entry, list_models
    from .models.complexity import measure

    rows = []
    for name in list_models(args.pattern):
        entry = get_entry(name)
        c = measure(_meta_model(name), entry.input_size, name)
        rows.append(dict(name=name, depth=entry.config.depth, block=entry.config.block, shortcut=entry.config.shortcut,
                         input_size=entry.input_size, params=c.params, macs=c.macs, paper=entry.paper))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<20}{'depth':>6}  {'block':<18}{'shortcut':<9}{'input':>6}{'params':>14}{'MACs':>12}  paper")
    for r in rows:
        shortcut = "-" if r["block"].startswith("plain") else r["shortcut"]
        print(f"{r['name']:<20}{r['depth']:>6}  {r['block']:<18}{shortcut:<9}{r['input_size']:>6}"
              f"{r['params'] / 1e6:>12.3f} M{r['macs'] / 1e9:>10.3f} G  {r['paper']}")
    return 0


def cmd_train(args) -> int:
    from pathlib import Path

    import yaml

    from .config import make_config, merge
    from .engine.trainer import train

    cli = {}
    if args.model:
        cli["model"] = args.model
    if args.data:
        cli.setdefault("data", {})["path"] = args.data
    if args.epochs is not None:
        cli["epochs"] = args.epochs
    if args.precision:
        cli["precision"] = args.precision
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a run folder of `resnet train`?")
        base = yaml.safe_load(saved.read_text())
        cfg = make_config(None, merge(merge(base, cli), _overrides(args.overrides)))
    else:
        if not args.data:
            raise ValueError("--data PATH is required (a CIFAR folder or archive, or a class-per-folder image tree)")
        cfg = make_config(args.recipe, merge(cli, _overrides(args.overrides)))
        run_dir = Path(args.out) if args.out else Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "last.state.pt").exists():
            raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --out")
    history = train(cfg, run_dir, resume=bool(args.resume))
    last = history[-1] if history else {}
    print(f"run folder: {run_dir}  (last.safetensors, metrics.jsonl, curves.png)")
    if last.get("val_err") is not None:
        print(f"final validation error {last['val_err']:.2f}% (top-5 {last['val_top5_err']:.2f}%)")
    return 0


def _overrides(items):
    from .config import parse_overrides

    return parse_overrides(items or [])


def cmd_eval(args) -> int:
    from .evaluation import run_eval

    result = run_eval(args.checkpoint, args.data, split=args.split, precision=args.precision, tta_flip=args.tta_flip,
                      batch_size=args.batch_size, plots=args.plots)
    if args.json:
        print(json.dumps({k: result[k] for k in ("top1_err", "top5_err", "loss", "n")}))
        return 0
    print(f"{result['checkpoint']} on {args.data} ({args.split}, {result['n']} images)")
    print(f"top-1 error {result['top1_err']:.2f}%  top-5 error {result['top5_err']:.2f}%  loss {result['loss']:.4f}")
    for name, acc in zip(result["classes"], result["per_class_acc"]):
        print(f"  {name:<20} {acc:6.2f}%")
    if "confusion_png" in result:
        print(f"confusion matrix: {result['confusion_png']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet", description="Deep residual networks: models, training, experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("summary", help="per-stage table of a model: output size, blocks, parameters, MACs")
    p.add_argument("name", help="a registered model name (see `resnet models`)")
    p.add_argument("--image-size", type=_positive_int, default=None, help="input side in pixels (default: the model's native size)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("models", help="list every registered model with its parameters and MACs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a model on CIFAR or an image folder",
                       description="Train; key=value arguments override the recipe (e.g. optim.lr=0.05 data.batch_size=256).")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    p.add_argument("--data", help="CIFAR folder or archive, or a class-per-folder image tree (or its .tar.gz)")
    p.add_argument("--recipe", default=None, help="a shipped recipe (cifar10_paper, cifar10_fast) or a YAML file")
    p.add_argument("--epochs", type=_positive_int, help="total epochs (with --resume: continue up to this many)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="default auto: bf16 where native")
    p.add_argument("--out", help="run folder (default runs/MODEL-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder exactly where it stopped")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 error of a checkpoint on a dataset")
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint or a run folder (its best, else last)")
    p.add_argument("--data", required=True, help="CIFAR folder or archive, or a class-per-folder image tree")
    p.add_argument("--split", choices=["test", "val", "train"], default="test",
                   help="test set (default), the training run's held-out validation images, or the training set")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--tta-flip", action="store_true", help="average over each image and its mirror")
    p.add_argument("--batch-size", type=_positive_int, default=1000)
    p.add_argument("--plots", metavar="DIR", help="write a confusion-matrix PNG here")
    p.add_argument("--json", action="store_true", help='print {"top1_err", "top5_err", "loss", "n"}')
    p.set_defaults(func=cmd_eval)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"resnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"resnet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
