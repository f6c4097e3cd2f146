"""Pretrained weights by name, with the preprocessing they need, and the ImageNet class names.

``torchvision:resnet50.IMAGENET1K_V2`` names torchvision's published state dict: it is downloaded
once from the official address, checked against the sha256 prefix in its file name (as
``torch.hub`` does), and cached where torchvision caches it (``$TORCH_HOME/hub/checkpoints``), so
files torchvision already fetched are reused. Every source carries its evaluation preprocessing
(resize, crop, mean, std, interpolation): a mismatch there is the most common reason pretrained
ResNets score badly.
"""
from __future__ import annotations

import functools
import os
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .. import files
from ..errors import ConfigError, WeightsError, WeightsUnavailableError
from ..models import create_model
from .preprocess import Preprocess
from .state_dict import clean_keys, load_weights, read_state_dict

SCHEMES = ("torchvision",)


@dataclass(frozen=True)
class WeightSource:
    name: str  # e.g. torchvision:resnet50.IMAGENET1K_V2
    model: str  # the registered model these weights fit
    url: str
    preprocess: Preprocess = field(default_factory=Preprocess)
    num_classes: int = 1000
    acc1: float | None = None  # published ImageNet-1k validation accuracy (single centre crop), %
    acc5: float | None = None
    model_args: dict = field(default_factory=dict, compare=False)  # beyond num_classes, e.g. for test doubles

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        """The hex digits after the last dash of the file name: the start of the file's sha256."""
        return self.filename.rsplit("-", 1)[-1].split(".")[0]


_V1, _V2 = Preprocess(resize=256), Preprocess(resize=232)  # torchvision's ImageClassification presets
_BASE = "https://download.pytorch.org/models/"
SOURCES: dict[str, WeightSource] = {s.name: s for s in [
    WeightSource("torchvision:resnet18.IMAGENET1K_V1", "resnet18", _BASE + "resnet18-f37072fd.pth", _V1, acc1=69.758, acc5=89.078),
    WeightSource("torchvision:resnet34.IMAGENET1K_V1", "resnet34", _BASE + "resnet34-b627a593.pth", _V1, acc1=73.314, acc5=91.420),
    WeightSource("torchvision:resnet50.IMAGENET1K_V1", "resnet50", _BASE + "resnet50-0676ba61.pth", _V1, acc1=76.130, acc5=92.862),
    WeightSource("torchvision:resnet50.IMAGENET1K_V2", "resnet50", _BASE + "resnet50-11ad3fa6.pth", _V2, acc1=80.858, acc5=95.434),
    WeightSource("torchvision:resnet101.IMAGENET1K_V1", "resnet101", _BASE + "resnet101-63fe2227.pth", _V1, acc1=77.374, acc5=93.546),
    WeightSource("torchvision:resnet101.IMAGENET1K_V2", "resnet101", _BASE + "resnet101-cd907fc2.pth", _V2, acc1=81.886, acc5=95.780),
    WeightSource("torchvision:resnet152.IMAGENET1K_V1", "resnet152", _BASE + "resnet152-394f9c45.pth", _V1, acc1=78.312, acc5=94.046),
    WeightSource("torchvision:resnet152.IMAGENET1K_V2", "resnet152", _BASE + "resnet152-f82ba261.pth", _V2, acc1=82.284, acc5=96.002),
]}
DEFAULTS = {"resnet18": "IMAGENET1K_V1", "resnet34": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2",
            "resnet101": "IMAGENET1K_V2", "resnet152": "IMAGENET1K_V2"}  # torchvision's DEFAULT


# --------------------------------------------------------------------------- class names
@functools.lru_cache(maxsize=None)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in torchvision's index order (shipped with the package)."""
    text = (resources.files("resnet.data") / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


@functools.lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 WordNet ids (n01440764 ...) in index order: the sorted folder names of ImageNet's train/ and val/."""
    text = (resources.files("resnet.data") / "imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


# --------------------------------------------------------------------------- sources
def is_named(spec: str) -> bool:
    """True for `scheme:name` specs (an existing file of that name wins)."""
    return isinstance(spec, str) and spec.split(":", 1)[0] in SCHEMES and ":" in spec and not Path(spec).exists()


def get_source(spec: str) -> WeightSource:
    """`torchvision:resnet50.IMAGENET1K_V2`; `torchvision:resnet50` or `.DEFAULT` picks torchvision's default."""
    scheme, _, rest = spec.partition(":")
    model, _, tag = rest.partition(".")
    if tag in ("", "DEFAULT") and model in DEFAULTS:
        tag = DEFAULTS[model]
    source = SOURCES.get(f"{scheme}:{model}.{tag}")
    if source is None:
        raise ConfigError(f"unknown weights {spec!r}; named sources: {', '.join(SOURCES)} "
                         "(or pass a local .pth/.safetensors file)")
    return source


def weights_dir() -> Path:
    """Where named weights are cached: $RESNET_WEIGHTS, else torch.hub's checkpoints folder
    ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints), shared with torchvision."""
    env = os.environ.get("RESNET_WEIGHTS")
    return Path(env).expanduser() if env else Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    return files.file_hash(path, "sha256")


def _offline_message(source: WeightSource, dest: Path, reason: str) -> str:
    return (f"cannot download {source.name} from {source.url} ({reason}). Without internet access, fetch "
            f"that file elsewhere and place it at {dest} (its sha256 starts with {source.sha256_prefix}), "
            f"or pass a local file with --weights PATH.")


def download(source: WeightSource, folder: Path | None = None, opener=None, stream=None) -> Path:
    """The cached file of `source`, downloading and verifying it first when absent (`files.download`).

    `opener(url, timeout=...)` returns a file-like response (urllib's `urlopen` by default;
    tests pass their own). The file appears in the cache only once its hash has been checked."""
    folder = Path(folder) if folder is not None else weights_dir()
    dest = folder / source.filename
    if dest.is_file():
        if not sha256_of(dest).startswith(source.sha256_prefix):
            raise WeightsError(f"{dest} does not match {source.name} (sha256 should start with "
                               f"{source.sha256_prefix}): delete it and try again")
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsUnavailableError(f"cannot create the weights cache {folder} ({e}); set $RESNET_WEIGHTS") from None

    def corrupt(got: str) -> WeightsError:
        return WeightsError(f"the download of {source.url} is corrupt (sha256 {got[:16]}..., expected "
                            f"{source.sha256_prefix}...); nothing was cached, try again")
    return files.download(source.url, dest, "sha256", source.sha256_prefix,
                          lambda reason: WeightsUnavailableError(_offline_message(source, dest, reason)), corrupt,
                          opener=opener or urllib.request.urlopen, stream=stream)


def resolve(spec: str, opener=None) -> tuple[Path, WeightSource | None]:
    """(local file, its named source or None) for `--weights`."""
    if is_named(spec):
        source = get_source(spec)
        return download(source, opener=opener), source
    path = Path(spec).expanduser()
    if not path.is_file():
        names = ", ".join(SOURCES)
        raise FileNotFoundError(f"--weights {spec}: no such file, and not a named source ({names})")
    return path, None


# --------------------------------------------------------------------------- loading
def weights_meta(source: WeightSource | None, path: Path, model_name: str, num_classes: int) -> dict:
    """A checkpoint-style description (as `load_model` returns) of a model built from weights."""
    pre = source.preprocess if source else Preprocess()
    classes = list(imagenet_classes()) if num_classes == 1000 else None
    return {"model": model_name, "classes": classes, "mean": list(pre.mean), "std": list(pre.std),
            "input_size": pre.crop, "resize": pre.resize, "interpolation": pre.interpolation,
            "weights": source.name if source else str(path), "preprocess": pre.to_dict()}


def load_pretrained(model: nn.Module, spec: str, opener=None) -> dict:
    """Load `spec` (a file or a named source) into `model`; a different head size keeps a fresh head
    (fine-tuning). Returns the description of the weights (see `weights_meta`)."""
    path, source = resolve(spec, opener=opener)
    load_weights(model, path)
    return weights_meta(source, path, getattr(model, "model_name", source.model if source else "resnet"),
                        model.fc.out_features if hasattr(model, "fc") else 0)


def model_from_weights(spec: str, model_name: str | None = None, num_classes: int | None = None,
                       opener=None) -> tuple[nn.Module, dict]:
    """(model in eval mode, description) for a named source, or for a local torchvision-layout file
    with `model_name` given (the classifier size is read from the file when `num_classes` is not)."""
    path, source = resolve(spec, opener=opener)
    name = model_name or (source.model if source else None)
    if name is None:
        raise ConfigError(f"--weights {spec} is a file: say which network it holds with --model (e.g. resnet50)")
    if num_classes is None:
        fc = clean_keys(read_state_dict(path)).get("fc.weight")
        num_classes = int(fc.shape[0]) if fc is not None else 1000
    model = create_model(name, **{**(source.model_args if source else {}), "num_classes": num_classes})
    model.model_name = name
    load_weights(model, path)
    return model.eval(), weights_meta(source, path, name, num_classes)


def apply_preprocess(spec: str, *datasets) -> None:
    """Train with the normalisation (and evaluation resize) the named pretrained weights expect;
    a weights file carries none, and the data's own statistics stay."""
    if not is_named(spec):
        return
    pre = get_source(spec).preprocess
    for ds in datasets:
        if ds is None:
            continue
        ds.mean, ds.std = tuple(pre.mean), tuple(pre.std)
        if hasattr(ds, "resize") and getattr(ds, "input_size", None) == pre.crop:
            ds.resize, ds.interpolation = pre.resize, pre.interpolation
