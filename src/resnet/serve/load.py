"""The one loader: a checkpoint (file or run folder), named or local pretrained weights, or a
registered model name -> (model in eval mode, its description).

The description says how to feed and read the model, whatever it came from: `model` (the
registered name), `classes` (names, or None), `mean`/`std`, `input_size` (the crop), `resize`
(shorter side before the centre crop), `interpolation`; a checkpoint adds its training `config`
(which rebuilds the run's hold-out), named weights their `weights` and `preprocess`, a registered
name `random_init: True`. `resnet eval`, `predict`, `export` and `benchmark` all load through here.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..engine.checkpoint import describes_itself, load_model
from ..errors import ConfigError
from ..models import create_model, get_entry
from ..models.hub import WEIGHTS_NAME
from ..weights.preprocess import native_preprocess
from ..weights.folder import is_folder
from ..weights.hf import is_hf
from ..weights.pretrained import model_from_weights
from ..weights.sources import is_named


def load(checkpoint: str | None = None, weights: str | None = None, model: str | None = None,
         num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """`--checkpoint CKPT` (a toolkit checkpoint or run folder) or `--weights SOURCE` (a named
    source such as torchvision:resnet50.IMAGENET1K_V2 or akamaster:resnet20, a hub-style folder,
    hf://OWNER/NAME[@REVISION], or a torchvision-layout file with `model`)."""
    if bool(checkpoint) == bool(weights):
        raise ConfigError("give exactly one of --checkpoint CKPT and --weights SOURCE")
    if checkpoint and is_folder(checkpoint):  # (it said "holds no best.safetensors ...: is it a run folder?")
        raise ConfigError(f"--checkpoint {checkpoint} is a hub-style folder (config.json and model.safetensors), "
                          f"not a run folder: pass it as --weights {checkpoint}")
    if checkpoint and _hub_weights(checkpoint):  # a hub-style folder's model.safetensors is no checkpoint
        checkpoint, weights = None, checkpoint
    if weights and _hub_weights(weights):  # read as its folder, with config.json's description (preprocessing, classes)
        weights = str(Path(weights).expanduser().parent)
    if weights and describes_itself(weights):  # a run's best.safetensors given as --weights: read as what it
        checkpoint = weights                    # is, with its own mean/std and size (not a bare file's ImageNet ones)
    elif weights:
        return model_from_weights(weights, model_name=model, num_classes=num_classes)
    net, meta = load_model(checkpoint)
    net.pretrained_meta = meta = _complete(net, dict(meta))  # what save_pretrained writes beside the weights
    return net, meta


def _hub_weights(spec: str) -> bool:
    """Whether `spec` is the weights file of a hub-style folder (model.safetensors beside config.json)."""
    path = Path(spec).expanduser()
    return path.name == WEIGHTS_NAME and path.is_file() and is_folder(path.parent)


def load_spec(spec: str, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """One positional argument (`resnet export` / `benchmark`): a checkpoint file or run folder,
    named weights, a hub-style folder or hf://OWNER/NAME, or a registered model name (random
    weights, described as such, with the normalisation of its dataset family)."""
    if is_named(spec) or is_hf(spec) or is_folder(spec):
        return load(weights=spec, num_classes=num_classes)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".safetensors":  # a torch.save file (torchvision's or akamaster's layout)
        raise ConfigError(f"{spec} is a weights file, not a toolkit checkpoint: make it a hub-style folder first, "
                          f"python -c \"import resnet; resnet.from_pretrained('{spec}', model_name='NAME')"
                          ".save_pretrained('DIR')\" (NAME: the network it holds, e.g. resnet50), then pass DIR")
    if path.exists():
        return load(checkpoint=spec)
    if "/" in spec or spec.endswith((".safetensors", ".pt", ".pth", ".th")):  # meant as a file, not a model name
        raise FileNotFoundError(f"{spec}: no such file or folder (give a checkpoint, a run folder, named weights "
                                "or a registered model name)")
    entry = get_entry(spec)  # an unknown name: one line with the closest names
    net = create_model(spec, **({"num_classes": num_classes} if num_classes else {})).eval()
    pre = native_preprocess(entry.input_size)
    return net, {"model": spec, "classes": None, "mean": list(pre.mean), "std": list(pre.std),
                 "input_size": pre.crop, "resize": pre.resize, "interpolation": pre.interpolation,
                 "random_init": True}


def _complete(net: nn.Module, meta: dict) -> dict:
    """A checkpoint's description with the preprocessing keys filled in: the native input size of
    the stem, and no crop to undo (resize = input size) for runs that held whole images in memory."""
    size = int(meta.get("input_size") or net.config.input_size)
    meta.setdefault("input_size", size)
    meta.setdefault("resize", size)
    meta.setdefault("interpolation", "bilinear")
    return meta


def class_names(meta: dict, num_classes: int) -> list[str]:
    """The model's class names, or `class i` where the description has none (or the wrong count)."""
    names = meta.get("classes")
    if names and len(names) == num_classes:
        return list(names)
    return [f"class {i}" for i in range(num_classes)]


def num_outputs(model: nn.Module) -> int:
    """The classifier's size; a headless network (num_classes=0: features only) is one line, not an AttributeError."""
    size = getattr(getattr(model, "fc", None), "out_features", None)
    if size is None:
        name = getattr(model, "model_name", type(model).__name__)
        raise ConfigError(f"{name} has no classifier (num_classes=0: it gives features, not classes), so it has no "
                          "classes to predict or score; fine-tune it with a head first (resnet train --weights ... "
                          "model_args.num_classes=N)")
    return int(size)
