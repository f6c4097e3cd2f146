"""The `resnet` command: thin subcommands, each parsing its arguments and calling one library function.

Errors: an expected failure (a `resnet.ResNetError`: bad input, a missing file or package, a
broken checkpoint; or an OSError) prints one line and exits with 2; anything else (a bug, an
out-of-memory) prints its traceback and exits with 1. RESNET_DEBUG=1 prints the traceback of
every error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

import torch

from . import allocator
from .api import train
from .config import INFERENCE_PRECISIONS, PRECISIONS, recipe_info, recipe_names
from .data.cache_folder import KINDS, clear_cache, format_listing, human, list_cache
from .data.cifar import fetch_named
from .data.transforms import TESTS
from .deploy.backends import BACKENDS, CLI_BACKENDS
from .deploy.benchmark import DEFAULT_BACKENDS, DEFAULT_BUDGET, batch_sizes, benchmark, format_table as format_benchmark
from .deploy.choose import ChoiceCache
from .deploy.export import DEFAULT_OPSET, FORMATS, check_out_name, export_model, format_report
from .engine.checkpoint import copy_resumable
from .engine.runs import expand_overrides
from .engine.trainer import TrainingInterrupted
from .errors import ConfigError, ResNetError
from .experiments import analysis, papers
from .experiments.demo import run_demo
from .experiments.jpeg_quality import jpeg_quality
from .experiments.pretrained import pretrained
from .experiments.runner import count
from .models.complexity import format_rows, format_table, measure_registered, model_rows
from .serve.evaluate import run_eval
from .serve.load import load_spec
from .serve.predict import run_predict
from .serve.share import export_hub, format_report as hub_report, push
from .version import __version__
from .weights.catalog import format_table as format_weights, rows as weights_rows

NAMED_DATA = ", or cifar10 / cifar100 (downloaded into the cache folder when absent)"


def cmd_summary(args) -> int:
    c = measure_registered(args.name, args.image_size)
    print(json.dumps(c.to_dict()) if args.json else format_table(c))
    return 0


def cmd_models(args) -> int:
    rows = model_rows(args.pattern)
    if not rows:  # an empty table says nothing: name what was asked (as `resnet weights` does)
        raise ConfigError(f"no model matches {args.pattern!r}; `resnet models` lists them all")
    print(json.dumps(rows) if args.json else format_rows(rows))
    return 0


def cmd_train(args) -> int:
    kwargs = {k: v for k, v in (("precision", args.precision), ("weights", args.weights)) if v}
    if args.skip_bad:
        kwargs["data__skip_bad"] = True
    run = train(model=args.model, data=args.data, recipe=None if args.resume else args.recipe, epochs=args.epochs,
                out=args.resume or args.out, resume=bool(args.resume), overrides=args.overrides or [], **kwargs)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    last = run.metrics
    print(f"run folder: {run.dir}  (last.safetensors, metrics.jsonl, curves.png)")
    if last.get("val_err") is not None:
        print(f"final validation error {last['val_err']:.2f}% (top-5 {last['val_top5_err']:.2f}%)")
    return 0


def cmd_recipes(args) -> int:
    rows = [recipe_info(n) for n in recipe_names()]
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['summary']}\n{'':<{width}}  published: {r['published']}")
    print("\nuse one: resnet train --recipe NAME --data PATH [key=value ...]; the YAML files give the source of "
          "every number (src/resnet/recipes/)")
    return 0


def cmd_eval(args) -> int:
    result = run_eval(args.checkpoint, args.data, weights=args.weights, model=args.model, split=args.split,
                      test=args.test, tta_flip=args.tta_flip, precision=args.precision, batch_size=args.batch_size,
                      workers=args.workers, plots=args.plots, backend=args.backend,
                      map_classes_by_position=args.map_classes_by_position)
    if args.json:
        print(json.dumps({k: result[k] for k in ("top1_err", "top5_err", "loss", "n", "backend", "weights_file")}))
        return 0
    scored = result.get("weights_file")
    scored = f" ({Path(scored).name})" if scored and Path(scored).name != Path(result["checkpoint"]).name else ""
    print(f"{result['checkpoint']}{scored} on {args.data} ({result.get('split', args.split)}, {result['n']} images), "
          f"backend {result['backend']}")
    print(f"top-1 error {result['top1_err']:.2f}%  top-5 error {result['top5_err']:.2f}%  loss {result['loss']:.4f}")
    for name, acc in zip(result["classes"], result["per_class_acc"]):
        print(f"  {name:<20} {acc:6.2f}%")
    if "confusion_png" in result:
        print(f"confusion matrix: {result['confusion_png']}")
    return 0


def cmd_predict(args) -> int:
    failures = run_predict(args.inputs, checkpoint=args.checkpoint, weights=args.weights, model=args.model,
                           topk=args.topk, as_json=args.json, batch_size=args.batch_size, precision=args.precision,
                           workers=args.workers, backend=args.backend)
    return 1 if failures else 0


def cmd_cache(args) -> int:
    if args.dir and Path(args.dir).expanduser().exists() and not Path(args.dir).expanduser().is_dir():
        raise ConfigError(f"--dir {args.dir} is a file, not a cache folder")  # else listed as an empty cache
    if args.action == "list":
        print(format_listing(list_cache(args.dir), args.dir, args.json))
        return 0
    kinds = tuple(KINDS) if args.all else args.kind
    removed = clear_cache(args.dir, kinds)
    for entry in removed:
        print(f"removed {entry.kind} {entry.path} ({human(entry.size)})")
    print(f"{len(removed)} entries, {human(sum(e.size for e in removed))} freed")
    return 0


def cmd_park(args) -> int:
    runs = copy_resumable(args.src, args.dst)
    print(f"{args.dst}: {count(len(runs), 'run')} with its newest checkpoint, metrics and config; resume each "
          "where it lies (`resnet train --resume RUN`, or the experiment's own command with --out there)")
    return 0


def cmd_demo(args) -> int:
    run_demo(args.out, tuple(args.depths), args.epochs, args.budget)
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:  # '' would run an experiment of nothing (and fail later, with a traceback)
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _kind_list(text: str) -> tuple[str, ...]:
    """--kind of `resnet cache clear`: 'decoded,' (a script's trailing comma) is decoded, not an unknown kind ''."""
    kinds = tuple(t.strip() for t in text.split(",") if t.strip())
    if not kinds:
        raise argparse.ArgumentTypeError(f"expected comma-separated cache kinds, got {text!r}")
    return kinds


def _given(text: str) -> str:
    """A path or name that must be given: '' (an empty variable in a script) would silently mean the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return text


def _workers(text: str) -> int:
    """--workers: processes, or -1 for the default."""
    return _int_at_least(text, -1, "0 or more processes (-1: the default)")


def cmd_experiment(args) -> int:
    out = {"out": args.out} if args.out else {}
    # `--data cifar10`: fetched once here, before any run starts (the runs share it)
    fetch_named(args.data, expand_overrides(getattr(args, "overrides", [])).get("data", {}).get("cache_dir") or None)
    if args.kind in ("responses", "gradients"):
        fn = analysis.responses if args.kind == "responses" else analysis.gradients
        result = fn(args.checkpoints, args.data, split=args.split, **out)
    else:
        train = dict(epochs=args.epochs, seeds=args.seeds, recipe=args.recipe, overrides=args.overrides,
                     stream=sys.stderr, jobs=getattr(args, "jobs", 1), **out)
        if args.kind == "degradation":
            tolerance = {} if args.tolerance is None else {"tolerance": args.tolerance}
            result = papers.degradation(args.data, args.depths, **tolerance, **train)
        elif args.kind == "depth":
            result = papers.depth_sweep(args.data, args.models.split(","), protocol=args.protocol, **train)
        elif args.kind == "jpeg-quality":
            result = jpeg_quality(args.data, args.qualities, model=args.model, **train)
        elif args.kind == "pretrained":
            train.pop("jobs")
            result = pretrained(args.data, args.weights.split(","), **train)
        elif args.kind == "shortcuts":
            result = papers.shortcut_options(args.data, args.depth, **train)
        else:
            result = papers.preactivation(args.data, args.depths, **train)
    print((Path(result["out"]) / "report.md").read_text())
    print(f"report folder: {result['out']}")
    return 0


def _add_experiment_parsers(sub) -> None:
    p = sub.add_parser("experiment", help="the papers' experiments, each writing a report folder")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    specs = {
        "degradation": "plain vs residual at several depths: training/validation error curves [ResNet Fig. 6]",
        "depth": "error against depth, mean ± std over seeds [ResNet Table 6]",
        "shortcuts": "shortcut options A / B / C and plain at one depth [ResNet Table 3]",
        "preact": "original vs pre-activation units at the same depth [Identity Mappings Table 3]",
        "responses": "std of each 3x3 layer's response in trained networks [ResNet Fig. 7]",
        "gradients": "per-layer gradient norms at initialisation and after training, plain vs residual",
        "jpeg-quality": "error against JPEG quality (images re-encoded, 4:2:0): the JPEG share of the gap, as a slope",
        "pretrained": "pretrained weights on the hold-out as they are, then fine-tuned on the training part",
    }
    # Each kind's own defaults for the shared options: (epochs, seeds, recipe help)
    defaults = {"jpeg-quality": (None, 3, "default cifar10_fast"),
                "pretrained": (3, 1, "default cifar10_paper, fine-tuning at lr 0.01 with a cosine decay "
                                     "(experiments/pretrained.py FINETUNE) unless overridden")}
    for kind, text in specs.items():
        k = kinds.add_parser(kind, help=text, description=text)
        k.add_argument("--data", required=True,
                       help=f"CIFAR folder or archive, an image tree, 'digits' (32x32) or 'digits16'{NAMED_DATA}")
        k.add_argument("--out", type=_given, help=f"report folder (default experiments/{kind}); rerun to resume")
        if kind in ("responses", "gradients"):
            k.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints or run folders")
            k.add_argument("--split", choices=["val", "test", "train"], default="val")
        else:
            epochs, seeds, recipe = defaults.get(kind, (20, 1, "default cifar10_paper, its lr steps at 50%% and 75%% "
                                                                "of the epochs"))
            k.add_argument("--epochs", type=_positive_int, default=epochs,
                           help=f"epochs per run (default {epochs or 'the recipe’s'})")
            k.add_argument("--seeds", type=_positive_int, default=seeds, help=f"runs per network (default {seeds})")
            k.add_argument("--recipe", type=_given, help=recipe)
            if kind != "pretrained":
                k.add_argument("--jobs", type=_positive_int, default=1,
                               help="runs trained side by side (default 1; on a GPU 4-8 keep it busy with small nets)")
            k.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
        if kind == "degradation":
            k.add_argument("--depths", type=_int_list, default=[20, 32, 44, 56], help="comma-separated (default 20,32,44,56)")
            k.add_argument("--tolerance", type=_nonnegative_float, help="points of final training error within which the deeper "
                           "net counts as training no worse, for the verdict (default 1)")
        elif kind == "depth":
            k.add_argument("--models", default="resnet20,resnet32,resnet44,resnet56", help="comma-separated model names")
            k.add_argument("--protocol", choices=["val", "final", "both"], default="val",
                           help="val: 45k/5k, validation error (default); final: the same schedule on all training "
                                "images (data.val_size=0), test error where the data has a test split; both")
        elif kind == "jpeg-quality":
            k.add_argument("--qualities", type=_int_list, default=[75, 50, 35, 25],
                           help="comma-separated JPEG qualities 1-100 (default 75,50,35,25; the data's own is used as is)")
            k.add_argument("--model", default="resnet20", help="the network trained at each quality (default resnet20)")
        elif kind == "pretrained":
            k.add_argument("--weights", type=_given, required=True,
                           help="comma-separated: named sources (akamaster:resnet20, ...) or MODEL=FILE (resnet20=r20.pth)")
        elif kind == "shortcuts":
            k.add_argument("--depth", type=_positive_int, default=20, help="CIFAR depth 6n+2 (default 20)")
        elif kind == "preact":
            k.add_argument("--depths", type=_int_list, default=[110, 164], help="comma-separated (default 110,164)")
        k.set_defaults(func=cmd_experiment)


def cmd_export(args) -> int:
    check_out_name(args.format, args.out)  # before the model loads
    if args.format == "hub":  # a folder to share: weights, config.json and a model card
        report = export_hub(args.model, args.out, license=args.license)
        print(json.dumps(report) if args.json else hub_report(report))
        return 0
    # The loader resolves the positional argument (checkpoint, run folder, weights or name); deploy
    # works on the model it returns.
    report = export_model(*load_spec(args.model), args.format, args.out, opset=args.opset,
                          dynamic_batch=args.dynamic_batch, fold_bn=not args.no_fold_bn, batch=args.batch,
                          image_size=args.image_size, data=args.data)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def cmd_benchmark(args) -> int:
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows, title = benchmark(*load_spec(args.model), args.backends, args.batch, args.image_size, args.data,
                            args.check_images, args.calib_images, args.seconds, log=log, min_iters=args.min_iters,
                            budget=args.budget or None)
    print(json.dumps(rows) if args.json else format_benchmark(rows, title))
    if args.save:
        done = [r for r in rows if r.get("images_per_sec")]
        if done:
            cache = ChoiceCache()
            cache.save_rows(done[0]["model"], int(done[0]["image_size"]), done)
            print(f"saved for --backend auto on this machine: {cache.path}", file=sys.stderr)
    return 0


def cmd_weights(args) -> int:
    items = weights_rows(args.pattern or "")
    if not items and args.pattern:  # an empty table says nothing: name what was asked
        raise ConfigError(f"no named weights match {args.pattern!r}; `resnet weights` lists them all")
    print(json.dumps(items, indent=1) if args.json else format_weights(items))
    return 0


def cmd_push(args) -> int:
    report = push(args.source, args.repo, revision=args.revision, private=args.private, license=args.license)
    print(json.dumps(report) if args.json else f"pushed to {report['repo']}: {report['url']}")
    return 0


def _add_sharing_parsers(sub) -> None:
    p = sub.add_parser("weights", help="every named weights source: data set, accuracy, size, preprocessing, licence, cached")
    p.add_argument("pattern", nargs="?", help="only names containing this, e.g. akamaster or resnet50, or "
                   "matching this glob, e.g. 'timm:*'")
    p.add_argument("--json", action="store_true", help="a JSON list with addresses, hashes and cache paths")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("push", help="upload a run (as a hub-style folder with its model card) to the Hugging Face hub")
    p.add_argument("source", metavar="RUN_OR_WEIGHTS", help="a run folder, a checkpoint, a hub-style folder or named weights")
    p.add_argument("--repo", required=True, help="OWNER/NAME on huggingface.co (created when missing)")
    p.add_argument("--revision", help="a branch to push to (default main)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--license", help="the model card's licence field")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_push)


def _add_deploy_parsers(sub) -> None:
    p = sub.add_parser("export", help="export to ONNX or TorchScript (checked against PyTorch), or as a hub-style folder")
    p.add_argument("model", metavar="SOURCE", help="a checkpoint (.safetensors or run folder) or a registered name; "
                   "with --format hub: a run folder, checkpoint or any --weights source")
    p.add_argument("--format", choices=[*FORMATS, "hub"], default="onnx",
                   help="hub: a folder of model.safetensors, config.json and a model card (README.md)")
    p.add_argument("--out", type=_given, required=True, help="output file (.onnx / .pt), or folder (hub)")
    p.add_argument("--license", help="hub: the licence field of the model card (default: the source's, else unknown)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: fixed at --batch)")
    p.add_argument("--batch", type=_positive_int, default=1, help="the fixed batch size (default 1)")
    p.add_argument("--opset", type=_positive_int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers (default: folded into the convs)")
    p.add_argument("--image-size", type=_positive_int, help="input side (default: the model's)")
    p.add_argument("--data", help="also check parity on real images of this dataset")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("benchmark", help="images/s, latency, memory and agreement with fp32 of every inference backend",
                       description=f"Every backend side by side. The default run stays within --budget "
                                   f"{DEFAULT_BUDGET:.0f} seconds (ResNet-50's eager and ONNX Runtime rows on two "
                                   "cores); backends that would start later are listed as skipped. Ask for more "
                                   "with e.g. --budget 900 --seconds 5 --check-images 256, or --budget 0 for no "
                                   "limit.")
    p.add_argument("model", metavar="NAME_OR_CKPT", help="a registered name (random weights) or a checkpoint")
    p.add_argument("--batch", type=batch_sizes, default=[1, 16], help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--backends", type=_backend_list, default=list(DEFAULT_BACKENDS),
                   help=f"comma-separated, from {','.join(BACKENDS)} (default all, cheapest to prepare first)")
    p.add_argument("--image-size", type=_positive_int, help="input side (default: the model's)")
    p.add_argument("--data", help="real images for the agreement check and int8 calibration (default: random)")
    p.add_argument("--check-images", type=_positive_int, default=64, help="images for the agreement check (default 64)")
    p.add_argument("--calib-images", type=_positive_int, default=64, help="int8 calibration images (default 64)")
    p.add_argument("--seconds", type=_nonnegative_float, default=2.0, help="timed seconds per backend and batch, at most (default 2)")
    p.add_argument("--min-iters", type=_positive_int, default=3, help="timed calls per backend and batch, at least "
                   "(default 3)")
    p.add_argument("--budget", type=_nonnegative_float, default=DEFAULT_BUDGET,
                   help=f"seconds for the whole run (default {DEFAULT_BUDGET:.0f}; 0: no limit)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per backend and batch")
    p.add_argument("--save", action="store_true",
                   help="remember the table: --backend auto then takes the fastest backend with >= 99%% top-1 "
                        "agreement measured here for this model and batch (use --data and a trained checkpoint)")
    p.set_defaults(func=cmd_benchmark)


def _add_serve_parsers(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 error of a checkpoint on a dataset")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint or a run folder (its best, else last)")
    p.add_argument("--weights", type=_given, help="instead of --checkpoint: pretrained weights, e.g. torchvision:resnet50.IMAGENET1K_V2, "
                   "akamaster:resnet20, timm:resnet50.a1_in1k (`resnet weights` lists them), a hub-style folder, "
                   "hf://OWNER/NAME[@REV], or a torchvision-layout file (with --model)")
    p.add_argument("--model", help="the network a --weights file holds (e.g. resnet50)")
    p.add_argument("--data", required=True, help=f"CIFAR folder or archive, a class-per-folder image tree{NAMED_DATA}")
    p.add_argument("--test", choices=TESTS, default="center",
                   help="single centre crop (default), the paper's 10-crop test, or the fully-convolutional "
                        "multi-scale test (shorter side 224/256/384/480/640, and mirrored) [ResNet §3.4]")
    p.add_argument("--workers", type=_workers, default=-1, help="decoding processes for streamed images (default min(8, CPUs))")
    p.add_argument("--split", choices=["test", "val", "train"], default="test",
                   help="test set (default), the training run's held-out validation images, or the training set")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto")
    p.add_argument("--tta-flip", action="store_true", help="average the logits of each image and its mirror (the ten-crop "
                   "and multi-scale tests include the mirrors already)")
    p.add_argument("--map-classes-by-position", action="store_true",
                   help="pair the data's class folders with the model's classes in sorted order when their names "
                        "differ (default: an error listing both)")
    _backend_argument(p, multi_scale=True)
    p.add_argument("--batch-size", type=_positive_int,
                   help="default 1000 (images in memory, as they are), 64 (streamed, or resized and cropped)")
    p.add_argument("--plots", metavar="DIR", help="write a confusion-matrix PNG here")
    p.add_argument("--json", action="store_true", help='print {"top1_err", "top5_err", "loss", "n"}')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of images (or folders of images) with names and probabilities")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint or a run folder: predicts its training classes")
    p.add_argument("--weights", type=_given, help="instead of --checkpoint: e.g. torchvision:resnet50.IMAGENET1K_V2 (ImageNet names), "
                   "akamaster:resnet20 (CIFAR-10 names), a hub-style folder or hf://OWNER/NAME")
    p.add_argument("--model", help="the network a --weights file holds (e.g. resnet50)")
    p.add_argument("--topk", type=_positive_int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image per line (JSON Lines)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto")
    p.add_argument("--workers", type=_workers, help="decoding processes (default: up to 4 for large inputs)")
    _backend_argument(p)
    p.set_defaults(func=cmd_predict)


class PrintVersion(argparse.Action):
    """--version: one line, never wrapped (argparse's own version action wraps at the terminal's width)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"resnet-toolkit {__version__}, torch {torch.__version__}, {allocator.describe()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the README's promise for every expected error), pointing at --help for the
    usage argparse would print above it; subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resnet", description="Deep residual networks: models, training, experiments.")
    parser.add_argument("--version", action=PrintVersion, help="the toolkit's and PyTorch's versions, and the allocator settings")
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
    p.add_argument("--data", help=f"CIFAR folder or archive, a class-per-folder image tree (or its .tar.gz){NAMED_DATA}")
    p.add_argument("--recipe", type=_given, default=None, help="a shipped recipe (see `resnet recipes`) or a YAML file")
    p.add_argument("--epochs", type=_positive_int, help="total epochs (with --resume: continue up to this many)")
    p.add_argument("--precision", choices=PRECISIONS, help="default auto: bf16 where native")
    p.add_argument("--out", type=_given, help="run folder (default runs/MODEL-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder exactly where it stopped")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be decoded, listed in RUN_DIR/skipped.txt (default: stop with an error)")
    p.add_argument("--weights", type=_given, help="start from these weights: a file or a named source, e.g. "
                   "torchvision:resnet50.IMAGENET1K_V2 (with model_args.num_classes=N: a new head)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("recipes", help="the shipped training recipes, each with the accuracy its source publishes")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, summary, description, published}")
    p.set_defaults(func=cmd_recipes)

    _add_serve_parsers(sub)

    p = sub.add_parser("demo", help="plain vs residual nets on data that needs no download (at most five minutes)")
    p.add_argument("--depths", type=_int_list, default=[20, 56], help="comma-separated CIFAR depths (default 20,56)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs per network (default: up to 20, as many as fit --budget on this machine)")
    p.add_argument("--budget", type=_nonnegative_float, default=300.0,
                   help="seconds the whole demo may take; the epochs are chosen from a measured step time "
                        "(default 300; 0 = no limit, 20 epochs)")
    p.add_argument("--out", type=_given, help="report folder (default runs/demo-TIME)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cache", help="list or clear the cache folder (decoded images, downloads, compiled kernels)",
                       description="The cache folder is $RESNET_CACHE, else $XDG_CACHE_HOME/resnet, else "
                                   "~/.cache/resnet; everything in it is rebuilt when missing.")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--dir", help="another cache folder (what data.cache_dir named; default: the cache folder)")
    p.add_argument("--kind", type=_kind_list, default=("decoded",), help="clear: comma-separated kinds, from "
                   f"{', '.join(KINDS)} (default decoded)")
    p.add_argument("--all", action="store_true", help="clear: every kind the toolkit made")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("park", help="copy a run or experiment folder in the smallest form that still resumes "
                       "(to commit an unfinished run, or move it to another machine)",
                       description="Keeps each run's newest complete ckpt/ pair, best.safetensors, config.yaml and "
                                   "metrics.jsonl (and an experiment's own files); leaves out the last.* hard links, "
                                   "older pairs and tensorboard/. Stop the run first (SIGTERM writes a checkpoint).")
    p.add_argument("src", help="a run folder or an experiment folder")
    p.add_argument("dst", help="a new (or empty) folder")
    p.set_defaults(func=cmd_park)

    _add_experiment_parsers(sub)
    _add_deploy_parsers(sub)
    _add_sharing_parsers(sub)
    return parser


def _backend_argument(p, multi_scale: bool = False) -> None:
    p.add_argument("--backend", default="auto", choices=CLI_BACKENDS,
                   help="how the network runs (CPU): auto = for jobs of 10 TMAC or more the fastest backend that "
                        "agrees with fp32 on >= 99%% of top-1 on this processor, otherwise eager-bf16 (BN folded "
                        "into the convolutions, channels_last, bf16) where the processor has native bf16, else "
                        "eager-fp32; compiled-bf16 = torch.compile with freezing (cached); int8 = PT2E quantization "
                        "calibrated on the first 256 images; see `resnet benchmark` for their speeds here"
                        + (". --test multi-scale needs one that takes any image size (auto, eager-*, onnxruntime*)"
                           if multi_scale else ""))


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _backend_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in BACKENDS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join(BACKENDS)}")
    return items


def one_line(e: BaseException) -> str:
    """The error's own message. An error raised in a DataLoader worker comes back with the worker's whole
    traceback in its message ("Caught X in DataLoader worker process 0. Original Traceback ..."): its last
    line, less the type name, is the message the worker raised."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    return last.split(": ", 1)[1] if last.startswith(type(e).__name__ + ": ") else last


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """The toolkit's own warnings as one line each ("resnet train: warning: ..."), not Python's two lines
    naming the source file and quoting the warn() call; other libraries' keep Python's format."""
    package = str(Path(__file__).resolve().parent)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(Path(filename).resolve()).startswith(package):
            print(f"resnet {command}: warning: {one_line(message)}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which has its own handler: a checkpoint, then a clean stop), raised as
    Ctrl-C's KeyboardInterrupt is, so the same clean-ups run: the default action killed the process where it stood,
    not a word said, a half-written file's hidden temporary (a data cache's) left behind."""


@contextlib.contextmanager
def _sigterm_as_exception():
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # a caller's own handling stays
        yield
        return

    owner = os.getpid()

    def terminate(signum, frame):
        if os.getpid() != owner:  # a forked worker (the decoding pool, which Pool.terminate() ends by SIGTERM): die
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as before, not with a traceback of its own
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = os.environ.get("RESNET_DEBUG", "") not in ("", "0")
    try:
        with _sigterm_as_exception(), _warnings_as_lines(args.command):
            return args.func(args)
    except Terminated:
        print(f"resnet {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"resnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except TrainingInterrupted as e:  # a clean stop on SIGINT/SIGTERM, checkpoint written
        message = str(e)
        if args.command == "experiment":  # the experiment resumes all its runs, not one `train --resume`
            message = f"{e.where} in {e.run_dir}; continue with the same command (finished runs are read back)"
        print(f"resnet {args.command}: {message}", file=sys.stderr)
        return e.exit_code
    except (ResNetError, OSError) as e:  # expected: the message says what to do
        if debug:
            traceback.print_exc()
        print(f"resnet {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception:  # a bug or an out-of-memory: where it happened matters more than a tidy line
        traceback.print_exc()
        print(f"resnet {args.command}: unexpected error (traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
