"""Any weights spec -> a model and its description (preprocessing, class names, where it came from).

A spec is one of: a named source (`torchvision:resnet50.IMAGENET1K_V2`, `akamaster:resnet20`,
`timm:resnet50.a1_in1k`), `hf://OWNER/NAME[@REVISION]`, a hub-style folder (config.json +
model.safetensors), or a weights file in torchvision's (or akamaster's) layout with the model named.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..models import create_model
from . import akamaster, hf, timm_hub  # akamaster and timm_hub register their sources when imported
from .folder import describe, from_folder, is_folder, read_config
from .preprocess import Preprocess
from .sources import CIFAR10_CLASSES, SOURCES, WeightSource, download, get_source, imagenet_classes, is_named
from ..errors import ConfigError, WeightsError
from .state_dict import clean_keys, load_strict, load_weights, read_state_dict


def kind_of(spec) -> str:
    """'named' | 'hf' | 'folder' | 'file'; a missing path gets a one-line error listing the choices."""
    if is_named(spec):
        return "named"
    if hf.is_hf(spec):
        return "hf"
    if is_folder(spec):
        return "folder"
    path = Path(spec).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        raise FileNotFoundError(f"--weights {spec}: a folder without config.json (hub-style folders hold "
                                "config.json and model.safetensors; a run folder goes to --checkpoint)")
    raise FileNotFoundError(f"--weights {spec}: no such file or folder, and not a named source "
                            f"(`resnet weights` lists them: {', '.join(list(SOURCES)[:3])}, ...) nor hf://OWNER/NAME")


def resolve(spec: str, opener=None) -> tuple[Path, WeightSource | None]:
    """(local weights file, its named source or None) for a named source or a file."""
    if is_named(spec):
        source = get_source(spec)
        return download(source, opener=opener), source
    kind_of(spec)
    return Path(spec).expanduser(), None


def hf_folder(spec: str) -> Path:
    repo, revision = hf.parse(spec)
    return hf.download_files(repo, revision, ("config.json", "model.safetensors"), optional=("README.md",))


def file_preprocess(model: nn.Module) -> Preprocess:
    """What a bare weights file (no source to say otherwise) is evaluated with: ImageNet's statistics, as
    torchvision's files, at the network's own size (a CIFAR net sees its 32-pixel images as they are: at 224
    an akamaster ResNet-20 erred 89% on the CIFAR images it errs 14% on)."""
    size = model.config.input_size
    return Preprocess() if size >= 224 else Preprocess(resize=size, crop=size)


def weights_meta(source: WeightSource | None, path: Path, model_name: str, num_classes: int,
                 file_pre: Preprocess | None = None) -> dict:
    """A checkpoint-style description (as `load_model` returns) of a model built from weights; `file_pre`:
    the preprocessing of a bare file (see `file_preprocess`)."""
    pre = source.preprocess if source else (file_pre or Preprocess())
    classes = source.class_names() if source else (list(imagenet_classes()) if num_classes == 1000 else None)
    meta = {"model": model_name, "classes": classes, "mean": list(pre.mean), "std": list(pre.std),
            "input_size": pre.crop, "resize": pre.resize, "interpolation": pre.interpolation,
            "weights": source.name if source else str(path), "preprocess": pre.to_dict()}
    if source:
        meta.update(dataset=source.dataset, license=source.license, tag=source.name.split(":", 1)[1],
                    origin_url=source.url, timm_cfg=dict(source.pretrained_cfg),
                    published={"dataset": source.dataset, "top1": source.acc1, "top5": source.acc5})
    return meta


def toolkit_state_dict(path: Path, model: nn.Module, source: WeightSource | None = None) -> dict:
    """The file's tensors in this toolkit's layout for `model` (akamaster's files converted)."""
    sd = read_state_dict(path)
    if (source is not None and source.layout == "akamaster") or (source is None and akamaster.is_akamaster(sd)):
        return akamaster.to_toolkit(sd, model, str(path))
    return clean_keys(sd)


def model_from_weights(spec: str, model_name: str | None = None, num_classes: int | None = None,
                       opener=None) -> tuple[nn.Module, dict]:
    """(model in eval mode, description) for any weights spec (see the module's docstring); a file
    needs `model_name` (its classifier size is read from the file when `num_classes` is not given)."""
    kind = kind_of(spec)
    if kind in ("hf", "folder"):
        model, meta = from_folder(hf_folder(spec) if kind == "hf" else Path(spec))
        if kind == "hf":
            meta["weights"] = spec
        return model, meta
    path, source = resolve(spec, opener=opener)
    name = model_name or (source.model if source else None)
    if name is None:
        raise ConfigError(f"--weights {spec} is a file: say which network it holds with --model (e.g. resnet50)")
    if num_classes is None:
        num_classes = source.num_classes if source else _head_size(path)
    model = create_model(name, **{**(source.model_args if source else {}), "num_classes": num_classes})
    model.model_name = name
    load_strict(model, toolkit_state_dict(path, model, source), str(path))
    meta = weights_meta(source, path, name, num_classes, file_preprocess(model))
    if source is None and num_classes == len(CIFAR10_CLASSES) and akamaster.is_akamaster(read_state_dict(path)):
        meta["classes"] = list(CIFAR10_CLASSES)  # akamaster's layout is its CIFAR-10 nets, as by name
    model.pretrained_meta = meta
    return model.eval(), meta


def _head_size(path: Path) -> int:
    sd = clean_keys(read_state_dict(path))
    fc = sd.get("fc.weight", sd.get("linear.weight"))
    return int(fc.shape[0]) if fc is not None else 1000


def from_pretrained(spec: str | os.PathLike, **kwargs) -> nn.Module:
    """The model of a hub-style folder, `hf://OWNER/NAME[@REVISION]` or a named source, in eval mode;
    its preprocessing and class names in `model.pretrained_meta`."""
    return model_from_weights(str(spec), **kwargs)[0]


def load_pretrained(model: nn.Module, spec: str, opener=None) -> dict:
    """Load `spec` into `model` (fine-tuning: a different head size keeps a fresh head). Returns the
    description of the weights (see `weights_meta`)."""
    kind = kind_of(spec)
    if kind in ("hf", "folder"):
        folder = hf_folder(spec) if kind == "hf" else Path(spec)
        source_model, meta = from_folder(folder)
        load_weights(model, source_model.state_dict())
        return meta
    path, source = resolve(spec, opener=opener)
    load_weights(model, toolkit_state_dict(path, model, source))
    return weights_meta(source, path, getattr(model, "model_name", source.model if source else "resnet"),
                        getattr(getattr(model, "fc", None), "out_features", 0), file_preprocess(model))


def preprocess_of(spec: str) -> Preprocess | None:
    """The preprocessing a named source or a hub folder states; None for a bare file."""
    kind = kind_of(spec)
    if kind == "named":
        return get_source(spec).preprocess
    if kind in ("hf", "folder"):
        folder = hf_folder(spec) if kind == "hf" else Path(spec)
        return Preprocess(**describe(read_config(folder), folder)["preprocess"])
    return None


def apply_preprocess(spec: str, *datasets) -> None:
    """Train with the normalisation (and evaluation resize) the pretrained weights expect; a bare
    weights file carries none, and the data's own statistics stay."""
    pre = preprocess_of(spec)
    if pre is None:
        return
    for ds in datasets:
        if ds is None:
            continue
        ds.mean, ds.std = tuple(pre.mean), tuple(pre.std)
        if hasattr(ds, "resize") and getattr(ds, "input_size", None) == pre.crop:
            ds.resize, ds.interpolation = pre.resize, pre.interpolation


__all__ = ["WeightsError", "apply_preprocess", "from_pretrained", "kind_of", "load_pretrained",
           "model_from_weights", "preprocess_of", "resolve", "toolkit_state_dict", "weights_meta"]
