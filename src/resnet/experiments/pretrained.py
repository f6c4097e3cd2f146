"""Pretrained networks on this data: each set of weights scored as it is on the experiments' hold-out (the
same images the depth and JPEG experiments validate on), then fine-tuned on the training part for a few
epochs. Any weights `--weights` accepts work: a named source (`scheme:name`) or `MODEL=FILE`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError
from ..engine.evaluate import evaluate
from ..engine.precision import default_device, resolve_precision
from ..files import atomic_write_text
from ..weights import get_source, is_named, model_from_weights
from .papers import AKAMASTER_ERR
from .runner import Experiment, RunSpec, base_config, count, format_mean_std, markdown_table, mean_std

# Fine-tuning a converged network: a tenth of the paper's starting lr, decayed to zero by a cosine, no
# warm-up (its weights are trained already). Overrides on the command line come after these.
FINETUNE = ["optim.lr=0.01", "schedule.name=cosine", "schedule.final_lr=0", "schedule.warmup_steps=0"]


def parse_weights(items: list[str]) -> list[tuple[str, str | None]]:
    """(weights spec, model name or None): `scheme:name` is a named source that knows its network;
    `MODEL=FILE` a weights file holding MODEL (e.g. resnet20=weights/r20.pth)."""
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if is_named(item):
            out.append((item, None))
            continue
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise ConfigError(f"--weights {item}: give a named source (e.g. akamaster:resnet20) or MODEL=FILE "
                             "(e.g. resnet20=r20.pth)")
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"--weights {item}: no such file {path}")
        out.append((str(Path(path).expanduser()), model))
    if not out:
        raise ConfigError("--weights: give at least one set of weights")
    return out


def _label(spec: str, model: str | None) -> str:
    return spec if model is None else f"{model}={Path(spec).name}"


def _published(spec: str, model: str) -> float | None:
    """The weights' own published CIFAR-10 test error: from a source that states its CIFAR accuracy, else
    akamaster's README table for `akamaster:` names; None for files and ImageNet weights."""
    if not is_named(spec):
        return None
    source = get_source(spec)
    if getattr(source, "dataset", None) == "CIFAR-10" and source.acc1 is not None:
        return round(100 - source.acc1, 2)
    return AKAMASTER_ERR.get(model) if spec.split(":", 1)[0] == "akamaster" else None


def score_as_is(spec: str, model_name: str | None, val) -> dict:
    """The weights unchanged on the hold-out, normalised as the weights expect (their source's mean/std;
    for a file, torchvision's ImageNet statistics, as `resnet eval --weights FILE` uses)."""
    model, meta = model_from_weights(spec, model_name)
    classes = model.fc.out_features
    if classes != len(val.classes):
        raise ConfigError(f"--weights {spec}: a {classes}-class head, but the data has {len(val.classes)} classes")
    device = default_device()
    # the weights' statistics, not the data's own (the hold-out carries those: fine-tuning replaces them below too)
    val = dataclasses.replace(val, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    loader = val.loader(1000, train=False, device=device, channels_last=False)
    result = evaluate(model.to(device), loader, resolve_precision("fp32", device), classes)
    return {"model": meta["model"], "mean": list(meta["mean"]), "std": list(meta["std"]), "top1_err": result["top1_err"],
            "loss": result["loss"], "n": result["n"]}


def pretrained(data: str, weights: list[str], epochs: int = 3, seeds: int = 1, out: str = "experiments/pretrained",
               recipe: str | None = None, overrides: list[str] | None = None, stream=None) -> dict:
    """Each set of weights: hold-out error as is, then after `epochs` of fine-tuning (each seed), in
    out/report.md and out/pretrained.json; fine-tuning runs in out/runs/<weights>-s<seed>/."""
    items = []
    for spec, model_name in parse_weights(weights):
        source = get_source(spec) if model_name is None else None
        name = source.model if source else model_name
        runs = [RunSpec(name, s, dict(source.model_args) if source else {}, label=_label(spec, model_name))
                for s in range(seeds)]
        items.append((spec, model_name, runs))
    names = [runs[0].name for _, _, runs in items]
    if len(set(names)) < len(names):  # two files of one name would share a run folder: the second never trains
        same = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--weights: two entries would share the run folder {same[0]} (files of the same name); "
                          "rename one of the files")
    cfg = base_config(data, epochs, recipe, [*FINETUNE, *(overrides or [])])
    if cfg.data.val_size == 0:
        raise ConfigError("pretrained networks are scored on the hold-out: data.val_size=0 leaves none")
    exp = Experiment("pretrained", out, cfg, [r for _, _, runs in items for r in runs], stream)
    exp.describe(check=False, weights=[spec for spec, _, _ in items])  # (each run's config adds its weights)
    train, val = exp.data()
    rows = []
    for spec, model_name, runs in items:
        before = score_as_is(spec, model_name, val)
        norm = dict(mean=tuple(before["mean"]), std=tuple(before["std"]))  # for fine-tuning as for scoring
        run = Experiment("pretrained", out, dataclasses.replace(cfg, weights=spec), runs, stream,
                         data=(dataclasses.replace(train, **norm), dataclasses.replace(val, **norm)))
        after = [(s.seed, [r["val_err"] for r in rec if r.get("val_err") is not None][-1]) for s, rec in run.run_all()]
        rows.append({"weights": runs[0].title, "model": runs[0].model, "mean": before["mean"], "std": before["std"],
                     "before": before["top1_err"], "after": mean_std([e for _, e in after]), "per_seed": after,
                     "published": _published(spec, runs[0].model), "n": before["n"]})
    atomic_write_text(Path(out) / "pretrained.json", json.dumps({"data": data, "epochs": cfg.epochs, "rows": rows}, indent=1))
    _report(Path(out), data, cfg, len(train), rows)
    return {"rows": rows, "out": str(out)}


def _report(out: Path, data: str, cfg, n_train: int, rows: list[dict]) -> None:
    table = markdown_table(
        ["weights", "network", "published test err (%)", "hold-out err as is (%)",
         f"after {count(cfg.epochs, 'epoch')} of fine-tuning (%), mean ± std", "each seed (%)", "normalised with (mean / std)"],
        [[r["weights"], r["model"], "–" if r["published"] is None else f"{r['published']:.2f}", f"{r['before']:.2f}",
          format_mean_std(*r["after"], len(r["per_seed"])), ", ".join(f"s{s}: {e:.2f}" for s, e in r["per_seed"]),
          f"{tuple(round(m, 3) for m in r['mean'])} / {tuple(round(s, 3) for s in r['std'])}"] for r in rows])
    text = [
        "# Pretrained networks on this data", "",
        f"Data: `{data}`. Hold-out: the {rows[0]['n']:,} images set aside by data.val_size={cfg.data.val_size:g} with "
        f"hold-out seed {cfg.holdout_seed} (the depth and JPEG experiments' validation images); fine-tuning on the "
        f"other {n_train:,}: {count(cfg.epochs, 'epoch')}, lr {cfg.optim.lr:g} with a {cfg.schedule.name} schedule, batch "
        f"{cfg.data.batch_size}, the recipe's augmentation. Errors are top-1, in percent; fine-tuned ones the last epoch's.",
        "", table, "",
        "Published errors are on the lossless CIFAR-10 test set. Networks trained on all 50,000 CIFAR-10 training "
        "images (akamaster's were) have seen the hold-out's images in their lossless form: their hold-out error "
        "mixes the cost of this data's encoding (artefacts they never saw) with memory of the images themselves; "
        "it is not generalisation to unseen images, and not comparable with a network trained on the rest alone.",
    ]
    atomic_write_text(out / "report.md", "\n".join(text) + "\n")
