"""Hub-style folders, written: `model.safetensors`, `config.json` and `README.md` (a model card).

The layout the Hugging Face hub and timm use, so a folder can be pushed as it is. `config.json`
holds the architecture (this toolkit's `model_config`, enough to rebuild the network alone), the
classes and their names, the input size and preprocessing, and timm's `pretrained_cfg` fields
where they mean the same (input_size, crop_pct, interpolation, mean, std, num_classes, pool_size,
first_conv, classifier, license). `resnet.weights.folder` reads it back. A model carries what it
was loaded or trained with in `model.pretrained_meta` (the description `load_model` returns).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save as safetensors_bytes

from ..files import atomic_write_bytes, atomic_write_text
from ..version import __version__
from .counting import measure

WEIGHTS_NAME, CONFIG_NAME, CARD_NAME = "model.safetensors", "config.json", "README.md"
FORMAT = 1  # config.json's `resnet_format`: raised when a reader would misread a newer folder
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults, for bare models


def last_map_size(model, size: int) -> list[int]:
    """[H, W] of the last feature map for `size` x `size` inputs (timm's pool_size), from a meta-device
    pass: the speedrun nets max-pool in every stage, so no fixed stride per stem gives it."""
    return [s for s in measure(model, size).stages if s.stage != "head"][-1].output_size[1:]


def describe(model, meta: dict | None) -> dict:
    """The model's description, with what a bare (never loaded) model would need filled in."""
    meta = dict(meta or getattr(model, "pretrained_meta", None) or {})
    size = int(meta.get("input_size") or model.config.input_size)  # 32 for the CIFAR and whitening stems
    meta.setdefault("model", getattr(model, "model_name", "resnet"))
    meta.setdefault("mean", list(IMAGENET_MEAN))
    meta.setdefault("std", list(IMAGENET_STD))
    meta["input_size"], meta["resize"] = size, int(meta.get("resize") or size)
    meta.setdefault("interpolation", "bilinear")
    return meta


def build_config(model, meta: dict, license: str | None = None) -> dict:
    """config.json: timm's top-level keys and `pretrained_cfg`, plus this toolkit's exact description."""
    cfg, num_classes = model.config, model.config.num_classes
    size, resize = meta["input_size"], meta["resize"]
    classes = list(meta.get("classes") or [])
    published = meta.get("published") or {}
    pretrained_cfg = {
        "tag": meta.get("tag"), "input_size": [cfg.in_chans, size, size], "fixed_input_size": False,
        "interpolation": meta["interpolation"], "crop_pct": round(size / resize, 6), "crop_mode": "center",
        "mean": list(meta["mean"]), "std": list(meta["std"]), "num_classes": num_classes,
        "pool_size": last_map_size(model, size), "first_conv": "conv1", "classifier": "fc",
        "license": license or meta.get("license") or "unknown", "origin_url": meta.get("origin_url"),
        **{k: v for k, v in (meta.get("timm_cfg") or {}).items() if k in ("test_input_size", "test_crop_pct", "paper_ids")},
    }
    return {
        "architecture": meta["model"], "num_classes": num_classes, "num_features": model.num_features,
        "global_pool": cfg.pool, "label_names": classes if len(classes) == num_classes else None,
        "pretrained_cfg": {k: v for k, v in pretrained_cfg.items() if v is not None},
        "library_name": "resnet", "resnet_version": __version__, "resnet_format": FORMAT,
        "model_config": cfg.to_dict(),
        "preprocess": {"resize": resize, "crop": size, "mean": list(meta["mean"]), "std": list(meta["std"]),
                       "interpolation": meta["interpolation"]},
        "dataset": meta.get("dataset"), "weights_source": meta.get("weights"),
        "published": published or None,
        # the run's own config: `resnet eval --weights FOLDER --split val` rebuilds its hold-out from it
        "training_config": meta.get("config"), "epoch": meta.get("epoch"),
    }


def save_pretrained(model, folder: str | os.PathLike, meta: dict | None = None, history: list[dict] | None = None,
                    license: str | None = None) -> Path:
    """Write `folder`/{model.safetensors, config.json, README.md}; `history` is the run's metrics.jsonl."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = describe(model, meta)
    config = build_config(model, meta, license)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    card = model_card(model, meta, config, history or [])
    weights = safetensors_bytes(state, metadata={"format": "pt", "resnet": json.dumps({"model": meta["model"]})})
    # config.json is what makes a folder a model (weights.folder.is_folder): it goes while the files change and
    # comes back last, so a crash while this replaces another export never pairs these weights with its config
    (folder / CONFIG_NAME).unlink(missing_ok=True)
    atomic_write_bytes(folder / WEIGHTS_NAME, weights)
    atomic_write_text(folder / CARD_NAME, card)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return folder


# --------------------------------------------------------------------------- the model card
def _front_matter(config: dict) -> list[str]:
    license = config["pretrained_cfg"]["license"]
    tags = ["image-classification", "resnet", config["architecture"]]
    lines = ["---", f"license: {license.lower() if license != 'unknown' else 'other'}", "library_name: resnet",
             "pipeline_tag: image-classification", "tags:"] + [f"- {t}" for t in tags]
    hub_ids = {"cifar-10": "cifar10", "cifar10": "cifar10", "cifar-100": "cifar100", "cifar100": "cifar100",
               "imagenet-1k": "imagenet-1k", "imagenet": "imagenet-1k"}  # the hub's ids of the data sets it knows
    if str(config.get("dataset") or "").lower() in hub_ids:
        lines += ["datasets:", f"- {hub_ids[config['dataset'].lower()]}"]
    return lines + ["---", ""]


def _facts(model, meta: dict, config: dict) -> list[str]:
    c, size = model.config, meta["input_size"]
    counted = measure(model, size, meta["model"])
    classes = config["label_names"] or []
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    pre = config["preprocess"]
    rows = [("architecture", f"`{meta['model']}`: {c.depth} layers, `{c.block}` blocks, shortcut option {c.shortcut}, "
                             f"stages {list(c.layers)} of widths {list(c.widths)}, `{c.stem}` stem"),
            ("parameters", f"{counted.params:,}"), ("MACs", f"{counted.macs / 1e6:,.1f} M per {size}x{size} image"),
            ("input", f"shorter side to {pre['resize']} ({pre['interpolation']}), centre crop {pre['crop']}, "
                      f"mean {pre['mean']}, std {pre['std']}"),
            ("classes", f"{c.num_classes}" + (f": {shown}" if shown else "")),
            ("weights", str(config.get("weights_source") or "")
             + (f" (after epoch {meta['epoch']}" + (f", step {meta['step']}" if meta.get("step") is not None else "")
                + ")" if meta.get("epoch") else "")),  # (a folder's config.json keeps the epoch, not the step)
            ("origin", str(config["pretrained_cfg"].get("origin_url") or "")), ("toolkit", f"resnet {__version__}"),
            ("licence", config["pretrained_cfg"]["license"])]
    return ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows if v] + [""]


OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW", "lamb": "LAMB", "muon": "Muon (conv filters) and SGD"}


def _augmentation(d: dict, streamed: bool | None) -> str:
    """The training augmentation in words: streamed images take the `augment` preset; images held in memory
    (CIFAR-sized) padded random crops instead; then what either adds."""
    if streamed:
        parts = [f"`{d.get('augment')}` ({d.get('image_size')} px crops), flip {d.get('flip')}"]
    else:
        pad_mode = "reflect" if d.get("pad_mode") == "reflect" else "zero"
        parts = [f"random crops with {d.get('pad')} pixels of {pad_mode} padding, flip {d.get('flip')}"]
    extras = [("auto_augment", "policy {}"), ("random_erase", "random erasing p {}"), ("cutout", "Cutout {}"),
              ("mixup_alpha", "mixup alpha {}"), ("cutmix_alpha", "CutMix alpha {}")]
    parts += [text.format(d[key]) for key, text in extras if d.get(key)]
    return ", ".join(parts)


def _recipe(meta: dict) -> list[str]:
    cfg = meta.get("config")
    if not cfg:
        return []
    d, o, s = cfg.get("data", {}), cfg.get("optim", {}), cfg.get("schedule", {})
    held = d.get("val_size", 0)  # data.val_size: a fraction below 1, else a count
    held = f"{100 * held:g}% of the images" if 0 < held < 1 else f"{int(held):,} images"
    name = o.get("name", "sgd")
    moments = f"betas {o.get('betas')}" if name in ("adamw", "lamb") else f"momentum {o.get('momentum')}"
    weights = f" (these weights: after epoch {meta['epoch']})" if meta.get("epoch") else ""
    lines = ["## Training", "",
             f"- data: `{d.get('path')}` ({meta.get('dataset') or 'images'}), {held} held out "
             f"for validation, batch {d.get('batch_size')}, augmentation: {_augmentation(d, meta.get('streamed'))}",
             f"- optimiser: {OPTIMIZER_NAMES.get(name, name)} lr {o.get('lr')}, {moments}, weight decay "
             f"{o.get('weight_decay')}, schedule `{s.get('name')}` {s.get('milestones') or ''}",
             f"- {cfg.get('epochs')} epochs{weights}, seed {cfg.get('seed')}, precision {cfg.get('precision')}, "
             f"label smoothing {cfg.get('label_smoothing', 0)}, EMA {cfg.get('ema_decay', 0)}",
             "", "<details><summary>the whole config</summary>", "", "```json", json.dumps(cfg, indent=1), "```",
             "", "</details>", ""]
    return lines


def _results(meta: dict, history: list[dict]) -> list[str]:
    lines = []
    published = meta.get("published") or {}
    if published:
        acc = ", ".join(f"{k} {v}%" for k, v in published.items() if k != "dataset" and v is not None)
        lines += ["## Published accuracy", "", f"{published.get('dataset', '')}: {acc} (the publisher's figure, "
                  "on its test or validation images, at the preprocessing above)", ""]
    if history:
        last = history[-1]
        keys = [k for k in ("epoch", "train_loss", "train_err", "val_loss", "val_err", "val_top5_err") if k in last]
        lines += ["## Final metrics (metrics.jsonl)", "", "| " + " | ".join(keys) + " |",
                  "| " + " | ".join("---" for _ in keys) + " |", "| " + " | ".join(str(last[k]) for k in keys) + " |", ""]
        vals = [r["val_err"] for r in history if r.get("val_err") is not None]
        if vals:
            lines += [f"Best validation error {min(vals):.2f}% (epoch "
                      f"{next(r['epoch'] for r in history if r.get('val_err') == min(vals))}); errors in %.", ""]
    return lines


def model_card(model, meta: dict, config: dict, history: list[dict]) -> str:
    source = config.get("weights_source") or ""
    # named weights by their name, a hub-style folder by its own name, a run's checkpoint by its run folder's
    where = source if ":" in source else Path(source).name if Path(source).is_dir() else Path(source).parent.name
    title = f"# {meta['model']}" + (f" ({where or source})" if source else "")
    use = ["## Use", "", "```bash", "resnet eval --weights THIS_FOLDER --data DATA", "resnet predict IMAGE --weights THIS_FOLDER",
           "```", "", "```python", "import resnet", "model = resnet.from_pretrained('THIS_FOLDER')  # or 'hf://OWNER/NAME'",
           "```", ""]
    lines = _front_matter(config) + [title, ""] + _facts(model, meta, config) + _results(meta, history) \
        + _recipe(meta) + use
    return "\n".join(lines)
