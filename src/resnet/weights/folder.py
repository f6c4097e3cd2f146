"""Hub-style folders, read: `model.safetensors` + `config.json` (+ `README.md`) -> model and description.

The format is written by `ResNet.save_pretrained` (models/hub.py). A folder written by timm for one
of its ResNets that share torchvision's layout (`architecture` resnet18 ... resnet152) reads too:
its `pretrained_cfg` gives the preprocessing (the test size where timm gives one).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..models import ResNet, ResNetConfig, create_model, list_models
from ..models.hub import CONFIG_NAME, FORMAT, WEIGHTS_NAME
from ..errors import WeightsError
from .preprocess import Preprocess
from .sources import imagenet_classes
from .state_dict import load_strict, read_state_dict

TIMM_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # timm's = torchvision's layout


def is_folder(spec) -> bool:
    if not isinstance(spec, (str, os.PathLike)):
        return False
    folder = Path(spec).expanduser()  # ("~/models/r20" from a config file or the API: the shell expands none)
    return folder.is_dir() and (folder / CONFIG_NAME).is_file()


def read_config(folder: Path) -> dict:
    path = Path(folder).expanduser() / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not a readable JSON config ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise WeightsError(f"{path}: no 'architecture' field; is this a hub-style model folder?")
    if int(config.get("resnet_format", FORMAT)) > FORMAT:
        raise WeightsError(f"{path} was written by a newer resnet (format {config['resnet_format']}); upgrade the toolkit")
    return config


def _timm_preprocess(cfg: dict) -> Preprocess:
    """timm's pretrained_cfg at its test size when it has one (its published accuracies use it)."""
    size = int((cfg.get("test_input_size") or cfg.get("input_size") or [3, 224, 224])[-1])
    pct = float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875) if cfg.get("test_input_size") \
        else float(cfg.get("crop_pct") or 0.875)
    kw = {k: cfg[k] for k in ("mean", "std", "interpolation") if cfg.get(k)}
    return Preprocess.from_crop_pct(size, pct, **kw)


def _build(config: dict, where: Path) -> ResNet:
    if "model_config" in config:
        try:
            model = ResNet(ResNetConfig(**config["model_config"]))
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{where}: model_config does not describe a network this toolkit builds ({e})") from None
        model.model_name = config["architecture"]
        return model
    arch = config["architecture"]
    if arch not in TIMM_ARCHS:
        known = ", ".join(TIMM_ARCHS)
        raise WeightsError(f"{where}: architecture {arch!r} has no model_config, and is not one of timm's ResNets "
                           f"with torchvision's layout ({known}); registered here: {', '.join(list_models('resnet*'))}")
    return create_model(arch, num_classes=int(config.get("num_classes", 1000)))


PREPROCESS_KEYS = ("resize", "crop", "mean", "std", "interpolation")


def _own_preprocess(p, path: Path) -> Preprocess:
    """config.json's `preprocess`; a hand-edited one short of a key is one line naming it (was a KeyError)."""
    missing = [k for k in PREPROCESS_KEYS if not isinstance(p, dict) or k not in p]
    if missing:
        raise WeightsError(f"{path}: 'preprocess' lacks {', '.join(missing)}; give all of {', '.join(PREPROCESS_KEYS)} "
                           "(or remove 'preprocess', and pretrained_cfg's are used)")
    try:
        return Preprocess(int(p["resize"]), int(p["crop"]), tuple(p["mean"]), tuple(p["std"]), str(p["interpolation"]))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: 'preprocess' has a value of the wrong kind ({e})") from None


def describe(config: dict, folder: Path) -> dict:
    """The description `load_model` gives a checkpoint: classes, mean, std, input size, resize, ..."""
    if "preprocess" in config:
        pre = _own_preprocess(config["preprocess"], Path(folder) / CONFIG_NAME)
    else:
        pre = _timm_preprocess(config.get("pretrained_cfg") or {})
    num_classes = int(config.get("num_classes", 1000))
    classes = config.get("label_names") or (list(imagenet_classes()) if num_classes == 1000 else None)
    pcfg = config.get("pretrained_cfg") or {}
    return {"model": config["architecture"], "classes": classes, "mean": list(pre.mean), "std": list(pre.std),
            "input_size": pre.crop, "resize": pre.resize, "interpolation": pre.interpolation,
            "weights": str(folder), "preprocess": pre.to_dict(), "dataset": config.get("dataset"),
            "license": pcfg.get("license"), "published": config.get("published"),
            "timm_cfg": {k: pcfg[k] for k in ("test_input_size", "test_crop_pct", "paper_ids") if k in pcfg},
            "source": config.get("weights_source"), "config": config.get("training_config"),
            "epoch": config.get("epoch")}


def from_folder(folder: str | os.PathLike) -> tuple[ResNet, dict]:
    """(model in eval mode, description) from a hub-style folder, loaded strictly."""
    folder = Path(folder).expanduser()
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} beside {CONFIG_NAME}")
    model = _build(config, folder)
    load_strict(model, read_state_dict(weights), str(weights))
    meta = describe(config, folder)
    model.pretrained_meta = meta
    return model.eval(), meta
