"""The `resnet` command: thin subcommands, each parsing its arguments and calling one library function."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


NAMED_DATA = ", or cifar10 / cifar100 (downloaded into the cache folder when absent)"


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
    if args.skip_bad:
        cli.setdefault("data", {})["skip_bad"] = True
    if args.weights:
        cli["weights"] = args.weights
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
    _fetch_named(cfg.data.path, cfg.data.cache_dir)
    history = train(cfg, run_dir, resume=bool(args.resume))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    last = history[-1] if history else {}
    print(f"run folder: {run_dir}  (last.safetensors, metrics.jsonl, curves.png)")
    if last.get("val_err") is not None:
        print(f"final validation error {last['val_err']:.2f}% (top-5 {last['val_top5_err']:.2f}%)")
    return 0


def _fetch_named(data: str, cache_dir: str = "") -> None:
    """`--data cifar10` / `cifar100`: download the official archive into the cache when it is not there."""
    from .data.cifar import fetch_named

    fetch_named(data, cache_dir or None)


def _overrides(items):
    from .config import parse_overrides

    # `num_classes=N` is shorthand for model_args.num_classes=N (fine-tuning: the new head's size)
    return parse_overrides([f"model_args.{i}" if i.startswith("num_classes=") else i for i in items or []])


def cmd_eval(args) -> int:
    from .data import ImagesTooLargeError
    from .serve.evaluate import evaluate_weights, run_eval, run_eval_stream

    _fetch_named(args.data)
    streamed = dict(checkpoint=args.checkpoint, weights=args.weights, model=args.model, split=args.split,
                    test=args.test, precision=args.precision, batch_size=args.batch_size or 64, workers=args.workers,
                    plots=args.plots, backend=args.backend)
    if args.weights and args.checkpoint:
        raise ValueError("give exactly one of --checkpoint CKPT and --weights SOURCE")
    if args.weights:  # in memory for small-image nets on images of their size, else streamed
        result = evaluate_weights(args.data, args.weights, model=args.model, split=args.split, test=args.test,
                                  precision=args.precision, tta_flip=args.tta_flip, batch_size=args.batch_size,
                                  workers=args.workers, plots=args.plots, backend=args.backend)
    elif args.test != "center":  # image folders of any size, decoded per batch
        result = run_eval_stream(args.data, **streamed)
    else:
        if not args.checkpoint:
            raise ValueError("give --checkpoint CKPT or --weights SOURCE")
        try:
            result = run_eval(args.checkpoint, args.data, split=args.split, precision=args.precision,
                              tta_flip=args.tta_flip, batch_size=args.batch_size or 1000, plots=args.plots,
                              backend=args.backend)
        except ImagesTooLargeError:
            result = run_eval_stream(args.data, **streamed)
    if args.json:
        print(json.dumps({k: result[k] for k in ("top1_err", "top5_err", "loss", "n")}))
        return 0
    print(f"{result['checkpoint']} on {args.data} ({result.get('split', args.split)}, {result['n']} images)")
    print(f"top-1 error {result['top1_err']:.2f}%  top-5 error {result['top5_err']:.2f}%  loss {result['loss']:.4f}")
    for name, acc in zip(result["classes"], result["per_class_acc"]):
        print(f"  {name:<20} {acc:6.2f}%")
    if "confusion_png" in result:
        print(f"confusion matrix: {result['confusion_png']}")
    return 0


def cmd_predict(args) -> int:
    from .serve.predict import run_predict

    failures = run_predict(args.inputs, checkpoint=args.checkpoint, weights=args.weights, model=args.model,
                           topk=args.topk, as_json=args.json, batch_size=args.batch_size, precision=args.precision,
                           workers=args.workers, backend=args.backend)
    return 1 if failures else 0


def cmd_cache(args) -> int:
    from .data.cache_folder import KINDS, clear_cache, format_listing, human, list_cache

    if args.action == "list":
        print(format_listing(list_cache(args.dir), args.dir, args.json))
        return 0
    kinds = tuple(KINDS) if args.all else tuple(k.strip() for k in args.kind.split(","))
    removed = clear_cache(args.dir, kinds)
    for entry in removed:
        print(f"removed {entry.kind} {entry.path} ({human(entry.size)})")
    print(f"{len(removed)} entries, {human(sum(e.size for e in removed))} freed")
    return 0


def cmd_demo(args) -> int:
    from .experiments.demo import run_demo

    run_demo(args.out, tuple(args.depths), args.epochs)
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_experiment(args) -> int:
    from .experiments import analysis, papers

    out = {"out": args.out} if args.out else {}
    _fetch_named(args.data, _overrides(getattr(args, "overrides", [])).get("data", {}).get("cache_dir", ""))
    if args.kind in ("responses", "gradients"):
        fn = analysis.responses if args.kind == "responses" else analysis.gradients
        result = fn(args.checkpoints, args.data, split=args.split, **out)
    else:
        train = dict(epochs=args.epochs, seeds=args.seeds, recipe=args.recipe, overrides=args.overrides,
                     stream=sys.stderr, jobs=args.jobs, **out)
        if args.kind == "degradation":
            tolerance = {} if args.tolerance is None else {"tolerance": args.tolerance}
            result = papers.degradation(args.data, args.depths, **tolerance, **train)
        elif args.kind == "depth":
            result = papers.depth_sweep(args.data, args.models.split(","), **train)
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
    }
    for kind, text in specs.items():
        k = kinds.add_parser(kind, help=text, description=text)
        k.add_argument("--data", required=True, help="CIFAR folder or archive, an image tree, 'digits'"
                       f"{NAMED_DATA}")
        k.add_argument("--out", help=f"report folder (default experiments/{kind}); rerun to resume")
        if kind in ("responses", "gradients"):
            k.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints or run folders")
            k.add_argument("--split", choices=["val", "test", "train"], default="val")
        else:
            k.add_argument("--epochs", type=_positive_int, default=20, help="epochs per run (default 20)")
            k.add_argument("--seeds", type=_positive_int, default=1, help="runs per network (default 1)")
            k.add_argument("--recipe", help="default cifar10_paper, its lr steps at 50%% and 75%% of the epochs")
            k.add_argument("--jobs", type=_positive_int, default=1,
                           help="runs trained side by side (default 1; on a GPU 4-8 keep it busy with small nets)")
            k.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
        if kind == "degradation":
            k.add_argument("--depths", type=_int_list, default=[20, 32, 44, 56], help="comma-separated (default 20,32,44,56)")
            k.add_argument("--tolerance", type=float, help="points of final training error within which the deeper "
                           "net counts as training no worse, for the verdict (default 1)")
        elif kind == "depth":
            k.add_argument("--models", default="resnet20,resnet32,resnet44,resnet56", help="comma-separated model names")
        elif kind == "shortcuts":
            k.add_argument("--depth", type=_positive_int, default=20, help="CIFAR depth 6n+2 (default 20)")
        elif kind == "preact":
            k.add_argument("--depths", type=_int_list, default=[110, 164], help="comma-separated (default 110,164)")
        k.set_defaults(func=cmd_experiment)


def cmd_export(args) -> int:
    if args.format == "hub":
        from .serve.share import export_hub, format_report as hub_report

        report = export_hub(args.model, args.out, license=args.license)
        print(json.dumps(report) if args.json else hub_report(report))
        return 0
    from .deploy.export import export_model, format_report

    report = export_model(args.model, args.format, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                          fold_bn=not args.no_fold_bn, batch=args.batch, image_size=args.image_size, data=args.data)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def cmd_benchmark(args) -> int:
    from .deploy.benchmark import benchmark, format_table

    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows, title = benchmark(args.model, args.backends, args.batch, args.image_size, args.data, args.check_images,
                            args.calib_images, args.seconds, log=log, min_iters=args.min_iters)
    print(json.dumps(rows) if args.json else format_table(rows, title))
    return 0


def cmd_weights(args) -> int:
    from .weights.catalog import format_table, rows

    items = rows(args.pattern or "")
    print(json.dumps(items, indent=1) if args.json else format_table(items))
    return 0


def cmd_push(args) -> int:
    from .serve.share import push

    report = push(args.source, args.repo, revision=args.revision, private=args.private, license=args.license)
    print(json.dumps(report) if args.json else f"pushed to {report['repo']}: {report['url']}")
    return 0


def _add_sharing_parsers(sub) -> None:
    p = sub.add_parser("weights", help="every named weights source: data set, accuracy, size, preprocessing, licence, cached")
    p.add_argument("pattern", nargs="?", help="only names containing this, e.g. akamaster or resnet50")
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
    from .deploy.backends import BACKENDS, DEFAULT_BACKENDS

    p = sub.add_parser("export", help="export to ONNX or TorchScript (checked against PyTorch), or as a hub-style folder")
    p.add_argument("model", metavar="SOURCE", help="a checkpoint (.safetensors or run folder) or a registered name; "
                   "with --format hub: a run folder, checkpoint or any --weights source")
    p.add_argument("--format", choices=["onnx", "torchscript", "hub"], default="onnx",
                   help="hub: a folder of model.safetensors, config.json and a model card (README.md)")
    p.add_argument("--out", required=True, help="output file (.onnx / .pt), or folder (hub)")
    p.add_argument("--license", help="hub: the licence field of the model card (default: the source's, else unknown)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: fixed at --batch)")
    p.add_argument("--batch", type=_positive_int, default=1, help="the fixed batch size (default 1)")
    p.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers (default: folded into the convs)")
    p.add_argument("--image-size", type=_positive_int, help="input side (default: the model's)")
    p.add_argument("--data", help="also check parity on real images of this dataset")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("benchmark", help="images/s, latency, memory and agreement with fp32 of every inference backend")
    p.add_argument("model", metavar="NAME_OR_CKPT", help="a registered name (random weights) or a checkpoint")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help=f"comma-separated, from {','.join(BACKENDS)}")
    p.add_argument("--image-size", type=_positive_int, help="input side (default: the model's)")
    p.add_argument("--data", help="real images for the agreement check and int8 calibration (default: random)")
    p.add_argument("--check-images", type=_positive_int, default=256, help="images for the agreement check")
    p.add_argument("--calib-images", type=_positive_int, default=256, help="int8 calibration images")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per backend and batch (default 3)")
    p.add_argument("--min-iters", type=_positive_int, default=10, help="timed calls per backend and batch, at least")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per backend and batch")
    p.set_defaults(func=cmd_benchmark)


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
    p.add_argument("--data", help=f"CIFAR folder or archive, a class-per-folder image tree (or its .tar.gz){NAMED_DATA}")
    p.add_argument("--recipe", default=None, help="a shipped recipe (cifar10_paper, cifar10_fast) or a YAML file")
    p.add_argument("--epochs", type=_positive_int, help="total epochs (with --resume: continue up to this many)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="default auto: bf16 where native")
    p.add_argument("--out", help="run folder (default runs/MODEL-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder exactly where it stopped")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be decoded, listed in RUN_DIR/skipped.txt (default: stop with an error)")
    p.add_argument("--weights", help="start from these weights: a file or a named source, e.g. "
                   "torchvision:resnet50.IMAGENET1K_V2 (with model_args.num_classes=N: a new head)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 error of a checkpoint on a dataset")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint or a run folder (its best, else last)")
    p.add_argument("--weights", help="instead of --checkpoint: pretrained weights, e.g. torchvision:resnet50.IMAGENET1K_V2, "
                   "akamaster:resnet20, timm:resnet50.a1_in1k (`resnet weights` lists them), a hub-style folder, "
                   "hf://OWNER/NAME[@REV], or a torchvision-layout file (with --model)")
    p.add_argument("--model", help="the network a --weights file holds (e.g. resnet50)")
    p.add_argument("--data", required=True, help=f"CIFAR folder or archive, a class-per-folder image tree{NAMED_DATA}")
    p.add_argument("--test", choices=["center", "ten-crop", "multi-scale"], default="center",
                   help="single centre crop (default), the paper's 10-crop test, or the fully-convolutional "
                        "multi-scale test (shorter side 224/256/384/480/640, and mirrored) [ResNet §3.4]")
    p.add_argument("--workers", type=int, default=-1, help="decoding processes for streamed images (default min(8, CPUs))")
    p.add_argument("--split", choices=["test", "val", "train"], default="test",
                   help="test set (default), the training run's held-out validation images, or the training set")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--tta-flip", action="store_true", help="average over each image and its mirror")
    _backend_argument(p)
    p.add_argument("--batch-size", type=_positive_int, help="default 1000 (images in memory), 64 (streamed)")
    p.add_argument("--plots", metavar="DIR", help="write a confusion-matrix PNG here")
    p.add_argument("--json", action="store_true", help='print {"top1_err", "top5_err", "loss", "n"}')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of images (or folders of images) with names and probabilities")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint or a run folder: predicts its training classes")
    p.add_argument("--weights", help="instead of --checkpoint: e.g. torchvision:resnet50.IMAGENET1K_V2 (ImageNet names), "
                   "akamaster:resnet20 (CIFAR-10 names), a hub-style folder or hf://OWNER/NAME")
    p.add_argument("--model", help="the network a --weights file holds (e.g. resnet50)")
    p.add_argument("--topk", type=_positive_int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image per line (JSON Lines)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--workers", type=int, help="decoding processes (default: up to 4 for large inputs)")
    _backend_argument(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="plain vs residual nets on data that needs no download (about five minutes)")
    p.add_argument("--depths", type=_int_list, default=[20, 56], help="comma-separated CIFAR depths (default 20,56)")
    p.add_argument("--epochs", type=_positive_int, default=20, help="epochs per network (default 20)")
    p.add_argument("--out", help="report folder (default runs/demo-TIME)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cache", help="list or clear the cache folder (decoded images, downloads, compiled kernels)",
                       description="The cache folder is $RESNET_CACHE, else $XDG_CACHE_HOME/resnet, else "
                                   "~/.cache/resnet; everything in it is rebuilt when missing.")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--dir", help="another cache folder (what data.cache_dir named; default: the cache folder)")
    p.add_argument("--kind", default="decoded", help="clear: comma-separated kinds, from decoded, download, cifar, "
                   "compiled (default decoded)")
    p.add_argument("--all", action="store_true", help="clear: every kind the toolkit made")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.set_defaults(func=cmd_cache)

    _add_experiment_parsers(sub)
    _add_deploy_parsers(sub)
    _add_sharing_parsers(sub)
    return parser


def _backend_argument(p) -> None:
    from .deploy.backends import CLI_BACKENDS

    p.add_argument("--backend", default="auto", choices=CLI_BACKENDS,
                   help="how the network runs (CPU): auto = BN folded into the convolutions, channels_last, bf16 "
                        "where the processor has it (eager-bf16), else fp32; compiled-bf16 = torch.compile with "
                        "freezing (cached); int8 = PT2E quantization calibrated on the first 256 images; see "
                        "`resnet benchmark` for their speeds here")


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
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        from .engine.trainer import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):  # a clean stop on SIGINT/SIGTERM, checkpoint written
            print(f"resnet {args.command}: {e}", file=sys.stderr)
            return 143 if e.signal_name == "SIGTERM" else 130
        print(f"resnet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
