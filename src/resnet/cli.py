"""The `resnet` command: thin subcommands, each parsing its arguments and calling one library function."""
from __future__ import annotations

import argparse
import json
import sys

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
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"resnet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
